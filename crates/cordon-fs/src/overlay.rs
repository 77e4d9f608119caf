//! The merged view: a writable delta (SQLite) over a read-only base directory.
//!
//! This module decides what the agent sees and is independent of FUSE, so every
//! rule here is unit-tested without a mount; [`crate::fuse`] only translates kernel
//! requests into these calls.
//!
//! Rules, in the order a lookup applies them:
//!
//! 1. A name with a delta entry in a delta directory is that delta object.
//! 2. Otherwise, a whiteout at the name's overlay path hides the base.
//! 3. Otherwise the name falls through to the directory's *lower* base directory,
//!    if it has one. A directory copied up from the base ("mirror") has the lower
//!    its path implies; a directory moved by `rename` keeps an explicit redirect to
//!    the base directory it came from; a directory created fresh is opaque.
//!
//! Copy-up is lazy and minimal: metadata changes (`chmod`, `chown`, `utimes`,
//! `setxattr`, rename, hard link) copy only metadata and leave the bytes in the
//! base file (a *metacopy*); the first data write copies the bytes. Read-only
//! opens never copy anything.
//!
//! Inode numbers (which FUSE also uses as node ids) are stable across remounts:
//! a base object keeps its host inode number, a delta object created here gets
//! `DELTA_TAG | ino`, and an object copied up keeps the number it had before
//! (recorded in `fs_origin`).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasher;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::base::{Base, BaseStat, join_rel};
use crate::error::{Errno, OpResult};
use crate::merge::{self, Source};
use crate::store::{InodeRow, ROOT_INO, SeenRow, Store, Timestamp, join_path};

/// Node id of the root directory (FUSE requires 1).
pub const ROOT_ID: u64 = 1;
const ID_MASK: u64 = (1 << 61) - 1;
/// Node ids of objects that exist only in the delta.
pub const DELTA_TAG: u64 = 1 << 61;
/// The extended attribute holding a file's capabilities.
pub const CAPS_XATTR: &[u8] = b"security.capability";

/// Node ids derived from a hash (base hard links, other devices).
const HASH_TAG: u64 = 2 << 61;
/// Node ids handed out when a preferred id is already taken.
const FALLBACK_TAG: u64 = 3 << 61;

/// Longest file name accepted (as ext4).
pub const NAME_MAX: usize = 255;
/// Longest symbolic link target accepted.
pub const SYMLINK_MAX: usize = 4095;
/// Longest extended attribute name and value accepted (as Linux `XATTR_*_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;
/// Most extended attributes on one inode.
pub const XATTR_COUNT_MAX: usize = 1024;
/// Most hard links to one inode.
pub const LINK_MAX: u32 = 65000;

/// Attributes of an object in the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

impl Attr {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// Who is asking: the credentials the kernel attached to a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// `Some(None)` means "now".
    pub atime: Option<Option<Timestamp>>,
    pub mtime: Option<Option<Timestamp>>,
    pub ctime: Option<Timestamp>,
}

/// How the kernel should do I/O on an open file.
#[derive(Debug)]
pub enum IoMode {
    /// Through the page cache; the kernel may keep cached pages from earlier opens.
    Cached,
    /// Every read and write comes to us, bypassing the page cache: another
    /// open holds the file in passthrough, or the open is write-only. A
    /// write-only open can never read its bytes back through the cache, so
    /// filling it would be a copy per byte for nothing (and a `getxattr`
    /// round trip per write); the kernel still drops the written range from
    /// the cache of the file's other opens, and the server does what the
    /// kernel's cached write path would have (see
    /// [`Overlay::drop_privileges_for_write`]).
    Direct,
    /// Reads go straight to this base file in the kernel (FUSE passthrough).
    Passthrough(File),
}

/// Result of `open`/`create`.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub io: IoMode,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    /// `S_IFMT` bits, 0 if unknown.
    pub kind: u32,
    /// Inode number for `d_ino`.
    pub ino: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Ident {
    Delta(i64),
    Base(Vec<u8>),
}

#[derive(Debug)]
struct Node {
    ident: Ident,
    kind: u32,
    parent: u64,
    name: Vec<u8>,
    lookups: u64,
    opens: u32,
    children: u32,
    /// For directories: the base directory merged under this one.
    lower: Option<Vec<u8>>,
    pt_opens: u32,
    cached_opens: u32,
    /// Attributes to report after the object was removed while still referenced.
    ghost: Option<Attr>,
    /// A write that was acknowledged before it was stored, and then failed to
    /// store: every later write and `fsync` of the file reports it until the
    /// file's last close (see [`Overlay::begin_write`]).
    write_error: Option<Errno>,
    /// For a directory both in the delta and the base: the base directory's
    /// mtime when last looked at, and the time a change on the host was
    /// noticed (see [`Overlay::follow_host_changes`]).
    lower_seen: Cell<Option<Timestamp>>,
    host_mtime: Cell<Option<Timestamp>>,
}

/// A write accepted by [`Overlay::begin_write`], waiting for its bytes to be
/// stored.
pub struct PendingWrite {
    node: u64,
    ino: i64,
    append: bool,
    offset: u64,
    /// Quota charged for it, refunded if storing fails.
    charged: u64,
}

struct Handle {
    node: u64,
    flags: i32,
    passthrough: bool,
    cached: bool,
    /// Open base file and the base path it was opened for.
    base: Option<(Vec<u8>, File)>,
}

struct DirHandle {
    node: u64,
    /// Listing taken at the first `readdir` of this handle (offset 0, or any
    /// offset when the kernel served the start of the stream from its cache).
    entries: Option<Arc<Listing>>,
}

/// A directory listing in stream order, each entry with its offset cookie.
///
/// The cookie of an entry (its `d_off`, what `telldir` returns) is derived
/// from its name alone: "." is 1, ".." is 2, every other name a keyed hash
/// of it in `3..2^63`, and the listing is sorted by cookie. Reading on from a
/// cookie means "the entries whose cookie is larger", so a reader resumes at
/// the right place even when the listing was taken again in between and
/// entries were added or removed meanwhile: every entry present throughout
/// is returned exactly once, as POSIX requires of `readdir`. (Two names of one
/// directory with the same 61-bit hash would get neighbouring cookies, and a
/// reader resuming between them after one of them went away could see the
/// other twice; at 2^-61 per pair this is left to chance.)
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<(u64, DirEntry)>,
}

impl Listing {
    /// Index of the first entry after cookie `offset`.
    pub fn after(&self, offset: u64) -> usize {
        self.entries.partition_point(|(c, _)| *c <= offset)
    }
}

/// Listings kept for handle-less directory reads (see [`Overlay::readdir_at`]).
const MAX_LISTINGS: usize = 64;

/// How long a kept listing may serve reads that continue it.
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A listing kept for the reads continuing it, with the object it lists and
/// when it was taken.
struct KeptListing {
    ident: Ident,
    taken: std::time::Instant,
    listing: Arc<Listing>,
}

/// Options of an overlay.
#[derive(Clone, Debug)]
pub struct OverlayOptions {
    /// The kernel can pass reads of unmodified base files straight to the base file.
    pub passthrough: bool,
    /// A limit on the bytes the delta may hold, shared with whoever reports on it.
    pub quota: Option<Arc<Quota>>,
}

/// A disk quota for one workspace: file bytes written into the delta (copied-up
/// base files count with their full size). Growth past `limit` fails with
/// `EDQUOT` and sets `hit`. Shrinking files gives bytes back; unlinking does not
/// (the bytes may still be held by another link or an open descriptor), so the
/// count errs on the side of the limit.
#[derive(Debug)]
pub struct Quota {
    pub limit: u64,
    used: AtomicU64,
    hit: AtomicBool,
}

impl Quota {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Quota {
            limit,
            used: AtomicU64::new(0),
            hit: AtomicBool::new(false),
        })
    }

    /// Whether a write was refused because of the limit.
    pub fn hit(&self) -> bool {
        self.hit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, grow: u64) -> OpResult<()> {
        if grow == 0 {
            return Ok(());
        }
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(grow) > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Err(Errno(libc::EDQUOT));
        }
        self.used.store(used + grow, Ordering::Relaxed);
        Ok(())
    }

    fn refund(&self, shrink: u64) {
        let used = self.used.load(Ordering::Relaxed);
        self.used
            .store(used.saturating_sub(shrink), Ordering::Relaxed);
    }
}

/// A mounted (or mountable) merged view.
pub struct Overlay {
    store: Store,
    base: Arc<Base>,
    opts: OverlayOptions,
    nodes: HashMap<u64, Node>,
    idents: HashMap<Ident, u64>,
    handles: HashMap<u64, Handle>,
    dirs: HashMap<u64, DirHandle>,
    next_fh: u64,
    next_fallback: u64,
    seen: HashSet<Vec<u8>>,
    /// Listings being read without a directory handle, by node.
    listings: HashMap<u64, KeptListing>,
    /// Key of the directory offset cookies (see [`Listing`]).
    cookies: std::collections::hash_map::RandomState,
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn check_name(name: &[u8]) -> OpResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn ts((sec, nsec): (i64, u32)) -> Timestamp {
    Timestamp { sec, nsec }
}

fn seen_row(rel: &[u8], st: &BaseStat) -> SeenRow {
    SeenRow {
        path: rel.to_vec(),
        kind: st.file_type(),
        size: st.size,
        mtime_ns: st.mtime_ns(),
        ctime_ns: st.ctime_ns(),
        ino: st.ino,
        sha256: None,
    }
}

/// Adjusts a directory link count by `delta`, leaving "unknown" (< 2) alone.
fn adjust_dir_nlink(row: &mut InodeRow, delta: i32) {
    if row.nlink >= 2 {
        row.nlink = (row.nlink as i64 + i64::from(delta)).max(2) as u32;
    }
}

impl Overlay {
    /// Builds the merged view over `base` with the delta in `store`.
    pub fn new(store: Store, base: Base, opts: OverlayOptions) -> OpResult<Self> {
        // Inodes unlinked while open when a previous server died are garbage now.
        store.tx(|s| {
            for ino in s.orphans()? {
                s.delete_inode(ino)?;
            }
            Ok(())
        })?;
        let (opaque, redirect) = store.dir_control(ROOT_INO)?;
        let lower = if opaque {
            None
        } else {
            Some(redirect.unwrap_or_default())
        };
        if let Some(q) = &opts.quota {
            q.used.store(store.data_bytes()?, Ordering::Relaxed);
        }
        let mut ov = Overlay {
            store,
            base: Arc::new(base),
            opts,
            nodes: HashMap::new(),
            idents: HashMap::new(),
            handles: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            next_fallback: 1,
            seen: HashSet::new(),
            listings: HashMap::new(),
            cookies: std::collections::hash_map::RandomState::new(),
        };
        ov.nodes.insert(
            ROOT_ID,
            Node {
                ident: Ident::Delta(ROOT_INO),
                kind: libc::S_IFDIR,
                parent: ROOT_ID,
                name: Vec::new(),
                lookups: 1,
                opens: 0,
                children: 0,
                lower,
                pt_opens: 0,
                cached_opens: 0,
                ghost: None,
                write_error: None,
                lower_seen: Cell::new(None),
                host_mtime: Cell::new(None),
            },
        );
        ov.idents.insert(Ident::Delta(ROOT_INO), ROOT_ID);
        Ok(ov)
    }

    /// The delta store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The base directory.
    pub fn base(&self) -> &Base {
        &self.base
    }

    /// A handle on the base directory usable without the overlay.
    pub fn shared_base(&self) -> Arc<Base> {
        self.base.clone()
    }

    /// Turns passthrough on or off (the FUSE layer learns at `init` whether it works).
    pub fn set_passthrough(&mut self, on: bool) {
        self.opts.passthrough = on;
    }

    /// Number of nodes held in memory (for tests and diagnostics).
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    // ----- node table -----

    fn node(&self, id: u64) -> OpResult<&Node> {
        self.nodes.get(&id).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, id: u64) -> OpResult<&mut Node> {
        self.nodes.get_mut(&id).ok_or(Errno::ENOENT)
    }

    fn base_id(&self, rel: &[u8], st: &BaseStat) -> u64 {
        base_node_id(self.base.dev(), rel, st)
    }

    fn delta_id(&self, ino: i64) -> OpResult<u64> {
        if ino == ROOT_INO {
            return Ok(ROOT_ID);
        }
        Ok(self
            .store
            .origin(ino)?
            .unwrap_or(DELTA_TAG | (ino as u64 & ID_MASK)))
    }

