//! FUSE server for the overlay.
//!
//! Translates kernel requests into [`Overlay`] calls and picks the kernel-side
//! behaviour that keeps the view correct and fast:
//!
//! - `default_permissions`: the kernel checks permissions against the attributes
//!   we report, exactly as for a local file system.
//! - Entries, attributes and negative lookups are cached for one second; every
//!   change goes through the kernel, which invalidates what it changed, so the
//!   TTL only bounds how long a change made *on the host* stays invisible.
//! - Read-only opens of files whose bytes are still in the base use FUSE
//!   passthrough (Linux 6.9+, privileged server): the kernel reads the base file
//!   directly and this process never sees those reads.
//! - `readdirplus` answers `ls -l`, `find` and `git status` without a lookup per
//!   entry.
//!
//! It deliberately does not enable the writeback cache (incompatible with
//! passthrough) or implement locks (the kernel handles them locally, which is
//! correct for a single mount).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Config, Errno as FErrno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

use crate::base::Base;
use crate::error::Errno;
use crate::overlay::{Attr, CAPS_XATTR, Caller, IoMode, Listing, Opened, Overlay, SetAttr};
use crate::store::Timestamp;

/// How long the kernel may cache entries and attributes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// Options for serving an overlay.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Let users other than the mounting one use the mount (needs root or
    /// `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
    pub ttl: Duration,
    /// Use FUSE passthrough when the kernel and our privileges allow it.
    pub passthrough: bool,
    /// Name shown in /proc/mounts.
    pub fs_name: String,
    /// Threads reading requests from the kernel. The overlay itself is behind
    /// one lock; more threads overlap the kernel's request hand-offs, which is
    /// what parallel clients (git's threaded lstat, make -j) wait on.
    pub threads: usize,
    /// Limit on the bytes the workspace's delta may hold.
    pub quota: Option<std::sync::Arc<crate::overlay::Quota>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            allow_other: rustix::process::geteuid().is_root(),
            ttl: DEFAULT_TTL,
            passthrough: true,
            fs_name: "cordon".into(),
            threads: 4,
            quota: None,
        }
    }
}

/// The FUSE file system: an overlay behind a lock plus passthrough bookkeeping.
pub struct OverlayFs {
    inner: Mutex<Overlay>,
    /// The overlay's base, for lookups that need only the base (see
    /// [`OverlayFs::base_lookup`]).
    base: Arc<Base>,
    /// Backing files registered with the kernel, per node, with their open count.
    backing: Mutex<HashMap<u64, (Arc<BackingId>, u32)>>,
    ttl: Duration,
    want_passthrough: bool,
    /// What the kernel agreed to at `init`, for `cordon workspace mount` to report.
    negotiated: Arc<Mutex<Negotiated>>,
    writeback: Option<WalWriteback>,
    /// The node last written that has no `security.capability` attribute
    /// (0: none). See [`OverlayFs::answers_no_caps`].
    no_caps: AtomicU64,
    /// The kernel can do without `opendir` (see [`OverlayFs::opendir`]).
    no_opendir: AtomicBool,
    /// Tells the kernel about changes it did not make itself (see
    /// [`OverlayFs::write`]); set by the mount once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
}

/// Starts the disk writing the WAL while a large write is still arriving.
///
/// Written data sits in the WAL's page cache until something syncs it; a
/// program that writes 256 MiB and then calls `fsync` would wait for all of it
/// at the end. Every [`WalWriteback::EVERY`] bytes a helper thread asks the
/// kernel to start writing the WAL out (`sync_file_range(SYNC_FILE_RANGE_WRITE)`,
/// which does not wait), so the final `fsync` finds little left to do. It
/// changes nothing about durability: only `fsync` promises anything.
struct WalWriteback {
    pending: AtomicU64,
    kick: SyncSender<()>,
}

impl WalWriteback {
    const EVERY: u64 = 8 << 20;

