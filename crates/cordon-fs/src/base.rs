//! Read-only, confined access to the host directory under an overlay (the base).
//!
//! Every path here is relative to the base root and is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from a
//! descriptor of the root. A symbolic link anywhere in a path — including one the
//! host swaps in while we resolve — makes the resolution fail instead of being
//! followed, so nothing outside the base directory is ever read through the
//! overlay. Symbolic links *in* the base are shown as links (their target text),
//! never as the bytes of what they point to.
//!
//! This module never writes; `apply` has its own confined writer.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::error::{Errno, Error, OpResult, Result};

/// The flags that keep every resolution inside the base and off symbolic links.
pub const CONFINED: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Metadata of a base object, as `lstat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseStat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl BaseStat {
    // The field types of `struct stat` differ between architectures; the casts are
    // no-ops on x86_64 only.
    #[allow(clippy::unnecessary_cast)]
    fn from_raw(s: &rustix::fs::Stat) -> Self {
        // The kernel's fields are all non-negative; `as` casts keep their bits.
        BaseStat {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            size: s.st_size.max(0) as u64,
            blocks: s.st_blocks.max(0) as u64,
            atime: (s.st_atime as i64, s.st_atime_nsec as u32),
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as u32),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as u32),
        }
    }

    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    /// Modification time in nanoseconds.
    pub fn mtime_ns(&self) -> i64 {
        self.mtime.0 * 1_000_000_000 + i64::from(self.mtime.1)
    }

    /// Change time in nanoseconds.
    pub fn ctime_ns(&self) -> i64 {
        self.ctime.0 * 1_000_000_000 + i64::from(self.ctime.1)
    }
}

/// One entry of a base directory listing.
#[derive(Clone, Debug)]
pub struct BaseDirEntry {
    pub name: Vec<u8>,
    /// `S_IFMT` bits from `d_type`, or 0 when the file system did not say.
    pub kind: u32,
    /// Host inode number from `d_ino`.
    pub ino: u64,
}

/// The base directory of a workspace.
pub struct Base {
    root: OwnedFd,
    path: PathBuf,
    dev: u64,
    dirs: Mutex<DirCache>,
}

/// Descriptors of base directories resolved a moment ago.
///
/// A burst of lookups in one directory (git's `lstat` of every tracked file,
/// `make` checking its prerequisites) would otherwise pay a confined walk from
/// the base root for every name; with the directory's `O_PATH` descriptor at
/// hand each name costs one `fstatat`. A descriptor was opened by the same
/// confined resolution as any other access and is used for at most `ttl` after
/// that: a directory the host renames or replaces meanwhile is seen as it is
/// after at most that long, the bound the kernel's own name cache (the mount's
/// TTL) already sets. Bounded to [`DirCache::MAX`] descriptors.
struct DirCache {
    map: HashMap<Box<[u8]>, (Arc<OwnedFd>, Instant)>,
    ttl: Duration,
}

impl DirCache {
    const MAX: usize = 128;
}

fn kind_of(ft: rustix::fs::FileType) -> u32 {
    use rustix::fs::FileType as F;
    match ft {
        F::RegularFile => libc::S_IFREG,
        F::Directory => libc::S_IFDIR,
        F::Symlink => libc::S_IFLNK,
        F::Fifo => libc::S_IFIFO,
        F::Socket => libc::S_IFSOCK,
        F::CharacterDevice => libc::S_IFCHR,
        F::BlockDevice => libc::S_IFBLK,
        _ => 0,
    }
}

/// Splits a relative path into its parent and final component.
pub fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

/// Joins a relative directory path and a name.
pub fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn rel_arg(rel: &[u8]) -> &[u8] {
    if rel.is_empty() { b"." } else { rel }
}

impl Base {
    /// Opens the base directory. The path is canonicalized first, so the base is
    /// pinned to one directory for the life of the overlay.
    pub fn open(path: &Path) -> Result<Self> {
        let canon = path.canonicalize().map_err(|_| Error::BaseMissing {
            path: path.to_path_buf(),
        })?;
        if !canon.is_dir() {
            return Err(Error::BaseMissing {
                path: path.to_path_buf(),
            });
        }
        let root = rustix::fs::open(
            &canon,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::BaseOpen {
            path: canon.clone(),
            source: e.into(),
        })?;
        let st = rustix::fs::fstat(&root).map_err(|e| Error::BaseOpen {
            path: canon.clone(),
            source: e.into(),
        })?;
        // Probe openat2 now so an old kernel fails at mount, not at the first read.
        rustix::fs::openat2(
            &root,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            CONFINED,
        )
        .map_err(|e| Error::BaseOpen {
            path: canon.clone(),
            source: std::io::Error::other(format!(
                "openat2 with RESOLVE_BENEATH is unavailable ({e}); Linux 5.6 or newer is required"
            )),
        })?;
        Ok(Base {
            root,
            dev: st.st_dev as u64,
            path: canon,
            dirs: Mutex::new(DirCache {
                map: HashMap::new(),
                ttl: Duration::from_secs(1),
            }),
        })
    }

    /// How long a resolved directory descriptor may be reused (see
    /// [`DirCache`]); zero resolves every access from the root.
    pub fn set_dir_ttl(&self, ttl: Duration) {
        let mut c = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        c.ttl = ttl;
        c.map.clear();
    }

    /// An `O_PATH` descriptor of base directory `rel`, reused while fresh.
    fn dir_fd(&self, rel: &[u8]) -> OpResult<Arc<OwnedFd>> {
        let now = Instant::now();
        let ttl = {
            let c = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((fd, at)) = c.map.get(rel)
                && now.duration_since(*at) < c.ttl
            {
                return Ok(fd.clone());
            }
            c.ttl
        };
        let fd = Arc::new(self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY)?);
        if !ttl.is_zero() {
            let mut c = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            if c.map.len() >= DirCache::MAX {
                c.map.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                if c.map.len() >= DirCache::MAX {
                    c.map.clear();
                }
            }
            c.map.insert(rel.into(), (fd.clone(), now));
        }
        Ok(fd)
    }

    /// Converts a raw `stat` result.
    pub fn stat_raw(s: &rustix::fs::Stat) -> BaseStat {
        BaseStat::from_raw(s)
    }

    /// A new descriptor of the pinned base root (for the confined writer).
    pub fn root_fd(&self) -> OpResult<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(&self.root, 3)?)
    }

    /// Canonical path of the base directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device number of the base root.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Resolves `rel` inside the base with `flags`.
    pub fn open_at(&self, rel: &[u8], flags: OFlags) -> OpResult<OwnedFd> {
        // openat2 rejects O_PATH combined with flags that only matter for I/O.
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC | OFlags::NOFOLLOW
        } else {
            OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY
        };
        Ok(rustix::fs::openat2(
            &self.root,
            rel_arg(rel),
            flags | extra,
            Mode::empty(),
            CONFINED,
        )?)
    }

    /// `lstat` of a base path. `Ok(None)` when it does not exist (or a component is
    /// not a directory), so callers can treat "absent" uniformly.
    pub fn stat(&self, rel: &[u8]) -> OpResult<Option<BaseStat>> {
        let (dir, name) = split_rel(rel);
        if name.is_empty() {
            return Ok(Some(BaseStat::from_raw(&rustix::fs::fstat(&self.root)?)));
        }
        let dirfd = match self.dir_fd(dir) {
            Ok(fd) => fd,
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => return Ok(None),
            Err(e) => return Err(e),
        };
        self.stat_in(&*dirfd, name)
    }

    /// `lstat` of `name` inside an already-resolved base directory.
    pub fn stat_in(&self, dirfd: impl AsFd, name: &[u8]) -> OpResult<Option<BaseStat>> {
        match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(BaseStat::from_raw(&s))),
            Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NOTDIR => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a base directory for `stat_in` lookups.
    pub fn open_dir_path(&self, rel: &[u8]) -> OpResult<Option<Arc<OwnedFd>>> {
        match self.dir_fd(rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a regular base file for reading. Refuses anything else.
    pub fn open_file(&self, rel: &[u8]) -> OpResult<File> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_mode as u32) & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        // Reads of a regular file ignore O_NONBLOCK; it only kept a FIFO swapped in
        // by the host from blocking the open.
        Ok(File::from(fd))
    }

    /// Lists a base directory (without "." and "..").
    pub fn read_dir(&self, rel: &[u8]) -> OpResult<Vec<BaseDirEntry>> {
        let fd = match self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(BaseDirEntry {
                name: name.to_vec(),
                kind: kind_of(entry.file_type()),
                ino: entry.ino(),
            });
        }
        Ok(out)
    }

    /// Target of a base symbolic link.
    pub fn readlink(&self, rel: &[u8]) -> OpResult<Vec<u8>> {
        let (dir, name) = split_rel(rel);
        let dirfd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok(rustix::fs::readlinkat(&dirfd, name, Vec::new())?.into_bytes())
    }

    /// User extended attributes of a base file or directory. Other namespaces
    /// (`security.*`, `trusted.*`) describe the host, not the project, and stay hidden.
    pub fn user_xattrs(&self, rel: &[u8], kind: u32) -> OpResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Ok(Vec::new());
        }
        let fd = match self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(fd) => fd,
            // Unreadable to us: the agent sees no attributes rather than an error.
            Err(e) if e == Errno::EACCES || e == Errno::EPERM => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::with_capacity(256);
        match rustix::fs::flistxattr(&fd, &mut names) {
            Ok(_) => {}
            Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(Vec::new()),
            Err(rustix::io::Errno::RANGE) => {
                let len = rustix::fs::flistxattr_query(&fd)?;
                names = Vec::with_capacity(len);
                rustix::fs::flistxattr(&fd, &mut names)?;
            }
            Err(e) => return Err(e.into()),
        }
        let mut out = Vec::new();
        for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
            let mut value = Vec::with_capacity(256);
            let got = match rustix::fs::fgetxattr(&fd, name, &mut value) {
                Ok(_) => value,
                Err(rustix::io::Errno::RANGE) => {
                    let len = rustix::fs::fgetxattr_query(&fd, name)?;
                    let mut v = Vec::with_capacity(len);
                    rustix::fs::fgetxattr(&fd, name, &mut v)?;
                    v
                }
                Err(rustix::io::Errno::NODATA) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push((name.to_vec(), got));
        }
        Ok(out)
    }
}

/// Converts a relative path given by a user (`src/main.rs`) into base-relative
/// bytes, refusing absolute paths and `..` components.
pub fn user_rel_path(p: &OsStr) -> Option<Vec<u8>> {
    let bytes = p.as_bytes();
    if bytes.starts_with(b"/") {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in bytes.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_directory_replaced_on_the_host_is_seen_once_the_ttl_passes() {
        let outside = tempfile::tempdir().unwrap();
        let base_dir = tempfile::tempdir().unwrap();
        let b = base_dir.path();
        std::fs::create_dir(b.join("d")).unwrap();
        std::fs::write(b.join("d/old"), b"x").unwrap();
        let base = Base::open(b).unwrap();

        let ttl = Duration::from_millis(200);
        base.set_dir_ttl(ttl);
        assert!(base.stat(b"d/old").unwrap().is_some());
        // The host moves the directory out of the base and puts another in its place.
        std::fs::rename(b.join("d"), outside.path().join("moved")).unwrap();
        std::fs::create_dir(b.join("d")).unwrap();
        std::fs::write(b.join("d/new"), b"y").unwrap();
        std::thread::sleep(ttl + Duration::from_millis(50));
        assert!(base.stat(b"d/old").unwrap().is_none());
        assert!(base.stat(b"d/new").unwrap().is_some());

        // With no TTL every access resolves from the root again.
        base.set_dir_ttl(Duration::ZERO);
        assert!(base.stat(b"d/new").unwrap().is_some());
        std::fs::remove_dir_all(b.join("d")).unwrap();
        std::fs::create_dir(b.join("d")).unwrap();
        assert!(base.stat(b"d/new").unwrap().is_none());
        // A directory swapped for a symlink stops resolving at once too.
        std::fs::remove_dir(b.join("d")).unwrap();
        symlink(outside.path().join("moved"), b.join("d")).unwrap();
        assert!(!matches!(base.stat(b"d/old"), Ok(Some(_))));
    }

    #[test]
    fn the_directory_cache_stays_bounded() {
        let base_dir = tempfile::tempdir().unwrap();
        let b = base_dir.path();
        let n = DirCache::MAX * 2 + 3;
        for i in 0..n {
            std::fs::create_dir(b.join(format!("d{i}"))).unwrap();
            std::fs::write(b.join(format!("d{i}/f")), b"x").unwrap();
        }
        let base = Base::open(b).unwrap();
        for i in 0..n {
            let rel = format!("d{i}/f");
            assert!(base.stat(rel.as_bytes()).unwrap().is_some(), "{rel}");
            let held = base.dirs.lock().unwrap().map.len();
            assert!(held <= DirCache::MAX, "{held} descriptors held");
        }
    }

    #[test]
    fn symlinks_are_never_followed_out_of_the_base() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        let base_dir = tempfile::tempdir().unwrap();
        let b = base_dir.path();
        symlink(outside.path().join("secret"), b.join("link")).unwrap();
        symlink(outside.path(), b.join("dirlink")).unwrap();
        std::fs::create_dir(b.join("sub")).unwrap();
        symlink("../link", b.join("sub/rel")).unwrap();

        let base = Base::open(b).unwrap();
        // The link itself is visible as a link with its target text...
        let st = base.stat(b"link").unwrap().unwrap();
        assert_eq!(st.file_type(), libc::S_IFLNK);
        assert_eq!(
            base.readlink(b"link").unwrap(),
            outside.path().join("secret").as_os_str().as_bytes()
        );
        // ...but opening through it, directly or as a directory component, fails.
        assert_eq!(base.open_file(b"link").unwrap_err(), Errno::ELOOP);
        assert_eq!(base.open_file(b"sub/rel").unwrap_err(), Errno::ELOOP);
        assert!(base.open_file(b"dirlink/secret").is_err());
        // Through a directory symlink the path simply does not exist in the base.
        assert!(!matches!(base.stat(b"dirlink/secret"), Ok(Some(_))));
        assert!(base.read_dir(b"dirlink").map_or(true, |v| v.is_empty()));
        assert!(base.user_xattrs(b"link", libc::S_IFREG).is_err());
    }

    #[test]
    fn user_paths_stay_relative() {
        assert_eq!(user_rel_path(OsStr::new("a/./b/")).unwrap(), b"a/b");
        assert_eq!(user_rel_path(OsStr::new(".")).unwrap(), b"");
        assert!(user_rel_path(OsStr::new("/etc")).is_none());
        assert!(user_rel_path(OsStr::new("a/../../x")).is_none());
        assert_eq!(split_rel(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_rel(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join_rel(b"", b"x"), b"x");
    }
}
