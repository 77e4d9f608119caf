//! Reading a log for display: [`read_all`] and [`Follower`]. Neither checks hashes or
//! the chain — that is [`crate::verify`]'s job — but both bound how much memory one
//! line may take and report malformed lines by number.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::{LOG_FILE, MAX_READ_LINE};

/// Parses one log line (without its `\n`).
pub(crate) fn parse_line(bytes: &[u8]) -> std::result::Result<Event, String> {
    if bytes.is_empty() {
        return Err("empty line".to_owned());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("not an event: {e}"))
}

/// One line of a log, as [`LineReader`] yields it.
pub(crate) enum RawLine {
    /// `terminated` is false only for a last line that does not end with `\n`.
    Line {
        number: u64,
        bytes: Vec<u8>,
        terminated: bool,
    },
    /// A line longer than the bound; its bytes were skipped.
    TooLong { number: u64 },
}

/// Splits a byte stream into lines without ever holding more than `max` bytes of
/// one line.
pub(crate) struct LineReader<R> {
    inner: R,
    max: usize,
    number: u64,
    current: Vec<u8>,
    overflowed: bool,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            number: 0,
            current: Vec::new(),
            overflowed: false,
        }
    }

    fn finish(&mut self, terminated: bool) -> RawLine {
        self.number += 1;
        let number = self.number;
        if std::mem::take(&mut self.overflowed) {
            self.current.clear();
            RawLine::TooLong { number }
        } else {
            RawLine::Line {
                number,
                bytes: std::mem::take(&mut self.current),
                terminated,
            }
        }
    }

    pub(crate) fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                if self.current.is_empty() && !self.overflowed {
                    return Ok(None);
                }
                return Ok(Some(self.finish(false)));
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(end) => (&buf[..end], Some(end + 1)),
                None => (buf, None),
            };
            if !self.overflowed {
                if self.current.len() + chunk.len() > self.max {
                    self.overflowed = true;
                    self.current.clear();
                } else {
                    self.current.extend_from_slice(chunk);
                }
            }
            let used = done.unwrap_or(buf.len());
            self.inner.consume(used);
            if done.is_some() {
                return Ok(Some(self.finish(true)));
            }
        }
    }
}

/// Opens an existing log for reading.
pub(crate) fn open_log(path: &Path) -> Result<File> {
    open_log_with(OpenOptions::new().read(true), path)
}

/// Opens an existing log with `options`, refusing symlinks and anything but a
/// regular file (`O_NONBLOCK` so a FIFO planted there cannot hang the open).
pub(crate) fn open_log_with(options: &mut OpenOptions, path: &Path) -> Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                path: path.to_owned(),
            },
            _ if e.raw_os_error() == Some(libc::ELOOP) => Error::NotAFile {
                path: path.to_owned(),
            },
            _ => Error::io("open", path, e),
        })?;
    let metadata = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !metadata.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Reads every event of the log in `dir` (`dir/events.jsonl`), in file order.
///
/// For display: hashes and the chain are not checked (use [`crate::verify`]). A line
/// that is not an event, or longer than [`MAX_READ_LINE`], is an error naming it. A
/// last line without its `\n` that does not parse is skipped: a writer may be in the
/// middle of appending it.
pub fn read_all(dir: &Path) -> Result<Vec<Event>> {
    let path = dir.join(LOG_FILE);
    let file = open_log(&path)?;
    let mut lines = LineReader::new(BufReader::new(file), MAX_READ_LINE);
    let mut events = Vec::new();
    while let Some(line) = lines.next_line().map_err(|e| Error::io("read", &path, e))? {
        match line {
            RawLine::TooLong { number } => {
                return Err(Error::LineTooLong {
                    path,
                    line: number,
                    max: MAX_READ_LINE,
                });
            }
            RawLine::Line {
                number,
                bytes,
                terminated,
            } => match parse_line(&bytes) {
                Ok(event) => events.push(event),
                Err(_) if !terminated => break,
                Err(message) => {
                    return Err(Error::Malformed {
                        path,
                        line: number,
                        message,
                    });
                }
            },
        }
    }
    Ok(events)
}

