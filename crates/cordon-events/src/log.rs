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
use crate::{ANCHOR_FILE, LOG_FILE, MAX_EVENT_LINE, VERIFIED_FILE};
use sha2::{Digest as _, Sha256};

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
    /// A log resumed with [`EventLog::resume`] whose earlier events are still
    /// being verified: what is appended meanwhile waits here.
    held: Option<Held>,
    /// The bytes of the log file so far, when this writer knows all of them.
    digest: Option<Digest>,
}

/// How many bytes of the log there are, and their SHA-256.
#[derive(Clone)]
struct Digest {
    len: u64,
    sha: Sha256,
}

impl Digest {
    fn new() -> Digest {
        Digest {
            len: 0,
            sha: Sha256::new(),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.sha.update(bytes);
    }

    fn hex(&self) -> String {
        crate::event::hex(&self.sha.clone().finalize())
    }
}

/// A reader that digests what passes through it.
struct Tee<R> {
    inner: R,
    digest: Digest,
}

impl<R: io::Read> io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
}

/// Contents of [`VERIFIED_FILE`]: what the writer knew of the log when it
/// last synced it. The log was intact then (verified when resumed, correct
/// by construction since); if its bytes still have this length and hash and
/// the anchor agrees, it still is, and a resume needs to read it only once,
/// for the hash (about 1 ms per MiB) instead of parsing and re-hashing every
/// event (about 9 µs each). Like the anchor it is not a secret: whoever can
/// rewrite the log can rewrite this too; it only stands in for a check that
/// would have passed.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Verified {
    len: u64,
    sha256: String,
    seq: u64,
    hash: String,
    events: u64,
    violations: u64,
}

/// Appends held back until the log they continue is known to be intact.
struct Held {
    check: std::thread::JoinHandle<io::Result<(verify::Outcome, Digest)>>,
    lines: Vec<u8>,
    /// The last held event, for the anchor.
    last: Option<Anchor>,
}

