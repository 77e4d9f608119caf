//! What changed in a workspace, and applying it to the host.
//!
//! A change is a difference between the merged view (what the agent sees) and the
//! base directory *as it is now*, at the same path. The walk uses the same merge
//! rules as the FUSE view ([`crate::merge`]), skips every subtree the delta never
//! touched, and compares bytes, so a file that was merely read, or rewritten with
//! identical content, or only had its timestamps touched, is not a change.
//! Ownership is not compared: `apply` never changes owners.
//!
//! `apply` writes changes into the base through the same confinement as reads
//! (`openat2` beneath the base root, no symlinks followed), refuses to overwrite
//! what the host changed since the overlay first saw it, and strips set-user-id
//! and set-group-id bits.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;
use sha2::Digest;

use crate::base::{Base, BaseStat, CONFINED, join_rel, split_rel};
use crate::error::{Errno, Error, OpResult, Result};
use crate::merge::{self, Source};
use crate::store::{SeenRow, Store};

/// Deepest directory nesting the tree walks follow. An agent can build deeper
/// trees by moving subtrees under each other; walking them recursively would
/// exhaust the stack, so the walks stop with an error instead.
pub const MAX_TREE_DEPTH: usize = 1024;

fn too_deep(depth: usize) -> OpResult<()> {
    if depth > MAX_TREE_DEPTH {
        Err(Errno::ELOOP)
    } else {
        Ok(())
    }
}

/// Files larger than this are carried as binary patches instead of line diffs.
pub const TEXT_DIFF_LIMIT: u64 = 16 * 1024 * 1024;

/// Files larger than this are left out of patches (noted; use a tar export).
pub const BINARY_PATCH_LIMIT: u64 = 64 * 1024 * 1024;

const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Deleted,
    Modified,
}

/// The state of one side of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    /// "file", "dir", "symlink", "fifo", "socket", "char", "block".
    #[serde(rename = "type")]
    pub kind_name: &'static str,
    #[serde(skip)]
    pub kind: u32,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip)]
    pub target_bytes: Option<Vec<u8>>,
    #[serde(skip)]
    pub rdev: u64,
}

/// One changed path.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// Path relative to the workspace root (lossy UTF-8; see `path_bytes`).
    pub path: String,
    /// The exact bytes, only when the path is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    pub kind: ChangeKind,
    /// Content (or link target, or type) differs.
    pub content: bool,
    /// Permission bits differ.
    pub mode: bool,
    pub old: Option<EntryInfo>,
    pub new: Option<EntryInfo>,
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    #[serde(skip)]
    source: Option<Source>,
    /// Lines added and removed, filled by rendering.
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
    /// One side is binary or too large for a line diff.
    pub binary: bool,
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        _ => "file",
    }
}

fn info_from_base(st: &BaseStat, target: Option<Vec<u8>>) -> EntryInfo {
    EntryInfo {
        kind_name: kind_name(st.file_type()),
        kind: st.file_type(),
        mode: st.mode & 0o7777,
        size: st.size,
        uid: st.uid,
        gid: st.gid,
        target: target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        target_bytes: target,
        rdev: st.rdev,
    }
}

/// Reads the bytes of a merged entry.
pub struct ContentReader<'a> {
    inner: ReaderInner<'a>,
}

enum ReaderInner<'a> {
    Delta {
        store: &'a Store,
        ino: i64,
        size: u64,
        pos: u64,
    },
    File(io::Take<File>),
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            ReaderInner::File(f) => f.read(buf),
            ReaderInner::Delta {
                store,
                ino,
                size,
                pos,
            } => {
                let want = buf.len().min(1 << 20) as u32;
                let data = store
                    .read_data(*ino, *size, *pos, want)
                    .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
                buf[..data.len()].copy_from_slice(&data);
                *pos += data.len() as u64;
                Ok(data.len())
            }
        }
    }
}

/// Callback of [`View::walk`]: relative path, source and metadata of an entry.
pub type WalkFn<'f> = dyn FnMut(&[u8], &Source, &EntryInfo) -> Result<()> + 'f;

/// Read access to a workspace's merged view without a mount.
pub struct View<'a> {
    pub store: &'a Store,
    pub base: &'a Base,
}

impl<'a> View<'a> {
    /// Metadata of a merged entry.
    pub fn info(&self, src: &Source) -> OpResult<EntryInfo> {
        match src {
            Source::Delta { ino, .. } => {
                let row = self.store.inode_req(*ino)?;
                let target = if row.file_type() == libc::S_IFLNK {
                    Some(self.store.symlink_target(*ino)?)
                } else {
                    None
                };
                Ok(EntryInfo {
                    kind_name: kind_name(row.file_type()),
                    kind: row.file_type(),
                    mode: row.mode & 0o7777,
                    size: row.size,
                    uid: row.uid,
                    gid: row.gid,
                    target: target
                        .as_ref()
                        .map(|t| String::from_utf8_lossy(t).into_owned()),
                    target_bytes: target,
                    rdev: row.rdev,
                })
            }
            Source::Base { rel, .. } => {
                let st = self.base.stat(rel)?.ok_or(Errno::ENOENT)?;
                let target = if st.file_type() == libc::S_IFLNK {
                    Some(self.base.readlink(rel)?)
                } else {
                    None
                };
                Ok(info_from_base(&st, target))
            }
        }
    }

