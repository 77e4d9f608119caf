//! The [`Event`] record, its kinds and severities, and its canonical form and hash
//! (specified in the crate documentation).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One thing a session did, as stored on one line of `events.jsonl`.
///
/// Unknown fields are rejected when parsing: every byte of a stored event is either
/// covered by `hash` or is `hash` itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position in the session's log: 0, 1, 2, … with no gaps.
    pub seq: u64,
    /// When the event was appended, RFC 3339 UTC with nanoseconds.
    pub ts: String,
    /// The session id the log belongs to.
    pub session: String,
    /// What happened; one of the [`kind`] constants or another dotted lowercase name.
    pub kind: String,
    /// Kind-specific fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// `hash` of the previous event, or [`genesis_hash`] for seq 0.
    pub prev: String,
    /// Lowercase hex SHA-256 of [`Event::canonical_bytes`].
    pub hash: String,
}

/// Event kind names. Kinds are open-ended (any 1–128 characters from `a-z0-9._-`);
/// these are the ones Cordon itself writes.
pub mod kind {
    pub const SESSION_START: &str = "session.start";
    pub const SESSION_END: &str = "session.end";
    /// Cordon itself failed during a run (setup, log, sync).
    pub const SESSION_ERROR: &str = "session.error";
    /// The sandbox is in place (isolation features in force) and the agent starts.
    pub const SANDBOX_READY: &str = "sandbox.ready";
    /// A signal the user sent to `cordon` was passed to the agent.
    pub const SIGNAL_FORWARDED: &str = "signal.forwarded";
    pub const PROC_EXEC: &str = "proc.exec";
    pub const PROC_EXIT: &str = "proc.exit";
    /// Prefix shared by every resource-limit kind; all of them are violations.
    pub const LIMIT_PREFIX: &str = "limit.";
    pub const LIMIT_MEMORY: &str = "limit.memory";
    pub const LIMIT_PIDS: &str = "limit.pids";
    pub const LIMIT_CPU: &str = "limit.cpu";
    pub const LIMIT_TIMEOUT: &str = "limit.timeout";
    pub const LIMIT_DISK: &str = "limit.disk";
    pub const LIMIT_OUTPUT: &str = "limit.output";
    pub const POLICY_DECISION: &str = "policy.decision";
    pub const POLICY_VIOLATION: &str = "policy.violation";
    pub const SYSCALL_DENIED: &str = "syscall.denied";
    pub const FS_WRITE: &str = "fs.write";
    /// A DNS query the gateway answered (allowed names) or refused (NXDOMAIN).
    pub const NET_DNS: &str = "net.dns";
    /// A TCP connection through the gateway ended (bytes each way, how it was handled).
    pub const NET_CONNECT: &str = "net.connect";
    /// One HTTP request through the gateway (method, host, path, status, bytes, rule).
    pub const NET_REQUEST: &str = "net.request";
    /// A request that waits for `cordon approve` / `cordon deny`.
    pub const NET_PENDING: &str = "net.pending";
    pub const NET_BLOCKED: &str = "net.blocked";
    pub const SECRET_INJECTED: &str = "secret.injected";
    pub const SECRET_BLOCKED: &str = "secret.blocked";
    pub const ANOMALY: &str = "anomaly";
    pub const FLAG_CHANGED: &str = "flag.changed";
    pub const CR_APPROVED: &str = "cr.approved";

    /// Every kind above except [`LIMIT_PREFIX`], for help texts and filters.
    pub const ALL: &[&str] = &[
        SESSION_START,
        SESSION_END,
        SESSION_ERROR,
        SANDBOX_READY,
        SIGNAL_FORWARDED,
        PROC_EXEC,
        PROC_EXIT,
        LIMIT_MEMORY,
        LIMIT_PIDS,
        LIMIT_CPU,
        LIMIT_TIMEOUT,
        LIMIT_DISK,
        LIMIT_OUTPUT,
        POLICY_DECISION,
        POLICY_VIOLATION,
        SYSCALL_DENIED,
        FS_WRITE,
        NET_DNS,
        NET_CONNECT,
        NET_REQUEST,
        NET_PENDING,
        NET_BLOCKED,
        SECRET_INJECTED,
        SECRET_BLOCKED,
        ANOMALY,
        FLAG_CHANGED,
        CR_APPROVED,
    ];
}