    fn start(wal: std::path::PathBuf) -> Option<WalWriteback> {
        let (kick, wake) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("cordon-writeback".into())
            .spawn(move || {
                let mut file: Option<std::fs::File> = None;
                // Ends when the file system (the sender) is dropped.
                while wake.recv().is_ok() {
                    // The WAL can be recreated by a checkpoint; reopen it each time.
                    file = std::fs::File::open(&wal).ok().or(file);
                    if let Some(f) = &file {
                        use std::os::fd::AsRawFd;
                        // SAFETY: a plain system call on a descriptor we own.
                        unsafe {
                            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
                        };
                    }
                }
            })
            .ok()?;
        Some(WalWriteback {
            pending: AtomicU64::new(0),
            kick,
        })
    }

    fn wrote(&self, n: u64) {
        if self.pending.fetch_add(n, Ordering::Relaxed) + n < Self::EVERY {
            return;
        }
        self.pending.store(0, Ordering::Relaxed);
        // A kick already queued covers this one; a helper that died costs only speed.
        let _ = self.kick.try_send(());
    }
}

/// Features the kernel accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Negotiated {
    pub passthrough: bool,
    pub readdirplus: bool,
    /// Directories are read without `opendir`/`releasedir` round trips.
    pub no_opendir: bool,
    pub max_write: u32,
}