    /// A reader over the bytes of a regular merged file.
    pub fn reader(&self, src: &Source) -> OpResult<ContentReader<'a>> {
        match src {
            Source::Delta { ino, .. } => {
                let row = self.store.inode_req(*ino)?;
                if let Some(rel) = self.store.metacopy(*ino)? {
                    let f = self.base.open_file(&rel)?;
                    return Ok(ContentReader {
                        inner: ReaderInner::File(f.take(row.size)),
                    });
                }
                Ok(ContentReader {
                    inner: ReaderInner::Delta {
                        store: self.store,
                        ino: *ino,
                        size: row.size,
                        pos: 0,
                    },
                })
            }
            Source::Base { rel, .. } => Ok(ContentReader {
                inner: ReaderInner::File(self.base.open_file(rel)?.take(u64::MAX)),
            }),
        }
    }

    /// Reads a whole file, refusing more than `limit` bytes.
    pub fn read_all(&self, src: &Source, limit: u64) -> OpResult<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let n = self
            .reader(src)?
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(Errno::from)?;
        Ok(if n as u64 > limit { None } else { Some(out) })
    }

    /// Calls `f` for every entry of the merged tree below `dir`, parents first.
    pub fn walk(&self, dir: &merge::Dir, rel: &[u8], f: &mut WalkFn<'_>) -> Result<()> {
        self.walk_at(dir, rel, f, 0)
    }

    fn walk_at(
        &self,
        dir: &merge::Dir,
        rel: &[u8],
        f: &mut WalkFn<'_>,
        depth: usize,
    ) -> Result<()> {
        too_deep(depth).map_err(|_| self.deep(rel))?;
        let mut entries = merge::list(self.store, self.base, dir).map_err(|e| self.err(e))?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, src) in entries {
            let child_rel = join_rel(rel, &name);
            let info = self.info(&src).map_err(|e| self.err(e))?;
            f(&child_rel, &src, &info)?;
            if info.kind == libc::S_IFDIR {
                let d = merge::child_dir(self.store, dir, &name, &src).map_err(|e| self.err(e))?;
                self.walk_at(&d, &child_rel, f, depth + 1)?;
            }
        }
        Ok(())
    }

    fn err(&self, e: Errno) -> Error {
        Error::io(self.store.path(), io::Error::from_raw_os_error(e.code()))
    }

    fn deep(&self, rel: &[u8]) -> Error {
        Error::Invalid {
            what: "workspace tree",
            reason: format!(
                "{} is nested more than {MAX_TREE_DEPTH} directories deep; refusing to walk it",
                display_path(rel)
            ),
        }
    }
}

/// Whether `path` is selected by `filters` (empty = everything): equal to a
/// filter or below one.
fn selected(filters: &[Vec<u8>], path: &[u8]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            f.is_empty()
                || path == f.as_slice()
                || (path.starts_with(f) && path.get(f.len()) == Some(&b'/'))
        })
}

/// Whether the subtree at `dir` may contain selected paths.
fn may_contain_selected(filters: &[Vec<u8>], dir: &[u8]) -> bool {
    filters.is_empty()
        || dir.is_empty()
        || filters.iter().any(|f| {
            selected(std::slice::from_ref(f), dir)
                || (f.starts_with(dir) && f.get(dir.len()) == Some(&b'/'))
        })
}

/// Computes the changes of a workspace, sorted by path.
pub fn compute(view: &View<'_>, filters: &[Vec<u8>]) -> Result<Vec<Change>> {
    let root = merge::root(view.store).map_err(|e| view.err(e))?;
    let mut out = Vec::new();
    diff_dir(view, &root, b"", filters, &mut out, 0).map_err(|e| match e {
        Errno::ELOOP => view.deep(b"a directory"),
        e => view.err(e),
    })?;
    out.sort_by(|a, b| a.raw_path.cmp(&b.raw_path));
    Ok(out)
}

fn new_change(path: &[u8], kind: ChangeKind) -> Change {
    let lossy = String::from_utf8_lossy(path);
    Change {
        path: lossy.clone().into_owned(),
        path_bytes: match lossy {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(_) => Some(path.to_vec()),
        },
        kind,
        content: false,
        mode: false,
        old: None,
        new: None,
        raw_path: path.to_vec(),
        source: None,
        insertions: None,
        deletions: None,
        binary: false,
    }
}

fn diff_dir(
    view: &View<'_>,
    dir: &merge::Dir,
    rel: &[u8],
    filters: &[Vec<u8>],
    out: &mut Vec<Change>,
    depth: usize,
) -> OpResult<()> {
    too_deep(depth)?;
    if dir.delta.is_none() && dir.lower.as_deref() == Some(rel) {
        // Untouched base subtree at its own path: identical by construction.
        return Ok(());
    }
    if !may_contain_selected(filters, rel) {
        return Ok(());
    }
    let merged: BTreeMap<Vec<u8>, Source> = merge::list(view.store, view.base, dir)?
        .into_iter()
        .collect();
    let base_is_dir = view.base.stat(rel)?.is_some_and(|s| s.is_dir());
    let base_names: HashSet<Vec<u8>> = if base_is_dir {
        view.base
            .read_dir(rel)?
            .into_iter()
            .map(|e| e.name)
            .collect()
    } else {
        HashSet::new()
    };
    let mut names: Vec<&Vec<u8>> = merged.keys().chain(base_names.iter()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let child_rel = join_rel(rel, name);
        let m = merged.get(name);
        let b = if base_names.contains(name) {
            view.base.stat(&child_rel)?
        } else {
            None
        };
        match (m, b) {
            (None, None) => {}
            (None, Some(b)) => deleted(view, &child_rel, &b, filters, out, depth + 1)?,
            (Some(m), None) => added(view, dir, name, &child_rel, m, filters, out, depth + 1)?,
            (Some(m), Some(b)) => {
                if let Source::Base { rel: r, .. } = m
                    && r == &child_rel
                {
                    continue;
                }
                let mi = view.info(m)?;
                if mi.kind != b.file_type() {
                    if mi.kind != libc::S_IFDIR && !b.is_dir() {
                        if selected(filters, &child_rel) {
                            let target = base_target(view, &child_rel, &b)?;
                            let mut c = new_change(&child_rel, ChangeKind::Modified);
                            c.content = true;
                            c.mode = mi.mode != b.mode & 0o7777;
                            c.old = Some(info_from_base(&b, target));
                            c.new = Some(mi);
                            c.source = Some(m.clone());
                            out.push(c);
                        }
                    } else {
                        deleted(view, &child_rel, &b, filters, out, depth + 1)?;
                        added(view, dir, name, &child_rel, m, filters, out, depth + 1)?;
                    }
                    continue;
                }
                let mode = mi.mode != b.mode & 0o7777;
                if mi.kind == libc::S_IFDIR {
                    if mode && selected(filters, &child_rel) {
                        let mut c = new_change(&child_rel, ChangeKind::Modified);
                        c.mode = true;
                        c.old = Some(info_from_base(&b, None));
                        c.new = Some(mi);
                        c.source = Some(m.clone());
                        out.push(c);
                    }
                    let d = merge::child_dir(view.store, dir, name, m)?;
                    diff_dir(view, &d, &child_rel, filters, out, depth + 1)?;
                    continue;
                }
                if !selected(filters, &child_rel) {
                    continue;
                }
                let target = base_target(view, &child_rel, &b)?;
                let content = match mi.kind {
                    libc::S_IFREG => file_differs(view, m, &mi, &child_rel, &b)?,
                    libc::S_IFLNK => mi.target_bytes != target,
                    _ => mi.rdev != b.rdev,
                };
                if content || mode {
                    let mut c = new_change(&child_rel, ChangeKind::Modified);
                    c.content = content;
                    c.mode = mode;
                    c.old = Some(info_from_base(&b, target));
                    c.new = Some(mi);
                    c.source = Some(m.clone());
                    out.push(c);
                }
            }
        }
    }
    Ok(())
}

