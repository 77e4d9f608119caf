//! Cordon's event model and the tamper-evident session audit log.
//!
//! Everything a session does — a process started, a limit hit, a request blocked, a
//! secret injected — is recorded as one [`Event`]: a JSON object with a sequence
//! number, a timestamp, the session id, a [`kind`], kind-specific `data`, and two
//! SHA-256 hashes that chain it to the event before it. A session directory holds the
//! log as `events.jsonl` (one event per line) and a small anchor, `events.head`,
//! naming the last event written.
//!
//! * [`EventLog`] is the only writer: it appends (thread-safe, one `write(2)` per
//!   event), bounds hostile input, counts violations and keeps the anchor current.
//! * [`read_all`] and [`Follower`] read the log for display (`cordon log`,
//!   `cordon log --follow`); they do not check the chain.
//! * [`verify`] checks the whole chain and the anchor and names every problem by line
//!   and sequence number (`cordon audit verify`).
//!
//! ```
//! use cordon_events::{EventLog, kind, verify};
//! use serde_json::{Map, json};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let log = EventLog::create(dir.path(), "3f9c2a7d1e04")?;
//! log.append(kind::SESSION_START, Map::new())?;
//! let mut data = Map::new();
//! data.insert("syscall".into(), json!("mount"));
//! log.append(kind::SYSCALL_DENIED, data)?;
//! assert_eq!(log.stats().violations, 1);
//!
//! let report = verify(dir.path(), "3f9c2a7d1e04")?;
//! assert!(report.ok);
//! # Ok(())
//! # }
//! ```
//!
//! # What the chain and the anchor protect against, and what they do not
//!
//! Each event's `hash` covers its content and the previous event's hash, and the
//! anchor records the sequence number and hash of the last event. Together they catch
//! any edit of an event, inserted, deleted, duplicated or reordered lines, and removal
//! of the log's tail — *by anything that does not also recompute the hashes of every
//! later event and rewrite the anchor*. The chain is not keyed: anyone who can write
//! both files and knows this format can forge a consistent history, or delete both
//! files together. Keep the session directory out of reach of the sandboxed agent
//! (it is never inside the workspace it sees); ship the log or its head hash elsewhere
//! if you need protection from the host's own administrator.
//!
//! This crate does not decide *what* to record or what a violation should trigger;
//! the sandbox, gateway and CLI do. It owns the format, its integrity and its bounds.
//!
//! # Canonical form and hashes
//!
//! The bytes hashed for an event are, with no whitespace anywhere:
//!
//! ```text
//! {"seq":<u64>,"ts":<string>,"session":<string>,"kind":<string>,"data":<object>,"prev":<string>}
//! ```
//!
//! Fields appear in exactly this order; `data` is always present (`{}` when empty);
//! object keys at every depth of `data` are sorted by their UTF-8 bytes; strings,
//! numbers, booleans and null are written as `serde_json` writes them (shortest
//! round-tripping floats, `\u00XX` escapes for control characters, other characters
//! verbatim). `hash` is the lowercase hex SHA-256 of those bytes. `prev` is the
//! previous event's `hash`; for the first event (seq 0) it is the lowercase hex
//! SHA-256 of `cordon-events-v1\0` followed by the session id ([`genesis_hash`]).
//! The line written to the log is the canonical form with `,"hash":"<hex>"` added
//! before the closing brace, then `\n`. Verification re-derives the canonical form
//! from the parsed line, so it does not depend on `serde_json`'s map ordering
//! features.

mod error;
mod event;
mod log;
mod read;
mod time;
mod verify;

pub use error::{Error, Result};
pub use event::{Event, Severity, genesis_hash, is_violation, kind};
pub use log::{Anchor, EventLog, Stats};
pub use read::{Follower, read_all};
pub use time::{format_timestamp, format_unix_timestamp};
pub use verify::{Problem, ProblemKind, VerifyReport, verify};

/// File name of the log inside a session directory.
pub const LOG_FILE: &str = "events.jsonl";
/// File name of the anchor (`{"seq":N,"hash":"…"}` of the last event) next to the log.
pub const ANCHOR_FILE: &str = "events.head";
/// File name of the writer's record of the log it last synced (length, SHA-256,
/// last event, counts), which lets [`EventLog::resume`] skip re-verifying an
/// unchanged log. A cache: when missing or stale the log is verified in full.
pub const VERIFIED_FILE: &str = "events.verified";
/// The longest line [`EventLog::append`] writes, newline included. Longer events have
/// their longest strings shortened and are marked `"truncated": true`.
pub const MAX_EVENT_LINE: usize = 64 * 1024;
/// The longest line the readers accept. Larger than [`MAX_EVENT_LINE`] so a future
/// writer with a bigger bound stays readable, small enough to bound memory.
pub const MAX_READ_LINE: usize = 1024 * 1024;
