//! Exporting a workspace: its changes as a patch, or its merged tree as a tar.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::changes::{self, View};
use crate::error::{Error, Result};
use crate::merge::{self, Source};

/// Writes the merged tree (what the agent sees) as a tar archive. Device nodes
/// and sockets are left out. `progress(entries)` is called as entries are added.
pub fn tar(view: &View<'_>, out: &mut dyn Write, progress: &mut dyn FnMut(u64)) -> Result<u64> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let root = merge::root(view.store)
        .map_err(|e| Error::io(view.store.path(), io::Error::from_raw_os_error(e.code())))?;
    let mut count = 0u64;
    let io_err = |e: io::Error| Error::io(PathBuf::from("<tar>"), e);
    view.walk(&root, b"", &mut |rel, src, info| {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(rel));
        let mut h = tar::Header::new_gnu();
        // Whoever extracts this (perhaps as root) must not get set-id programs or
        // the agent's owners: modes without set-id bits, owner root, like `git archive`.
        let mode = if info.kind == libc::S_IFDIR {
            info.mode
        } else {
            info.mode & !(libc::S_ISUID | libc::S_ISGID)
        };
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        let mtime = match src {
            Source::Delta { ino, .. } => view
                .store
                .inode_req(*ino)
                .map(|r| r.mtime.sec.max(0) as u64)
                .unwrap_or(0),
            Source::Base { rel, .. } => view
                .base
                .stat(rel)
                .ok()
                .flatten()
                .map(|s| s.mtime.0.max(0) as u64)
                .unwrap_or(0),
        };
        h.set_mtime(mtime);
        match info.kind {
            libc::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                builder
                    .append_data(&mut h, path, io::empty())
                    .map_err(io_err)?;
            }
            libc::S_IFREG => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(info.size);
                let reader = view
                    .reader(src)
                    .map_err(|e| Error::io(path, io::Error::from_raw_os_error(e.code())))?;
                // A file that shrank since it was stat'ed must not corrupt the archive.
                let reader = PadTo::new(reader, info.size);
                builder.append_data(&mut h, path, reader).map_err(io_err)?;
            }
            libc::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = info.target_bytes.clone().unwrap_or_default();
                let target = std::path::Path::new(std::ffi::OsStr::from_bytes(&target));
                builder.append_link(&mut h, path, target).map_err(io_err)?;
            }
            libc::S_IFIFO => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                builder
                    .append_data(&mut h, path, io::empty())
                    .map_err(io_err)?;
            }
            _ => return Ok(()),
        }
        count += 1;
        progress(count);
        Ok(())
    })?;
    builder.finish().map_err(io_err)?;
    Ok(count)
}

/// Reads exactly `len` bytes: truncates longer input and pads shorter with zeros.
struct PadTo<R> {
    inner: R,
    left: u64,
}

impl<R: io::Read> PadTo<R> {
    fn new(inner: R, len: u64) -> Self {
        PadTo { inner, left: len }
    }
}

impl<R: io::Read> io::Read for PadTo<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        let n = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the workspace's changes as a git-style patch.
pub fn patch(view: &View<'_>, filters: &[Vec<u8>], out: &mut dyn Write) -> Result<usize> {
    let mut list = changes::compute(view, filters)?;
    changes::render_patch(view, &mut list, out)?;
    Ok(list.len())
}
