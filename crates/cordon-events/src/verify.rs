//! Verification of a whole log against its chain and anchor.
//!
//! The goal is a report a person can act on: each tampering is reported once, at the
//! line where it happened, with its sequence number, and does not cascade into
//! reports about the intact events after it. To get there the checker works out which
//! lines form the genuine chain instead of stopping at the first mismatch:
//!
//! * An event's stored `hash` is what the next event links to, so an event whose
//!   content was edited (but whose stored hash was left alone) is reported as
//!   [`ProblemKind::Edited`] and the chain continues through it.
//! * Lines are taken in order of `seq`. A gap is [`ProblemKind::Deleted`] unless the
//!   missing events appear later in the file ([`ProblemKind::Reordered`]) or malformed
//!   lines stand where they were (reported as [`ProblemKind::Malformed`] only).
//! * Of two lines claiming the same place, the one the rest of the chain links to is
//!   genuine and the other is [`ProblemKind::Inserted`].
//! * The anchor catches what the chain cannot: events removed from the end.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, genesis_hash, is_violation, validate_session};
use crate::log::{Anchor, Stats};
use crate::read::{LineReader, RawLine, open_log, parse_line};
use crate::{ANCHOR_FILE, LOG_FILE, MAX_READ_LINE};

/// What [`verify`] found. `ok` is true exactly when `problems` is empty.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines that parsed as events (whether or not they verified).
    pub events: u64,
    pub ok: bool,
    /// Sorted by line; problems with the anchor file (line 0) come last.
    pub problems: Vec<Problem>,
}

/// One thing wrong with a log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in `events.jsonl`. For [`ProblemKind::Deleted`] and
    /// [`ProblemKind::Truncated`], the line where the missing events would start. 0
    /// when the problem is with the anchor file itself.
    pub line: u64,
    /// The sequence number concerned: the event on `line`, or for `Deleted` and
    /// `Truncated` the first missing one. `None` when unknown.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
    /// A sentence naming the line, the seq and what is wrong.
    pub message: String,
}

/// The kinds of [`Problem`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not JSON, not an event, too long, or cut off (no trailing newline).
    Malformed,
    /// The content does not match the stored hash.
    Edited,
    /// An event that is not part of the chain: a duplicate or forged line.
    Inserted,
    /// Events missing from the middle (or start) of the log.
    Deleted,
    /// Events present but not in seq order.
    Reordered,
    /// `prev` does not match the previous event's hash although both hash correctly:
    /// one of the two was rewritten with a recomputed hash.
    BrokenLink,
    /// The anchor records more events, or a different last hash, than the log has.
    Truncated,
    /// The event names another session.
    WrongSession,
    /// `events.head` does not exist although the log has events.
    AnchorMissing,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Malformed => "malformed",
            ProblemKind::Edited => "edited",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::BrokenLink => "broken link",
            ProblemKind::Truncated => "truncated",
            ProblemKind::WrongSession => "wrong session",
            ProblemKind::AnchorMissing => "anchor missing",
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Verifies the log in `dir` for `session`: every event's hash, the chain of `prev`
/// links from the session's genesis, consecutive seqs, the session id of every event,
/// and the anchor `events.head`.
///
/// Tampering is reported in the [`VerifyReport`]; only being unable to read the
/// files is an error. A missing log is [`Error::NotFound`], unless an anchor shows
/// that it existed (then it is reported as [`ProblemKind::Truncated`]).
pub fn verify(dir: &Path, session: &str) -> Result<VerifyReport> {
    validate_session(session)?;
    let path = dir.join(LOG_FILE);
    let anchor = AnchorState::read(&dir.join(ANCHOR_FILE))?;
    let file = match open_log(&path) {
        Ok(file) => file,
        Err(Error::NotFound { path }) => {
            return match anchor {
                AnchorState::Missing => Err(Error::NotFound { path }),
                _ => Ok(check(io::empty(), anchor, session)
                    .map_err(|e| Error::io("read", &path, e))?
                    .report),
            };
        }
        Err(e) => return Err(e),
    };
    Ok(check(BufReader::new(file), anchor, session)
        .map_err(|e| Error::io("read", &path, e))?
        .report)
}

