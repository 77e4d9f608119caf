//! Errors of the workspace store.
//!
//! Two kinds of failure live here. [`Error`] is what a *command* sees (create a
//! workspace, diff it, apply it): every variant names the path or value involved
//! and, where there is one, says what to do about it. [`Errno`] is what a *file
//! system operation* sees: the overlay answers the kernel with POSIX error numbers,
//! and anything richer (a SQLite failure, say) is logged and folded into one.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A failure of a workspace-level operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base directory does not exist or is not a directory.
    #[error("base directory {path} does not exist or is not a directory")]
    BaseMissing { path: PathBuf },

    /// The base directory could not be opened.
    #[error("cannot open base directory {path}: {source}")]
    BaseOpen { path: PathBuf, source: io::Error },

    /// The data directory would be inside the base directory, where the agent could see it.
    #[error(
        "the data directory {data} is inside the base directory {base}; the agent would see its own \
         workspace store. Set CORDON_HOME to a directory outside the project"
    )]
    DataInsideBase { data: PathBuf, base: PathBuf },

    /// No workspace has this id.
    #[error("no workspace or session with id {id:?} (list them with `cordon workspace list`)")]
    UnknownWorkspace { id: String },

    /// More than one workspace matches an id prefix.
    #[error("id prefix {id:?} is ambiguous; it matches {matches}")]
    AmbiguousWorkspace { id: String, matches: String },

    /// The file is not a SQLite database at all.
    #[error(
        "{path} is not a Cordon workspace: the file is not a SQLite database (corrupt or foreign file)"
    )]
    NotADatabase { path: PathBuf },

    /// The file is a SQLite database, but not one of ours.
    #[error("{path} is not a Cordon workspace: {reason}")]
    ForeignDatabase { path: PathBuf, reason: String },

    /// The database was written by a newer Cordon.
    #[error(
        "{path} uses workspace schema version {found}, newer than this cordon supports ({supported}); upgrade cordon"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// SQLite reported damage inside the file.
    #[error("workspace database {path} is damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    /// The disk holding the workspace is full.
    #[error(
        "no space left on the device holding {path}; free some space and retry (nothing stored was lost)"
    )]
    DiskFull { path: PathBuf },

    /// Any other SQLite failure.
    #[error("workspace database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// The workspace is mounted by another process.
    #[error(
        "workspace {id} is mounted by process {pid}; unmount it first (Ctrl-C the `cordon workspace mount` process)"
    )]
    Mounted { id: String, pid: String },

    /// The mount point is missing.
    #[error("mount point {path} does not exist; create it with `mkdir -p {path}`", path = .path.display())]
    MountpointMissing { path: PathBuf },

    /// The mount point is unusable.
    #[error("mount point {path} is busy: {reason}")]
    MountpointBusy { path: PathBuf, reason: String },

    /// The mount point would make the file system read itself.
    #[error(
        "mount point {mountpoint} is inside the base directory {base}; the overlay would read through itself. \
         Choose a mount point outside the base"
    )]
    MountpointInsideBase { mountpoint: PathBuf, base: PathBuf },

    /// FUSE could not be used.
    #[error("cannot mount {path}: {source}{hint}")]
    Mount {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },

    /// A snapshot name is taken or malformed.
    #[error("snapshot {name:?}: {reason}")]
    Snapshot { name: String, reason: String },

    /// A path argument is not inside the workspace.
    #[error("path {path:?} is not a relative path inside the workspace")]
    BadPath { path: String },

    /// A configuration value is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl Error {
    /// Wraps a SQLite error on the database at `path`, turning the cases a user can act on
    /// into their own variants.
    pub fn sqlite(path: impl Into<PathBuf>, source: rusqlite::Error) -> Self {
        let path = path.into();
        if let rusqlite::Error::SqliteFailure(e, ref msg) = source {
            match e.code {
                rusqlite::ErrorCode::NotADatabase => return Error::NotADatabase { path },
                rusqlite::ErrorCode::DatabaseCorrupt => {
                    return Error::Corrupt {
                        path,
                        detail: msg.clone().unwrap_or_else(|| e.to_string()),
                    };
                }
                rusqlite::ErrorCode::DiskFull => return Error::DiskFull { path },
                _ => {}
            }
        }
        Error::Sqlite { path, source }
    }

    /// Wraps an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::DiskFull { path };
        }
        Error::Io { path, source }
    }
}

/// A POSIX error number returned by a file system operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    pub const ESTALE: Errno = Errno(libc::ESTALE);

    /// The raw number.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({} {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl From<rusqlite::Error> for Errno {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            match f.code {
                rusqlite::ErrorCode::DiskFull => return Errno::ENOSPC,
                rusqlite::ErrorCode::TooBig => return Errno::EFBIG,
                _ => {}
            }
        }
        tracing::error!(error = %e, "workspace database error");
        Errno::EIO
    }
}

/// Result of a file system operation.
pub type OpResult<T> = std::result::Result<T, Errno>;

/// Result of a workspace-level operation.
pub type Result<T> = std::result::Result<T, Error>;