fn base_target(view: &View<'_>, rel: &[u8], st: &BaseStat) -> OpResult<Option<Vec<u8>>> {
    if st.file_type() == libc::S_IFLNK {
        Ok(Some(view.base.readlink(rel)?))
    } else {
        Ok(None)
    }
}

fn file_differs(
    view: &View<'_>,
    m: &Source,
    mi: &EntryInfo,
    rel: &[u8],
    b: &BaseStat,
) -> OpResult<bool> {
    if mi.size != b.size {
        return Ok(true);
    }
    if let Source::Delta { ino, .. } = m
        && view.store.metacopy(*ino)?.as_deref() == Some(rel)
    {
        // Metadata-only copy of this very file: same bytes.
        return Ok(false);
    }
    let mut a = view.reader(m)?;
    let mut bf = view.base.open_file(rel)?;
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut bf, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(true);
        }
        if na == 0 {
            return Ok(false);
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> OpResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn deleted(
    view: &View<'_>,
    rel: &[u8],
    st: &BaseStat,
    filters: &[Vec<u8>],
    out: &mut Vec<Change>,
    depth: usize,
) -> OpResult<()> {
    too_deep(depth)?;
    if selected(filters, rel) {
        let target = base_target(view, rel, st)?;
        let mut c = new_change(rel, ChangeKind::Deleted);
        c.content = true;
        c.old = Some(info_from_base(st, target));
        out.push(c);
    }
    if st.is_dir() && may_contain_selected(filters, rel) {
        let mut entries = view.base.read_dir(rel)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let child = join_rel(rel, &e.name);
            if let Some(cst) = view.base.stat(&child)? {
                deleted(view, &child, &cst, filters, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn added(
    view: &View<'_>,
    dir: &merge::Dir,
    name: &[u8],
    rel: &[u8],
    src: &Source,
    filters: &[Vec<u8>],
    out: &mut Vec<Change>,
    depth: usize,
) -> OpResult<()> {
    too_deep(depth)?;
    let info = view.info(src)?;
    let is_dir = info.kind == libc::S_IFDIR;
    if selected(filters, rel) {
        let mut c = new_change(rel, ChangeKind::Added);
        c.content = true;
        c.new = Some(info);
        c.source = Some(src.clone());
        out.push(c);
    }
    if is_dir && may_contain_selected(filters, rel) {
        let d = merge::child_dir(view.store, dir, name, src)?;
        let mut entries = merge::list(view.store, view.base, &d)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (n, s) in entries {
            added(
                view,
                &d,
                &n,
                &join_rel(rel, &n),
                &s,
                filters,
                out,
                depth + 1,
            )?;
        }
    }
    Ok(())
}

// ----- rendering -----

/// A path as it may be shown on a terminal: quoted and escaped as git does when
/// it holds control characters, quotes, backslashes or non-ASCII bytes, so an
/// agent-chosen name can never carry terminal escapes or line breaks.
pub fn display_path(raw: &[u8]) -> String {
    quote_path("", raw)
}

/// Quotes a path the way git does when it has unusual bytes.
pub fn quote_path(prefix: &str, path: &[u8]) -> String {
    let needs = path
        .iter()
        .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\');
    if !needs {
        return format!("{prefix}{}", String::from_utf8_lossy(path));
    }
    let mut s = String::from("\"");
    s.push_str(prefix);
    for &b in path {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s.push('"');
    s
}

fn git_mode(info: &EntryInfo) -> u32 {
    match info.kind {
        libc::S_IFLNK => 0o120000,
        k => k | info.mode,
    }
}

fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(8000)].contains(&0)
}

/// Bytes a side of a change shows in a patch: file content or link target.
fn side_bytes(
    view: &View<'_>,
    info: &EntryInfo,
    src: Option<&Source>,
    rel: &[u8],
) -> Result<Option<Vec<u8>>> {
    match info.kind {
        libc::S_IFLNK => Ok(info.target_bytes.clone()),
        libc::S_IFREG => {
            let src = match src {
                Some(s) => s.clone(),
                None => Source::Base {
                    rel: rel.to_vec(),
                    kind: libc::S_IFREG,
                    ino: 0,
                },
            };
            view.read_all(&src, BINARY_PATCH_LIMIT)
                .map_err(|e| view.err(e))
        }
        _ => Ok(Some(Vec::new())),
    }
}

/// Writes the changes as a git-style unified diff (what `git apply` and
/// `patch -p1` accept). Fills in line counts.
pub fn render_patch(view: &View<'_>, changes: &mut [Change], w: &mut dyn Write) -> Result<()> {
    let io_err = |e: io::Error| Error::io(PathBuf::from("<output>"), e);
    for c in changes.iter_mut() {
        // Git patches have no directories; type changes become delete + add.
        let old = c.old.clone().filter(|i| i.kind != libc::S_IFDIR);
        let new = c.new.clone().filter(|i| i.kind != libc::S_IFDIR);
        if old.is_none() && new.is_none() {
            continue;
        }
        if let (Some(o), Some(n)) = (&old, &new)
            && o.kind != n.kind
        {
            let mut del = c.clone();
            del.kind = ChangeKind::Deleted;
            del.new = None;
            del.source = None;
            let mut add = c.clone();
            add.kind = ChangeKind::Added;
            add.old = None;
            render_one(view, &mut del, Some(o), None, w).map_err(io_err)?;
            render_one(view, &mut add, None, Some(n), w).map_err(io_err)?;
            c.insertions = add.insertions;
            c.deletions = del.deletions;
            c.binary = add.binary || del.binary;
            continue;
        }
        render_one(view, c, old.as_ref(), new.as_ref(), w).map_err(io_err)?;
    }
    Ok(())
}

fn render_one(
    view: &View<'_>,
    c: &mut Change,
    old: Option<&EntryInfo>,
    new: Option<&EntryInfo>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let a = quote_path("a/", &c.raw_path);
    let b = quote_path("b/", &c.raw_path);
    writeln!(w, "diff --git {a} {b}")?;
    match (old, new) {
        (None, Some(n)) => writeln!(w, "new file mode {:06o}", git_mode(n))?,
        (Some(o), None) => writeln!(w, "deleted file mode {:06o}", git_mode(o))?,
        (Some(o), Some(n)) if git_mode(o) != git_mode(n) => {
            writeln!(w, "old mode {:06o}", git_mode(o))?;
            writeln!(w, "new mode {:06o}", git_mode(n))?;
        }
        _ => {}
    }
    let content = old.is_none() || new.is_none() || c.content;
    if !content {
        return Ok(());
    }
    let to_io = |e: Error| io::Error::other(e.to_string());
    let old_bytes = match old {
        Some(o) => side_bytes(view, o, None, &c.raw_path).map_err(to_io)?,
        None => Some(Vec::new()),
    };
    let new_bytes = match new {
        Some(n) => side_bytes(view, n, c.source.as_ref(), &c.raw_path).map_err(to_io)?,
        None => Some(Vec::new()),
    };
    let (old_label, new_label) = (
        if old.is_some() {
            a.clone()
        } else {
            "/dev/null".into()
        },
        if new.is_some() {
            b.clone()
        } else {
            "/dev/null".into()
        },
    );
    let (Some(ob), Some(nb)) = (old_bytes, new_bytes) else {
        c.binary = true;
        writeln!(w, "Binary files {old_label} and {new_label} differ")?;
        tracing::warn!(path = %c.path, "file larger than {} MiB left out of the patch; export as tar to carry it", BINARY_PATCH_LIMIT >> 20);
        return Ok(());
    };
    if is_binary(&ob)
        || is_binary(&nb)
        || ob.len() as u64 > TEXT_DIFF_LIMIT
        || nb.len() as u64 > TEXT_DIFF_LIMIT
    {
        c.binary = true;
        let mode = match (old, new) {
            (Some(o), Some(n)) if git_mode(o) == git_mode(n) => format!(" {:06o}", git_mode(n)),
            _ => String::new(),
        };
        let old_id = if old.is_some() {
            git_blob_id(&ob)
        } else {
            ZERO_ID.into()
        };
        let new_id = if new.is_some() {
            git_blob_id(&nb)
        } else {
            ZERO_ID.into()
        };
        writeln!(w, "index {old_id}..{new_id}{mode}")?;
        writeln!(w, "GIT binary patch")?;
        write_binary_literal(w, &nb)?;
        write_binary_literal(w, &ob)?;
        return Ok(());
    }
    if ob.is_empty() && nb.is_empty() {
        c.insertions = Some(0);
        c.deletions = Some(0);
        return Ok(());
    }
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(10))
        .diff_lines(ob.as_slice(), nb.as_slice());
    writeln!(w, "--- {old_label}")?;
    writeln!(w, "+++ {new_label}")?;
    let (mut ins, mut del) = (0u64, 0u64);
    let udiff = diff.unified_diff();
    for hunk in udiff.iter_hunks() {
        for ch in hunk.iter_changes() {
            match ch.tag() {
                similar::ChangeTag::Insert => ins += 1,
                similar::ChangeTag::Delete => del += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        hunk.to_writer(&mut *w)?;
    }
    c.insertions = Some(ins);
    c.deletions = Some(del);
    Ok(())
}

/// Git's object id of a blob with these bytes.
pub fn git_blob_id(data: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Git's base85 alphabet (different from RFC 1924 and Ascii85).
const BASE85: &[u8; 85] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

/// Writes one `literal` hunk of a git binary patch: zlib-deflated bytes in lines
/// of up to 52 bytes, each prefixed by its length ('A'..'Z' = 1..26, 'a'..'z' = 27..52).
fn write_binary_literal(w: &mut dyn Write, data: &[u8]) -> io::Result<()> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data)?;
    let deflated = z.finish()?;
    writeln!(w, "literal {}", data.len())?;
    for line in deflated.chunks(52) {
        let len = line.len() as u8;
        let prefix = if len <= 26 {
            b'A' + len - 1
        } else {
            b'a' + len - 27
        };
        let mut out = vec![prefix];
        for group in line.chunks(4) {
            let mut v: u32 = 0;
            for i in 0..4 {
                v = (v << 8) | u32::from(*group.get(i).unwrap_or(&0));
            }
            let mut chars = [0u8; 5];
            for c in chars.iter_mut().rev() {
                *c = BASE85[(v % 85) as usize];
                v /= 85;
            }
            out.extend_from_slice(&chars);
        }
        out.push(b'\n');
        w.write_all(&out)?;
    }
    writeln!(w)
}

// ----- apply -----

/// Options of `apply`.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Overwrite host changes made since the overlay first saw a file.
    pub force: bool,
    /// Apply the non-conflicting changes even if some conflict.
    pub skip_conflicts: bool,
    /// Also apply changes to git configuration and hooks (see [`protected`]).
    pub allow_git_config: bool,
}

/// Why a path is refused by default: files that make the host run code the
/// agent wrote the next time a human uses the repository, and that nobody reads
/// in a diff. `.git/config` (`core.fsmonitor`, `core.sshCommand`, aliases,
/// filters), `.git/hooks/**`, the same inside submodules (`.git/modules/**`), and
/// `.git` itself turning into something other than a directory (a redirected
/// `gitdir`).
pub fn protected(c: &Change) -> Option<&'static str> {
    let parts: Vec<&[u8]> = c.raw_path.split(|&b| b == b'/').collect();
    let git = parts.iter().position(|p| *p == b".git")?;
    let rest = &parts[git + 1..];
    let reason = "git configuration and hooks make the host run code; review them, then pass --allow-git-config";
    if rest.is_empty() {
        let is_dir = |i: &Option<EntryInfo>| i.as_ref().is_none_or(|i| i.kind == libc::S_IFDIR);
        return (!is_dir(&c.old) || !is_dir(&c.new)).then_some(reason);
    }
    let hooks_or_config = |r: &[&[u8]]| r.first() == Some(&&b"hooks"[..]) || r == [&b"config"[..]];
    if hooks_or_config(rest) {
        return Some(reason);
    }
    if rest.first() == Some(&&b"modules"[..])
        && (rest.contains(&&b"hooks"[..]) || rest.last() == Some(&&b"config"[..]))
    {
        return Some(reason);
    }
    None
}

/// One line of an apply report.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyItem {
    pub path: String,
    /// The exact path bytes (for display with [`display_path`]).
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    /// "write", "delete", "mkdir", "rmdir", "symlink", "mkfifo", "chmod".
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A path `apply` refused or could not write.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyProblem {
    pub path: String,
    #[serde(skip)]
    pub raw_path: Vec<u8>,
    pub reason: String,
}

/// What `apply` did (or would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    pub dry_run: bool,
    pub applied: Vec<ApplyItem>,
    pub conflicts: Vec<ApplyProblem>,
    pub skipped: Vec<ApplyProblem>,
    pub failed: Vec<ApplyProblem>,
}

fn sha256_of(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().to_vec());
        }
        h.update(&buf[..n]);
    }
}

