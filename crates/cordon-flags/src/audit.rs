//! The audit chain: an append-only log of every state change, each event hashed
//! together with the hash of the event before it.
//!
//! Events are written by the [`Store`] in the same transaction as the change they
//! describe, so an acknowledged change always has its event and a rolled-back change
//! never does. There is no code path that updates or deletes an event. [`verify`] reads
//! the whole chain and names every event that was edited, inserted or deleted after
//! the fact (by someone with write access to the database file).
//!
//! What it does not do: protect against an attacker who rewrites the chain from some
//! event to the end with freshly computed hashes, or who deletes the newest events.
//! Both need an anchor outside the database: record [`Report::head`] elsewhere and
//! compare.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenRecord};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who made a change: `type:name` of the token (`admin:ops`), or `system` for the
/// server itself (the bootstrap admin token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn system() -> Self {
        Actor("system".into())
    }
    pub fn token(token: &crate::store::TokenRecord) -> Self {
        Actor(format!("{}:{}", token.token_type.as_str(), token.name))
    }
}

/// What a change did, before it is numbered and hashed.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub action: &'a str,
    pub flag: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl<'a> Change<'a> {
    /// A change called `action`, about nothing in particular yet.
    pub(crate) fn new(action: &'a str) -> Self {
        Change {
            action,
            flag: None,
            environment: None,
            before: None,
            after: None,
        }
    }

    pub(crate) fn flag(self, flag: &'a str) -> Self {
        Change {
            flag: Some(flag),
            ..self
        }
    }

    pub(crate) fn environment(self, environment: &'a str) -> Self {
        Change {
            environment: Some(environment),
            ..self
        }
    }

    pub(crate) fn before(self, before: impl Serialize) -> Self {
        Change {
            before: Some(crate::wire::to_value(&before)),
            ..self
        }
    }

    pub(crate) fn after(self, after: impl Serialize) -> Self {
        Change {
            after: Some(crate::wire::to_value(&after)),
            ..self
        }
    }

    /// [`Self::before`] if there was anything before (no `before` at all otherwise,
    /// rather than JSON `null`).
    pub(crate) fn before_if(self, before: Option<impl Serialize>) -> Self {
        match before {
            Some(b) => self.before(b),
            None => self,
        }
    }

    /// [`Self::after`] if there is anything after.
    pub(crate) fn after_if(self, after: Option<impl Serialize>) -> Self {
        match after {
            Some(a) => self.after(a),
            None => self,
        }
    }

    /// A token created: its scope and name, never its hash.
    pub(crate) fn token_created(token: &'a TokenRecord) -> Self {
        let mut after = serde_json::json!({
            "tokenName": token.name,
            "type": token.token_type.as_str(),
            "project": token.project,
            "environment": token.environment,
        });
        if let Some(ms) = token.expires_ms {
            after["expiresAt"] = crate::metrics::rfc3339(ms).into();
        }
        Change::new("api-token-created")
            .environment(&token.environment)
            .after(after)
    }

    /// A flag switched in one environment; `before` is `None` when the flag had no
    /// entry for it.
    pub(crate) fn switched(
        flag: &'a str,
        environment: &'a str,
        before: Option<bool>,
        enabled: bool,
    ) -> Self {
        let action = if enabled {
            "feature-environment-enabled"
        } else {
            "feature-environment-disabled"
        };
        Change::new(action)
            .flag(flag)
            .environment(environment)
            .before(serde_json::json!({ "enabled": before }))
            .after(serde_json::json!({ "enabled": enabled }))
    }
}