/// Held appends beyond this many bytes wait for the verification instead.
const HELD_MAX: usize = 1 << 20;

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
        let log = EventLog::from_parts(
            dir,
            path,
            session,
            file,
            0,
            genesis_hash(session),
            Stats::default(),
        );
        log.lock_inner()?.digest = Some(Digest::new());
        Ok(log)
    }

    /// Opens an existing log to continue it (a resumed session). The whole log and
    /// its anchor are verified first; a log with any problem is refused with
    /// [`Error::Broken`] naming the first one, since appending would bless it.
    pub fn open_append(dir: &Path, session: &str) -> Result<EventLog> {
        let (path, file, anchor) = Self::open_locked(dir, session)?;
        Self::verify_and_open(dir, path, session, file, anchor)
    }

    /// [`Self::open_append`] without waiting for the whole log to be read: when
    /// the anchor names the log's last line and that event hashes correctly,
    /// the log is open at once and the rest is verified on a thread. Until
    /// [`Self::verified`] has confirmed the log, appended events are held in
    /// memory (chained as usual); they are written once it has, and dropped if
    /// it finds a problem, so nothing is ever appended to a broken log. The
    /// caller calls [`Self::verified`] before anything it logs must be on disk
    /// ([`Self::sync`] and dropping the log do so too). Any other state of the
    /// log and anchor takes the path of [`Self::open_append`].
    ///
    /// Verifying costs about 9 µs per event: a session resumed after thousands
    /// of events would otherwise wait that long before it starts.
    pub fn resume(dir: &Path, session: &str) -> Result<EventLog> {
        let (path, file, anchor) = Self::open_locked(dir, session)?;
        let head = match &anchor {
            AnchorState::Valid(head) => head.clone(),
            _ => return Self::verify_and_open(dir, path, session, file, anchor),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("read", &path, e))?
            .len();
        if let Some((digest, stats)) = trusted(dir, &file, len, &head) {
            let log =
                EventLog::from_parts(dir, path, session, file, head.seq + 1, head.hash, stats);
            log.lock_inner()?.digest = Some(digest);
            return Ok(log);
        }
        let last = last_line(&file, len).map_err(|e| Error::io("read", &path, e))?;
        let intact = last
            .and_then(|l| crate::read::parse_line(&l).ok())
            .is_some_and(|e| {
                e.seq == head.seq && e.hash == head.hash && e.session == session && e.hash_matches()
            });
        if !intact {
            return Self::verify_and_open(dir, path, session, file, anchor);
        }
        // A descriptor of its own: the writer's offset stays where it is.
        let reader = File::open(&path).map_err(|e| Error::io("read", &path, e))?;
        let owned = session.to_owned();
        let check = std::thread::Builder::new()
            .name("cordon-log-verify".into())
            .spawn(move || {
                use std::io::Read;
                let mut r = BufReader::new(Tee {
                    inner: reader.take(len),
                    digest: Digest::new(),
                });
                let outcome = verify::check(&mut r, anchor, &owned)?;
                Ok((outcome, r.into_inner().digest))
            })
            .map_err(|e| Error::io("verify", &path, e))?;
        let log = EventLog::from_parts(
            dir,
            path,
            session,
            file,
            head.seq + 1,
            head.hash,
            Stats::default(),
        );
        log.lock_inner()?.held = Some(Held {
            check,
            lines: Vec::new(),
            last: None,
        });
        Ok(log)
    }

    /// Waits until the log a [`Self::resume`] continues is verified and writes
    /// what was appended meanwhile. A broken log is [`Error::Broken`] (naming
    /// its first problem), the held events are dropped, and the log takes no
    /// more appends. Returns at once for a log not opened by `resume`, or
    /// verified already.
    pub fn verified(&self) -> Result<()> {
        let mut inner = self.lock_inner()?;
        self.settle(&mut inner)
    }

    fn settle(&self, inner: &mut Inner) -> Result<()> {
        let Some(held) = inner.held.take() else {
            return Ok(());
        };
        let outcome = match held.check.join() {
            Ok(Ok((outcome, digest))) => {
                inner.digest = Some(digest);
                outcome
            }
            Ok(Err(e)) => {
                inner.failed = Some(format!("the log could not be verified: {e}"));
                return Err(Error::io("read", &self.path, e));
            }
            Err(_) => {
                let reason = "the log's verification panicked".to_owned();
                inner.failed = Some(reason.clone());
                return Err(Error::WriterFailed {
                    path: self.path.clone(),
                    reason,
                });
            }
        };
        if let Some(e) = broken(&self.path, &outcome) {
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        inner.stats.events += outcome.stats.events;
        inner.stats.violations += outcome.stats.violations;
        let Some(last) = held.last else {
            return Ok(());
        };
        self.write_line(inner, &held.lines, last.seq)?;
        write_anchor(&mut inner.anchor, &self.dir, &last).map_err(|source| Error::Anchor {
            seq: last.seq,
            path: self.dir.join(ANCHOR_FILE),
            source,
        })
    }

    /// Opens `dir/events.jsonl` for appending and takes the writer lock.
    fn open_locked(dir: &Path, session: &str) -> Result<(PathBuf, File, AnchorState)> {
        validate_session(session)?;
        let path = dir.join(LOG_FILE);
        let file = open_log_with(OpenOptions::new().read(true).append(true), &path)?;
        // Lock before reading, so no other writer can move the end while we verify.
        lock(&file, &path)?;
        let anchor = AnchorState::read(&dir.join(ANCHOR_FILE))?;
        Ok((path, file, anchor))
    }

    fn verify_and_open(
        dir: &Path,
        path: PathBuf,
        session: &str,
        file: File,
        anchor: AnchorState,
    ) -> Result<EventLog> {
        let anchor_path = dir.join(ANCHOR_FILE);
        // Reads go through the same descriptor (its offset starts at 0; O_APPEND only
        // affects writes), so the file verified is the file appended to.
        let mut r = BufReader::new(Tee {
            inner: &file,
            digest: Digest::new(),
        });
        let outcome = verify::check(&mut r, anchor.clone(), session)
            .map_err(|e| Error::io("read", &path, e))?;
        let digest = r.into_inner().digest;
        if let Some(e) = broken(&path, &outcome) {
            return Err(e);
        }
        let (next_seq, last_hash) = match &outcome.tail {
            Some(tail) => (tail.seq + 1, tail.hash.clone()),
            None => (0, genesis_hash(session)),
        };
        let log =
            EventLog::from_parts(dir, path, session, file, next_seq, last_hash, outcome.stats);
        log.lock_inner()?.digest = Some(digest);
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
                held: None,
                digest: None,
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

        if inner
            .held
            .as_ref()
            .is_some_and(|h| h.lines.len() + line.len() > HELD_MAX)
        {
            self.settle(&mut inner)?;
        }
        if let Some(held) = &mut inner.held {
            held.lines.extend_from_slice(&line);
            held.last = Some(Anchor {
                seq,
                hash: event.hash.clone(),
            });
            inner.next_seq += 1;
            inner.last_hash.clone_from(&event.hash);
            inner.stats.events += 1;
            inner.stats.violations += u64::from(is_violation(kind));
            return Ok(event);
        }
        self.write_line(&mut inner, &line, seq)?;
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
        let mut inner = self.lock_inner()?;
        self.settle(&mut inner)?;
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
        if inner.failed.is_none()
            && let Some(d) = &inner.digest
            && let Some(seq) = inner.next_seq.checked_sub(1)
        {
            let record = Verified {
                len: d.len,
                sha256: d.hex(),
                seq,
                hash: inner.last_hash.clone(),
                events: inner.stats.events,
                violations: inner.stats.violations,
            };
            // A cache: a record that does not get written only costs the
            // next resume a full verification.
            let _ = write_verified(&self.dir, &record);
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", &self.dir, e))
    }

    /// Events and violations in the log so far.
    pub fn stats(&self) -> Stats {
        match self.inner.lock() {
            Ok(mut inner) => {
                // Counts include the verified part of a resumed log.
                let _ = self.settle(&mut inner);
                inner.stats
            }
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

    /// Writes whole lines with one write(2): a concurrent reader sees each line
    /// whole or not at all, and an O_APPEND write never interleaves with
    /// another process's. A short write leaves a partial line; the log then
    /// takes no more appends.
    fn write_line(&self, inner: &mut Inner, line: &[u8], seq: u64) -> Result<()> {
        let written = loop {
            match (&inner.file).write(line) {
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
        if let Some(d) = &mut inner.digest {
            d.update(line);
        }
        Ok(())
    }

    fn lock_inner(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| Error::WriterFailed {
            path: self.path.clone(),
            reason: "a thread panicked while appending".to_owned(),
        })
    }
}

/// The digest and counts of the log in `file` (of `len` bytes), when its
/// [`VERIFIED_FILE`] record matches it exactly and names the anchored event.
fn trusted(dir: &Path, file: &File, len: u64, head: &Anchor) -> Option<(Digest, Stats)> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut body = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(VERIFIED_FILE))
        .ok()?
        .take(4096)
        .read_to_end(&mut body)
        .ok()?;
    let v: Verified = serde_json::from_slice(&body).ok()?;
    if v.len != len
        || v.seq != head.seq
        || v.hash != head.hash
        || v.events != v.seq.checked_add(1)?
        || v.violations > v.events
    {
        return None;
    }
    let mut digest = Digest::new();
    let mut buf = vec![0u8; 256 << 10];
    while digest.len < len {
        let want = buf.len().min((len - digest.len) as usize);
        let n = file.read_at(&mut buf[..want], digest.len).ok()?;
        if n == 0 {
            return None;
        }
        digest.update(&buf[..n]);
    }
    (digest.hex() == v.sha256).then_some((
        digest,
        Stats {
            events: v.events,
            violations: v.violations,
        },
    ))
}

fn write_verified(dir: &Path, record: &Verified) -> io::Result<()> {
    let mut body = serde_json::to_vec(record)?;
    body.push(b'\n');
    // In place: a torn record fails to parse and only costs a full verification.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(VERIFIED_FILE))?
        .write_all(&body)
}

/// [`Error::Broken`] for the first problem a verification found, if any.
fn broken(path: &Path, outcome: &verify::Outcome) -> Option<Error> {
    let first = outcome.report.problems.first()?;
    Some(Error::Broken {
        path: path.to_owned(),
        line: first.line,
        seq: first.seq,
        kind: first.kind,
        message: first.message.clone(),
        others: outcome.report.problems.len() - 1,
    })
}

/// The last line of the first `len` bytes of `file`, without its newline;
/// `None` if those bytes do not end with a newline or the line is longer than
/// an event can be.
fn last_line(file: &File, len: u64) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    let want = len.min(MAX_EVENT_LINE as u64 + 1);
    let mut buf = vec![0u8; want as usize];
    file.read_exact_at(&mut buf, len - want)?;
    if buf.pop() != Some(b'\n') {
        return Ok(None);
    }
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Some(buf[i + 1..].to_vec())),
        // The whole log is one line, or the line is too long to be an event.
        None if want == len => Ok(Some(buf)),
        None => Ok(None),
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // Held events of a resumed log reach the file if the log is intact.
        if let Ok(mut inner) = self.inner.lock() {
            let _ = self.settle(&mut inner);
        }
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