/// Why applying `rel` would overwrite a host change, if it would.
fn conflict(view: &View<'_>, rel: &[u8], session_start_ns: i64) -> OpResult<Option<String>> {
    let now = view.base.stat(rel)?;
    let seen = view.store.seen(rel)?;
    Ok(match (seen, now) {
        (None, None) => None,
        (None, Some(st)) if st.is_dir() => None,
        (None, Some(st)) => (st.ctime_ns() > session_start_ns)
            .then(|| "changed on the host during the session".to_string()),
        (Some(_), None) => Some("deleted on the host since the agent saw it".into()),
        (Some(s), Some(st)) => {
            let same = s.size == st.size
                && s.mtime_ns == st.mtime_ns()
                && s.ctime_ns == st.ctime_ns()
                && s.ino == st.ino
                && s.kind == st.file_type();
            if same {
                None
            } else if let (Some(hash), true) = (&s.sha256, st.is_reg()) {
                let mut f = view.base.open_file(rel)?;
                let now_hash = sha256_of(&mut f)?;
                (&now_hash != hash)
                    .then(|| "changed on the host since the agent first read it".into())
            } else {
                Some("changed on the host since the agent first read it".into())
            }
        }
    })
}

/// Confined writer into the base directory.
struct Writer {
    root: OwnedFd,
}