/// How much an event matters to someone reviewing a session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A normal part of a session's life.
    Info,
    /// The sandbox stopped or caught something the agent tried: a denied syscall, a
    /// policy violation, a resource limit, a blocked request or secret, an anomaly.
    Violation,
}

impl Severity {
    /// The severity of events of `kind`.
    pub fn of(kind: &str) -> Severity {
        if is_violation(kind) {
            Severity::Violation
        } else {
            Severity::Info
        }
    }
}

/// Whether events of `kind` record a violation: `syscall.denied`,
/// `policy.violation`, any `limit.*`, `net.blocked`, `secret.blocked`, `anomaly`.
pub fn is_violation(kind: &str) -> bool {
    matches!(
        kind,
        kind::SYSCALL_DENIED
            | kind::POLICY_VIOLATION
            | kind::NET_BLOCKED
            | kind::SECRET_BLOCKED
            | kind::ANOMALY
    ) || kind.starts_with(kind::LIMIT_PREFIX)
}

/// The `prev` of a session's first event: lowercase hex SHA-256 of
/// `cordon-events-v1\0` followed by the session id. Binding the chain's start to the
/// session stops a log of one session passing as another's.
pub fn genesis_hash(session: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"cordon-events-v1\0");
    hasher.update(session.as_bytes());
    hex(&hasher.finalize())
}

impl Event {
    /// The bytes `hash` is computed over (see the crate documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_bytes(
            self.seq,
            &self.ts,
            &self.session,
            &self.kind,
            &self.data,
            &self.prev,
        )
    }

    /// The hash this event's content should have.
    pub fn compute_hash(&self) -> String {
        hex(&Sha256::digest(self.canonical_bytes()))
    }

    /// Whether the stored `hash` matches the content.
    pub fn hash_matches(&self) -> bool {
        self.compute_hash() == self.hash
    }

    /// [`Severity::of`] this event's kind.
    pub fn severity(&self) -> Severity {
        Severity::of(&self.kind)
    }

    /// [`is_violation`] for this event's kind.
    pub fn is_violation(&self) -> bool {
        is_violation(&self.kind)
    }
}

/// Builds a complete event (hash included) and its log line, `\n` included.
pub(crate) fn seal(
    seq: u64,
    ts: String,
    session: &str,
    kind: &str,
    data: Map<String, Value>,
    prev: &str,
) -> (Event, Vec<u8>) {
    let mut line = canonical_bytes(seq, &ts, session, kind, &data, prev);
    let hash = hex(&Sha256::digest(&line));
    // The canonical form ends with '}': reopen it to add the hash.
    line.pop();
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    let event = Event {
        seq,
        ts,
        session: session.to_owned(),
        kind: kind.to_owned(),
        data,
        prev: prev.to_owned(),
        hash,
    };
    (event, line)
}

fn canonical_bytes(
    seq: u64,
    ts: &str,
    session: &str,
    kind: &str,
    data: &Map<String, Value>,
    prev: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":");
    write_scalar(&mut out, ts);
    out.extend_from_slice(b",\"session\":");
    write_scalar(&mut out, session);
    out.extend_from_slice(b",\"kind\":");
    write_scalar(&mut out, kind);
    out.extend_from_slice(b",\"data\":");
    write_object(&mut out, data);
    out.extend_from_slice(b",\"prev\":");
    write_scalar(&mut out, prev);
    out.push(b'}');
    out
}