    fn intern(
        &mut self,
        ident: Ident,
        preferred: u64,
        kind: u32,
        parent: u64,
        name: &[u8],
        lower: Option<Vec<u8>>,
    ) -> u64 {
        if let Some(&id) = self.idents.get(&ident) {
            self.relocate(id, parent, name);
            return id;
        }
        let mut id = preferred;
        if id == 0 || id == ROOT_ID || self.nodes.contains_key(&id) {
            id = FALLBACK_TAG | self.next_fallback;
            self.next_fallback += 1;
        }
        self.nodes.insert(
            id,
            Node {
                ident: ident.clone(),
                kind,
                parent,
                name: name.to_vec(),
                lookups: 0,
                opens: 0,
                children: 0,
                lower,
                pt_opens: 0,
                cached_opens: 0,
                ghost: None,
                write_error: None,
                lower_seen: Cell::new(None),
                host_mtime: Cell::new(None),
            },
        );
        self.idents.insert(ident, id);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        id
    }

    /// Records that node `id` now lives at `parent`/`name`.
    fn relocate(&mut self, id: u64, parent: u64, name: &[u8]) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.parent == parent {
            if n.name != name {
                n.name = name.to_vec();
            }
            return;
        }
        let old = n.parent;
        n.parent = parent;
        n.name = name.to_vec();
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        if let Some(p) = self.nodes.get_mut(&old) {
            p.children = p.children.saturating_sub(1);
        }
        self.maybe_evict(old);
    }

    fn rekey(&mut self, id: u64, ident: Ident) {
        if let Some(n) = self.nodes.get_mut(&id) {
            let old = std::mem::replace(&mut n.ident, ident.clone());
            self.idents.remove(&old);
            self.idents.insert(ident, id);
        }
    }

    fn maybe_evict(&mut self, mut id: u64) {
        while id != ROOT_ID {
            let Some(n) = self.nodes.get(&id) else { return };
            if n.lookups > 0 || n.opens > 0 || n.children > 0 {
                return;
            }
            let n = self.nodes.remove(&id).expect("checked above");
            if self.idents.get(&n.ident) == Some(&id) {
                self.idents.remove(&n.ident);
            }
            let parent = n.parent;
            match self.nodes.get_mut(&parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            id = parent;
        }
    }

    /// Records that node `id` lost its last name. Its identity is dropped, so a
    /// new object may take the name. While the delta keeps its row (a file still
    /// open) `getattr` reads the row; otherwise, and for base objects, it answers
    /// from the last attributes with a link count of 0.
    fn retire(&mut self, id: u64, before: Option<Attr>, row_kept: bool) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !row_kept {
            n.ghost = before.map(|mut g| {
                g.nlink = 0;
                g
            });
        }
        n.lower = None;
        let ident = n.ident.clone();
        if self.idents.get(&ident) == Some(&id) {
            self.idents.remove(&ident);
        }
    }

