//! Cordon's copy-on-write workspace store.
//!
//! An agent's view of a project is an overlay: reads fall through to the host
//! directory (the *base*), every change lands in one SQLite file (the *delta*),
//! and the host is untouched until a human runs `cordon apply`. This crate owns
//! that store, the FUSE server that presents it, and the operations on it: diff,
//! apply, export, snapshots and forks.
//!
//! It knows nothing about sandboxes or networks; `cordon-sandbox` mounts what this
//! crate serves.
//!
//! Layout:
//! - [`schema`]: the database layout (AgentFS 0.4 tables plus `cordon_*` tables).
//! - [`store`]: typed row access and chunked file data.
//! - [`base`]: confined, read-only access to the host directory.
//! - [`overlay`]: the merged view and copy-up rules, independent of FUSE.
//! - [`fuse`]: the FUSE server.
//! - [`workspace`]: workspaces on disk (data directory, ids, locks, snapshots, forks).
//! - [`changes`]: diff and apply.
//! - [`export`]: patch and tar export.
//! - [`vfs`]: the SQLite VFS that gathers WAL writes.

pub mod base;
pub mod changes;
pub mod error;
pub mod export;
pub mod fuse;
pub mod merge;
pub mod mount;
pub mod overlay;
pub mod schema;
pub mod store;
pub mod vfs;
pub mod workspace;

pub use error::{Errno, Error, OpResult, Result};
