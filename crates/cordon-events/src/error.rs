//! The crate's one error type. Each variant names the file or value involved and,
//! where there is one, what to do about it.

use std::io;
use std::path::PathBuf;

use crate::verify::ProblemKind;

/// Everything that can go wrong writing or reading an event log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "event log {} already exists; resume it with EventLog::open_append, or use a new session directory",
        path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error(
        "{} exists but {} does not: the log of an earlier session in this directory was deleted; \
         use a new session directory (keep this one as evidence)",
        anchor.display(),
        log.display()
    )]
    StaleAnchor { anchor: PathBuf, log: PathBuf },

    #[error("no event log at {}; create one with EventLog::create", path.display())]
    NotFound { path: PathBuf },

    #[error("{} is not a regular file; refusing to use it as an event log", path.display())]
    NotAFile { path: PathBuf },

    #[error(
        "event log {} is already open for writing by another process; only one writer may append to a session's log",
        path.display()
    )]
    Locked { path: PathBuf },

    #[error(
        "refusing to append to {}: {message}{more}; run `cordon audit verify` on the session to see every problem",
        path.display(),
        more = if *others > 0 { format!(" (and {others} more problem(s))") } else { String::new() }
    )]
    Broken {
        path: PathBuf,
        /// 1-based line of the first problem (0 if it concerns the anchor file).
        line: u64,
        seq: Option<u64>,
        kind: ProblemKind,
        message: String,
        others: usize,
    },

    #[error("{} line {line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error(
        "{} line {line} is longer than {max} bytes without a newline; the file is corrupt or not an event log",
        path.display()
    )]
    LineTooLong {
        path: PathBuf,
        line: u64,
        max: usize,
    },

    #[error(
        "{} shrank from {from} to {to} bytes while it was being followed; the log was truncated or replaced — verify it",
        path.display()
    )]
    Shrunk { path: PathBuf, from: u64, to: u64 },

    #[error(
        "invalid event kind {kind:?}: use 1 to 128 characters from a-z, 0-9, '.', '_' and '-' (see cordon_events::kind)"
    )]
    InvalidKind { kind: String },

    #[error(
        "invalid session id {session:?}: use 1 to 256 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidSession { session: String },

    #[error(
        "only {written} of {len} bytes of event seq {seq} reached {}; the log now ends with a partial line, \
         so this writer refuses further appends — verify the log and start a new session",
        path.display()
    )]
    ShortWrite {
        path: PathBuf,
        seq: u64,
        written: usize,
        len: usize,
    },

    #[error(
        "event seq {seq} was appended to the log, but the anchor {} could not be updated: {source}; \
         the next successful append rewrites it",
        path.display()
    )]
    Anchor {
        seq: u64,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the event log writer for {} stopped after an earlier failure ({reason}); start a new session",
        path.display()
    )]
    WriterFailed { path: PathBuf, reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