    /// Absolute overlay path of a node ("/" for the root).
    fn path_of(&self, mut id: u64) -> OpResult<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut guard = 0;
        while id != ROOT_ID {
            let n = self.node(id)?;
            parts.push(&n.name);
            id = n.parent;
            guard += 1;
            if guard > 4096 {
                return Err(Errno::ELOOP);
            }
        }
        if parts.is_empty() {
            return Ok(b"/".to_vec());
        }
        let mut p = Vec::new();
        for part in parts.iter().rev() {
            p.push(b'/');
            p.extend_from_slice(part);
        }
        Ok(p)
    }

    fn child_path(&self, parent: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        Ok(join_path(&self.path_of(parent)?, name))
    }

    /// Whether `parent`'s lower directory has `name` (a delta entry would shadow it).
    fn lower_has(&self, parent: u64, name: &[u8]) -> OpResult<bool> {
        match &self.node(parent)?.lower {
            Some(lower) => Ok(self.base.stat(&join_rel(lower, name))?.is_some()),
            None => Ok(false),
        }
    }

    /// The merge-rule view of directory node `id`.
    fn merged_dir(&self, id: u64) -> OpResult<merge::Dir> {
        let n = self.node(id)?;
        Ok(merge::Dir {
            delta: match n.ident {
                Ident::Delta(d) => Some(d),
                Ident::Base(_) => None,
            },
            lower: n.lower.clone(),
            path: self.path_of(id)?,
        })
    }

    /// Resolves `name` in directory `parent` and interns it, without counting a lookup.
    fn child(&mut self, parent: u64, name: &[u8]) -> OpResult<Option<u64>> {
        Ok(self.child_at(parent, name, None)?.map(|(id, _)| id))
    }

    /// [`Self::child`], also returning the attributes when resolving them cost
    /// nothing extra (a base entry's `lstat`). See [`merge::lookup_at`] for `lower_fd`.
    fn child_at(
        &mut self,
        parent: u64,
        name: &[u8],
        lower_fd: Option<&OwnedFd>,
    ) -> OpResult<Option<(u64, Option<Attr>)>> {
        check_name(name)?;
        let p = self.node(parent)?;
        if p.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        if p.ghost.is_some() {
            return Ok(None);
        }
        let dir = self.merged_dir(parent)?;
        let Some((src, st)) = merge::lookup_at(&self.store, &self.base, &dir, name, lower_fd)?
        else {
            return Ok(None);
        };
        match src {
            Source::Delta { ino, .. } => {
                let kind = src.kind();
                let lower = if kind == libc::S_IFDIR {
                    merge::child_dir(&self.store, &dir, name, &src)?.lower
                } else {
                    None
                };
                let id = self.delta_id(ino)?;
                let id = self.intern(Ident::Delta(ino), id, kind, parent, name, lower);
                Ok(Some((id, None)))
            }
            Source::Base { rel, .. } => {
                let st = st.ok_or(Errno::EIO)?;
                self.intern_base(parent, name, rel, &st).map(Some)
            }
        }
    }

    /// Interns base object `rel`, found as `name` in `parent` with `lstat`
    /// `st`; also returns its attributes when `st` is what they are.
    fn intern_base(
        &mut self,
        parent: u64,
        name: &[u8],
        rel: Vec<u8>,
        st: &BaseStat,
    ) -> OpResult<(u64, Option<Attr>)> {
        let kind = st.file_type();
        // A base directory's own entries come from the same base path.
        let lower = (kind == libc::S_IFDIR).then(|| rel.clone());
        let id = self.base_id(&rel, st);
        let id = self.intern(Ident::Base(rel), id, kind, parent, name, lower);
        // The id may be an existing node with other state (a ghost): only a
        // plain base node can use the stat just made.
        let attr = match (&self.node(id)?.ident, self.node(id)?.ghost) {
            (Ident::Base(_), None) => Some(Self::attr_of_base(id, st)),
            _ => None,
        };
        Ok((id, attr))
    }

    /// The lower directory of directory node `id`, opened for one request's
    /// worth of lookups (see [`merge::lookup_at`]).
    pub fn open_lower(&self, id: u64) -> Option<std::sync::Arc<OwnedFd>> {
        let lower = self.nodes.get(&id)?.lower.as_deref()?;
        self.base.open_dir_path(lower).ok().flatten()
    }

    // ----- attributes -----

    fn attr_of_row(&self, id: u64, row: &InodeRow) -> OpResult<Attr> {
        let blocks = if row.is_reg() {
            if self.store.metacopy(row.ino)?.is_some() {
                row.size.div_ceil(512)
            } else {
                self.store.stored_bytes(row.ino, row.size)?.div_ceil(4096) * 8
            }
        } else {
            0
        };
        Ok(Attr {
            ino: id,
            size: if row.is_dir() { 4096 } else { row.size },
            blocks,
            atime: row.atime,
            mtime: row.mtime,
            ctime: row.ctime,
            mode: row.mode,
            nlink: row.nlink,
            uid: row.uid,
            gid: row.gid,
            rdev: row.rdev as u32,
        })
    }

    fn attr_of_base(id: u64, st: &BaseStat) -> Attr {
        Attr {
            ino: id,
            size: st.size,
            blocks: st.blocks,
            atime: ts(st.atime),
            mtime: ts(st.mtime),
            ctime: ts(st.ctime),
            mode: st.mode,
            nlink: if st.is_dir() {
                st.nlink.min(u64::from(u32::MAX)) as u32
            } else {
                1
            },
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
        }
    }

    /// Attributes of a node.
    pub fn getattr(&self, id: u64) -> OpResult<Attr> {
        let n = self.node(id)?;
        if let Some(g) = n.ghost {
            return Ok(g);
        }
        match &n.ident {
            Ident::Delta(ino) => match self.store.inode(*ino)? {
                Some(row) => {
                    let mut attr = self.attr_of_row(id, &row)?;
                    if let Some(lower) = &n.lower {
                        self.follow_host_changes(n, lower, &mut attr);
                    }
                    Ok(attr)
                }
                None => Err(Errno::ENOENT),
            },
            Ident::Base(rel) => match self.base.stat(rel)? {
                Some(st) => Ok(Self::attr_of_base(id, &st)),
                None => Err(Errno::ENOENT),
            },
        }
    }

    /// Makes the mtime reported for a directory that is in the delta and in
    /// the base move when the host changes the base side. The kernel keeps a
    /// directory's listing until the directory's mtime changes; the delta's
    /// own mtime moves only with the agent's changes, so a file the host adds
    /// below would otherwise stay out of the agent's listings. A change in the
    /// base directory's mtime since it was last looked at is taken as such a
    /// change, and the later of the two times is reported until the agent
    /// sets the directory's times itself.
    fn follow_host_changes(&self, n: &Node, lower: &[u8], attr: &mut Attr) {
        let Ok(Some(st)) = self.base.stat(lower) else {
            return;
        };
        let now = ts(st.mtime);
        match n.lower_seen.replace(Some(now)) {
            Some(before) if before != now => n.host_mtime.set(Some(now)),
            _ => {}
        }
        if let Some(host) = n.host_mtime.get()
            && host > attr.mtime
        {
            attr.mtime = host;
            attr.ctime = attr.ctime.max(host);
        }
    }

    /// Looks up `name` in `parent`, counting one kernel reference.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> OpResult<Attr> {
        let (id, attr) = self.child_at(parent, name, None)?.ok_or(Errno::ENOENT)?;
        self.count_lookup(id, attr)
    }

    /// The base path of `parent` when it is a directory that exists only in
    /// the base (never copied up): then nothing in the delta can shadow or
    /// hide its entries, and a lookup in it is one `lstat` of the base that
    /// needs no overlay state (see [`Self::finish_base_lookup`]). `None`
    /// means: use [`Self::lookup`].
    pub fn base_only_dir(&self, parent: u64, name: &[u8]) -> OpResult<Option<Vec<u8>>> {
        check_name(name)?;
        Ok(self
            .nodes
            .get(&parent)
            .and_then(|p| match (&p.ident, &p.lower) {
                (Ident::Base(rel), Some(lower))
                    if p.kind == libc::S_IFDIR && p.ghost.is_none() && rel == lower =>
                {
                    Some(lower.clone())
                }
                _ => None,
            }))
    }

    /// Completes a lookup whose `lstat` (`st`) was made, without the overlay,
    /// in the directory [`Self::base_only_dir`] returned as `lower`. `None`
    /// when the directory changed meanwhile (copied up, renamed, forgotten):
    /// the caller then does the whole [`Self::lookup`].
    pub fn finish_base_lookup(
        &mut self,
        parent: u64,
        lower: &[u8],
        name: &[u8],
        st: Option<BaseStat>,
    ) -> Option<OpResult<Attr>> {
        if self.base_only_dir(parent, name).ok()?.as_deref() != Some(lower) {
            return None;
        }
        let Some(st) = st else {
            return Some(Err(Errno::ENOENT));
        };
        let found = self.intern_base(parent, name, join_rel(lower, name), &st);
        Some(found.and_then(|(id, attr)| self.count_lookup(id, attr)))
    }

    /// Counts a kernel reference to a node just resolved, with its attributes.
    fn count_lookup(&mut self, id: u64, attr: Option<Attr>) -> OpResult<Attr> {
        match attr.map_or_else(|| self.getattr(id), Ok) {
            Ok(attr) => {
                self.node_mut(id)?.lookups += 1;
                Ok(attr)
            }
            Err(e) => {
                self.maybe_evict(id);
                Err(e)
            }
        }
    }

    /// Counts one more kernel reference to `id` (a readdirplus entry was used).
    pub fn add_lookup(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.lookups += 1;
        }
    }

    /// Drops `count` kernel references.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.lookups = n.lookups.saturating_sub(count);
        }
        self.maybe_evict(id);
    }

    // ----- copy-up -----

    /// Makes sure `id` is a directory present in the delta; returns its inode.
    fn ensure_delta_dir(&mut self, id: u64) -> OpResult<i64> {
        let ino = self.copy_up_meta(id)?;
        if self.node(id)?.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        Ok(ino)
    }

    /// Copies a base object's metadata into the delta (not its bytes).
    fn copy_up_meta(&mut self, id: u64) -> OpResult<i64> {
        let n = self.node(id)?;
        let rel = match &n.ident {
            Ident::Delta(ino) => return Ok(*ino),
            Ident::Base(rel) => rel.clone(),
        };
        let (parent, name, ghost) = (n.parent, n.name.clone(), n.ghost.is_some());
        let st = self.base.stat(&rel)?.ok_or(Errno::ENOENT)?;
        if ghost {
            return self.copy_up_orphan(id, &rel, &st);
        }
        let parent_ino = self.ensure_delta_dir(parent)?;
        let row = InodeRow {
            ino: 0,
            mode: st.mode,
            nlink: if st.is_dir() {
                st.nlink.min(u64::from(u32::MAX)) as u32
            } else {
                1
            },
            uid: st.uid,
            gid: st.gid,
            size: if st.is_dir() { 0 } else { st.size },
            atime: ts(st.atime),
            mtime: ts(st.mtime),
            ctime: ts(st.ctime),
            rdev: st.rdev,
        };
        let xattrs = self.base.user_xattrs(&rel, st.file_type())?;
        let target = if st.file_type() == libc::S_IFLNK {
            Some(self.base.readlink(&rel)?)
        } else {
            None
        };
        let ino = self.store.tx(|s| {
            let ino = s.insert_inode(&row)?;
            match st.file_type() {
                libc::S_IFDIR => s.set_dir_control(ino, false, None)?,
                libc::S_IFREG => s.set_metacopy(ino, &rel)?,
                libc::S_IFLNK => {
                    s.set_symlink_target(ino, target.as_deref().unwrap_or_default())?
                }
                _ => {}
            }
            s.set_origin(ino, id)?;
            for (k, v) in &xattrs {
                s.set_xattr(ino, k, v)?;
            }
            s.insert_dentry(parent_ino, &name, ino)?;
            if !st.is_dir() {
                s.record_seen(&seen_row(&rel, &st))?;
            }
            Ok(ino)
        })?;
        self.rekey(id, Ident::Delta(ino));
        Ok(ino)
    }

    /// Copies up a base file that was unlinked (or replaced) while still open:
    /// an inode with no name and no link, so writes through the old descriptor
    /// go somewhere without bringing the name back. Deleted at last close, or at
    /// the next mount if the server dies first.
    fn copy_up_orphan(&mut self, id: u64, rel: &[u8], st: &BaseStat) -> OpResult<i64> {
        if !st.is_reg() {
            return Err(Errno::ENOENT);
        }
        let ghost = self.node(id)?.ghost;
        let row = InodeRow {
            ino: 0,
            mode: ghost.map_or(st.mode, |g| g.mode),
            nlink: 0,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            atime: ts(st.atime),
            mtime: ts(st.mtime),
            ctime: ts(st.ctime),
            rdev: 0,
        };
        let ino = self.store.tx(|s| {
            let ino = s.insert_inode(&row)?;
            s.set_metacopy(ino, rel)?;
            Ok(ino)
        })?;
        let n = self.node_mut(id)?;
        n.ident = Ident::Delta(ino);
        n.ghost = None;
        Ok(ino)
    }

    /// Copies a file's bytes into the delta (first data write).
    fn copy_up_data(&mut self, id: u64) -> OpResult<i64> {
        let ino = self.copy_up_meta(id)?;
        let Some(path) = self.store.metacopy(ino)? else {
            return Ok(ino);
        };
        let row = self.store.inode_req(ino)?;
        if let Some(q) = &self.opts.quota {
            q.charge(row.size)?;
        }
        let file = self.base.open_file(&path)?;
        let st_now = self.base.stat(&path)?;
        self.store.tx_data(|s| {
            let sha = s.fill_from(ino, &file, row.size)?;
            s.clear_metacopy(ino)?;
            // The hash describes what the overlay first saw only if the base file is
            // still the one it saw.
            if let (Some(sha), Some(seen), Some(st)) = (sha, s.seen(&path)?, st_now)
                && seen.sha256.is_none()
                && seen.size == st.size
                && seen.mtime_ns == st.mtime_ns()
                && seen.ctime_ns == st.ctime_ns()
                && seen.size == row.size
            {
                s.set_seen_hash(&path, &sha)?;
            }
            Ok(())
        })?;
        Ok(ino)
    }

    fn record_seen_once(&mut self, rel: &[u8]) -> OpResult<()> {
        if self.seen.contains(rel) {
            return Ok(());
        }
        if let Some(st) = self.base.stat(rel)? {
            self.store.record_seen(&seen_row(rel, &st))?;
        }
        self.seen.insert(rel.to_vec());
        Ok(())
    }

    fn touch_dir(&self, ino: i64, nlink_delta: i32) -> OpResult<()> {
        let mut row = self.store.inode_req(ino)?;
        let now = Timestamp::now();
        row.mtime = now;
        row.ctime = now;
        adjust_dir_nlink(&mut row, nlink_delta);
        self.store.update_inode(&row)
    }

    // ----- namespace operations -----

    /// Creates a file system object of type `mode & S_IFMT`.
    fn make(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        target: Option<&[u8]>,
        caller: Caller,
    ) -> OpResult<u64> {
        check_name(name)?;
        if let Some(t) = target
            && (t.is_empty() || t.len() > SYMLINK_MAX)
        {
            return Err(if t.is_empty() {
                Errno::ENOENT
            } else {
                Errno::ENAMETOOLONG
            });
        }
        if let Some(existing) = self.child(parent, name)? {
            self.maybe_evict(existing);
            return Err(Errno::EEXIST);
        }
        let parent_ino = self.ensure_delta_dir(parent)?;
        let parent_row = self.store.inode_req(parent_ino)?;
        let path = self.child_path(parent, name)?;
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let mut mode = mode;
        let gid = if parent_row.mode & libc::S_ISGID != 0 {
            if is_dir {
                mode |= libc::S_ISGID;
            }
            parent_row.gid
        } else {
            caller.gid
        };
        let now = Timestamp::now();
        let row = InodeRow {
            ino: 0,
            mode,
            nlink: if is_dir { 2 } else { 1 },
            uid: caller.uid,
            gid,
            size: target.map_or(0, |t| t.len() as u64),
            atime: now,
            mtime: now,
            ctime: now,
            rdev,
        };
        let ino = self.store.tx(|s| {
            s.remove_whiteout(&path)?;
            let ino = s.insert_inode(&row)?;
            if is_dir {
                // Fresh directories never show base contents, even if the host later
                // creates a directory at the same path.
                s.set_dir_control(ino, true, None)?;
            }
            if let Some(t) = target {
                s.set_symlink_target(ino, t)?;
            }
            s.insert_dentry(parent_ino, name, ino)?;
            self.touch_dir(parent_ino, if is_dir { 1 } else { 0 })?;
            Ok(ino)
        })?;
        let id = DELTA_TAG | (ino as u64 & ID_MASK);
        let id = self.intern(
            Ident::Delta(ino),
            id,
            mode & libc::S_IFMT,
            parent,
            name,
            None,
        );
        self.node_mut(id)?.lookups += 1;
        Ok(id)
    }

    /// `mknod` (regular files, FIFOs, sockets, devices).
    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> OpResult<Attr> {
        let kind = mode & libc::S_IFMT;
        let mode = if kind == 0 {
            mode | libc::S_IFREG
        } else {
            mode
        };
        if !matches!(
            mode & libc::S_IFMT,
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
        ) {
            return Err(Errno::EINVAL);
        }
        let id = self.make(parent, name, mode, rdev, None, caller)?;
        self.getattr(id)
    }

    /// `mkdir`.
    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> OpResult<Attr> {
        let id = self.make(
            parent,
            name,
            (mode & 0o7777) | libc::S_IFDIR,
            0,
            None,
            caller,
        )?;
        self.getattr(id)
    }

    /// `symlink`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> OpResult<Attr> {
        let id = self.make(parent, name, libc::S_IFLNK | 0o777, 0, Some(target), caller)?;
        self.getattr(id)
    }

    /// `readlink`.
    pub fn readlink(&self, id: u64) -> OpResult<Vec<u8>> {
        let n = self.node(id)?;
        if n.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        match &n.ident {
            Ident::Delta(ino) => self.store.symlink_target(*ino),
            Ident::Base(rel) => self.base.readlink(rel),
        }
    }

    /// `unlink`.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> OpResult<()> {
        let id = self.child(parent, name)?.ok_or(Errno::ENOENT)?;
        let n = self.node(id)?;
        if n.kind == libc::S_IFDIR {
            self.maybe_evict(id);
            return Err(Errno::EISDIR);
        }
        let ident = n.ident.clone();
        let opens = n.opens;
        let before = self.getattr(id).ok();
        let parent_ino = self.ensure_delta_dir(parent)?;
        let path = self.child_path(parent, name)?;
        let shadowed = self.lower_has(parent, name)?;
        if let Ident::Base(rel) = &ident {
            self.record_seen_once(rel)?;
        }
        let gone = self.store.tx(|s| {
            let mut gone = matches!(ident, Ident::Base(_));
            if let Ident::Delta(ino) = ident {
                s.delete_dentry(parent_ino, name)?;
                let mut row = s.inode_req(ino)?;
                row.nlink = row.nlink.saturating_sub(1);
                row.ctime = Timestamp::now();
                if row.nlink == 0 {
                    gone = true;
                    if opens == 0 {
                        s.delete_inode(ino)?;
                    } else {
                        s.update_inode(&row)?;
                    }
                } else {
                    s.update_inode(&row)?;
                }
            }
            if shadowed {
                s.add_whiteout(&path)?;
            }
            self.touch_dir(parent_ino, 0)?;
            Ok(gone)
        })?;
        if gone {
            let row_kept = matches!(ident, Ident::Delta(_)) && opens > 0;
            self.retire(id, before, row_kept);
        }
        self.maybe_evict(id);
        Ok(())
    }

    /// Whether a merged directory has no entries.
    fn dir_is_empty(&mut self, id: u64) -> OpResult<bool> {
        let n = self.node(id)?;
        if let Ident::Delta(ino) = n.ident
            && self.store.has_dentries(ino)?
        {
            return Ok(false);
        }
        let Some(lower) = n.lower.clone() else {
            return Ok(true);
        };
        let entries = self.base.read_dir(&lower)?;
        if entries.is_empty() {
            return Ok(true);
        }
        let path = self.path_of(id)?;
        let hidden: HashSet<Vec<u8>> = self.store.whiteouts_in(&path)?.into_iter().collect();
        Ok(entries.iter().all(|e| hidden.contains(&e.name)))
    }

    /// `rmdir`.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> OpResult<()> {
        let id = self.child(parent, name)?.ok_or(Errno::ENOENT)?;
        if self.node(id)?.kind != libc::S_IFDIR {
            self.maybe_evict(id);
            return Err(Errno::ENOTDIR);
        }
        if !self.dir_is_empty(id)? {
            self.maybe_evict(id);
            return Err(Errno::ENOTEMPTY);
        }
        let before = self.getattr(id).ok();
        let ident = self.node(id)?.ident.clone();
        let parent_ino = self.ensure_delta_dir(parent)?;
        let path = self.child_path(parent, name)?;
        let shadowed = self.lower_has(parent, name)?;
        self.store.tx(|s| {
            if let Ident::Delta(ino) = ident {
                s.delete_dentry(parent_ino, name)?;
                s.delete_inode(ino)?;
            }
            s.delete_whiteouts_below(&path)?;
            if shadowed {
                s.add_whiteout(&path)?;
            }
            self.touch_dir(parent_ino, -1)?;
            Ok(())
        })?;
        self.retire(id, before, false);
        self.maybe_evict(id);
        Ok(())
    }

    fn is_ancestor(&self, ancestor: u64, mut id: u64) -> OpResult<bool> {
        let mut guard = 0;
        loop {
            if id == ancestor {
                return Ok(true);
            }
            if id == ROOT_ID {
                return Ok(false);
            }
            id = self.node(id)?.parent;
            guard += 1;
            if guard > 4096 {
                return Err(Errno::ELOOP);
            }
        }
    }

    /// `rename`, with `RENAME_NOREPLACE` support.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
        if flags & !NOREPLACE != 0 {
            // RENAME_EXCHANGE and RENAME_WHITEOUT are not supported (see docs/workspace.md).
            return Err(Errno::EINVAL);
        }
        check_name(new_name)?;
        let src = self.child(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.child(new_parent, new_name)?;
        let result = self.rename_resolved(src, dst, parent, name, new_parent, new_name, flags);
        self.maybe_evict(src);
        if let Some(d) = dst {
            self.maybe_evict(d);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_resolved(
        &mut self,
        src: u64,
        dst: Option<u64>,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        if dst == Some(src) {
            return Ok(());
        }
        if dst.is_some() && flags & libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EEXIST);
        }
        let src_is_dir = self.node(src)?.kind == libc::S_IFDIR;
        if src_is_dir && self.is_ancestor(src, new_parent)? {
            return Err(Errno::EINVAL);
        }
        if let Some(d) = dst {
            let dst_is_dir = self.node(d)?.kind == libc::S_IFDIR;
            match (src_is_dir, dst_is_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir_is_empty(d)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        let old_path = self.child_path(parent, name)?;
        let new_path = self.child_path(new_parent, new_name)?;
        let parent_ino = self.ensure_delta_dir(parent)?;
        let new_parent_ino = self.ensure_delta_dir(new_parent)?;
        let shadowed = self.lower_has(parent, name)?;
        let src_lower = self.node(src)?.lower.clone();
        let src_ino = self.copy_up_meta(src)?;
        let dst_info = match dst {
            Some(d) => {
                let n = self.node(d)?;
                let before = self.getattr(d).ok();
                if let Ident::Base(rel) = &n.ident {
                    let rel = rel.clone();
                    self.record_seen_once(&rel)?;
                }
                let n = self.node(d)?;
                Some((d, n.ident.clone(), n.opens, n.kind == libc::S_IFDIR, before))
            }
            None => None,
        };
        let dst_gone = self.store.tx(|s| {
            let mut dst_gone = false;
            if let Some((_, ident, opens, is_dir, _)) = &dst_info {
                dst_gone = true;
                if let Ident::Delta(dino) = ident {
                    s.delete_dentry(new_parent_ino, new_name)?;
                    let mut row = s.inode_req(*dino)?;
                    row.nlink = if *is_dir {
                        0
                    } else {
                        row.nlink.saturating_sub(1)
                    };
                    row.ctime = Timestamp::now();
                    // A replaced directory is empty and has nothing left to read,
                    // even through a descriptor that is still open.
                    if row.nlink == 0 && (*opens == 0 || *is_dir) {
                        s.delete_inode(*dino)?;
                    } else {
                        dst_gone = row.nlink == 0;
                        s.update_inode(&row)?;
                    }
                }
                if *is_dir {
                    s.delete_whiteouts_below(&new_path)?;
                }
            }
            s.remove_whiteout(&new_path)?;
            s.move_dentry(parent_ino, name, new_parent_ino, new_name)?;
            if src_is_dir {
                // Pin the directory's lower layer: its contents must not change
                // because its path did.
                let (opaque, redirect) = match &src_lower {
                    Some(l) => (false, Some(l.as_slice())),
                    None => (true, None),
                };
                s.set_dir_control(src_ino, opaque, redirect)?;
                s.move_whiteouts_below(&old_path, &new_path)?;
            }
            if shadowed {
                s.add_whiteout(&old_path)?;
            }
            let mut row = s.inode_req(src_ino)?;
            row.ctime = Timestamp::now();
            s.update_inode(&row)?;
            let replaced_dir = matches!(&dst_info, Some((_, _, _, true, _)));
            if parent_ino == new_parent_ino {
                self.touch_dir(parent_ino, if replaced_dir { -1 } else { 0 })?;
            } else {
                let moved = if src_is_dir { 1 } else { 0 };
                self.touch_dir(parent_ino, -moved)?;
                self.touch_dir(new_parent_ino, moved - i32::from(replaced_dir))?;
            }
            Ok(dst_gone)
        })?;
        if let Some((d, ident, opens, is_dir, before)) = dst_info
            && dst_gone
        {
            let row_kept = matches!(ident, Ident::Delta(_)) && opens > 0 && !is_dir;
            self.retire(d, before, row_kept);
        }
        self.relocate(src, new_parent, new_name);
        Ok(())
    }

    /// `link`: a new name for an existing non-directory.
    pub fn link(&mut self, id: u64, new_parent: u64, new_name: &[u8]) -> OpResult<Attr> {
        check_name(new_name)?;
        if self.node(id)?.kind == libc::S_IFDIR {
            return Err(Errno::EPERM);
        }
        if let Some(existing) = self.child(new_parent, new_name)? {
            self.maybe_evict(existing);
            return Err(Errno::EEXIST);
        }
        let ino = self.copy_up_meta(id)?;
        let row = self.store.inode_req(ino)?;
        if row.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        let parent_ino = self.ensure_delta_dir(new_parent)?;
        let path = self.child_path(new_parent, new_name)?;
        self.store.tx(|s| {
            s.remove_whiteout(&path)?;
            s.insert_dentry(parent_ino, new_name, ino)?;
            let mut row = s.inode_req(ino)?;
            row.nlink += 1;
            row.ctime = Timestamp::now();
            s.update_inode(&row)?;
            self.touch_dir(parent_ino, 0)
        })?;
        self.node_mut(id)?.lookups += 1;
        self.getattr(id)
    }

    // ----- attributes -----

    /// `setattr`: mode, owner, size, times.
    pub fn setattr(&mut self, id: u64, req: &SetAttr) -> OpResult<Attr> {
        if self.node(id)?.ghost.is_some() && req.size.is_none() {
            // Changing metadata of a removed but open file: keep it in memory only.
            let n = self.node_mut(id)?;
            if let Some(g) = n.ghost.as_mut() {
                if let Some(m) = req.mode {
                    g.mode = (g.mode & libc::S_IFMT) | (m & 0o7777);
                }
                g.ctime = Timestamp::now();
                return Ok(*g);
            }
        }
        let kind = self.node(id)?.kind;
        let ino = match req.size {
            Some(_) if kind == libc::S_IFDIR => return Err(Errno::EISDIR),
            Some(_) if kind != libc::S_IFREG => return Err(Errno::EINVAL),
            // Truncation to zero needs none of the old bytes: a metadata copy,
            // then dropping the base reference and setting the size in one step.
            Some(0) => self.copy_up_meta(id)?,
            Some(_) => self.copy_up_data(id)?,
            None => self.copy_up_meta(id)?,
        };
        if let (Some(q), Some(size)) = (&self.opts.quota, req.size) {
            let old = self.store.inode_req(ino)?.size;
            if size > old {
                q.charge(size - old)?;
            } else {
                q.refund(old - size);
            }
        }
        let now = Timestamp::now();
        self.store.tx(|s| {
            let mut row = s.inode_req(ino)?;
            if req.size == Some(0) {
                s.clear_metacopy(ino)?;
            }
            if let Some(size) = req.size {
                s.truncate_data(ino, row.size, size)?;
                if size != row.size {
                    row.mtime = now;
                }
                row.size = size;
            }
            if let Some(m) = req.mode {
                row.mode = (row.mode & libc::S_IFMT) | (m & 0o7777);
            }
            if let Some(u) = req.uid {
                row.uid = u;
            }
            if let Some(g) = req.gid {
                row.gid = g;
            }
            if let Some(a) = req.atime {
                row.atime = a.unwrap_or(now);
            }
            if let Some(m) = req.mtime {
                row.mtime = m.unwrap_or(now);
            }
            row.ctime = req.ctime.unwrap_or(now);
            s.update_inode(&row)
        })?;
        if req.mtime.is_some() {
            // Times the agent sets are the times it sees.
            self.node(id)?.host_mtime.set(None);
        }
        self.getattr(id)
    }

    // ----- extended attributes -----

    fn check_xattr_name(name: &[u8]) -> OpResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Errno::ERANGE);
        }
        if name.starts_with(b"system.") {
            // POSIX ACLs are not enforced by this file system; refuse rather than
            // store permissions that would be silently ignored.
            return Err(Errno::ENOTSUP);
        }
        if !(name.starts_with(b"user.")
            || name.starts_with(b"trusted.")
            || name.starts_with(b"security."))
        {
            return Err(Errno::ENOTSUP);
        }
        Ok(())
    }

    /// `getxattr`.
    pub fn getxattr(&self, id: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        let n = self.node(id)?;
        match &n.ident {
            Ident::Delta(ino) => self.store.xattr(*ino, name)?.ok_or(Errno::ENODATA),
            Ident::Base(rel) => {
                if !name.starts_with(b"user.") {
                    return Err(Errno::ENODATA);
                }
                self.base
                    .user_xattrs(rel, n.kind)?
                    .into_iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v)
                    .ok_or(Errno::ENODATA)
            }
        }
    }

    /// `listxattr`: names, each followed by a NUL.
    pub fn listxattr(&self, id: u64) -> OpResult<Vec<u8>> {
        let n = self.node(id)?;
        let names = match &n.ident {
            Ident::Delta(ino) => self.store.xattr_names(*ino)?,
            Ident::Base(rel) => self
                .base
                .user_xattrs(rel, n.kind)?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        };
        let mut out = Vec::new();
        for k in names {
            out.extend_from_slice(&k);
            out.push(0);
        }
        Ok(out)
    }

    /// `setxattr` with `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn setxattr(&mut self, id: u64, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        Self::check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        let ino = self.copy_up_meta(id)?;
        self.store.tx(|s| {
            let exists = s.xattr(ino, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if !exists && s.xattr_names(ino)?.len() >= XATTR_COUNT_MAX {
                // Bounded per inode, like an ext4 xattr block.
                return Err(Errno::ENOSPC);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::ENODATA);
            }
            s.set_xattr(ino, name, value)?;
            let mut row = s.inode_req(ino)?;
            row.ctime = Timestamp::now();
            s.update_inode(&row)
        })
    }

    /// `removexattr`.
    pub fn removexattr(&mut self, id: u64, name: &[u8]) -> OpResult<()> {
        if self.getxattr(id, name).is_err() {
            return Err(Errno::ENODATA);
        }
        let ino = self.copy_up_meta(id)?;
        self.store.tx(|s| {
            if !s.remove_xattr(ino, name)? {
                return Err(Errno::ENODATA);
            }
            let mut row = s.inode_req(ino)?;
            row.ctime = Timestamp::now();
            s.update_inode(&row)
        })
    }

    // ----- files -----

    /// Base path holding the bytes of node `id`, if they are still in the base.
    fn content_in_base(&self, id: u64) -> OpResult<Option<Vec<u8>>> {
        match &self.node(id)?.ident {
            Ident::Base(rel) => Ok(Some(rel.clone())),
            Ident::Delta(ino) => self.store.metacopy(*ino),
        }
    }

    /// `open` of a non-directory.
    pub fn open(&mut self, id: u64, flags: i32) -> OpResult<Opened> {
        let n = self.node(id)?;
        if n.kind == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let in_base = self.content_in_base(id)?;
        if let Some(rel) = &in_base
            && n.kind == libc::S_IFREG
        {
            let rel = rel.clone();
            self.record_seen_once(&rel)?;
        }
        let n = self.node(id)?;
        let can_passthrough = in_base.is_some()
            && self.opts.passthrough
            && !writable
            && n.kind == libc::S_IFREG
            && n.cached_opens == 0;
        if !can_passthrough && n.pt_opens > 0 && n.kind == libc::S_IFREG && n.ghost.is_none() {
            self.split_from_passthrough(id, writable)?;
            return Err(Errno::ESTALE);
        }
        let n = self.node(id)?;
        let write_only = flags & libc::O_ACCMODE == libc::O_WRONLY && n.kind == libc::S_IFREG;
        let mut handle = Handle {
            node: id,
            flags,
            passthrough: false,
            cached: false,
            base: None,
        };
        let io = match in_base {
            Some(rel) if can_passthrough => {
                let file = self.base.open_file(&rel)?;
                handle.passthrough = true;
                IoMode::Passthrough(file)
            }
            _ if n.pt_opens > 0 || write_only => IoMode::Direct,
            _ => {
                handle.cached = true;
                IoMode::Cached
            }
        };
        let n = self.node_mut(id)?;
        n.opens += 1;
        if handle.passthrough {
            n.pt_opens += 1;
        }
        if handle.cached {
            n.cached_opens += 1;
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        Ok(Opened { fh, io })
    }

    /// Makes way for an open that cannot share node `id`'s passthrough mode.
    ///
    /// Since Linux 6.9 the kernel binds an inode with a passthrough open to its
    /// backing (base) file and fails any other kind of open of it with `EIO`.
    /// Instead, the node keeps serving the descriptors already open (they go on
    /// reading the base bytes, as in overlayfs without `metacopy`) but loses its
    /// name, and the open is answered with `ESTALE`: the kernel then retries the
    /// path walk once with `LOOKUP_REVAL`, our lookup returns a fresh node for the
    /// name, and the open succeeds on that one. A write open first copies the
    /// metadata up, so the delta records the node's original number as the
    /// file's origin (the inode number comes back after a remount).
    fn split_from_passthrough(&mut self, id: u64, writable: bool) -> OpResult<()> {
        if writable {
            self.copy_up_meta(id)?;
        }
        let before = self.getattr(id).ok();
        self.retire(id, before, false);
        tracing::debug!(
            node = id,
            "split a passthrough node for a non-passthrough open"
        );
        Ok(())
    }

    /// The kernel refused a passthrough open: serve handle `fh` from userspace.
    /// Returns true if it must use direct I/O (other passthrough opens remain).
    pub fn passthrough_failed(&mut self, fh: u64) -> bool {
        let Some(h) = self.handles.get_mut(&fh) else {
            return true;
        };
        if !h.passthrough {
            return !h.cached;
        }
        h.passthrough = false;
        let id = h.node;
        let Some(n) = self.nodes.get_mut(&id) else {
            return true;
        };
        n.pt_opens = n.pt_opens.saturating_sub(1);
        if n.pt_opens > 0 {
            return true;
        }
        n.cached_opens += 1;
        if let Some(h) = self.handles.get_mut(&fh) {
            h.cached = true;
        }
        false
    }

    /// `create`: make a regular file and open it.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> OpResult<(Attr, Opened)> {
        let id = self.make(
            parent,
            name,
            (mode & 0o7777) | libc::S_IFREG,
            0,
            None,
            caller,
        )?;
        let attr = self.getattr(id)?;
        let opened = self.open(id, flags)?;
        Ok((attr, opened))
    }

    /// Whether writes through handle `fh` bypass the kernel's page cache
    /// ([`IoMode::Direct`]).
    pub fn writes_direct(&self, fh: u64) -> bool {
        self.handles
            .get(&fh)
            .is_some_and(|h| !h.cached && !h.passthrough)
    }

    /// Before a write through its page cache the kernel drops a regular
    /// file's set-user-ID bit, its set-group-ID bit when group execute is set
    /// too (without it the bit is the mandatory-locking mark, left alone),
    /// and its file capabilities (`file_remove_privs` in Linux). A write that
    /// bypasses the cache ([`IoMode::Direct`]) leaves that to the server:
    /// `kill_set_id` says the writer lacks `CAP_FSETID` (the kernel's
    /// `FUSE_WRITE_KILL_SUIDGID`); capabilities go whoever writes.
    /// `may_have_caps` false skips looking for them (the caller knows there
    /// are none). Returns whether the mode changed.
    pub fn drop_privileges_for_write(
        &mut self,
        id: u64,
        kill_set_id: bool,
        may_have_caps: bool,
    ) -> OpResult<bool> {
        if !kill_set_id && !may_have_caps {
            return Ok(false);
        }
        // Not `getattr`: it also counts the file's chunks.
        let n = self.node(id)?;
        let mode = match (&n.ghost, &n.ident) {
            (Some(g), _) => g.mode,
            (None, Ident::Delta(ino)) => self.store.inode_req(*ino)?.mode,
            (None, Ident::Base(rel)) => self.base.stat(rel)?.ok_or(Errno::ENOENT)?.mode,
        };
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        let mode = mode & 0o7777;
        let mut keep = mode;
        if kill_set_id {
            keep &= !libc::S_ISUID;
            if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
                keep &= !libc::S_ISGID;
            }
        }
        if keep != mode {
            self.setattr(
                id,
                &SetAttr {
                    mode: Some(keep),
                    ..SetAttr::default()
                },
            )?;
        }
        if may_have_caps {
            match self.removexattr(id, CAPS_XATTR) {
                Ok(()) | Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keep != mode)
    }

    /// Node of an open file handle.
    pub fn handle_node(&self, fh: u64) -> OpResult<u64> {
        Ok(self.handles.get(&fh).ok_or(Errno::EBADF)?.node)
    }

    fn read_base(
        &mut self,
        fh: u64,
        rel: &[u8],
        offset: u64,
        size: u32,
        limit: u64,
    ) -> OpResult<Vec<u8>> {
        let reopen = match &self.handles.get(&fh).ok_or(Errno::EBADF)?.base {
            Some((p, _)) => p != rel,
            None => true,
        };
        if reopen {
            let file = self.base.open_file(rel)?;
            self.handles.get_mut(&fh).ok_or(Errno::EBADF)?.base = Some((rel.to_vec(), file));
        }
        let end = limit.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let (_, file) = self.handles[&fh].base.as_ref().ok_or(Errno::EBADF)?;
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if limit == u64::MAX {
            // The base file itself: exactly what it holds.
            buf.truncate(got);
        }
        // A metacopy whose base file shrank on the host reads as zeros up to the
        // size the delta recorded, so the file never changes length under a reader.
        Ok(buf)
    }

    /// `read`.
    pub fn read(&mut self, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let id = self.handle_node(fh)?;
        match self.node(id)?.ident.clone() {
            Ident::Base(rel) => self.read_base(fh, &rel, offset, size, u64::MAX),
            Ident::Delta(ino) => {
                let mut row = self.store.inode_req(ino)?;
                let data = match self.store.metacopy(ino)? {
                    Some(rel) => self.read_base(fh, &rel, offset, size, row.size)?,
                    None => self.store.read_data(ino, row.size, offset, size)?,
                };
                // relatime, as ext4 by default: update atime when it is older than
                // mtime/ctime or a day old.
                let now = Timestamp::now();
                if row.atime <= row.mtime
                    || row.atime <= row.ctime
                    || now.sec.saturating_sub(row.atime.sec) > 86400
                {
                    row.atime = now;
                    self.store.update_inode(&row)?;
                }
                Ok(data)
            }
        }
    }

    /// `write`; returns the number of bytes written.
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        let w = self.begin_write(fh, offset, data.len())?;
        self.commit_write(w, data)
    }

    /// The part of a `write` that can refuse it: the handle's mode, an earlier
    /// lost write, copy-up, the size limit and the quota. What is left
    /// ([`Overlay::commit_write`]) fails only if the database does; a server
    /// may acknowledge a large write between the two, while it still holds
    /// the overlay ([`Overlay::finish_write`]): the kernel's hand-off of the
    /// next request then overlaps this one's commit, and every later request
    /// still sees it committed.
    pub fn begin_write(&mut self, fh: u64, offset: u64, len: usize) -> OpResult<PendingWrite> {
        let h = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        if h.flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(Errno::EBADF);
        }
        let (id, append) = (h.node, h.flags & libc::O_APPEND != 0);
        if let Some(e) = self.nodes.get(&id).and_then(|n| n.write_error) {
            return Err(e);
        }
        let ino = self.copy_up_data(id)?;
        let size = self.store.inode_req(ino)?.size;
        let start = if append { size } else { offset };
        let end = start
            .checked_add(len as u64)
            .filter(|&e| e <= crate::store::MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let charged = end.saturating_sub(size);
        if let Some(q) = &self.opts.quota {
            q.charge(charged)?;
        }
        Ok(PendingWrite {
            node: id,
            ino,
            append,
            offset,
            charged,
        })
    }

    /// Stores a write that [`Overlay::begin_write`] accepted.
    pub fn commit_write(&mut self, w: PendingWrite, data: &[u8]) -> OpResult<u32> {
        self.store_write(&w, data)?;
        Ok(data.len() as u32)
    }

    /// Stores a write that [`Overlay::begin_write`] accepted and the caller
    /// has already reported as done. A failure here comes too late for that
    /// write, so it is kept on the file: every later write and `fsync` of it
    /// returns the error until its last close, as a local file system
    /// reports a failed writeback at `fsync`.
    pub fn finish_write(&mut self, w: PendingWrite, data: &[u8]) {
        if let Err(e) = self.store_write(&w, data) {
            tracing::error!(node = w.node, error = %e, bytes = data.len(),
                "an acknowledged write could not be stored; the file reports it at its next write or fsync");
            if let Some(n) = self.nodes.get_mut(&w.node) {
                n.write_error.get_or_insert(e);
            }
        }
    }

    fn store_write(&mut self, w: &PendingWrite, data: &[u8]) -> OpResult<()> {
        let r = self.store.tx_data(|s| {
            let mut row = s.inode_req(w.ino)?;
            let offset = if w.append { row.size } else { w.offset };
            row.size = s.write_data(w.ino, row.size, offset, data)?;
            let now = Timestamp::now();
            row.mtime = now;
            row.ctime = now;
            s.update_inode(&row)
        });
        if r.is_err()
            && let Some(q) = &self.opts.quota
        {
            q.refund(w.charged);
        }
        r
    }

    /// `fsync` / `fsyncdir`: make committed changes durable. With a file
    /// handle, also reports a write of that file that was acknowledged but
    /// could not be stored.
    pub fn fsync(&self, fh: Option<u64>) -> OpResult<()> {
        self.store.sync()?;
        let node = fh.and_then(|fh| self.handles.get(&fh)).map(|h| h.node);
        match node.and_then(|id| self.nodes.get(&id)?.write_error) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `release`: closes a file handle. Returns whether it was a passthrough open
    /// and how many passthrough opens of its node remain.
    pub fn release(&mut self, fh: u64) -> OpResult<(u64, bool, u32)> {
        let h = self.handles.remove(&fh).ok_or(Errno::EBADF)?;
        let n = self.node_mut(h.node)?;
        n.opens = n.opens.saturating_sub(1);
        if h.passthrough {
            n.pt_opens = n.pt_opens.saturating_sub(1);
        }
        if h.cached {
            n.cached_opens = n.cached_opens.saturating_sub(1);
        }
        if n.opens == 0 {
            n.write_error = None;
        }
        let (opens, pt_left, ident) = (n.opens, n.pt_opens, n.ident.clone());
        if opens == 0
            && let Ident::Delta(ino) = &ident
            && let Some(row) = self.store.inode(*ino)?
            && row.nlink == 0
            && !row.is_dir()
            // A node split off for passthrough readers shares the inode with the
            // node that replaced it: their closes must not free it under the other.
            && !self
                .nodes
                .iter()
                .any(|(&other, o)| other != h.node && o.ident == ident && o.opens > 0)
        {
            let ino = *ino;
            // Last close of a file unlinked while open.
            let before = self.getattr(h.node).ok();
            self.store.tx(|s| s.delete_inode(ino))?;
            self.retire(h.node, before, false);
        }
        self.maybe_evict(h.node);
        Ok((h.node, h.passthrough, pt_left))
    }

    /// `fallocate`: modes 0, `KEEP_SIZE`, `PUNCH_HOLE|KEEP_SIZE`, `ZERO_RANGE`.
    pub fn fallocate(&mut self, fh: u64, offset: u64, len: u64, mode: i32) -> OpResult<()> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(KEEP_SIZE | PUNCH | ZERO) != 0 || (mode & PUNCH != 0 && mode & KEEP_SIZE == 0) {
            return Err(Errno::ENOTSUP);
        }
        let h = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        if h.flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(Errno::EBADF);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let id = h.node;
        let ino = self.copy_up_data(id)?;
        if let Some(q) = &self.opts.quota {
            let size = self.store.inode_req(ino)?.size;
            if mode & KEEP_SIZE == 0 {
                q.charge(end.saturating_sub(size))?;
            }
        }
        self.store.tx_data(|s| {
            let mut row = s.inode_req(ino)?;
            if mode & (PUNCH | ZERO) != 0 {
                s.punch_hole(ino, row.size, offset, len)?;
            }
            if mode & KEEP_SIZE == 0 && end > row.size {
                s.truncate_data(ino, row.size, end)?;
                row.size = end;
            }
            let now = Timestamp::now();
            if mode & (PUNCH | ZERO) != 0 || mode & KEEP_SIZE == 0 {
                row.mtime = now;
                row.ctime = now;
            }
            s.update_inode(&row)
        })
    }

    /// `lseek` with `SEEK_DATA` / `SEEK_HOLE`.
    pub fn lseek(&mut self, fh: u64, offset: i64, whence: i32) -> OpResult<i64> {
        let id = self.handle_node(fh)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let attr = self.getattr(id)?;
        if let Some(rel) = self.content_in_base(id)? {
            let file = self.base.open_file(&rel)?;
            let w = if data {
                rustix::fs::SeekFrom::Data(offset)
            } else {
                rustix::fs::SeekFrom::Hole(offset)
            };
            return Ok(rustix::fs::seek(&file, w)? as i64);
        }
        let Ident::Delta(ino) = self.node(id)?.ident else {
            return Err(Errno::EIO);
        };
        Ok(self.store.seek(ino, attr.size, offset, data)? as i64)
    }

    // ----- directories -----

    /// Whether the kernel may cache the listing of directory `id` across opens.
    /// Only when its entries have one source whose changes move the mtime we
    /// report: a pure base directory (the host's mtime) or a delta directory
    /// with no lower one (only we change it). A merged directory reports the
    /// delta's mtime, which a change on the host side would not move.
    pub fn listing_cacheable(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| match n.ident {
            Ident::Base(_) => true,
            Ident::Delta(_) => n.lower.is_none(),
        })
    }

    /// `opendir`.
    pub fn opendir(&mut self, id: u64) -> OpResult<u64> {
        let n = self.node_mut(id)?;
        if n.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        n.opens += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(
            fh,
            DirHandle {
                node: id,
                entries: None,
            },
        );
        Ok(fh)
    }

    /// Entries of a merged directory, without "." and "..".
    pub fn list(&self, id: u64) -> OpResult<Vec<DirEntry>> {
        if self.node(id)?.ghost.is_some() {
            return Ok(Vec::new());
        }
        let dir = self.merged_dir(id)?;
        let mut out = Vec::new();
        for (name, src) in merge::list(&self.store, &self.base, &dir)? {
            let ino = match &src {
                Source::Delta { ino, .. } => self.delta_id(*ino)?,
                // d_ino is advisory; for all but multiply-linked files it equals
                // the st_ino a later lookup reports.
                Source::Base { ino, .. } if *ino >= 2 && *ino <= ID_MASK => *ino,
                Source::Base { ino, .. } => HASH_TAG | (fnv1a(&[&ino.to_le_bytes()]) & ID_MASK),
            };
            out.push(DirEntry {
                name,
                kind: src.kind(),
                ino,
            });
        }
        Ok(out)
    }

    /// The stream of the directory open as `fh` from cookie `offset` on (see
    /// [`Listing`]). The listing is taken when `offset` is 0 and kept for the
    /// handle.
    pub fn readdir(&mut self, fh: u64, offset: u64) -> OpResult<(Arc<Listing>, usize)> {
        let d = self.dirs.get(&fh).ok_or(Errno::EBADF)?;
        let listing = match (&d.entries, offset) {
            (Some(l), o) if o != 0 => l.clone(),
            _ => {
                let l = self.listing(d.node)?;
                self.dirs.get_mut(&fh).ok_or(Errno::EBADF)?.entries = Some(l.clone());
                l
            }
        };
        let start = listing.after(offset);
        Ok((listing, start))
    }

    /// `readdir` without a directory handle (the kernel was told we need no
    /// `opendir`): the stream of directory `id` from cookie `offset` on. A
    /// listing is taken at offset 0 and kept for the reads that continue it,
    /// for up to [`LISTING_TTL`] and [`MAX_LISTINGS`] directories at a time;
    /// a read that continues a listing no longer kept (or kept for another
    /// object that had this node id) takes a new one and resumes by cookie.
    pub fn readdir_at(&mut self, id: u64, offset: u64) -> OpResult<(Arc<Listing>, usize)> {
        let n = self.node(id)?;
        if n.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let now = std::time::Instant::now();
        let kept = match self.listings.get(&id) {
            Some(k)
                if offset != 0
                    && k.ident == n.ident
                    && now.duration_since(k.taken) < LISTING_TTL =>
            {
                Some(k.listing.clone())
            }
            _ => None,
        };
        let listing = match kept {
            Some(l) => l,
            None => {
                let l = self.listing(id)?;
                if self.listings.len() >= MAX_LISTINGS {
                    self.listings.clear();
                }
                let kept = KeptListing {
                    ident: self.node(id)?.ident.clone(),
                    taken: now,
                    listing: l.clone(),
                };
                self.listings.insert(id, kept);
                l
            }
        };
        let start = listing.after(offset);
        if start == listing.entries.len() {
            // The end of the stream: this reader is done with it.
            self.listings.remove(&id);
        }
        Ok((listing, start))
    }

    /// The stream of directory `id`: ".", "..", then its merged entries, in
    /// cookie order.
    fn listing(&self, id: u64) -> OpResult<Arc<Listing>> {
        let parent = self.node(id)?.parent;
        let mut entries = vec![
            (
                1,
                DirEntry {
                    name: b".".to_vec(),
                    kind: libc::S_IFDIR,
                    ino: id,
                },
            ),
            (
                2,
                DirEntry {
                    name: b"..".to_vec(),
                    kind: libc::S_IFDIR,
                    ino: parent,
                },
            ),
        ];
        for e in self.list(id)? {
            let cookie = 3 + (self.cookies.hash_one(&e.name) >> 3);
            entries.push((cookie, e));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        // Equal hashes: neighbouring cookies keep every entry reachable.
        for i in 3..entries.len() {
            if entries[i].0 <= entries[i - 1].0 {
                entries[i].0 = entries[i - 1].0 + 1;
            }
        }
        Ok(Arc::new(Listing { entries }))
    }

    /// Resolves a directory entry for `readdirplus` without counting a lookup.
    /// Returns the node id and attributes; call [`Self::add_lookup`] if it is used.
    pub fn peek(
        &mut self,
        parent: u64,
        name: &[u8],
        lower_fd: Option<&OwnedFd>,
    ) -> OpResult<(u64, Attr)> {
        if name == b"." {
            return Ok((parent, self.getattr(parent)?));
        }
        if name == b".." {
            let p = self.node(parent)?.parent;
            return Ok((p, self.getattr(p)?));
        }
        let (id, attr) = self
            .child_at(parent, name, lower_fd)?
            .ok_or(Errno::ENOENT)?;
        match attr.map_or_else(|| self.getattr(id), Ok) {
            Ok(a) => Ok((id, a)),
            Err(e) => {
                self.maybe_evict(id);
                Err(e)
            }
        }
    }

    /// Drops a node resolved by [`Self::peek`] that was not used.
    pub fn unpeek(&mut self, id: u64) {
        self.maybe_evict(id);
    }

    /// `releasedir`.
    pub fn releasedir(&mut self, fh: u64) -> OpResult<()> {
        let d = self.dirs.remove(&fh).ok_or(Errno::EBADF)?;
        if let Some(n) = self.nodes.get_mut(&d.node) {
            n.opens = n.opens.saturating_sub(1);
        }
        self.maybe_evict(d.node);
        Ok(())
    }
}