impl Writer {
    fn open(base: &Base) -> OpResult<Self> {
        // The base's pinned descriptor, not its path: a path could be swapped for
        // a symlink between open and apply.
        Ok(Writer {
            root: base.root_fd()?,
        })
    }

    fn dir(&self, rel_dir: &[u8]) -> OpResult<OwnedFd> {
        let p: &[u8] = if rel_dir.is_empty() { b"." } else { rel_dir };
        Ok(rustix::fs::openat2(
            &self.root,
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            CONFINED,
        )?)
    }

    fn remove(&self, rel: &[u8], dir: bool) -> OpResult<()> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&fd, name, flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn mkdir(&self, rel: &[u8], mode: u32) -> OpResult<()> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.chmod(rel, mode)
    }

    /// Changes the mode of a host file or directory. A regular file with more
    /// than one link is rewritten as a new inode first, so that files hard-linked
    /// to it elsewhere (a pnpm store, say) keep their mode; the overlay showed
    /// base hard links as separate files, and apply keeps that promise.
    fn chmod(&self, rel: &[u8], mode: u32) -> OpResult<()> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        let f = rustix::fs::openat2(
            &fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            CONFINED,
        )?;
        let st = rustix::fs::fstat(&f)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Err(Errno::EINVAL);
        }
        if kind == libc::S_IFREG && st.st_nlink > 1 {
            let mut content = File::from(rustix::fs::openat2(
                &fd,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
                CONFINED,
            )?);
            let mtime = Some((st.st_mtime, st.st_mtime_nsec as u32));
            self.write(rel, mode, &mut content, mtime)?;
            return Ok(());
        }
        // fchmod() refuses O_PATH descriptors; the /proc link reaches the very
        // inode opened above (checked not to be a symlink), readable or not.
        let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
        rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Writes a file atomically: a temporary in the same directory, then rename.
    fn write(
        &self,
        rel: &[u8],
        mode: u32,
        content: &mut dyn Read,
        mtime: Option<(i64, u32)>,
    ) -> OpResult<(Vec<u8>, BaseStat)> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        let mut tmp_name = b".cordon-apply-".to_vec();
        tmp_name.extend_from_slice(format!("{}-", std::process::id()).as_bytes());
        tmp_name.extend_from_slice(&name[..name.len().min(200)]);
        let _ = rustix::fs::unlinkat(&fd, tmp_name.as_slice(), AtFlags::empty());
        let f = rustix::fs::openat2(
            &fd,
            tmp_name.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            CONFINED,
        )?;
        let mut file = File::from(f);
        let result = (|| -> OpResult<Vec<u8>> {
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = content.read(&mut buf).map_err(Errno::from)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(Errno::from)?;
            }
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
            if let Some((sec, nsec)) = mtime {
                let t = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: sec,
                        tv_nsec: nsec as _,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: sec,
                        tv_nsec: nsec as _,
                    },
                };
                rustix::fs::futimens(&file, &t)?;
            }
            file.sync_all().map_err(Errno::from)?;
            rustix::fs::renameat(&fd, tmp_name.as_slice(), &fd, name)?;
            Ok(h.finalize().to_vec())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&fd, tmp_name.as_slice(), AtFlags::empty());
        }
        let sha = result?;
        let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let st = crate::base::Base::stat_raw(&st);
        Ok((sha, st))
    }

    fn symlink(&self, rel: &[u8], target: &[u8]) -> OpResult<()> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        let mut tmp = b".cordon-apply-link-".to_vec();
        tmp.extend_from_slice(&name[..name.len().min(200)]);
        let _ = rustix::fs::unlinkat(&fd, tmp.as_slice(), AtFlags::empty());
        rustix::fs::symlinkat(target, &fd, tmp.as_slice())?;
        if let Err(e) = rustix::fs::renameat(&fd, tmp.as_slice(), &fd, name) {
            let _ = rustix::fs::unlinkat(&fd, tmp.as_slice(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(())
    }

    fn mkfifo(&self, rel: &[u8], mode: u32) -> OpResult<()> {
        let (d, name) = split_rel(rel);
        let fd = self.dir(d)?;
        let _ = rustix::fs::unlinkat(&fd, name, AtFlags::empty());
        rustix::fs::mknodat(
            &fd,
            name,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(mode),
            0,
        )?;
        Ok(())
    }
}

/// Whether applying `c` removes what the base has at its path: a deletion, or
/// the old side of a type change. `detach` and the removal step of `apply` must
/// agree on this, or apply could remove a base path the workspace still reads.
fn removes_base_entry(c: &Change) -> bool {
    c.old.is_some()
        && (c.kind == ChangeKind::Deleted
            || c.new.as_ref().map(|n| n.kind) != c.old.as_ref().map(|o| o.kind))
}

/// Whether `rel` is one of `removed` or below one, or one of `written`.
fn touched(rel: &[u8], removed: &[Vec<u8>], written: &HashSet<Vec<u8>>) -> bool {
    written.contains(rel)
        || removed
            .iter()
            .any(|r| rel == r.as_slice() || (rel.starts_with(r) && rel.get(r.len()) == Some(&b'/')))
}

/// Copies a base object (recursively for directories) into delta directory
/// `parent` under `name`, keeping the node id it had.
fn copy_base_into(
    view: &View<'_>,
    parent: i64,
    name: &[u8],
    rel: &[u8],
    depth: usize,
) -> OpResult<()> {
    too_deep(depth)?;
    let Some(st) = view.base.stat(rel)? else {
        return Ok(());
    };
    let row = crate::store::InodeRow {
        ino: 0,
        mode: st.mode,
        nlink: if st.is_dir() { 2 } else { 1 },
        uid: st.uid,
        gid: st.gid,
        size: if st.is_dir() { 0 } else { st.size },
        atime: crate::store::Timestamp {
            sec: st.atime.0,
            nsec: st.atime.1,
        },
        mtime: crate::store::Timestamp {
            sec: st.mtime.0,
            nsec: st.mtime.1,
        },
        ctime: crate::store::Timestamp {
            sec: st.ctime.0,
            nsec: st.ctime.1,
        },
        rdev: st.rdev,
    };
    let s = view.store;
    let ino = s.insert_inode(&row)?;
    s.insert_dentry(parent, name, ino)?;
    s.set_origin(ino, crate::overlay::base_node_id(view.base.dev(), rel, &st))?;
    for (k, v) in view.base.user_xattrs(rel, st.file_type())? {
        s.set_xattr(ino, &k, &v)?;
    }
    match st.file_type() {
        libc::S_IFREG => {
            let f = view.base.open_file(rel)?;
            s.fill_from(ino, &f, st.size)?;
        }
        libc::S_IFLNK => s.set_symlink_target(ino, &view.base.readlink(rel)?)?,
        libc::S_IFDIR => {
            s.set_dir_control(ino, true, None)?;
            let mut subdirs = 0;
            for e in view.base.read_dir(rel)? {
                let child = join_rel(rel, &e.name);
                if view.base.stat(&child)?.is_some_and(|c| c.is_dir()) {
                    subdirs += 1;
                }
                copy_base_into(view, ino, &e.name, &child, depth + 1)?;
            }
            let mut r = s.inode_req(ino)?;
            r.nlink = 2 + subdirs;
            s.update_inode(&r)?;
        }
        _ => {}
    }
    Ok(())
}

/// Makes a merged directory self-contained: every entry it still reads from the
/// base is copied into the delta, then the directory stops merging with the base.
fn materialize_dir(view: &View<'_>, dir: &merge::Dir, depth: usize) -> OpResult<()> {
    too_deep(depth)?;
    let Some(ino) = dir.delta else { return Ok(()) };
    for (name, src) in merge::list(view.store, view.base, dir)? {
        match &src {
            Source::Base { rel, .. } => copy_base_into(view, ino, &name, rel, depth + 1)?,
            Source::Delta { ino: child, mode } => {
                if mode & libc::S_IFMT == libc::S_IFDIR {
                    let d = merge::child_dir(view.store, dir, &name, &src)?;
                    if d.lower.is_some() {
                        materialize_dir(view, &d, depth + 1)?;
                    }
                } else if let Some(rel) = view.store.metacopy(*child)? {
                    materialize_file(view, *child, &rel)?;
                }
            }
        }
    }
    view.store.set_dir_control(ino, true, None)?;
    view.store.delete_whiteouts_below(&dir.path)
}

/// Copies the bytes of a metacopy into the delta.
fn materialize_file(view: &View<'_>, ino: i64, rel: &[u8]) -> OpResult<()> {
    let row = view.store.inode_req(ino)?;
    let f = view.base.open_file(rel)?;
    view.store.fill_from(ino, &f, row.size)?;
    view.store.clear_metacopy(ino)
}

/// Before the host changes, copies into the delta whatever the merged view still
/// reads from base paths this apply removes or overwrites (moved files and
/// directories), so the workspace shows the same tree afterwards and no content
/// is read from a path already rewritten.
fn detach(view: &View<'_>, changes: &[Change]) -> OpResult<()> {
    let removed: Vec<Vec<u8>> = changes
        .iter()
        .filter(|c| removes_base_entry(c))
        .map(|c| c.raw_path.clone())
        .collect();
    let written: HashSet<Vec<u8>> = changes
        .iter()
        .filter(|c| c.new.is_some() && c.content)
        .map(|c| c.raw_path.clone())
        .collect();
    view.store.tx(|s| {
        let _ = s;
        let all: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_path.clone()).collect();
        for (ino, redirect) in view.store.redirects()? {
            // A redirected directory shows the base directory's current entries,
            // so any change at, above or below it would show through.
            let related = all.iter().any(|p| {
                let under = |a: &[u8], b: &[u8]| {
                    a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'))
                };
                under(p, &redirect) || under(&redirect, p)
            });
            // An enclosing redirect materialized earlier in this loop may have made
            // this one self-contained already; its old lower must not be read again.
            let (opaque, current) = view.store.dir_control(ino)?;
            if related && !opaque && current.as_deref() == Some(redirect.as_slice()) {
                let path = view.store.dir_path(ino)?;
                let dir = merge::Dir {
                    delta: Some(ino),
                    lower: Some(redirect),
                    path,
                };
                materialize_dir(view, &dir, 0)?;
            }
        }
        for (ino, rel) in view.store.metacopies()? {
            if touched(&rel, &removed, &written) {
                materialize_file(view, ino, &rel)?;
            }
        }
        Ok(())
    })
}