fn errno(e: Errno) -> FErrno {
    FErrno::from_i32(e.code())
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
            .and_then(|x| x.checked_add(Duration::from_nanos(u64::from(t.nsec))))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

fn file_type(kind: u32) -> FileType {
    match kind {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.file_type()),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl OverlayFs {
    /// Wraps an overlay for serving.
    pub fn new(overlay: Overlay, opts: &ServeOptions) -> Self {
        // Base directories may be as stale as the kernel's names, no more.
        overlay.base().set_dir_ttl(opts.ttl);
        OverlayFs {
            writeback: WalWriteback::start(overlay.store().wal_path().to_path_buf()),
            base: overlay.shared_base(),
            inner: Mutex::new(overlay),
            backing: Mutex::new(HashMap::new()),
            ttl: opts.ttl,
            want_passthrough: opts.passthrough,
            negotiated: Arc::new(Mutex::new(Negotiated::default())),
            no_caps: AtomicU64::new(0),
            no_opendir: AtomicBool::new(false),
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Before each write the kernel asks whether the file carries file
    /// capabilities (to drop them, as a write must). Answered from the
    /// overlay, that question would wait for the previous write's commit and
    /// undo the overlap `write` sets up; so the node a write just went to is
    /// remembered as having none, and that answer needs no lock. Any change
    /// to the attribute, and the node's `forget`, drop the memory.
    fn answers_no_caps(&self, ino: u64, name: &[u8]) -> bool {
        name == CAPS_XATTR && ino != 0 && self.no_caps.load(Ordering::Acquire) == ino
    }

    /// Called with the overlay held, after a write's copy-up.
    fn note_written(&self, ov: &Overlay, ino: u64) {
        if self.no_caps.load(Ordering::Acquire) != ino
            && ov.getxattr(ino, CAPS_XATTR) == Err(Errno::ENODATA)
        {
            self.no_caps.store(ino, Ordering::Release);
        }
    }

    fn caps_may_change(&self, ino: u64, name: Option<&[u8]>) {
        if name.is_none_or(|n| n == CAPS_XATTR) {
            let _ = self
                .no_caps
                .compare_exchange(ino, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Where the mount puts the session's notifier.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Handle to the negotiated features (filled in once the kernel sends `init`).
    pub fn negotiated(&self) -> Arc<Mutex<Negotiated>> {
        self.negotiated.clone()
    }

    fn ov(&self) -> MutexGuard<'_, Overlay> {
        // A panic in one request must not wedge every later one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lookup in a directory that exists only in the base, with its `lstat`
    /// made outside the overlay lock: parallel lookups (git's threaded
    /// `lstat` of every tracked file) then hold the lock only to record the
    /// node, instead of queueing behind each other's system calls. `None`
    /// when the directory is not (or no longer) such a directory.
    fn base_lookup(&self, parent: u64, name: &[u8]) -> Option<Result<Attr, Errno>> {
        let lower = match self.ov().base_only_dir(parent, name) {
            Ok(Some(lower)) => lower,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let st = match self.base.open_dir_path(&lower) {
            Ok(Some(dir)) => match self.base.stat_in(&*dir, name) {
                Ok(st) => st,
                Err(e) => return Some(Err(e)),
            },
            Ok(None) => None,
            Err(e) => return Some(Err(e)),
        };
        self.ov().finish_base_lookup(parent, &lower, name, st)
    }

    /// The listing a `readdir` continues, and where: by handle, or by node
    /// when the kernel opens directories without us.
    fn stream(
        &self,
        ov: &mut Overlay,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<(Arc<Listing>, usize), Errno> {
        if self.no_opendir.load(Ordering::Acquire) {
            ov.readdir_at(ino, offset)
        } else {
            ov.readdir(fh, offset)
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Sends an open reply, registering a backing file for passthrough opens.
    fn opened_reply(&self, ov: &mut Overlay, id: u64, opened: Opened, reply_open: OpenReply) {
        // Nothing is buffered here, so close() need not wait for a FLUSH round trip.
        let mut flags = FopenFlags::FOPEN_NOFLUSH;
        match opened.io {
            IoMode::Cached => flags |= FopenFlags::FOPEN_KEEP_CACHE,
            IoMode::Direct => flags |= FopenFlags::FOPEN_DIRECT_IO,
            IoMode::Passthrough(file) => {
                let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
                let existing = backing.get(&id).map(|(b, _)| b.clone());
                let id_result = match existing {
                    Some(b) => Ok(b),
                    None => reply_open.open_backing(&file).map(Arc::new),
                };
                match id_result {
                    Ok(b) => {
                        backing.entry(id).or_insert_with(|| (b.clone(), 0)).1 += 1;
                        reply_open.passthrough(FileHandle(opened.fh), &b);
                        return;
                    }
                    Err(e) => {
                        // The kernel refused (no privilege, unsupported base file
                        // system): fall back for this and every later open.
                        tracing::warn!(error = %e, "FUSE passthrough unavailable; serving reads from userspace");
                        ov.set_passthrough(false);
                        let direct = ov.passthrough_failed(opened.fh);
                        flags |= if direct {
                            FopenFlags::FOPEN_DIRECT_IO
                        } else {
                            FopenFlags::FOPEN_KEEP_CACHE
                        };
                    }
                }
            }
        }
        reply_open.plain(FileHandle(opened.fh), flags);
    }
}

/// The two reply types that can carry an open file handle.
enum OpenReply {
    Open(ReplyOpen),
    Create(ReplyCreate, Duration, FileAttr),
}

impl OpenReply {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        match self {
            OpenReply::Open(r) => r.open_backing(file),
            OpenReply::Create(r, _, _) => r.open_backing(file),
        }
    }

    fn passthrough(self, fh: FileHandle, b: &BackingId) {
        match self {
            OpenReply::Open(r) => r.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, b),
            OpenReply::Create(r, ttl, attr) => {
                r.created_passthrough(&ttl, &attr, Generation(0), fh, FopenFlags::FOPEN_NOFLUSH, b)
            }
        }
    }

    fn plain(self, fh: FileHandle, flags: FopenFlags) {
        match self {
            OpenReply::Open(r) => r.opened(fh, flags),
            OpenReply::Create(r, ttl, attr) => r.created(&ttl, &attr, Generation(0), fh, flags),
        }
    }
}

impl fuser::Filesystem for OverlayFs {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = req;
        let caps = config.capabilities();
        let mut want = InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_PARALLEL_DIROPS;
        want &= caps;
        let _ = config.add_capabilities(want);
        let no_opendir = caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.no_opendir.store(no_opendir, Ordering::Release);
        // Backing files need CAP_SYS_ADMIN in the initial user namespace.
        let passthrough = self.want_passthrough
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && rustix::process::geteuid().is_root()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        self.ov().set_passthrough(passthrough);
        let mut n = self.negotiated.lock().unwrap_or_else(|e| e.into_inner());
        *n = Negotiated {
            passthrough,
            readdirplus: want.contains(InitFlags::FUSE_DO_READDIRPLUS),
            no_opendir,
            max_write: 1 << 20,
        };
        tracing::info!(passthrough, "FUSE session initialized");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        let found = self
            .base_lookup(parent.0, name)
            .unwrap_or_else(|| self.ov().lookup(parent.0, name));
        match found {
            Ok(a) => reply.entry(&self.ttl, &fuse_attr(&a), Generation(0)),
            Err(e) if e == Errno::ENOENT => {
                // Negative entry: node id 0 with a timeout caches the miss.
                let a = fuse_attr(&Attr {
                    ino: 0,
                    size: 0,
                    blocks: 0,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    mode: libc::S_IFREG,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                });
                reply.entry(&self.ttl, &a, Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut ov = self.ov();
        ov.forget(ino.0, nlookup);
        // The node may be gone and its number given to another file.
        self.caps_may_change(ino.0, None);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ov().getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &fuse_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let t = |x: TimeOrNow| match x {
            TimeOrNow::Now => None,
            TimeOrNow::SpecificTime(s) => Some(timestamp(s)),
        };
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(t),
            mtime: mtime.map(t),
            ctime: ctime.map(timestamp),
        };
        match self.ov().setattr(ino.0, &req) {
            Ok(a) => reply.attr(&self.ttl, &fuse_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ov().readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.ov().mknod(
            parent.0,
            name.as_bytes(),
            mode,
            u64::from(rdev),
            caller(req),
        );
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .ov()
            .mkdir(parent.0, name.as_bytes(), mode, caller(req));
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ov().unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ov().rmdir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.ov().symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.ov().rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.ov().link(ino.0, newparent.0, newname.as_bytes());
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut ov = self.ov();
        match ov.open(ino.0, flags.0) {
            Ok(opened) => self.opened_reply(&mut ov, ino.0, opened, OpenReply::Open(reply)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.ov().read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut ov = self.ov();
        if ov.writes_direct(fh.0) {
            // The kernel sent this write past its page cache, and without
            // dropping the file's privileges first: that is ours to do.
            let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
            let may_have_caps = self.no_caps.load(Ordering::Acquire) != ino.0;
            match ov.drop_privileges_for_write(ino.0, kill, may_have_caps) {
                // The kernel still holds the old mode: have it ask again
                // (attributes only), before this write returns.
                Ok(true) => {
                    if let Some(n) = self.notifier.get()
                        && let Err(e) = n.inval_inode(ino, -1, 0)
                    {
                        tracing::debug!(error = %e, "could not invalidate attributes");
                    }
                }
                Ok(false) => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        let w = match ov.begin_write(fh.0, offset, data.len()) {
            Ok(w) => w,
            Err(e) => return reply.error(errno(e)),
        };
        self.note_written(&ov, ino.0);
        if write_behind(&ov, data.len()) {
            // Acknowledged before it is stored, with the overlay still held:
            // the writer's next request crosses into this process while this
            // one commits, and no request can see the file before the commit.
            reply.written(data.len() as u32);
            ov.finish_write(w, data);
        } else {
            match ov.commit_write(w, data) {
                Ok(n) => reply.written(n),
                Err(e) => return reply.error(errno(e)),
            }
        }
        drop(ov);
        if let Some(w) = &self.writeback {
            w.wrote(data.len() as u64);
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are stored before the overlay is released (see `write`): nothing
        // is buffered here for a flush to wait on.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let released = self.ov().release(fh.0);
        match released {
            Ok((node, true, _)) => {
                let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = backing.get_mut(&node) {
                    entry.1 = entry.1.saturating_sub(1);
                    if entry.1 == 0 {
                        // Dropping the last reference closes the backing file.
                        backing.remove(&node);
                    }
                }
                reply.ok();
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.ov().fsync(Some(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A kernel that can do without opendir is told so by ENOSYS, once:
        // from then on it opens and closes directories without asking (two
        // round trips fewer per directory read), reads them by node with
        // offset cookies (see `Overlay::readdir_at`), and keeps their
        // listings until their mtime changes (see
        // `Overlay::follow_host_changes` for directories the host shares).
        if self.no_opendir.load(Ordering::Acquire) {
            return reply.error(FErrno::ENOSYS);
        }
        // The kernel may cache a listing across opens: it drops that cache when
        // it changes the directory itself, or sees its mtime change.
        let mut ov = self.ov();
        let flags = if ov.listing_cacheable(ino.0) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        match ov.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (listing, start) = match self.stream(&mut self.ov(), ino.0, fh.0, offset) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        for (next, e) in &listing.entries[start..] {
            if reply.add(
                INodeNo(e.ino),
                *next,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut ov = self.ov();
        let (listing, start) = match self.stream(&mut ov, ino.0, fh.0, offset) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        // One descriptor of the lower directory for this whole batch of entries.
        let lower = ov.open_lower(ino.0);
        for (next, e) in &listing.entries[start..] {
            let (id, attr) = match ov.peek(ino.0, &e.name, lower.as_deref()) {
                Ok(x) => x,
                // Vanished from the base since the listing was taken.
                Err(_) => continue,
            };
            let full = reply.add(
                INodeNo(id),
                *next,
                OsStr::from_bytes(&e.name),
                &self.ttl,
                &fuse_attr(&attr),
                Generation(0),
            );
            if full {
                ov.unpeek(id);
                break;
            }
            if e.name != b"." && e.name != b".." {
                ov.add_lookup(id);
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.ov().releasedir(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.ov().fsync(None) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Writes land in the database, so its file system's free space is what counts.
        let ov = self.ov();
        let dir = ov.store().path().parent().unwrap_or(Path::new("/"));
        match rustix::fs::statvfs(dir) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                crate::overlay::NAME_MAX as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e.into())),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mut ov = self.ov();
        let r = ov.setxattr(ino.0, name.as_bytes(), value, flags);
        self.caps_may_change(ino.0, Some(name.as_bytes()));
        drop(ov);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.answers_no_caps(ino.0, name.as_bytes()) {
            return reply.error(errno(Errno::ENODATA));
        }
        xattr_reply(self.ov().getxattr(ino.0, name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(self.ov().listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut ov = self.ov();
        let r = ov.removexattr(ino.0, name.as_bytes());
        self.caps_may_change(ino.0, Some(name.as_bytes()));
        drop(ov);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions; the kernel checks mode bits.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut ov = self.ov();
        match ov.create(parent.0, name.as_bytes(), mode, flags, caller(req)) {
            Ok((attr, opened)) => {
                let fa = fuse_attr(&attr);
                self.opened_reply(
                    &mut ov,
                    attr.ino,
                    opened,
                    OpenReply::Create(reply, self.ttl, fa),
                );
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.ov().fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.ov().lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Writes at least this large may be acknowledged before they are stored.
/// Smaller ones gain little from it: their cost is the round trip, not the copy.
const WRITE_BEHIND_MIN: usize = 128 << 10;

/// Whether a write may be acknowledged before it is stored
/// ([`Overlay::finish_write`]). Only large writes, and only while the
/// database's file system has plenty of room: a full disk then fails the
/// write that hits it, as on ext4, rather than the next write or `fsync`.
fn write_behind(ov: &Overlay, len: usize) -> bool {
    if len < WRITE_BEHIND_MIN {
        return false;
    }
    let dir = ov.store().path().parent().unwrap_or(Path::new("/"));
    // The WAL takes a little more than the data; checkpoints need room too.
    let need = (len as u64).saturating_mul(4).saturating_add(64 << 20);
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= need)
}

fn xattr_reply(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(FErrno::from_i32(libc::ERANGE)),
        Err(e) => reply.error(errno(e)),
    }
}

/// Mount options shared by every overlay mount.
pub fn fuse_config(opts: &ServeOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("cordon".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::RW,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.clamp(1, 64));
    // Each thread gets its own /dev/fuse descriptor instead of contending on one.
    config.clone_fd = opts.threads > 1;
    config
}