/// Node id (and `st_ino`) of a base object at `rel`, stable across mounts.
pub fn base_node_id(base_dev: u64, rel: &[u8], st: &BaseStat) -> u64 {
    if !st.is_dir() && st.nlink > 1 {
        // Hard links in the base are shown as separate files, so that copying up
        // one of them can never change what the others show.
        return HASH_TAG | (fnv1a(&[b"path", rel]) & ID_MASK);
    }
    if st.dev == base_dev && st.ino >= 2 && st.ino <= ID_MASK {
        return st.ino;
    }
    HASH_TAG | (fnv1a(&[&st.dev.to_le_bytes(), &st.ino.to_le_bytes()]) & ID_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Base;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    const ME: Caller = Caller { uid: 0, gid: 0 };

    struct Fixture {
        _dir: tempfile::TempDir,
        base: std::path::PathBuf,
        db: std::path::PathBuf,
    }

    fn fixture(build: impl FnOnce(&Path)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        build(&base);
        let db = dir.path().join("w.db");
        drop(crate::schema::test_database(&db, &base, 4096));
        Fixture {
            _dir: dir,
            base,
            db,
        }
    }

    impl Fixture {
        fn overlay(&self) -> Overlay {
            let conn = crate::schema::open(&self.db, false).unwrap();
            let store = Store::new(conn, &self.db).unwrap();
            Overlay::new(
                store,
                Base::open(&self.base).unwrap(),
                OverlayOptions {
                    passthrough: false,
                    quota: None,
                },
            )
            .unwrap()
        }
    }

    fn path_id(ov: &mut Overlay, path: &str) -> OpResult<u64> {
        let mut id = ROOT_ID;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            id = ov.lookup(id, part.as_bytes())?.ino;
        }
        Ok(id)
    }

    fn names(ov: &mut Overlay, path: &str) -> Vec<String> {
        let id = path_id(ov, path).unwrap();
        let mut v: Vec<String> = ov
            .list(id)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect();
        v.sort();
        v
    }

    fn read_all(ov: &mut Overlay, path: &str) -> Vec<u8> {
        let id = path_id(ov, path).unwrap();
        let o = ov.open(id, libc::O_RDONLY).unwrap();
        let d = ov.read(o.fh, 0, 1 << 20).unwrap();
        ov.release(o.fh).unwrap();
        d
    }

    fn inode_rows(ov: &Overlay) -> i64 {
        ov.store()
            .conn()
            .query_row("SELECT COUNT(*) FROM fs_inode", [], |r| r.get(0))
            .unwrap()
    }

    fn write_file(ov: &mut Overlay, parent: &str, name: &str, data: &[u8]) {
        let p = path_id(ov, parent).unwrap();
        let (_, o) = ov
            .create(p, name.as_bytes(), 0o644, libc::O_WRONLY, ME)
            .unwrap();
        ov.write(o.fh, 0, data).unwrap();
        ov.release(o.fh).unwrap();
    }

    fn project(b: &Path) {
        std::fs::create_dir_all(b.join("docs/deep")).unwrap();
        std::fs::write(b.join("docs/a.md"), "a").unwrap();
        std::fs::write(b.join("docs/deep/b.md"), "b").unwrap();
        std::fs::write(b.join("top.txt"), "top").unwrap();
    }

    #[test]
    fn unlinking_a_base_file_whites_it_out_and_recreating_clears_it() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let docs = path_id(&mut ov, "docs").unwrap();
        ov.unlink(docs, b"a.md").unwrap();
        assert_eq!(ov.lookup(docs, b"a.md").unwrap_err(), Errno::ENOENT);
        assert_eq!(names(&mut ov, "docs"), ["deep"]);
        assert!(ov.store().is_whiteout(b"/docs/a.md").unwrap());
        write_file(&mut ov, "docs", "a.md", b"new");
        assert!(!ov.store().is_whiteout(b"/docs/a.md").unwrap());
        assert_eq!(read_all(&mut ov, "docs/a.md"), b"new");
        assert_eq!(std::fs::read(f.base.join("docs/a.md")).unwrap(), b"a");
    }

    #[test]
    fn a_lookup_done_outside_the_overlay_is_redone_when_its_directory_changed() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let docs = path_id(&mut ov, "docs").unwrap();
        // The root is in the delta: its lookups always take the full path.
        assert_eq!(ov.base_only_dir(ROOT_ID, b"docs").unwrap(), None);
        // Names are checked before anything touches the base.
        assert_eq!(ov.base_only_dir(docs, b"a/b").unwrap_err(), Errno::EINVAL);

        // An untouched base directory: the split lookup gives what lookup gives.
        let lower = ov.base_only_dir(docs, b"a.md").unwrap().unwrap();
        assert_eq!(lower, b"docs");
        let st = ov.base().stat(b"docs/a.md").unwrap();
        let split = ov.finish_base_lookup(docs, &lower, b"a.md", st).unwrap();
        let split = split.unwrap();
        assert_eq!(split, ov.lookup(docs, b"a.md").unwrap());
        // Two references were counted: one forget leaves the node alive.
        ov.forget(split.ino, 1);
        assert!(ov.getattr(split.ino).is_ok());
        let missing = ov.finish_base_lookup(docs, &lower, b"nope", None);
        assert_eq!(missing.unwrap().unwrap_err(), Errno::ENOENT);

        // The directory is copied up (a whiteout) between the base lstat and
        // the finish: the stale lstat must not bring the name back.
        let lower = ov.base_only_dir(docs, b"a.md").unwrap().unwrap();
        let st = ov.base().stat(b"docs/a.md").unwrap();
        ov.unlink(docs, b"a.md").unwrap();
        assert!(ov.finish_base_lookup(docs, &lower, b"a.md", st).is_none());
        assert_eq!(ov.base_only_dir(docs, b"a.md").unwrap(), None);
        assert_eq!(ov.lookup(docs, b"a.md").unwrap_err(), Errno::ENOENT);

        // A directory forgotten meanwhile is not resurrected either.
        let deep = path_id(&mut ov, "docs/deep").unwrap();
        let lower = ov.base_only_dir(deep, b"b.md").unwrap().unwrap();
        assert_eq!(lower, b"docs/deep");
        ov.forget(deep, 1);
        let st = ov.base().stat(b"docs/deep/b.md").unwrap();
        assert!(ov.finish_base_lookup(deep, &lower, b"b.md", st).is_none());
    }

    /// Reads directory `id` from `offset` on, `batch` entries per call, as
    /// the kernel does, calling `between` after each call; returns the names.
    fn read_stream(
        ov: &mut Overlay,
        id: u64,
        batch: usize,
        mut between: impl FnMut(&mut Overlay, usize),
    ) -> Vec<Vec<u8>> {
        let (mut offset, mut out, mut calls) = (0, Vec::new(), 0);
        loop {
            let (l, start) = ov.readdir_at(id, offset).unwrap();
            let got = &l.entries[start..(start + batch).min(l.entries.len())];
            if got.is_empty() {
                return out;
            }
            assert!(got.iter().all(|(c, _)| *c > offset), "cookies only grow");
            offset = got.last().unwrap().0;
            out.extend(got.iter().map(|(_, e)| e.name.clone()));
            calls += 1;
            between(ov, calls);
        }
    }

    #[test]
    fn handle_less_directory_reads_resume_by_cookie_across_changes() {
        let f = fixture(|b| {
            std::fs::write(b.join("top.txt"), "").unwrap();
            std::fs::create_dir(b.join("d")).unwrap();
            for i in 0..300 {
                std::fs::write(b.join(format!("d/b{i}")), "").unwrap();
            }
        });
        let mut ov = f.overlay();
        let d = path_id(&mut ov, "d").unwrap();
        for i in 0..200 {
            let o = ov.create(d, format!("n{i}").as_bytes(), 0o644, libc::O_WRONLY, ME);
            ov.release(o.unwrap().1.fh).unwrap();
        }
        // A plain read: ".", "..", then every name once.
        let all = read_stream(&mut ov, d, 37, |_, _| {});
        assert_eq!(&all[..2], [b".".to_vec(), b"..".to_vec()]);
        assert_eq!(all.len(), 502);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 502);
        assert!(
            ov.listings.is_empty(),
            "the finished read let its listing go"
        );

        // Entries go and come between calls, and the kept listing is dropped
        // now and then (as when more directories are read than are kept).
        let victims: Vec<Vec<u8>> = (0..300)
            .step_by(3)
            .map(|i| format!("b{i}").into_bytes())
            .collect();
        let mut left = victims.clone();
        let mut late = 0;
        let seen = read_stream(&mut ov, d, 23, |ov, call| {
            for v in left.drain(..left.len().min(7)) {
                ov.unlink(d, &v).unwrap();
            }
            for _ in 0..3 {
                let o = ov.create(
                    d,
                    format!("late{late}").as_bytes(),
                    0o644,
                    libc::O_WRONLY,
                    ME,
                );
                ov.release(o.unwrap().1.fh).unwrap();
                late += 1;
            }
            if call % 2 == 0 {
                ov.listings.clear();
            }
        });
        let counts = seen.iter().fold(HashMap::new(), |mut m, n| {
            *m.entry(n.clone()).or_insert(0) += 1;
            m
        });
        assert!(counts.values().all(|&c| c == 1), "no entry twice");
        for name in all.iter().filter(|n| !victims.contains(n)) {
            assert!(
                counts.contains_key(name),
                "{} skipped",
                String::from_utf8_lossy(name)
            );
        }
        assert!(left.is_empty() && late > 0);
        // A directory handle gives the same stream.
        let fh = ov.opendir(d).unwrap();
        let (l, start) = ov.readdir(fh, 0).unwrap();
        let (l2, _) = ov.readdir_at(d, 0).unwrap();
        let names = |l: &Listing| {
            l.entries
                .iter()
                .map(|(c, e)| (*c, e.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(start, 0);
        assert_eq!(names(&l), names(&l2));
        let (_, mid) = ov.readdir(fh, l.entries[10].0).unwrap();
        assert_eq!(mid, 11);
        ov.releasedir(fh).unwrap();
        let file = path_id(&mut ov, "top.txt").unwrap();
        assert_eq!(ov.readdir_at(file, 0).unwrap_err(), Errno::ENOTDIR);
    }

    #[test]
    fn a_kept_listing_serves_only_its_own_directory_and_only_for_a_while() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let docs = path_id(&mut ov, "docs").unwrap();
        let has = |l: &Listing, name: &[u8]| l.entries.iter().any(|(_, e)| e.name == name);
        let add = |ov: &mut Overlay, name: &str| {
            let o = ov.create(docs, name.as_bytes(), 0o644, libc::O_WRONLY, ME);
            ov.release(o.unwrap().1.fh).unwrap();
        };
        // (Copying the directory up changes what it is: done first.)
        add(&mut ov, "zero");
        // A read continuing within the second uses the listing it started.
        ov.readdir_at(docs, 0).unwrap();
        add(&mut ov, "one");
        assert!(!has(&ov.readdir_at(docs, 1).unwrap().0, b"one"));
        // One continuing later takes a new listing.
        ov.listings.get_mut(&docs).unwrap().taken -= LISTING_TTL;
        assert!(has(&ov.readdir_at(docs, 1).unwrap().0, b"one"));
        // As does one whose node id now stands for another object.
        add(&mut ov, "two");
        ov.listings.get_mut(&docs).unwrap().ident = Ident::Delta(-5);
        assert!(has(&ov.readdir_at(docs, 1).unwrap().0, b"two"));
        // Offset 0 always starts afresh.
        add(&mut ov, "three");
        assert!(has(&ov.readdir_at(docs, 0).unwrap().0, b"three"));
    }

    #[test]
    fn a_shared_directory_moves_its_mtime_when_the_host_changes_it() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let docs = path_id(&mut ov, "docs").unwrap();
        write_file(&mut ov, "docs", "agent.md", b"x");
        let before = ov.getattr(docs).unwrap().mtime;
        assert_eq!(ov.getattr(docs).unwrap().mtime, before, "nothing changed");
        // The host adds a file to its side, later than the agent's change.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(f.base.join("docs/host.md"), "h").unwrap();
        let after = ov.getattr(docs).unwrap().mtime;
        assert!(after > before, "{after:?} > {before:?}");
        // Times the agent sets win again.
        let old = Timestamp {
            sec: 1_000_000,
            nsec: 0,
        };
        let req = SetAttr {
            mtime: Some(Some(old)),
            ..Default::default()
        };
        ov.setattr(docs, &req).unwrap();
        assert_eq!(ov.getattr(docs).unwrap().mtime, old);
    }

    #[test]
    fn a_renamed_base_directory_keeps_its_contents_and_its_whiteouts() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let deep = path_id(&mut ov, "docs/deep").unwrap();
        ov.unlink(deep, b"b.md").unwrap();
        write_file(&mut ov, "docs/deep", "c.md", b"c");
        ov.rename(ROOT_ID, b"docs", ROOT_ID, b"manual", 0).unwrap();
        assert_eq!(ov.lookup(ROOT_ID, b"docs").unwrap_err(), Errno::ENOENT);
        assert_eq!(names(&mut ov, "manual"), ["a.md", "deep"]);
        assert_eq!(
            names(&mut ov, "manual/deep"),
            ["c.md"],
            "the whiteout moved along"
        );
        assert_eq!(read_all(&mut ov, "manual/a.md"), b"a");
        // A new directory at the old name does not show the old contents.
        ov.mkdir(ROOT_ID, b"docs", 0o755, ME).unwrap();
        assert_eq!(names(&mut ov, "docs"), Vec::<String>::new());
        // The same view from a fresh overlay over the same database.
        drop(ov);
        let mut ov = f.overlay();
        assert_eq!(names(&mut ov, "manual/deep"), ["c.md"]);
        assert_eq!(names(&mut ov, "docs"), Vec::<String>::new());
        assert_eq!(read_all(&mut ov, "manual/deep/c.md"), b"c");
    }

    #[test]
    fn rmdir_needs_the_merged_directory_empty() {
        let f = fixture(project);
        let mut ov = f.overlay();
        assert_eq!(ov.rmdir(ROOT_ID, b"docs").unwrap_err(), Errno::ENOTEMPTY);
        let deep = path_id(&mut ov, "docs/deep").unwrap();
        ov.unlink(deep, b"b.md").unwrap();
        let docs = path_id(&mut ov, "docs").unwrap();
        ov.rmdir(docs, b"deep").unwrap();
        ov.unlink(docs, b"a.md").unwrap();
        ov.rmdir(ROOT_ID, b"docs").unwrap();
        assert_eq!(names(&mut ov, ""), ["top.txt"]);
        assert_eq!(ov.rmdir(ROOT_ID, b"top.txt").unwrap_err(), Errno::ENOTDIR);
        assert_eq!(ov.unlink(ROOT_ID, b"nothing").unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn node_ids_are_host_inodes_and_survive_copy_up_and_reopen() {
        let f = fixture(project);
        let host = std::fs::metadata(f.base.join("top.txt")).unwrap().ino();
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "top.txt").unwrap();
        assert_eq!(id, host);
        let o = ov.open(id, libc::O_WRONLY).unwrap();
        ov.write(o.fh, 3, b"+").unwrap();
        ov.release(o.fh).unwrap();
        assert_eq!(ov.getattr(id).unwrap().ino, host);
        drop(ov);
        let mut ov = f.overlay();
        assert_eq!(path_id(&mut ov, "top.txt").unwrap(), host);
        assert_eq!(read_all(&mut ov, "top.txt"), b"top+");
    }

    #[test]
    fn base_hard_links_are_separate_files_in_the_view() {
        let f = fixture(|b| {
            std::fs::write(b.join("one"), "shared").unwrap();
            std::fs::hard_link(b.join("one"), b.join("two")).unwrap();
        });
        let mut ov = f.overlay();
        let one = path_id(&mut ov, "one").unwrap();
        let two = path_id(&mut ov, "two").unwrap();
        assert_ne!(one, two);
        let o = ov.open(one, libc::O_WRONLY).unwrap();
        ov.write(o.fh, 0, b"SH").unwrap();
        ov.release(o.fh).unwrap();
        assert_eq!(read_all(&mut ov, "one"), b"SHared");
        assert_eq!(read_all(&mut ov, "two"), b"shared");
    }

    #[test]
    fn metadata_changes_copy_metadata_only() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "top.txt").unwrap();
        let before = ov.getattr(id).unwrap();
        let after = ov
            .setattr(
                id,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(after.mode & 0o7777, 0o600);
        assert_eq!(after.mtime, before.mtime);
        assert_eq!(after.size, 3);
        let n: i64 = ov
            .store()
            .conn()
            .query_row("SELECT COUNT(*) FROM fs_data", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "no bytes were copied");
        assert_eq!(read_all(&mut ov, "top.txt"), b"top");
        // A hard link to a base file is a metadata copy with two names.
        let attr = ov.link(id, ROOT_ID, b"alias").unwrap();
        assert_eq!(attr.nlink, 2);
        assert_eq!(path_id(&mut ov, "alias").unwrap(), id);
    }

    #[test]
    fn an_acknowledged_write_that_fails_to_store_is_reported_until_the_last_close() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "top.txt").unwrap();
        let a = ov.open(id, libc::O_WRONLY).unwrap();
        let b = ov.open(id, libc::O_RDWR).unwrap();
        let w = ov.begin_write(a.fh, 0, 5).unwrap();
        // The server has told the kernel the write succeeded; now the database fails.
        let conn = ov.store().conn();
        conn.pragma_update(None, "query_only", true).unwrap();
        ov.finish_write(w, b"lost!");
        ov.store()
            .conn()
            .pragma_update(None, "query_only", false)
            .unwrap();
        assert_eq!(read_all(&mut ov, "top.txt"), b"top", "nothing was stored");
        let e = ov.write(b.fh, 0, b"x").unwrap_err();
        assert_ne!(e, Errno::EBADF);
        assert_eq!(ov.fsync(Some(a.fh)), Err(e), "fsync reports it");
        assert_eq!(ov.fsync(Some(b.fh)), Err(e), "on every open handle");
        assert_eq!(ov.fsync(Some(a.fh)), Err(e), "and keeps reporting it");
        assert_eq!(ov.fsync(None), Ok(()), "not a directory's fsync");
        ov.release(a.fh).unwrap();
        assert_eq!(ov.fsync(Some(b.fh)), Err(e));
        ov.release(b.fh).unwrap();
        // Reopened after the last close: a fresh start.
        let c = ov.open(id, libc::O_WRONLY).unwrap();
        assert_eq!(ov.write(c.fh, 0, b"new").unwrap(), 3);
        assert_eq!(ov.fsync(Some(c.fh)), Ok(()));
        ov.release(c.fh).unwrap();
        assert_eq!(read_all(&mut ov, "top.txt"), b"new");
    }

    #[test]
    fn write_only_opens_bypass_the_cache_and_writes_drop_privileges_as_the_kernel_does() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "top.txt").unwrap();
        let w = ov.open(id, libc::O_WRONLY | libc::O_APPEND).unwrap();
        assert!(matches!(w.io, IoMode::Direct));
        assert!(ov.writes_direct(w.fh));
        let rw = ov.open(id, libc::O_RDWR).unwrap();
        assert!(matches!(rw.io, IoMode::Cached));
        assert!(!ov.writes_direct(rw.fh));

        let mode = |ov: &Overlay| ov.getattr(id).unwrap().mode & 0o7777;
        let chmod = |ov: &mut Overlay, m: u32| {
            ov.setattr(
                id,
                &SetAttr {
                    mode: Some(m),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        };
        // (mode before, writer lacks CAP_FSETID, mode after)
        for (before, kill, after) in [
            (0o4755, true, 0o755),
            (0o6755, true, 0o755),
            (0o2755, true, 0o755),
            // Set-group-ID without group execute: a locking mark, kept.
            (0o2745, true, 0o2745),
            (0o6745, true, 0o2745),
            // A writer with CAP_FSETID (root) keeps them all.
            (0o6755, false, 0o6755),
            (0o644, true, 0o644),
        ] {
            chmod(&mut ov, before);
            let changed = ov.drop_privileges_for_write(id, kill, false).unwrap();
            assert_eq!(mode(&ov), after, "{before:o} kill={kill}");
            assert_eq!(changed, before != after);
        }

        // Capabilities go whoever writes; looking for none is harmless.
        let caps = [0u8; 20];
        ov.setxattr(id, CAPS_XATTR, &caps, 0).unwrap();
        ov.drop_privileges_for_write(id, false, false).unwrap();
        assert!(ov.getxattr(id, CAPS_XATTR).is_ok(), "not looked for");
        ov.drop_privileges_for_write(id, false, true).unwrap();
        assert_eq!(ov.getxattr(id, CAPS_XATTR), Err(Errno::ENODATA));
        ov.drop_privileges_for_write(id, false, true).unwrap();
        // Directories are left alone.
        assert!(!ov.drop_privileges_for_write(ROOT_ID, true, true).unwrap());
        ov.release(w.fh).unwrap();
        ov.release(rw.fh).unwrap();
    }

    #[test]
    fn a_write_open_beside_passthrough_readers_moves_the_name_to_a_new_node() {
        let f = fixture(project);
        let mut ov = f.overlay();
        ov.set_passthrough(true);
        let old = path_id(&mut ov, "top.txt").unwrap();
        let reader = ov.open(old, libc::O_RDONLY).unwrap();
        assert!(matches!(reader.io, IoMode::Passthrough(_)));
        // The kernel would fail a non-passthrough open of this inode: ask it to
        // look the name up again instead.
        assert_eq!(ov.open(old, libc::O_WRONLY).unwrap_err(), Errno::ESTALE);
        let new = path_id(&mut ov, "top.txt").unwrap();
        assert_ne!(new, old);
        let w = ov.open(new, libc::O_RDWR).unwrap();
        assert!(matches!(w.io, IoMode::Cached));
        ov.write(w.fh, 0, b"# changed").unwrap();
        assert_eq!(
            ov.getattr(old).unwrap().size,
            3,
            "the reader's view is frozen"
        );
        // Unlinked while the writer holds it: the reader's last close must not
        // free the inode under the writer.
        ov.unlink(ROOT_ID, b"top.txt").unwrap();
        ov.release(reader.fh).unwrap();
        ov.write(w.fh, 9, b"!").unwrap();
        ov.release(w.fh).unwrap();
        assert_eq!(
            inode_rows(&ov),
            1,
            "only the root, after the writer's last close"
        );
    }

    #[test]
    fn an_open_file_outlives_its_last_name() {
        let f = fixture(project);
        let mut ov = f.overlay();
        write_file(&mut ov, "", "tmp", b"still here");
        let id = path_id(&mut ov, "tmp").unwrap();
        let o = ov.open(id, libc::O_RDONLY).unwrap();
        ov.unlink(ROOT_ID, b"tmp").unwrap();
        assert_eq!(ov.read(o.fh, 0, 100).unwrap(), b"still here");
        assert_eq!(ov.getattr(id).unwrap().nlink, 0);
        ov.release(o.fh).unwrap();
        assert_eq!(inode_rows(&ov), 1, "released after the last close");
    }

    #[test]
    fn writing_to_an_unlinked_open_base_file_does_not_bring_the_name_back() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "top.txt").unwrap();
        let o = ov.open(id, libc::O_RDWR).unwrap();
        ov.unlink(ROOT_ID, b"top.txt").unwrap();
        ov.write(o.fh, 0, b"TOP").unwrap();
        assert_eq!(ov.read(o.fh, 0, 10).unwrap(), b"TOP");
        assert_eq!(ov.lookup(ROOT_ID, b"top.txt").unwrap_err(), Errno::ENOENT);
        // The name is free for a new file.
        write_file(&mut ov, "", "top.txt", b"new");
        ov.release(o.fh).unwrap();
        assert_eq!(read_all(&mut ov, "top.txt"), b"new");
        let orphans: i64 = ov
            .store()
            .conn()
            .query_row("SELECT COUNT(*) FROM fs_inode WHERE nlink = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(orphans, 0, "the orphan is gone after the last close");
    }

    #[test]
    fn copying_up_a_huge_sparse_base_file_reads_only_its_data() {
        let f = fixture(|b| {
            let file = std::fs::File::create(b.join("sparse")).unwrap();
            file.set_len(64 << 30).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, b"end", (64 << 30) - 3).unwrap();
        });
        let mut ov = f.overlay();
        let id = path_id(&mut ov, "sparse").unwrap();
        let o = ov.open(id, libc::O_WRONLY).unwrap();
        ov.write(o.fh, 0, b"start").unwrap();
        ov.release(o.fh).unwrap();
        let o = ov.open(id, libc::O_RDONLY).unwrap();
        assert_eq!(ov.read(o.fh, 0, 5).unwrap(), b"start");
        assert_eq!(ov.read(o.fh, (64 << 30) - 3, 10).unwrap(), b"end");
        assert_eq!(ov.read(o.fh, 1 << 30, 4).unwrap(), [0; 4]);
        ov.release(o.fh).unwrap();
        assert!(ov.getattr(id).unwrap().blocks < 1024, "holes were copied");
    }

    #[test]
    fn forgotten_nodes_are_released() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let deep = path_id(&mut ov, "docs/deep/b.md").unwrap();
        let docs = path_id(&mut ov, "docs").unwrap();
        let mid = path_id(&mut ov, "docs/deep").unwrap();
        assert_eq!(ov.live_nodes(), 4);
        // Lookups so far: docs 3 (once per path through it), deep 2, b.md 1.
        // A parent stays while a child is referenced, whatever its own count.
        ov.forget(docs, 3);
        ov.forget(mid, 1);
        assert_eq!(ov.live_nodes(), 4);
        ov.forget(mid, 1);
        assert_eq!(ov.live_nodes(), 4);
        ov.forget(deep, 1);
        assert_eq!(ov.live_nodes(), 1, "only the root is left");
        // An open file outlives its last lookup.
        let id = path_id(&mut ov, "top.txt").unwrap();
        let o = ov.open(id, libc::O_RDONLY).unwrap();
        ov.forget(id, 1);
        assert_eq!(ov.live_nodes(), 2);
        ov.release(o.fh).unwrap();
        assert_eq!(ov.live_nodes(), 1);
    }

    #[test]
    fn rename_replaces_targets_and_honours_noreplace() {
        let f = fixture(project);
        let mut ov = f.overlay();
        write_file(&mut ov, "", "new", b"N");
        assert_eq!(
            ov.rename(ROOT_ID, b"new", ROOT_ID, b"top.txt", libc::RENAME_NOREPLACE)
                .unwrap_err(),
            Errno::EEXIST
        );
        ov.rename(ROOT_ID, b"new", ROOT_ID, b"top.txt", 0).unwrap();
        assert_eq!(read_all(&mut ov, "top.txt"), b"N");
        assert_eq!(names(&mut ov, ""), ["docs", "top.txt"]);
        assert_eq!(
            ov.rename(ROOT_ID, b"top.txt", ROOT_ID, b"docs", 0)
                .unwrap_err(),
            Errno::EISDIR
        );
        ov.mkdir(ROOT_ID, b"empty", 0o755, ME).unwrap();
        assert_eq!(
            ov.rename(ROOT_ID, b"empty", ROOT_ID, b"docs", 0)
                .unwrap_err(),
            Errno::ENOTEMPTY
        );
        let docs = path_id(&mut ov, "docs").unwrap();
        assert_eq!(
            ov.rename(ROOT_ID, b"docs", docs, b"inside", 0).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            ov.rename(ROOT_ID, b"empty", ROOT_ID, b"x", libc::RENAME_EXCHANGE)
                .unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let f = fixture(project);
        let mut ov = f.overlay();
        let long = vec![b'n'; NAME_MAX + 1];
        assert_eq!(ov.lookup(ROOT_ID, &long).unwrap_err(), Errno::ENAMETOOLONG);
        assert_eq!(
            ov.mkdir(ROOT_ID, &long, 0o755, ME).unwrap_err(),
            Errno::ENAMETOOLONG
        );
        for bad in [&b""[..], b".", b"..", b"a/b"] {
            assert_eq!(
                ov.lookup(ROOT_ID, bad).unwrap_err(),
                Errno::EINVAL,
                "{bad:?}"
            );
        }
        let target = vec![b't'; SYMLINK_MAX + 1];
        assert_eq!(
            ov.symlink(ROOT_ID, b"l", &target, ME).unwrap_err(),
            Errno::ENAMETOOLONG
        );
        let id = path_id(&mut ov, "top.txt").unwrap();
        let big = vec![0u8; XATTR_SIZE_MAX + 1];
        assert_eq!(
            ov.setxattr(id, b"user.x", &big, 0).unwrap_err(),
            Errno::E2BIG
        );
        assert_eq!(
            ov.setxattr(id, b"system.posix_acl_access", b"x", 0)
                .unwrap_err(),
            Errno::ENOTSUP
        );
        // Operations on unknown node ids fail cleanly.
        assert_eq!(ov.getattr(0xdead_beef).unwrap_err(), Errno::ENOENT);
        assert_eq!(ov.read(12345, 0, 10).unwrap_err(), Errno::EBADF);
    }
}
