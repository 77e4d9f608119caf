//! [`EventLog`], the single writer of a session's log, and the anchor file it keeps.
//!
//! Appends are serialized by a mutex inside the process and by an exclusive `flock`
//! on the log across processes, so the chain never forks. Each event is one
//! `write(2)` of one complete line on an `O_APPEND` descriptor: a reader sees whole
//! lines, and a crash leaves at most one partial last line, which verification
//! reports. After each append the anchor `events.head` is overwritten in place
//! with the new event's seq and hash: one `pwrite` of a fixed-size record (JSON
//! padded with spaces), so it never changes length and costs one syscall (a
//! write-and-rename costs two orders of magnitude more on ext4, which flushes
//! the new file's data on a rename over an existing one). A crash between the
//! two writes leaves the anchor one event behind, which verification accepts.
//! Nothing is fsynced until [`EventLog::sync`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::event::{
    Event, bound_data, genesis_hash, is_violation, seal, validate_kind, validate_session,
};
use crate::read::open_log_with;
use crate::time::format_timestamp;
use crate::verify::{self, AnchorState};
use crate::{ANCHOR_FILE, LOG_FILE, MAX_EVENT_LINE};

/// Counts over the whole log (including events written before an
/// [`EventLog::open_append`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    /// Events whose kind [`crate::is_violation`].
    pub violations: u64,
}

/// Contents of `events.head`: the seq and hash of the last event written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

/// The append-only, hash-chained log of one session. See the crate documentation.
pub struct EventLog {
    dir: PathBuf,
    path: PathBuf,
    session: String,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    next_seq: u64,
    last_hash: String,
    stats: Stats,
    /// Set when the log may end with a partial line; no more appends after that.
    failed: Option<String>,
    /// The anchor file, opened on the first write.
    anchor: Option<File>,
}