/// One stored event. `before` and `after` are JSON text, exactly as stored and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub flag: Option<String>,
    pub environment: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Event {
    /// The event that records `change` after `last` (`(seq, hash)` of the newest
    /// stored event, `None` for an empty log), numbered, timestamped and hashed. The
    /// caller inserts it in the change's own transaction, with every other writer
    /// held off until that transaction ends, so no two events get the same `seq`.
    pub(crate) fn following(
        last: Option<(i64, String)>,
        actor: &Actor,
        change: Change<'_>,
    ) -> Self {
        let (seq, prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let mut event = Event {
            seq,
            ts: crate::rows::now_millis(),
            actor: actor.0.clone(),
            action: change.action.to_owned(),
            flag: change.flag.map(str::to_owned),
            environment: change.environment.map(str::to_owned),
            before: change.before.map(|v| v.to_string()),
            after: change.after.map(|v| v.to_string()),
            prev_hash,
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        event
    }

    /// SHA-256 (hex) of the canonical encoding of every field but `hash`: a JSON array
    /// in field order, so no two different rows encode the same.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.ts,
            self.actor,
            self.action,
            self.flag,
            self.environment,
            self.before,
            self.after,
            self.prev_hash,
        ]);
        hex(&Sha256::digest(canonical.to_string().as_bytes()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Something wrong with the stored chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem {
    /// The event's content no longer matches its hash.
    Edited { seq: i64 },
    /// The event is not part of the chain: the event after it links to the one before.
    Inserted { seq: i64 },
    /// Events with these numbers are missing.
    Deleted { from: i64, to: i64 },
    /// The event does not link to the event before it: events between them were
    /// deleted and the rest renumbered, or the event before was edited and re-hashed.
    Unlinked { seq: i64, previous: i64 },
    /// The anchor kept outside the database names a newer event than the newest
    /// stored one: the newest events were deleted.
    Truncated { anchored: i64, last: i64 },
    /// The anchored event is stored with another hash: it was edited and re-hashed,
    /// or the chain after it was replaced.
    AnchorMismatch { seq: i64 },
    /// The anchor file exists but cannot be read.
    AnchorUnreadable { message: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Edited { seq } => write!(f, "event {seq} was edited"),
            Problem::Inserted { seq } => write!(f, "event {seq} was inserted"),
            Problem::Deleted { from, to } if from == to => write!(f, "event {from} was deleted"),
            Problem::Deleted { from, to } => write!(f, "events {from} to {to} were deleted"),
            Problem::Unlinked { seq, previous } => write!(
                f,
                "event {seq} does not follow event {previous}: events between them were \
                 deleted, or event {previous} was edited and re-hashed"
            ),
            Problem::Truncated { anchored, last } => write!(
                f,
                "events after {last} were deleted: the anchor outside the database names event {anchored}"
            ),
            Problem::AnchorMismatch { seq } => write!(
                f,
                "event {seq} differs from the anchor kept outside the database: it was \
                 rewritten"
            ),
            Problem::AnchorUnreadable { message } => {
                write!(f, "the audit anchor cannot be read: {message}")
            }
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Number of stored events.
    pub events: usize,
    /// Hash of the newest event. The SQLite store anchors it in a file beside the
    /// database; recording it elsewhere too (a ticket, a log) guards against an
    /// attacker who can rewrite both.
    pub head: Option<String>,
    /// Empty when the chain is intact.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The newest event as recorded outside the database after each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

/// Check the whole chain of `store`, and its newest events against the store's
/// anchor outside the database, if it keeps one.
pub fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let events = store.audit_events()?;
    let mut report = check(&events);
    match store.audit_anchor() {
        Ok(Some(anchor)) => report.problems.extend(check_anchor(&events, &anchor)),
        Ok(None) => {}
        Err(e) => report.problems.push(Problem::AnchorUnreadable {
            message: e.to_string(),
        }),
    }
    Ok(report)
}

/// The anchor may lag the chain by the changes committed but not yet anchored when
/// the process died, never lead it.
pub fn check_anchor(events: &[Event], anchor: &Anchor) -> Option<Problem> {
    let last = events.last().map_or(0, |e| e.seq);
    if anchor.seq > last {
        return Some(Problem::Truncated {
            anchored: anchor.seq,
            last,
        });
    }
    match events.iter().find(|e| e.seq == anchor.seq) {
        Some(e) if e.hash == anchor.hash => None,
        // An anchor at 0 (no events yet) matches any chain.
        None if anchor.seq == 0 => None,
        _ => Some(Problem::AnchorMismatch { seq: anchor.seq }),
    }
}

/// Check a chain of events ordered by `seq`.
pub fn check(events: &[Event]) -> Report {
    let mut problems = Vec::new();
    let mut inserted = vec![false; events.len()];
    for (i, e) in events.iter().enumerate() {
        let prev_hash = match i.checked_sub(1) {
            Some(p) => events[p].hash.as_str(),
            None => GENESIS,
        };
        // The chain goes around this event: it was slipped in between two others.
        let bypassed = events.get(i + 1).is_some_and(|next| {
            next.prev_hash == prev_hash && next.prev_hash != e.hash && e.prev_hash != e.hash
        });
        if bypassed {
            inserted[i] = true;
            problems.push(Problem::Inserted { seq: e.seq });
            continue;
        }
        if e.compute_hash() != e.hash {
            problems.push(Problem::Edited { seq: e.seq });
        }
        // Compare with the last event that is really part of the chain.
        let expected_seq = i.checked_sub(1).map_or(1, |p| events[p].seq + 1);
        let previous = (0..i).rev().find(|&p| !inserted[p]);
        let expected_prev = previous.map_or(GENESIS, |p| events[p].hash.as_str());
        if e.seq > expected_seq {
            problems.push(Problem::Deleted {
                from: expected_seq,
                to: e.seq - 1,
            });
        } else if e.prev_hash != expected_prev {
            problems.push(Problem::Unlinked {
                seq: e.seq,
                previous: previous.map_or(0, |p| events[p].seq),
            });
        }
    }
    Report {
        events: events.len(),
        head: events.last().map(|e| e.hash.clone()),
        problems,
    }
}