/// Applies the changes selected by `filters` to the base. Call with the
/// workspace's mount lock held (unless `dry_run`): the delta may be rewritten.
/// `progress(done, total)` is called as it goes.
pub fn apply(
    view: &View<'_>,
    filters: &[Vec<u8>],
    opts: &ApplyOptions,
    session_start_ns: i64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ApplyReport> {
    let werr = |e: Errno| Error::io(view.base.path(), io::Error::from_raw_os_error(e.code()));
    let mut changes = compute(view, filters)?;
    let mut report = ApplyReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // 1. Refusals: protected paths, then conflicts for every non-directory path
    //    that would be written or removed.
    let mut blocked: HashSet<Vec<u8>> = HashSet::new();
    if !opts.allow_git_config {
        for c in &changes {
            if let Some(reason) = protected(c) {
                report.conflicts.push(ApplyProblem {
                    path: c.path.clone(),
                    raw_path: c.raw_path.clone(),
                    reason: reason.into(),
                });
                blocked.insert(c.raw_path.clone());
            }
        }
    }
    if !opts.force {
        for c in &changes {
            if blocked.contains(&c.raw_path) {
                continue;
            }
            let is_dir_only = c.old.as_ref().is_none_or(|o| o.kind == libc::S_IFDIR)
                && c.new.as_ref().is_none_or(|n| n.kind == libc::S_IFDIR);
            if is_dir_only {
                continue;
            }
            if let Some(reason) = conflict(view, &c.raw_path, session_start_ns).map_err(werr)? {
                report.conflicts.push(ApplyProblem {
                    path: c.path.clone(),
                    raw_path: c.raw_path.clone(),
                    reason,
                });
                blocked.insert(c.raw_path.clone());
            }
        }
    }
    if !blocked.is_empty() && !opts.skip_conflicts {
        return Ok(report);
    }
    if !opts.dry_run && !changes.is_empty() {
        detach(view, &changes).map_err(werr)?;
        changes = compute(view, filters)?;
    }
    let writer = Writer::open(view.base).map_err(werr)?;
    let total = changes.len() as u64;
    let mut done = 0u64;
    let fail = |report: &mut ApplyReport, c: &Change, e: Errno| {
        report.failed.push(ApplyProblem {
            path: c.path.clone(),
            raw_path: c.raw_path.clone(),
            reason: e.to_string(),
        })
    };
    // 2. Removals, deepest first: deleted paths and the old side of type changes.
    let mut removals: Vec<&Change> = changes.iter().filter(|c| removes_base_entry(c)).collect();
    removals.sort_by(|a, b| b.raw_path.cmp(&a.raw_path));
    for c in &removals {
        if blocked.contains(&c.raw_path) {
            continue;
        }
        let is_dir = c.old.as_ref().is_some_and(|o| o.kind == libc::S_IFDIR);
        let action = if is_dir { "rmdir" } else { "delete" };
        if !opts.dry_run {
            if let Err(e) = writer.remove(&c.raw_path, is_dir) {
                fail(&mut report, c, e);
                continue;
            }
            if !is_dir {
                let _ = view.store.forget_seen(&c.raw_path);
            }
        }
        report.applied.push(ApplyItem {
            path: c.path.clone(),
            raw_path: c.raw_path.clone(),
            action,
            note: None,
        });
        done += 1;
        progress(done, total);
    }
    // 3. Creations and modifications, parents first.
    let mut writes: Vec<&Change> = changes.iter().filter(|c| c.new.is_some()).collect();
    writes.sort_by(|a, b| a.raw_path.cmp(&b.raw_path));
    for c in writes {
        let Some(n) = &c.new else { continue };
        if blocked.contains(&c.raw_path) {
            continue;
        }
        let mut mode = n.mode & 0o7777;
        let mut note = None;
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 && n.kind != libc::S_IFDIR {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
            note = Some("set-user/group-id bits removed".to_string());
        }
        let type_changed = c.old.as_ref().is_some_and(|o| o.kind != n.kind);
        let action: &'static str = match n.kind {
            libc::S_IFDIR if c.old.is_some() && !type_changed => "chmod",
            libc::S_IFDIR => "mkdir",
            libc::S_IFREG if !c.content && c.old.is_some() => "chmod",
            libc::S_IFREG => "write",
            libc::S_IFLNK => "symlink",
            libc::S_IFIFO => "mkfifo",
            _ => {
                report.skipped.push(ApplyProblem {
                    path: c.path.clone(),
                    raw_path: c.raw_path.clone(),
                    reason: format!("{} nodes are never created on the host", n.kind_name),
                });
                continue;
            }
        };
        if !opts.dry_run {
            let r: OpResult<()> = match action {
                "mkdir" => writer.mkdir(&c.raw_path, mode),
                "chmod" => writer.chmod(&c.raw_path, mode).and_then(|()| {
                    // Keep what the overlay saw in step with the host, so a later
                    // apply does not see its own chmod as a host change.
                    let (Some(old), Some(st)) =
                        (view.store.seen(&c.raw_path)?, view.base.stat(&c.raw_path)?)
                    else {
                        return Ok(());
                    };
                    view.store.replace_seen(&SeenRow {
                        path: c.raw_path.clone(),
                        kind: st.file_type(),
                        size: st.size,
                        mtime_ns: st.mtime_ns(),
                        ctime_ns: st.ctime_ns(),
                        ino: st.ino,
                        sha256: old.sha256,
                    })
                }),
                "symlink" => {
                    writer.symlink(&c.raw_path, n.target_bytes.as_deref().unwrap_or_default())
                }
                "mkfifo" => writer.mkfifo(&c.raw_path, mode),
                _ => (|| {
                    let src = c.source.as_ref().ok_or(Errno::EIO)?;
                    let mut reader = view.reader(src)?;
                    let mtime = match src {
                        Source::Delta { ino, .. } => {
                            let r = view.store.inode_req(*ino)?;
                            Some((r.mtime.sec, r.mtime.nsec))
                        }
                        Source::Base { .. } => None,
                    };
                    let (sha, st) = writer.write(&c.raw_path, mode, &mut reader, mtime)?;
                    view.store.replace_seen(&SeenRow {
                        path: c.raw_path.clone(),
                        kind: st.file_type(),
                        size: st.size,
                        mtime_ns: st.mtime_ns(),
                        ctime_ns: st.ctime_ns(),
                        ino: st.ino,
                        sha256: Some(sha),
                    })
                })(),
            };
            if let Err(e) = r {
                fail(&mut report, c, e);
                continue;
            }
        }
        report.applied.push(ApplyItem {
            path: c.path.clone(),
            raw_path: c.raw_path.clone(),
            action,
            note,
        });
        done += 1;
        progress(done, total);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_like_git() {
        assert_eq!(quote_path("a/", b"src/main.rs"), "a/src/main.rs");
        assert_eq!(quote_path("a/", b"caf\xc3\xa9"), "\"a/caf\\303\\251\"");
        assert_eq!(quote_path("b/", b"t\"q"), "\"b/t\\\"q\"");
    }

    fn change(path: &[u8], old: Option<u32>, new: Option<u32>) -> Change {
        let info = |kind| EntryInfo {
            kind_name: kind_name(kind),
            kind,
            mode: 0o644,
            size: 0,
            uid: 0,
            gid: 0,
            target: None,
            target_bytes: None,
            rdev: 0,
        };
        let mut c = new_change(path, ChangeKind::Modified);
        c.old = old.map(info);
        c.new = new.map(info);
        c
    }

    #[test]
    fn git_configuration_and_hooks_are_protected() {
        let f = Some(libc::S_IFREG);
        let d = Some(libc::S_IFDIR);
        for p in [
            &b".git/config"[..],
            b".git/hooks/pre-commit",
            b"sub/.git/hooks",
            b".git/modules/lib/config",
            b".git/modules/lib/hooks/post-checkout",
        ] {
            assert!(
                protected(&change(p, None, f)).is_some(),
                "{}",
                display_path(p)
            );
        }
        assert!(protected(&change(b".git", d, Some(libc::S_IFLNK))).is_some());
        for p in [
            &b".git/objects/ab/cdef"[..],
            b".git/refs/heads/main",
            b".git/index",
            b"src/config",
            b"hooks/x",
        ] {
            assert!(
                protected(&change(p, None, f)).is_none(),
                "{}",
                display_path(p)
            );
        }
        assert!(protected(&change(b".git", d, d)).is_none());
    }

    #[test]
    fn displayed_paths_cannot_carry_terminal_controls() {
        let shown = display_path(b"a\x1b[2A\nb");
        assert!(!shown.contains('\x1b') && !shown.contains('\n'), "{shown}");
    }

    #[test]
    fn filters_select_paths_and_their_subtrees() {
        let f = vec![b"src".to_vec()];
        assert!(selected(&f, b"src"));
        assert!(selected(&f, b"src/a.rs"));
        assert!(!selected(&f, b"srcx"));
        assert!(may_contain_selected(&[b"src/a".to_vec()], b"src"));
        assert!(!may_contain_selected(&[b"src/a".to_vec()], b"lib"));
        assert!(selected(&[], b"anything"));
    }
}