impl EventLog {
    /// Creates `dir/events.jsonl` (which must not exist; mode 0600) for a new session
    /// and takes the writer lock. `dir` must exist.
    pub fn create(dir: &Path, session: &str) -> Result<EventLog> {
        validate_session(session)?;
        let path = dir.join(LOG_FILE);
        let anchor = dir.join(ANCHOR_FILE);
        if path.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists { path });
        }
        if anchor.symlink_metadata().is_ok() {
            return Err(Error::StaleAnchor { anchor, log: path });
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::AlreadyExists { path: path.clone() },
                _ => Error::io("create", &path, e),
            })?;
        lock(&file, &path)?;
        Ok(EventLog::from_parts(
            dir,
            path,
            session,
            file,
            0,
            genesis_hash(session),
            Stats::default(),
        ))
    }

    /// Opens an existing log to continue it (a resumed session). The whole log and
    /// its anchor are verified first; a log with any problem is refused with
    /// [`Error::Broken`] naming the first one, since appending would bless it.
    pub fn open_append(dir: &Path, session: &str) -> Result<EventLog> {
        validate_session(session)?;
        let path = dir.join(LOG_FILE);
        let file = open_log_with(OpenOptions::new().read(true).append(true), &path)?;
        // Lock before reading, so no other writer can move the end while we verify.
        lock(&file, &path)?;
        let anchor_path = dir.join(ANCHOR_FILE);
        let anchor = AnchorState::read(&anchor_path)?;
        // Reads go through the same descriptor (its offset starts at 0; O_APPEND only
        // affects writes), so the file verified is the file appended to.
        let outcome = verify::check(BufReader::new(&file), anchor.clone(), session)
            .map_err(|e| Error::io("read", &path, e))?;
        if let Some(first) = outcome.report.problems.first() {
            return Err(Error::Broken {
                path,
                line: first.line,
                seq: first.seq,
                kind: first.kind,
                message: first.message.clone(),
                others: outcome.report.problems.len() - 1,
            });
        }
        let (next_seq, last_hash) = match &outcome.tail {
            Some(tail) => (tail.seq + 1, tail.hash.clone()),
            None => (0, genesis_hash(session)),
        };
        let log =
            EventLog::from_parts(dir, path, session, file, next_seq, last_hash, outcome.stats);
        // Catch the anchor up if a crash left it one event behind.
        if let Some(tail) = outcome.tail
            && anchor != AnchorState::Valid(tail.clone())
        {
            let mut inner = log.lock_inner()?;
            write_anchor(&mut inner.anchor, dir, &tail).map_err(|source| Error::Anchor {
                seq: tail.seq,
                path: anchor_path,
                source,
            })?;
        }
        Ok(log)
    }

    fn from_parts(
        dir: &Path,
        path: PathBuf,
        session: &str,
        file: File,
        next_seq: u64,
        last_hash: String,
        stats: Stats,
    ) -> EventLog {
        EventLog {
            dir: dir.to_owned(),
            path,
            session: session.to_owned(),
            inner: Mutex::new(Inner {
                file,
                next_seq,
                last_hash,
                stats,
                failed: None,
                anchor: None,
            }),
        }
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session id every event of this log carries.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Appends an event of `kind` with `data` and returns it as written.
    ///
    /// `data` may come from a hostile sandbox: if the line would exceed
    /// [`MAX_EVENT_LINE`], the longest strings in `data` are shortened (or, if that
    /// cannot be enough, `data` is replaced by a note) and `"truncated": true` is
    /// added, rather than failing. `kind` must be 1–128 characters of `a-z0-9._-`.
    ///
    /// If the line was written but the anchor could not be updated the result is
    /// [`Error::Anchor`]; the event is in the log regardless.
    pub fn append(&self, kind: &str, data: Map<String, Value>) -> Result<Event> {
        validate_kind(kind)?;
        let mut inner = self.lock_inner()?;
        if let Some(reason) = &inner.failed {
            return Err(Error::WriterFailed {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let seq = inner.next_seq;
        let ts = format_timestamp(SystemTime::now());
        let (_, empty_line) = seal(seq, ts.clone(), &self.session, kind, Map::new(), "");
        // The envelope is everything but `data` ("{}" in the empty line) and `prev`.
        let envelope = empty_line.len() - 2 + inner.last_hash.len();
        let data = bound_data(data, envelope, MAX_EVENT_LINE);
        let (event, line) = seal(seq, ts, &self.session, kind, data, &inner.last_hash);
        debug_assert!(line.len() <= MAX_EVENT_LINE, "{} bytes", line.len());

        // One write(2): a concurrent reader sees the whole line or none of it, and
        // an O_APPEND write never interleaves with another process's.
        let written = loop {
            match (&inner.file).write(&line) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("append to", &self.path, e)),
                Ok(n) => break n,
            }
        };
        if written != line.len() {
            let error = Error::ShortWrite {
                path: self.path.clone(),
                seq,
                written,
                len: line.len(),
            };
            inner.failed = Some(error.to_string());
            return Err(error);
        }
        inner.next_seq += 1;
        inner.last_hash.clone_from(&event.hash);
        inner.stats.events += 1;
        inner.stats.violations += u64::from(is_violation(kind));

        let anchor = Anchor {
            seq,
            hash: event.hash.clone(),
        };
        write_anchor(&mut inner.anchor, &self.dir, &anchor).map_err(|source| Error::Anchor {
            seq,
            path: self.dir.join(ANCHOR_FILE),
            source,
        })?;
        Ok(event)
    }

    /// Makes everything appended so far durable: fsyncs the log, the anchor and the
    /// directory (for the anchor's rename).
    pub fn sync(&self) -> Result<()> {
        let inner = self.lock_inner()?;
        inner
            .file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        if inner.stats.events > 0 {
            let anchor = self.dir.join(ANCHOR_FILE);
            File::open(&anchor)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("fsync", &anchor, e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", &self.dir, e))
    }

    /// Events and violations in the log so far.
    pub fn stats(&self) -> Stats {
        match self.inner.lock() {
            Ok(inner) => inner.stats,
            Err(poisoned) => poisoned.into_inner().stats,
        }
    }

    /// Seq and hash of the last event (what the anchor records), if any. Publishing
    /// this elsewhere makes later rewriting of the whole log detectable.
    pub fn head(&self) -> Option<Anchor> {
        let inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.next_seq.checked_sub(1).map(|seq| Anchor {
            seq,
            hash: inner.last_hash.clone(),
        })
    }

    fn lock_inner(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| Error::WriterFailed {
            path: self.path.clone(),
            reason: "a thread panicked while appending".to_owned(),
        })
    }
}

fn lock(file: &File, path: &Path) -> Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            Error::Locked {
                path: path.to_owned(),
            }
        } else {
            Error::io("lock", path, e.into())
        }
    })
}

/// Replaces `dir/events.head` atomically: readers see the old or the new anchor.
/// Size of the anchor record: the JSON (about 90 bytes) padded with spaces and
/// ended by a newline.
const ANCHOR_RECORD: usize = 128;

fn write_anchor(file: &mut Option<File>, dir: &Path, anchor: &Anchor) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut body = serde_json::to_vec(anchor)?;
    if body.len() < ANCHOR_RECORD {
        body.resize(ANCHOR_RECORD - 1, b' ');
    }
    body.push(b'\n');
    if let Some(f) = file {
        return f.write_all_at(&body, 0);
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(ANCHOR_FILE))?;
    f.write_all_at(&body, 0)?;
    // Only an anchor written by another version can be longer than the record.
    if f.metadata()?.len() > body.len() as u64 {
        f.set_len(body.len() as u64)?;
    }
    *file = Some(f);
    Ok(())
}
