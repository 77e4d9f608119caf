//! The merge rules of the overlay, shared by the FUSE view and the diff walker.
//!
//! A merged directory is a delta directory (maybe none), a lower base directory
//! (maybe none) and its absolute overlay path (for whiteouts). Both
//! [`crate::overlay::Overlay`] and [`crate::changes`] resolve names through these
//! functions, so what `cordon diff` reports is exactly what the agent saw.

use std::collections::HashSet;

use std::os::fd::OwnedFd;

use crate::base::{Base, BaseStat, join_rel};
use crate::error::OpResult;
use crate::store::{ROOT_INO, Store, join_path};

/// Where a merged entry comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A delta inode and its mode.
    Delta { ino: i64, mode: u32 },
    /// A base path and its type bits (`S_IFMT`, 0 if unknown).
    Base { rel: Vec<u8>, kind: u32, ino: u64 },
}

impl Source {
    /// `S_IFMT` bits of the entry.
    pub fn kind(&self) -> u32 {
        match self {
            Source::Delta { mode, .. } => mode & libc::S_IFMT,
            Source::Base { kind, .. } => *kind,
        }
    }
}

/// A merged directory.
#[derive(Clone, Debug)]
pub struct Dir {
    pub delta: Option<i64>,
    pub lower: Option<Vec<u8>>,
    /// Absolute overlay path ("/" for the root).
    pub path: Vec<u8>,
}

/// The merged root of a workspace.
pub fn root(store: &Store) -> OpResult<Dir> {
    let (opaque, redirect) = store.dir_control(ROOT_INO)?;
    Ok(Dir {
        delta: Some(ROOT_INO),
        lower: if opaque {
            None
        } else {
            Some(redirect.unwrap_or_default())
        },
        path: b"/".to_vec(),
    })
}

/// The lower directory of delta directory `ino` named `name` in a directory whose
/// lower is `parent_lower`.
pub fn delta_dir_lower(
    store: &Store,
    ino: i64,
    parent_lower: Option<&[u8]>,
    name: &[u8],
) -> OpResult<Option<Vec<u8>>> {
    let (opaque, redirect) = store.dir_control(ino)?;
    Ok(if opaque {
        None
    } else if redirect.is_some() {
        redirect
    } else {
        parent_lower.map(|l| join_rel(l, name))
    })
}

/// Resolves one name: delta entry, else whiteout, else lower.
pub fn lookup(store: &Store, base: &Base, dir: &Dir, name: &[u8]) -> OpResult<Option<Source>> {
    Ok(lookup_at(store, base, dir, name, None)?.map(|(src, _)| src))
}

/// [`lookup`], also returning the `lstat` of a base entry. `lower_fd`, when
/// given, is `dir`'s lower directory opened by the caller for this one request
/// (a `readdirplus` resolves many names in one directory), which saves the
/// confined path walk from the base root per name.
pub fn lookup_at(
    store: &Store,
    base: &Base,
    dir: &Dir,
    name: &[u8],
    lower_fd: Option<&OwnedFd>,
) -> OpResult<Option<(Source, Option<BaseStat>)>> {
    if let Some(d) = dir.delta
        && let Some(ino) = store.dentry(d, name)?
    {
        let row = store.inode_req(ino)?;
        return Ok(Some((
            Source::Delta {
                ino,
                mode: row.mode,
            },
            None,
        )));
    }
    let Some(lower) = &dir.lower else {
        return Ok(None);
    };
    if dir.delta.is_some() && store.is_whiteout(&join_path(&dir.path, name))? {
        return Ok(None);
    }
    let rel = join_rel(lower, name);
    let st = match lower_fd {
        Some(fd) => base.stat_in(fd, name)?,
        None => base.stat(&rel)?,
    };
    Ok(st.map(|st| {
        (
            Source::Base {
                rel,
                kind: st.file_type(),
                ino: st.ino,
            },
            Some(st),
        )
    }))
}

/// Lists a merged directory (without "." and ".."): delta entries first, then the
/// lower entries they do not shadow and no whiteout hides.
pub fn list(store: &Store, base: &Base, dir: &Dir) -> OpResult<Vec<(Vec<u8>, Source)>> {
    let mut out = Vec::new();
    let mut names: HashSet<Vec<u8>> = HashSet::new();
    if let Some(d) = dir.delta {
        for e in store.list_dentries(d)? {
            names.insert(e.name.clone());
            out.push((
                e.name,
                Source::Delta {
                    ino: e.ino,
                    mode: e.mode,
                },
            ));
        }
    }
    if let Some(lower) = &dir.lower {
        let hidden: HashSet<Vec<u8>> = match dir.delta {
            Some(_) => store.whiteouts_in(&dir.path)?.into_iter().collect(),
            None => HashSet::new(),
        };
        for e in base.read_dir(lower)? {
            if names.contains(&e.name) || hidden.contains(&e.name) {
                continue;
            }
            let rel = join_rel(lower, &e.name);
            out.push((
                e.name,
                Source::Base {
                    rel,
                    kind: e.kind,
                    ino: e.ino,
                },
            ));
        }
    }
    Ok(out)
}

/// The merged directory for entry `name` (a directory) of `dir`.
pub fn child_dir(store: &Store, dir: &Dir, name: &[u8], src: &Source) -> OpResult<Dir> {
    let path = join_path(&dir.path, name);
    Ok(match src {
        Source::Delta { ino, .. } => Dir {
            delta: Some(*ino),
            lower: delta_dir_lower(store, *ino, dir.lower.as_deref(), name)?,
            path,
        },
        Source::Base { rel, .. } => Dir {
            delta: None,
            lower: Some(rel.clone()),
            path,
        },
    })
}