/// The most a single [`Follower::next_batch`] reads, so one call returns promptly
/// even after a burst; the rest comes with the next calls.
const FOLLOW_CHUNK: u64 = 4 * 1024 * 1024;
/// How often [`Follower::next_batch`] looks at the file size while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Streams a log as it grows (`cordon log --follow`).
///
/// Starts at the beginning of the file: the first batch holds the events already
/// written. Only complete lines are returned; a line still being written is kept
/// until its `\n` arrives. A log that does not exist yet is treated as empty, so a
/// follower may be started before the session writes its first event. Hashes are
/// not checked.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    pending: Vec<u8>,
    lines: u64,
}

impl Follower {
    /// A follower of `dir/events.jsonl`. Nothing is opened until the first
    /// [`Follower::next_batch`].
    pub fn new(dir: &Path) -> Follower {
        Follower {
            path: dir.join(LOG_FILE),
            file: None,
            offset: 0,
            pending: Vec::new(),
            lines: 0,
        }
    }

    /// Number of complete lines consumed so far.
    pub fn lines_read(&self) -> u64 {
        self.lines
    }

    /// The events of complete lines appended since the previous call, waiting up to
    /// `wait` for at least one. Returns an empty batch when `wait` passes without
    /// one.
    ///
    /// A malformed line is an error naming it; events before it in the same read
    /// are returned first, and the call after the error continues past the line.
    pub fn next_batch(&mut self, wait: Duration) -> Result<Vec<Event>> {
        // `None`: so far in the future that it never comes.
        let deadline = Instant::now().checked_add(wait);
        loop {
            self.read_more()?;
            let events = self.take_complete_lines()?;
            if !events.is_empty() {
                return Ok(events);
            }
            let now = Instant::now();
            let remaining = deadline.map_or(POLL_INTERVAL, |d| d.saturating_duration_since(now));
            if remaining.is_zero() {
                return Ok(events);
            }
            std::thread::sleep(POLL_INTERVAL.min(remaining));
        }
    }

    fn read_more(&mut self) -> Result<()> {
        let file = match &self.file {
            Some(file) => file,
            None => match open_log(&self.path) {
                Ok(file) => self.file.insert(file),
                Err(Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if len < self.offset {
            return Err(Error::Shrunk {
                path: self.path.clone(),
                from: self.offset,
                to: len,
            });
        }
        let want = (len - self.offset).min(FOLLOW_CHUNK);
        let start = self.pending.len();
        // `want` is at most FOLLOW_CHUNK, so it fits in usize.
        self.pending.resize(start + want as usize, 0);
        let mut filled = start;
        while filled < self.pending.len() {
            match file.read_at(&mut self.pending[filled..], self.offset) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pending.truncate(filled);
                    return Err(Error::io("read", &self.path, e));
                }
            }
        }
        self.pending.truncate(filled);
        Ok(())
    }

    fn take_complete_lines(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut start = 0;
        let mut failure = None;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + end];
            match parse_line(line) {
                Ok(event) => events.push(event),
                // Leave the bad line for the next call so these events are not lost.
                Err(_) if !events.is_empty() => break,
                Err(message) => {
                    failure = Some(Error::Malformed {
                        path: self.path.clone(),
                        line: self.lines + 1,
                        message,
                    });
                }
            }
            self.lines += 1;
            start += end + 1;
            if failure.is_some() {
                break;
            }
        }
        self.pending.drain(..start);
        if let Some(error) = failure {
            return Err(error);
        }
        if events.is_empty() && self.pending.len() > MAX_READ_LINE {
            return Err(Error::LineTooLong {
                path: self.path.clone(),
                line: self.lines + 1,
                max: MAX_READ_LINE,
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = LineReader::new(Cursor::new(input.to_vec()), max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(match line {
                RawLine::Line {
                    number,
                    bytes,
                    terminated,
                } => format!(
                    "{number}:{}{}",
                    String::from_utf8(bytes).unwrap(),
                    if terminated { "" } else { "$" }
                ),
                RawLine::TooLong { number } => format!("{number}:too long"),
            });
        }
        out
    }

    #[test]
    fn line_reader_bounds_lines_and_marks_unterminated_tail() {
        assert_eq!(lines(b"", 4), Vec::<String>::new());
        assert_eq!(lines(b"ab\n\ncd", 4), ["1:ab", "2:", "3:cd$"]);
        assert_eq!(
            lines(b"abcd\nabcde\nxy\nabcdefgh", 4),
            ["1:abcd", "2:too long", "3:xy", "4:too long"]
        );
    }
}