/// What was found in `events.head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AnchorState {
    Missing,
    Invalid(String),
    Valid(Anchor),
}

impl AnchorState {
    /// Reads an anchor file; only I/O failures other than "not found" are errors.
    pub(crate) fn read(path: &Path) -> Result<AnchorState> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AnchorState::Missing),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        // A real anchor is 128 bytes; read a little more to notice junk. The
        // writer overwrites it in place, so a read racing a write may see a mix
        // of two records: read again before calling it invalid.
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let mut body = Vec::new();
            (&file)
                .take(4096)
                .read_to_end(&mut body)
                .map_err(|e| Error::io("read", path, e))?;
            match serde_json::from_slice::<Anchor>(&body) {
                Ok(anchor) => return Ok(AnchorState::Valid(anchor)),
                Err(e) => last = e.to_string(),
            }
            std::io::Seek::rewind(&mut &file).map_err(|e| Error::io("read", path, e))?;
        }
        Ok(AnchorState::Invalid(last))
    }
}

/// Result of [`check`]: the report, plus what a writer resuming the log needs.
pub(crate) struct Outcome {
    pub(crate) report: VerifyReport,
    /// Seq and stored hash of the last event of the chain.
    pub(crate) tail: Option<Anchor>,
    /// Over the events of the chain.
    pub(crate) stats: Stats,
}

struct Parsed {
    line: u64,
    event: Event,
    content_ok: bool,
}

enum Entry {
    Malformed,
    Event(Parsed),
}

/// Checks the log read from `reader` against `anchor` for `session`.
pub(crate) fn check<R: BufRead>(
    reader: R,
    anchor: AnchorState,
    session: &str,
) -> io::Result<Outcome> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut lines = LineReader::new(reader, MAX_READ_LINE);
    let mut line_count = 0;
    while let Some(raw) = lines.next_line()? {
        let (line, result) = match raw {
            RawLine::TooLong { number } => (
                number,
                Err(format!("longer than {MAX_READ_LINE} bytes; not an event")),
            ),
            RawLine::Line {
                number,
                terminated: false,
                ..
            } => (
                number,
                Err("incomplete last line (no trailing newline): a write was cut short".into()),
            ),
            RawLine::Line { number, bytes, .. } => (number, parse_line(&bytes)),
        };
        line_count = line;
        match result {
            Ok(event) => {
                let content_ok = event.hash_matches();
                if event.session != session {
                    problems.push(Problem {
                        line,
                        seq: Some(event.seq),
                        kind: ProblemKind::WrongSession,
                        message: format!(
                            "line {line} (seq {}): belongs to session {:?}, not {session:?}",
                            event.seq, event.session
                        ),
                    });
                }
                entries.push(Entry::Event(Parsed {
                    line,
                    event,
                    content_ok,
                }));
            }
            Err(message) => {
                problems.push(Problem {
                    line,
                    seq: None,
                    kind: ProblemKind::Malformed,
                    message: format!("line {line}: {message}"),
                });
                entries.push(Entry::Malformed);
            }
        }
    }

    let mut chain = Chain::new(&entries, session, problems);
    chain.walk();
    chain.check_anchor(&anchor, line_count);

    let events = entries
        .iter()
        .filter(|e| matches!(e, Entry::Event(_)))
        .count() as u64;
    let tail = chain.tail();
    let stats = chain.stats;
    let mut problems = chain.problems;
    problems.sort_by_key(|p| (p.line == 0, p.line));
    Ok(Outcome {
        report: VerifyReport {
            events,
            ok: problems.is_empty(),
            problems,
        },
        tail,
        stats,
    })
}