/// Writes `object` with keys sorted at every depth, whatever order the map keeps
/// (serde_json's `preserve_order` feature may be on elsewhere in the build).
fn write_object(out: &mut Vec<u8>, object: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_scalar(out, key.as_str());
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(object) => write_object(out, object),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Only strings, numbers, booleans and null get here: serializing those into a
    // Vec has no failure path in serde_json (no I/O, no non-string map keys).
    serde_json::to_writer(&mut *out, value).expect("serializing a JSON scalar into memory");
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Longest accepted session id. Session ids name directories and appear in every event.
pub(crate) const MAX_SESSION_LEN: usize = 256;
/// Longest accepted kind.
pub(crate) const MAX_KIND_LEN: usize = 128;

pub(crate) fn validate_session(session: &str) -> Result<()> {
    let ok = (1..=MAX_SESSION_LEN).contains(&session.len())
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSession {
            session: session.chars().take(MAX_SESSION_LEN + 1).collect(),
        })
    }
}

pub(crate) fn validate_kind(kind: &str) -> Result<()> {
    let ok = (1..=MAX_KIND_LEN).contains(&kind.len())
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKind {
            kind: kind.chars().take(MAX_KIND_LEN + 1).collect(),
        })
    }
}

/// Key added to `data` when [`bound_data`] had to shorten or drop something.
pub(crate) const TRUNCATED_KEY: &str = "truncated";

/// Fits `data` so that the sealed line is at most `max_line` bytes, given that the
/// rest of the line takes `envelope` bytes. Over-long strings (at any depth) are cut
/// to a common length, chosen as large as fits; if even empty strings do not fit
/// (huge arrays, thousands of keys), `data` is replaced by a note saying so. Either
/// way `"truncated": true` is set. Returns `data` unchanged when it already fits.
pub(crate) fn bound_data(
    data: Map<String, Value>,
    envelope: usize,
    max_line: usize,
) -> Map<String, Value> {
    let size = |data: &Map<String, Value>| {
        let mut out = Vec::new();
        write_object(&mut out, data);
        envelope + out.len()
    };
    if size(&data) <= max_line {
        return data;
    }
    let mut marked = data;
    marked.insert(TRUNCATED_KEY.to_owned(), Value::Bool(true));
    let capped = |cap: usize| {
        let mut copy = marked.clone();
        for value in copy.values_mut() {
            cap_strings(value, cap);
        }
        copy
    };
    let longest = marked.values().map(longest_string).max().unwrap_or(0);
    if size(&capped(0)) <= max_line {
        // Largest cap that fits: fits(0) holds and the size only grows with the cap.
        let (mut fits, mut too_big) = (0usize, longest + 1);
        while too_big - fits > 1 {
            let mid = fits + (too_big - fits) / 2;
            if size(&capped(mid)) <= max_line {
                fits = mid;
            } else {
                too_big = mid;
            }
        }
        return capped(fits);
    }
    let fields = marked.len() - 1;
    let mut note = Map::new();
    note.insert(TRUNCATED_KEY.to_owned(), Value::Bool(true));
    note.insert(
        "dropped".to_owned(),
        Value::String(format!(
            "{fields} data field(s): too large for one event even with every string emptied"
        )),
    );
    note
}

fn longest_string(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(object) => object.values().map(longest_string).max().unwrap_or(0),
        _ => 0,
    }
}