/// The walk over the entries that reconstructs the genuine chain.
struct Chain<'a> {
    entries: &'a [Entry],
    session: &'a str,
    problems: Vec<Problem>,
    /// Entry indices by seq.
    by_seq: BTreeMap<u64, Vec<usize>>,
    /// Entry indices by stored hash and by prev.
    by_hash: HashMap<&'a str, Vec<usize>>,
    by_prev: HashMap<&'a str, Vec<usize>>,
    /// Entries already placed in the chain or reported.
    consumed: Vec<bool>,
    /// The seq the next event of the chain should have.
    expected: u64,
    /// Stored hash of the last event of the chain (the genesis hash before any).
    last_hash: String,
    /// Line and stored hash of each seq in the chain.
    accepted: HashMap<u64, (u64, &'a str)>,
    /// Line and seq of the last event of the chain.
    last: Option<(u64, u64)>,
    /// Malformed lines since the last event of the chain.
    malformed_run: u64,
    stats: Stats,
}

impl<'a> Chain<'a> {
    fn new(entries: &'a [Entry], session: &'a str, problems: Vec<Problem>) -> Self {
        let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut by_hash: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_prev: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Entry::Event(p) = entry {
                by_seq.entry(p.event.seq).or_default().push(i);
                by_hash.entry(&p.event.hash).or_default().push(i);
                by_prev.entry(&p.event.prev).or_default().push(i);
            }
        }
        Chain {
            entries,
            session,
            problems,
            by_seq,
            by_hash,
            by_prev,
            consumed: vec![false; entries.len()],
            expected: 0,
            last_hash: genesis_hash(session),
            accepted: HashMap::new(),
            last: None,
            malformed_run: 0,
            stats: Stats::default(),
        }
    }

    fn parsed(&self, i: usize) -> &'a Parsed {
        match &self.entries[i] {
            Entry::Event(p) => p,
            Entry::Malformed => unreachable!("only event entries are indexed"),
        }
    }

    fn report(&mut self, line: u64, seq: Option<u64>, kind: ProblemKind, message: String) {
        self.problems.push(Problem {
            line,
            seq,
            kind,
            message,
        });
    }

    fn walk(&mut self) {
        for i in 0..self.entries.len() {
            if self.consumed[i] {
                continue;
            }
            let p = match &self.entries[i] {
                Entry::Malformed => {
                    self.malformed_run += 1;
                    continue;
                }
                Entry::Event(p) => p,
            };
            let seq = p.event.seq;
            let links = p.event.prev == self.last_hash;
            let expected = self.expected;

            // Links straight to the last event but carries the wrong seq, and its
            // content does not match its hash: its seq field was edited.
            if seq != expected && links && !p.content_ok && self.rival(i, expected, true).is_none()
            {
                self.accept(i, expected, true);
                continue;
            }

            if seq < expected {
                self.consumed[i] = true;
                let message = match self.accepted.get(&seq) {
                    Some(&(line, hash)) if hash == p.event.hash => {
                        format!("line {} (seq {seq}): duplicate of line {line}", p.line)
                    }
                    Some(&(line, _)) => format!(
                        "line {} (seq {seq}): a second event with seq {seq} (the first is line {line})",
                        p.line
                    ),
                    None => format!(
                        "line {} (seq {seq}): not expected here; the log had already reached seq {}",
                        p.line,
                        expected - 1
                    ),
                };
                self.report(p.line, Some(seq), ProblemKind::Inserted, message);
                continue;
            }

            if seq == expected {
                // Two lines claiming this place: keep the one the chain continues from.
                if let Some(j) = self.rival(i, seq, true) {
                    let rival = self.parsed(j);
                    let forged = !links || (!self.has_successor(i) && self.has_successor(j));
                    if forged {
                        self.consumed[i] = true;
                        let message = format!(
                            "line {} (seq {seq}): inserted; line {} also has seq {seq} and the chain continues from it",
                            p.line, rival.line
                        );
                        self.report(p.line, Some(seq), ProblemKind::Inserted, message);
                        continue;
                    }
                }
                self.accept(i, seq, true);
                continue;
            }

            // seq > expected: events are missing here. Are they later in the file?
            let later: Vec<u64> = self
                .by_seq
                .range(expected..seq)
                .filter(|(_, idx)| idx.iter().any(|&j| j > i && !self.consumed[j]))
                .map(|(&s, _)| s)
                .collect();
            if !later.is_empty() && !self.has_predecessor(i) && !self.has_successor(i) {
                self.consumed[i] = true;
                let message = format!(
                    "line {} (seq {seq}): inserted; seq {expected} was expected here and no other event links to or from this one",
                    p.line
                );
                self.report(p.line, Some(seq), ProblemKind::Inserted, message);
                continue;
            }
            let mut pulled = Vec::new();
            for s in later {
                let Some(j) = self.rival(i, s, true).or_else(|| self.rival(i, s, false)) else {
                    continue;
                };
                self.report_gap(s, p.line, seq);
                let linked = s == self.expected;
                self.accept(j, s, linked);
                pulled.push(j);
            }
            match pulled.as_slice() {
                [] => {}
                &[j] => {
                    let moved = self.parsed(j);
                    let message = format!(
                        "line {} (seq {}): out of order; it belongs before line {} (seq {seq})",
                        moved.line, moved.event.seq, p.line
                    );
                    self.report(
                        moved.line,
                        Some(moved.event.seq),
                        ProblemKind::Reordered,
                        message,
                    );
                }
                [first, .., last] => {
                    let (first, last) = (self.parsed(*first), self.parsed(*last));
                    let message = format!(
                        "line {} (seq {seq}): out of order; {} that precede it come after it (lines {} to {})",
                        p.line,
                        seq_range(first.event.seq, last.event.seq),
                        first.line,
                        last.line
                    );
                    self.report(p.line, Some(seq), ProblemKind::Reordered, message);
                }
            }
            self.report_gap(seq, p.line, seq);
            let linked = seq == self.expected;
            self.accept(i, seq, linked);
        }
    }

    /// Reports seqs `expected..upto` as deleted before `line` (holding seq `at_seq`),
    /// unless malformed lines stand in their place.
    fn report_gap(&mut self, upto: u64, line: u64, at_seq: u64) {
        if upto <= self.expected {
            return;
        }
        let missing = upto - self.expected;
        if missing <= self.malformed_run {
            return;
        }
        let message = format!(
            "{} missing before line {line} (seq {at_seq}): deleted",
            seq_range(self.expected, upto - 1)
        );
        self.report(line, Some(self.expected), ProblemKind::Deleted, message);
    }

    /// An unconsumed entry after `i` with `seq`, if `linked` one whose prev is the
    /// chain's last hash.
    fn rival(&self, i: usize, seq: u64, linked: bool) -> Option<usize> {
        self.by_seq.get(&seq)?.iter().copied().find(|&j| {
            j > i && !self.consumed[j] && (!linked || self.parsed(j).event.prev == self.last_hash)
        })
    }

    fn has_predecessor(&self, i: usize) -> bool {
        let e = &self.parsed(i).event;
        (e.seq == 0 && e.prev == genesis_hash(self.session))
            || self
                .by_hash
                .get(e.prev.as_str())
                .is_some_and(|idx| idx.iter().any(|&j| j != i))
    }

    fn has_successor(&self, i: usize) -> bool {
        let e = &self.parsed(i).event;
        self.by_prev
            .get(e.hash.as_str())
            .is_some_and(|idx| idx.iter().any(|&j| j != i))
    }

    /// Places entry `i` in the chain as `seq`. `linked`: the previous seq is in the
    /// chain, so `prev` must match its hash.
    fn accept(&mut self, i: usize, seq: u64, linked: bool) {
        let p = self.parsed(i);
        let e = &p.event;
        let at = format!("line {} (seq {})", p.line, e.seq);
        let link_ok = !linked || e.prev == self.last_hash;
        let previous = match self.last {
            Some((line, prev_seq)) => format!("line {line} (seq {prev_seq})"),
            None => "the session's genesis".to_owned(),
        };
        // A wrong session already explains a mismatched hash or link (the genesis
        // differs per session); it was reported once, when parsed.
        let same_session = e.session == self.session;
        if same_session && !p.content_ok {
            let detail = if e.seq != seq {
                format!(" (it links to {previous}, so its seq should be {seq})")
            } else if !link_ok {
                format!(" (and prev does not match {previous})")
            } else {
                String::new()
            };
            self.report(
                p.line,
                Some(e.seq),
                ProblemKind::Edited,
                format!("{at}: content edited; stored hash does not match{detail}"),
            );
        } else if same_session && !link_ok {
            self.report(
                p.line,
                Some(e.seq),
                ProblemKind::BrokenLink,
                format!(
                    "{at}: prev does not match the hash of {previous}; one of them was rewritten and rehashed"
                ),
            );
        }
        self.consumed[i] = true;
        self.accepted.insert(seq, (p.line, e.hash.as_str()));
        self.last_hash.clone_from(&e.hash);
        self.last = Some((p.line, seq));
        self.expected = seq + 1;
        self.malformed_run = 0;
        self.stats.events += 1;
        self.stats.violations += u64::from(is_violation(&e.kind));
    }

    fn tail(&self) -> Option<Anchor> {
        let (_, seq) = self.last?;
        Some(Anchor {
            seq,
            hash: self.last_hash.clone(),
        })
    }

    fn check_anchor(&mut self, anchor: &AnchorState, line_count: u64) {
        let anchor = match anchor {
            AnchorState::Valid(anchor) => anchor,
            AnchorState::Missing => {
                if line_count > 0 {
                    self.report(
                        0,
                        None,
                        ProblemKind::AnchorMissing,
                        format!(
                            "{ANCHOR_FILE} is missing; events removed from the end of the log would go unnoticed"
                        ),
                    );
                }
                return;
            }
            AnchorState::Invalid(why) => {
                let message = format!("{ANCHOR_FILE}: not a valid anchor: {why}");
                self.report(0, None, ProblemKind::Malformed, message);
                return;
            }
        };
        if anchor.seq >= self.expected || self.last.is_none() {
            let first_missing = self.expected;
            let message = match self.last {
                Some((line, seq)) => format!(
                    "line {}: {} removed from the end; the log ends at line {line} (seq {seq}) but {ANCHOR_FILE} records seq {}",
                    line_count + 1,
                    seq_range(first_missing, anchor.seq),
                    anchor.seq,
                ),
                None => format!(
                    "line {}: every event removed; the log has none but {ANCHOR_FILE} records seq {}",
                    line_count + 1,
                    anchor.seq
                ),
            };
            self.report(
                line_count + 1,
                Some(first_missing),
                ProblemKind::Truncated,
                message,
            );
            return;
        }
        if let Some(&(line, hash)) = self.accepted.get(&anchor.seq)
            && hash != anchor.hash
        {
            let message = format!(
                "line {line} (seq {}): hash {hash} differs from {} recorded in {ANCHOR_FILE}: the log from here on was replaced",
                anchor.seq, anchor.hash
            );
            self.report(line, Some(anchor.seq), ProblemKind::Truncated, message);
        }
        // The writer updates the anchor after every event; a crash in between leaves
        // it one behind. More than that means something else appended.
        let first_unanchored = anchor.seq + 2;
        if self.expected > first_unanchored {
            let line = self
                .accepted
                .get(&first_unanchored)
                .map_or(line_count, |&(line, _)| line);
            let message = format!(
                "line {line} (seq {first_unanchored}): {} appended after {ANCHOR_FILE} was last written (it records seq {}); \
                 the log writer updates it with every event, so something else appended them",
                seq_range(first_unanchored, self.expected - 1),
                anchor.seq
            );
            self.report(line, Some(first_unanchored), ProblemKind::Inserted, message);
        }
    }
}

fn seq_range(first: u64, last: u64) -> String {
    if first == last {
        format!("seq {first}")
    } else {
        format!("seqs {first} to {last}")
    }
}