/// Cuts every string in `value` to at most `cap` bytes, on a character boundary.
fn cap_strings(value: &mut Value, cap: usize) {
    match value {
        Value::String(s) if s.len() > cap => {
            let mut end = cap;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| cap_strings(v, cap)),
        Value::Object(object) => object.values_mut().for_each(|v| cap_strings(v, cap)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn canonical_form_is_fixed_order_sorted_keys_and_no_whitespace() {
        let data = map(json!({"z": 1, "a": {"y": [true, null, 1.5], "b": "x\ny"}}));
        let (event, line) = seal(3, "T".into(), "s1", "proc.exec", data, "p");
        assert_eq!(
            String::from_utf8(event.canonical_bytes()).unwrap(),
            r#"{"seq":3,"ts":"T","session":"s1","kind":"proc.exec","data":{"a":{"b":"x\ny","y":[true,null,1.5]},"z":1},"prev":"p"}"#
        );
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with(&format!(",\"prev\":\"p\",\"hash\":\"{}\"}}\n", event.hash)));
        let parsed: Event = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(parsed, event);
        assert!(parsed.hash_matches());
    }

    #[test]
    fn hash_is_sha256_of_canonical_bytes() {
        let (event, _) = seal(0, "T".into(), "s", "k", Map::new(), "p");
        // sha256 of {"seq":0,"ts":"T","session":"s","kind":"k","data":{},"prev":"p"}
        let want = hex(&Sha256::digest(
            br#"{"seq":0,"ts":"T","session":"s","kind":"k","data":{},"prev":"p"}"#,
        ));
        assert_eq!(event.hash, want);
        assert_eq!(event.hash.len(), 64);
        // Known value of sha256("abc").
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn genesis_depends_on_session() {
        assert_ne!(genesis_hash("a"), genesis_hash("b"));
        assert_eq!(
            genesis_hash("a"),
            hex(&Sha256::digest(b"cordon-events-v1\0a"))
        );
    }

    #[test]
    fn violations() {
        for k in [
            kind::SYSCALL_DENIED,
            kind::POLICY_VIOLATION,
            kind::LIMIT_MEMORY,
            kind::LIMIT_OUTPUT,
            "limit.future",
            kind::NET_BLOCKED,
            kind::SECRET_BLOCKED,
            kind::ANOMALY,
        ] {
            assert!(is_violation(k), "{k}");
            assert_eq!(Severity::of(k), Severity::Violation);
        }
        for k in [
            kind::SESSION_START,
            kind::PROC_EXEC,
            kind::POLICY_DECISION,
            kind::NET_REQUEST,
            kind::SECRET_INJECTED,
            kind::FS_WRITE,
            "limits",
        ] {
            assert!(!is_violation(k), "{k}");
        }
        for k in kind::ALL {
            validate_kind(k).unwrap();
        }
    }

    #[test]
    fn kind_and_session_validation() {
        assert!(validate_kind("Proc.Exec").is_err());
        assert!(validate_kind("").is_err());
        assert!(validate_kind("a\nb").is_err());
        assert!(validate_kind(&"a".repeat(129)).is_err());
        assert!(validate_session("3f9c2a7d1e04").is_ok());
        assert!(validate_session("../x").is_err());
        assert!(validate_session("").is_err());
    }

    #[test]
    fn bound_data_keeps_small_data_and_cuts_long_strings_on_char_boundaries() {
        let small = map(json!({"a": "b"}));
        assert_eq!(bound_data(small.clone(), 100, 1000), small);

        let big = map(json!({"out": "é".repeat(5000), "n": 7, "short": "ok"}));
        let bounded = bound_data(big, 100, 1000);
        let mut out = Vec::new();
        write_object(&mut out, &bounded);
        assert!(100 + out.len() <= 1000, "{}", out.len());
        assert!(100 + out.len() > 950, "cut more than needed: {}", out.len());
        assert_eq!(bounded["truncated"], json!(true));
        assert_eq!(bounded["n"], json!(7));
        assert_eq!(bounded["short"], json!("ok"));
        let out_str = bounded["out"].as_str().unwrap();
        assert!(out_str.chars().all(|c| c == 'é') && !out_str.is_empty());
    }

    #[test]
    fn bound_data_drops_what_cannot_be_cut() {
        let huge = map(json!({"nums": vec![123456789; 1000]}));
        let bounded = bound_data(huge, 100, 1000);
        assert_eq!(bounded["truncated"], json!(true));
        assert!(bounded.get("nums").is_none());
        assert!(
            bounded["dropped"]
                .as_str()
                .unwrap()
                .contains("1 data field(s)")
        );
    }
}
