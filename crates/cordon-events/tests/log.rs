//! End-to-end tests of the log on a real file system: writing, resuming, reading,
//! following, and verification of every kind of tampering.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon_events::{
    ANCHOR_FILE, Error, Event, EventLog, Follower, LOG_FILE, MAX_EVENT_LINE, ProblemKind, Stats,
    kind, read_all, verify,
};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

const SESSION: &str = "sess-1";

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn sample(i: u64) -> Map<String, Value> {
    obj(json!({
        "i": i,
        "cmd": format!("echo {i}"),
        "nested": {"z": [1, 2.5, null], "a": "tab\there \"quoted\" \u{1F600}"},
    }))
}

const KINDS: [&str; 4] = [
    kind::PROC_EXEC,
    kind::FS_WRITE,
    kind::NET_BLOCKED,
    kind::PROC_EXIT,
];

/// A fresh session directory with `n` events.
fn log_with(n: u64) -> (TempDir, Vec<Event>) {
    let dir = TempDir::new().unwrap();
    let log = EventLog::create(dir.path(), SESSION).unwrap();
    let events = (0..n)
        .map(|i| log.append(KINDS[i as usize % 4], sample(i)).unwrap())
        .collect();
    (dir, events)
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(dir.join(LOG_FILE), text).unwrap();
}

type Found = Vec<(ProblemKind, u64, Option<u64>)>;

fn found(dir: &Path) -> Found {
    let report = verify(dir, SESSION).unwrap();
    assert_eq!(report.ok, report.problems.is_empty());
    for p in &report.problems {
        // Every message names where the problem is.
        if p.line > 0 {
            assert!(p.message.contains(&format!("line {}", p.line)), "{p:?}");
        } else {
            assert!(p.message.contains(ANCHOR_FILE), "{p:?}");
        }
    }
    report
        .problems
        .iter()
        .map(|p| (p.kind, p.line, p.seq))
        .collect()
}

/// Verifies a 50-event log after `tamper` changed its lines.
fn tampered(tamper: impl FnOnce(&mut Vec<String>, &[Event])) -> Found {
    let (dir, events) = log_with(50);
    let mut lines = lines(dir.path());
    tamper(&mut lines, &events);
    write_lines(dir.path(), &lines);
    found(dir.path())
}

/// A correctly hashed event, as a forger who knows the format would write it.
fn forge(seq: u64, prev: &str, kind: &str, session: &str) -> String {
    let mut event = Event {
        seq,
        ts: "2026-01-01T00:00:00.000000000Z".into(),
        session: session.into(),
        kind: kind.into(),
        data: obj(json!({"cmd": "rm -rf /"})),
        prev: prev.into(),
        hash: String::new(),
    };
    event.hash = event.compute_hash();
    serde_json::to_string(&event).unwrap()
}

#[test]
fn fifty_events_verify_and_read_back() {
    let (dir, events) = log_with(50);
    let report = verify(dir.path(), SESSION).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 50);
    assert!(report.problems.is_empty());

    let read = read_all(dir.path()).unwrap();
    assert_eq!(read, events);
    for (i, e) in read.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.session, SESSION);
        assert!(e.hash_matches());
        assert_eq!(e.data, sample(i as u64));
        assert_eq!(e.ts.len(), "2026-11-27T05:01:02.123456789Z".len());
        assert!(e.ts.ends_with('Z'));
    }
    for pair in read.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
    }
    assert_eq!(read[0].prev, cordon_events::genesis_hash(SESSION));

    // The anchor names the last event.
    let anchor: Value =
        serde_json::from_slice(&fs::read(dir.path().join(ANCHOR_FILE)).unwrap()).unwrap();
    assert_eq!(anchor, json!({"seq": 49, "hash": events[49].hash}));
    let mode = fs::metadata(dir.path().join(LOG_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn verify_is_tied_to_the_session() {
    let (dir, _) = log_with(3);
    let report = verify(dir.path(), "other-session").unwrap();
    assert!(!report.ok);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::WrongSession)
    );
    assert_eq!(report.problems.len(), 3);
}

#[test]
fn edited_data_field_is_reported_once_at_its_line() {
    let got = tampered(|lines, _| {
        let line = &mut lines[6];
        assert!(line.contains(r#""i":6,"#));
        *line = line.replace(r#""i":6,"#, r#""i":600,"#);
    });
    assert_eq!(got, vec![(ProblemKind::Edited, 7, Some(6))]);

    let (dir, _) = log_with(50);
    let mut l = lines(dir.path());
    l[6] = l[6].replace(r#""i":6,"#, r#""i":600,"#);
    write_lines(dir.path(), &l);
    let report = verify(dir.path(), SESSION).unwrap();
    assert_eq!(
        report.problems[0].message,
        "line 7 (seq 6): content edited; stored hash does not match"
    );
}

#[test]
fn edited_kind_is_reported() {
    let got = tampered(|lines, _| {
        let line = &mut lines[12];
        assert!(line.contains(r#""kind":"proc.exec""#));
        *line = line.replace(r#""kind":"proc.exec""#, r#""kind":"proc.exit""#);
    });
    assert_eq!(got, vec![(ProblemKind::Edited, 13, Some(12))]);
}

#[test]
fn edited_seq_field_is_reported_as_an_edit_only() {
    let got = tampered(|lines, _| {
        lines[20] = lines[20].replace(r#"{"seq":20,"#, r#"{"seq":23,"#);
    });
    assert_eq!(got, vec![(ProblemKind::Edited, 21, Some(23))]);
}

#[test]
fn edited_and_rehashed_event_breaks_the_next_link() {
    let got = tampered(|lines, _| {
        let mut event: Event = serde_json::from_str(&lines[30]).unwrap();
        event.data.insert("cmd".into(), json!("innocent"));
        event.hash = event.compute_hash();
        lines[30] = serde_json::to_string(&event).unwrap();
    });
    assert_eq!(got, vec![(ProblemKind::BrokenLink, 32, Some(31))]);
}

#[test]
fn rehashed_last_event_is_caught_by_the_anchor() {
    let got = tampered(|lines, _| {
        let mut event: Event = serde_json::from_str(&lines[49]).unwrap();
        event.kind = kind::PROC_EXIT.into();
        event.hash = event.compute_hash();
        lines[49] = serde_json::to_string(&event).unwrap();
    });
    assert_eq!(got, vec![(ProblemKind::Truncated, 50, Some(49))]);
}

#[test]
fn deleted_middle_line_is_reported_with_the_missing_seq() {
    let (dir, _) = log_with(50);
    let mut l = lines(dir.path());
    l.remove(24);
    write_lines(dir.path(), &l);
    assert_eq!(
        found(dir.path()),
        vec![(ProblemKind::Deleted, 25, Some(24))]
    );
    let report = verify(dir.path(), SESSION).unwrap();
    assert_eq!(
        report.problems[0].message,
        "seq 24 missing before line 25 (seq 25): deleted"
    );

    let got = tampered(|lines, _| {
        lines.drain(10..13);
    });
    assert_eq!(got, vec![(ProblemKind::Deleted, 11, Some(10))]);

    let got = tampered(|lines, _| {
        lines.remove(0);
    });
    assert_eq!(got, vec![(ProblemKind::Deleted, 1, Some(0))]);
}

#[test]
fn deleted_last_lines_are_caught_by_the_anchor() {
    let got = tampered(|lines, _| {
        lines.pop();
    });
    assert_eq!(got, vec![(ProblemKind::Truncated, 50, Some(49))]);

    let got = tampered(|lines, _| {
        lines.truncate(40);
    });
    assert_eq!(got, vec![(ProblemKind::Truncated, 41, Some(40))]);

    let (dir, _) = log_with(5);
    fs::write(dir.path().join(LOG_FILE), "").unwrap();
    assert_eq!(
        found(dir.path()),
        vec![(ProblemKind::Truncated, 1, Some(0))]
    );

    fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(
        found(dir.path()),
        vec![(ProblemKind::Truncated, 1, Some(0))]
    );
}

#[test]
fn inserted_forged_line_is_reported_not_the_genuine_one() {
    // A convincing forgery: right seq, linked to its predecessor, hash recomputed.
    let got = tampered(|lines, events| {
        let forged = forge(20, &events[19].hash, kind::PROC_EXEC, SESSION);
        lines.insert(20, forged);
    });
    assert_eq!(got, vec![(ProblemKind::Inserted, 21, Some(20))]);

    // The same, placed after the genuine event.
    let got = tampered(|lines, events| {
        let forged = forge(20, &events[19].hash, kind::PROC_EXEC, SESSION);
        lines.insert(21, forged);
    });
    assert_eq!(got, vec![(ProblemKind::Inserted, 22, Some(20))]);

    // A copy of an earlier line.
    let got = tampered(|lines, _| {
        let copy = lines[5].clone();
        lines.insert(30, copy);
    });
    assert_eq!(got, vec![(ProblemKind::Inserted, 31, Some(5))]);

    // A line with a made-up seq and prev.
    let got = tampered(|lines, _| {
        lines.insert(8, forge(1000, &"0".repeat(64), kind::PROC_EXEC, SESSION));
    });
    assert_eq!(got, vec![(ProblemKind::Inserted, 9, Some(1000))]);
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let got = tampered(|lines, _| lines.swap(9, 10));
    assert_eq!(got, vec![(ProblemKind::Reordered, 11, Some(9))]);

    // One event moved far back: the moved line is blamed.
    let got = tampered(|lines, _| {
        let moved = lines.remove(3);
        lines.insert(40, moved);
    });
    assert_eq!(got, vec![(ProblemKind::Reordered, 41, Some(3))]);

    // One event moved far forward.
    let got = tampered(|lines, _| {
        let moved = lines.remove(45);
        lines.insert(5, moved);
    });
    assert_eq!(got, vec![(ProblemKind::Reordered, 6, Some(45))]);
}

#[test]
fn changed_session_is_reported_as_wrong_session() {
    let got = tampered(|lines, _| {
        lines[17] = lines[17].replace(r#""session":"sess-1""#, r#""session":"sess-2""#);
    });
    assert_eq!(got, vec![(ProblemKind::WrongSession, 18, Some(17))]);

    // An event spliced in from another session's log with the same layout.
    let got = tampered(|lines, events| {
        lines[17] = forge(17, &events[16].hash, kind::PROC_EXEC, "sess-2");
    });
    assert!(
        got.contains(&(ProblemKind::WrongSession, 18, Some(17))),
        "{got:?}"
    );
}

#[test]
fn garbage_lines_are_malformed_without_cascading() {
    let got = tampered(|lines, _| lines.insert(14, "this is not json".into()));
    assert_eq!(got, vec![(ProblemKind::Malformed, 15, None)]);

    let got = tampered(|lines, _| lines[14] = r#"{"seq":14}"#.into());
    assert_eq!(got, vec![(ProblemKind::Malformed, 15, None)]);

    let got = tampered(|lines, _| lines.insert(3, String::new()));
    assert_eq!(got, vec![(ProblemKind::Malformed, 4, None)]);

    // Fields outside the hashed content are not allowed to sneak in.
    let got = tampered(|lines, _| {
        lines[2] = lines[2].replacen('{', r#"{"note":"approved by admin","#, 1);
    });
    assert_eq!(got, vec![(ProblemKind::Malformed, 3, None)]);
}

#[test]
fn cut_off_last_line_is_malformed() {
    let (dir, _) = log_with(5);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(LOG_FILE))
        .unwrap();
    file.write_all(br#"{"seq":5,"ts":"#).unwrap();
    assert_eq!(found(dir.path()), vec![(ProblemKind::Malformed, 6, None)]);
    // The reader for display skips a last line that may still be being written.
    assert_eq!(read_all(dir.path()).unwrap().len(), 5);
}

#[test]
fn missing_or_broken_anchor_is_reported() {
    let (dir, _) = log_with(50);
    fs::remove_file(dir.path().join(ANCHOR_FILE)).unwrap();
    assert_eq!(
        found(dir.path()),
        vec![(ProblemKind::AnchorMissing, 0, None)]
    );

    fs::write(dir.path().join(ANCHOR_FILE), "garbage").unwrap();
    assert_eq!(found(dir.path()), vec![(ProblemKind::Malformed, 0, None)]);
}

#[test]
fn events_appended_behind_the_writers_back_are_reported() {
    let (dir, events) = log_with(10);
    let mut l = lines(dir.path());
    let mut prev = events[9].hash.clone();
    for seq in 10..13 {
        let line = forge(seq, &prev, kind::SESSION_END, SESSION);
        prev = serde_json::from_str::<Event>(&line).unwrap().hash;
        l.push(line);
    }
    write_lines(dir.path(), &l);
    assert_eq!(
        found(dir.path()),
        vec![(ProblemKind::Inserted, 12, Some(11))]
    );
}

#[test]
fn anchor_one_behind_after_a_crash_is_accepted_and_repaired() {
    let (dir, events) = log_with(10);
    let behind = json!({"seq": 8, "hash": events[8].hash}).to_string();
    fs::write(dir.path().join(ANCHOR_FILE), &behind).unwrap();
    assert_eq!(found(dir.path()), vec![]);

    let log = EventLog::open_append(dir.path(), SESSION).unwrap();
    let anchor: Value =
        serde_json::from_slice(&fs::read(dir.path().join(ANCHOR_FILE)).unwrap()).unwrap();
    assert_eq!(anchor["seq"], json!(9));
    drop(log);
}

#[test]
fn report_serializes_for_json_output() {
    let (dir, _) = log_with(3);
    fs::remove_file(dir.path().join(ANCHOR_FILE)).unwrap();
    let report = verify(dir.path(), SESSION).unwrap();
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["ok"], json!(false));
    assert_eq!(value["events"], json!(3));
    assert_eq!(value["problems"][0]["kind"], json!("anchor_missing"));
    assert_eq!(value["problems"][0]["line"], json!(0));
    assert_eq!(value["problems"][0]["seq"], Value::Null);
}

#[test]
fn resume_continues_the_chain() {
    let dir = TempDir::new().unwrap();
    {
        let log = EventLog::create(dir.path(), SESSION).unwrap();
        log.append(kind::SESSION_START, Map::new()).unwrap();
        log.append(kind::SYSCALL_DENIED, sample(1)).unwrap();
        log.sync().unwrap();
    }
    let log = EventLog::open_append(dir.path(), SESSION).unwrap();
    assert_eq!(
        log.stats(),
        Stats {
            events: 2,
            violations: 1
        }
    );
    let third = log.append(kind::LIMIT_MEMORY, sample(2)).unwrap();
    assert_eq!(third.seq, 2);
    assert_eq!(third.prev, read_all(dir.path()).unwrap()[1].hash);
    assert_eq!(
        log.stats(),
        Stats {
            events: 3,
            violations: 2
        }
    );
    assert_eq!(log.head().unwrap().hash, third.hash);
    drop(log);

    let report = verify(dir.path(), SESSION).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 3);
}

#[test]
fn resume_of_an_empty_log_starts_at_genesis() {
    let dir = TempDir::new().unwrap();
    drop(EventLog::create(dir.path(), SESSION).unwrap());
    let log = EventLog::open_append(dir.path(), SESSION).unwrap();
    let first = log.append(kind::SESSION_START, Map::new()).unwrap();
    assert_eq!(first.seq, 0);
    assert_eq!(first.prev, cordon_events::genesis_hash(SESSION));
    drop(log);
    assert!(verify(dir.path(), SESSION).unwrap().ok);
}

#[test]
fn resume_refuses_a_broken_log_naming_the_first_bad_line() {
    let (dir, _) = log_with(20);
    let mut l = lines(dir.path());
    l[6] = l[6].replace(r#""i":6,"#, r#""i":7,"#);
    l.remove(12);
    write_lines(dir.path(), &l);
    let error = EventLog::open_append(dir.path(), SESSION).err().unwrap();
    match &error {
        Error::Broken {
            line, seq, kind, ..
        } => {
            assert_eq!((*line, *seq, *kind), (7, Some(6), ProblemKind::Edited));
        }
        other => panic!("unexpected error: {other}"),
    }
    let text = error.to_string();
    assert!(text.contains("line 7 (seq 6)"), "{text}");
    assert!(text.contains("1 more problem"), "{text}");
    // Nothing was appended.
    assert_eq!(lines(dir.path()).len(), 19);
}

#[test]
fn one_writer_per_log() {
    let dir = TempDir::new().unwrap();
    let log = EventLog::create(dir.path(), SESSION).unwrap();
    log.append(kind::SESSION_START, Map::new()).unwrap();
    assert!(matches!(
        EventLog::create(dir.path(), SESSION),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        EventLog::open_append(dir.path(), SESSION),
        Err(Error::Locked { .. })
    ));
    drop(log);
    assert!(EventLog::open_append(dir.path(), SESSION).is_ok());

    let empty = TempDir::new().unwrap();
    assert!(matches!(
        EventLog::open_append(empty.path(), SESSION),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        verify(empty.path(), SESSION),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn create_refuses_a_directory_whose_log_was_deleted() {
    let (dir, _) = log_with(3);
    fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
    assert!(matches!(
        EventLog::create(dir.path(), SESSION),
        Err(Error::StaleAnchor { .. })
    ));
}

#[test]
fn bad_kind_and_session_are_refused() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(
        EventLog::create(dir.path(), "../escape"),
        Err(Error::InvalidSession { .. })
    ));
    let log = EventLog::create(dir.path(), SESSION).unwrap();
    assert!(matches!(
        log.append("Proc Exec", Map::new()),
        Err(Error::InvalidKind { .. })
    ));
    assert_eq!(log.stats().events, 0);
    assert_eq!(fs::read(dir.path().join(LOG_FILE)).unwrap().len(), 0);
}

#[test]
fn concurrent_appends_form_one_valid_chain() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let dir = TempDir::new().unwrap();
    let log = Arc::new(EventLog::create(dir.path(), SESSION).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for n in 0..PER_THREAD {
                    let data = obj(json!({"thread": t, "n": n}));
                    log.append(kind::PROC_EXEC, data).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(log.stats().events, THREADS * PER_THREAD);

    let report = verify(dir.path(), SESSION).unwrap();
    assert!(
        report.ok,
        "{:?}",
        &report.problems[..report.problems.len().min(5)]
    );
    assert_eq!(report.events, THREADS * PER_THREAD);
    let events = read_all(dir.path()).unwrap();
    // Each thread's events appear in the order it appended them.
    let mut next = vec![0; THREADS as usize];
    for e in &events {
        let t = e.data["thread"].as_u64().unwrap() as usize;
        assert_eq!(e.data["n"].as_u64().unwrap(), next[t]);
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_THREAD));
}

#[test]
fn oversized_data_is_truncated_and_still_verifies() {
    let dir = TempDir::new().unwrap();
    let log = EventLog::create(dir.path(), SESSION).unwrap();
    let hostile = obj(json!({
        "stdout": "A".repeat(1 << 20),
        "stderr": "\u{1}".repeat(50_000), // six bytes each once escaped
        "pid": 42,
        "argv": ["sh", "-c", "x".repeat(200_000)],
    }));
    let event = log.append(kind::LIMIT_OUTPUT, hostile).unwrap();
    assert_eq!(event.data["truncated"], json!(true));
    assert_eq!(event.data["pid"], json!(42));
    assert_eq!(event.data["argv"][0], json!("sh"));
    let stdout = event.data["stdout"].as_str().unwrap();
    assert!(
        stdout.len() > 1000,
        "cut far more than needed: {}",
        stdout.len()
    );

    let huge_array = obj(json!({"numbers": vec![1234567; 100_000]}));
    let dropped = log.append(kind::ANOMALY, huge_array).unwrap();
    assert_eq!(dropped.data["truncated"], json!(true));
    assert!(dropped.data.get("numbers").is_none());

    let small = log.append(kind::PROC_EXIT, sample(3)).unwrap();
    assert!(!small.data.contains_key("truncated"));
    drop(log);

    for line in lines(dir.path()) {
        assert!(line.len() < MAX_EVENT_LINE, "{} bytes", line.len());
    }
    assert!(lines(dir.path())[0].len() > MAX_EVENT_LINE - 1000);
    assert!(verify(dir.path(), SESSION).unwrap().ok);
    assert_eq!(read_all(dir.path()).unwrap(), vec![event, dropped, small]);
}

#[test]
fn floats_survive_the_round_trip_through_the_file() {
    let dir = TempDir::new().unwrap();
    let log = EventLog::create(dir.path(), SESSION).unwrap();
    // Awkward values plus a spread of bit patterns: any float that parses back to a
    // different value would fail verification.
    let mut floats = vec![
        0.1,
        1e-300,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        5e-324,
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while floats.len() < 2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            floats.push(f);
        }
    }
    for chunk in floats.chunks(100) {
        log.append(kind::ANOMALY, obj(json!({"values": chunk})))
            .unwrap();
    }
    drop(log);
    let report = verify(dir.path(), SESSION).unwrap();
    assert!(report.ok, "{:?}", report.problems.first());
}

#[test]
fn follower_returns_only_complete_lines() {
    let dir = TempDir::new().unwrap();
    let mut follower = Follower::new(dir.path());
    // No log yet: nothing, no error.
    assert!(follower.next_batch(Duration::ZERO).unwrap().is_empty());

    let log = EventLog::create(dir.path(), SESSION).unwrap();
    for i in 0..3 {
        log.append(kind::PROC_EXEC, sample(i)).unwrap();
    }
    let batch = follower.next_batch(Duration::ZERO).unwrap();
    assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(follower.next_batch(Duration::ZERO).unwrap().is_empty());

    // Half a line: held back until its newline arrives.
    let next = r#"{"seq":3,"ts":"2026-01-01T00:00:00.000000000Z","session":"sess-1","kind":"proc.exec","prev":"p","hash":"h"}"#;
    let mut raw = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(LOG_FILE))
        .unwrap();
    raw.write_all(&next.as_bytes()[..40]).unwrap();
    assert!(
        follower
            .next_batch(Duration::from_millis(120))
            .unwrap()
            .is_empty()
    );
    raw.write_all(&next.as_bytes()[40..]).unwrap();
    raw.write_all(b"\n").unwrap();
    let batch = follower.next_batch(Duration::ZERO).unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].seq, 3);

    // A malformed line is an error naming it, and following continues after it.
    raw.write_all(b"garbage\n").unwrap();
    match follower.next_batch(Duration::ZERO) {
        Err(Error::Malformed { line, .. }) => assert_eq!(line, 5),
        other => panic!("expected a malformed-line error, got {other:?}"),
    }
    raw.write_all(next.replace(r#""seq":3"#, r#""seq":9"#).as_bytes())
        .unwrap();
    raw.write_all(b"\n").unwrap();
    let batch = follower.next_batch(Duration::ZERO).unwrap();
    assert_eq!(batch[0].seq, 9);
    assert_eq!(follower.lines_read(), 6);
    drop(log);
}

#[test]
fn follower_wakes_up_for_new_events() {
    let dir = TempDir::new().unwrap();
    let log = Arc::new(EventLog::create(dir.path(), SESSION).unwrap());
    let mut follower = Follower::new(dir.path());
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            log.append(kind::SESSION_START, Map::new()).unwrap();
        })
    };
    let start = Instant::now();
    let batch = follower.next_batch(Duration::from_secs(10)).unwrap();
    assert_eq!(batch.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
    writer.join().unwrap();
}

#[test]
fn follower_notices_a_truncated_log() {
    let (dir, _) = log_with(5);
    let mut follower = Follower::new(dir.path());
    assert_eq!(follower.next_batch(Duration::ZERO).unwrap().len(), 5);
    let l = lines(dir.path());
    write_lines(dir.path(), &l[..2]);
    assert!(matches!(
        follower.next_batch(Duration::ZERO),
        Err(Error::Shrunk { .. })
    ));
}

#[test]
fn several_tamperings_are_each_reported_once() {
    let got = tampered(|lines, _| {
        lines[3] = lines[3].replace(r#""i":3,"#, r#""i":4,"#);
        lines.remove(20); // seq 20
        lines.swap(30, 31); // seqs 31 and 32
        lines.insert(40, "{}".into());
        lines.pop(); // seq 49
    });
    assert_eq!(
        got,
        vec![
            (ProblemKind::Edited, 4, Some(3)),
            (ProblemKind::Deleted, 21, Some(20)),
            (ProblemKind::Reordered, 32, Some(31)),
            (ProblemKind::Malformed, 41, None),
            (ProblemKind::Truncated, 50, Some(49)),
        ]
    );
}

#[test]
fn symlinked_log_is_refused() {
    let (dir, _) = log_with(3);
    let elsewhere = TempDir::new().unwrap();
    fs::rename(dir.path().join(LOG_FILE), elsewhere.path().join("real")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("real"), dir.path().join(LOG_FILE)).unwrap();
    for result in [
        verify(dir.path(), SESSION).map(drop),
        read_all(dir.path()).map(drop),
        EventLog::open_append(dir.path(), SESSION).map(drop),
    ] {
        assert!(matches!(result, Err(Error::NotAFile { .. })), "{result:?}");
    }
}

#[test]
fn the_log_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EventLog>();
}

#[test]
fn anchor_is_one_fixed_size_record_rewritten_in_place() {
    let (dir, events) = log_with(3);
    let head = fs::read(dir.path().join(ANCHOR_FILE)).unwrap();
    assert_eq!(head.len(), 128, "{}", String::from_utf8_lossy(&head));
    let anchor: Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(anchor["seq"], 2);
    assert_eq!(anchor["hash"], events[2].hash.as_str());
    // An anchor from an older writer (compact, written by rename) is read,
    // and replaced by the fixed-size record on the next append.
    let compact = format!(
        "{{\"seq\":2,\"hash\":\"{}\"}}\n{}",
        events[2].hash,
        " ".repeat(300)
    );
    fs::write(dir.path().join(ANCHOR_FILE), compact).unwrap();
    let log = EventLog::open_append(dir.path(), SESSION).unwrap();
    log.append(kind::PROC_EXIT, sample(3)).unwrap();
    drop(log);
    let head = fs::read(dir.path().join(ANCHOR_FILE)).unwrap();
    assert_eq!(head.len(), 128);
    let report = verify(dir.path(), SESSION).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, 4);
}

#[test]
fn a_quick_resume_holds_its_events_until_the_log_is_verified() {
    let (dir, events) = log_with(50);
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    let next = log.append(kind::SESSION_START, Map::new()).unwrap();
    assert_eq!((next.seq, &next.prev), (50, &events[49].hash));
    let after = log.append(kind::SYSCALL_DENIED, sample(1)).unwrap();
    assert_eq!(lines(dir.path()).len(), 50, "held until verified");
    log.verified().unwrap();
    assert_eq!(lines(dir.path()).len(), 52);
    // Counts cover the whole log: 50 earlier events (one in four a violation).
    let before = verify(dir.path(), SESSION).unwrap();
    assert!(before.ok, "{before:?}");
    let violations = events
        .iter()
        .filter(|e| cordon_events::is_violation(&e.kind))
        .count() as u64;
    assert_eq!(
        log.stats(),
        Stats {
            events: 52,
            violations: violations + 1
        }
    );
    // Written straight away from now on, and the anchor follows.
    let third = log.append(kind::PROC_EXIT, Map::new()).unwrap();
    assert_eq!(lines(dir.path()).len(), 53);
    assert_eq!(log.head().unwrap().hash, third.hash);
    drop(log);
    assert!(verify(dir.path(), SESSION).unwrap().ok);
    assert_eq!(read_all(dir.path()).unwrap()[51].hash, after.hash);

    // Dropped without `verified`: the held events still land.
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    log.append(kind::SESSION_START, Map::new()).unwrap();
    drop(log);
    assert_eq!(lines(dir.path()).len(), 54);
    assert!(verify(dir.path(), SESSION).unwrap().ok);
}

#[test]
fn a_quick_resume_of_a_log_broken_in_the_middle_appends_nothing() {
    let (dir, _) = log_with(20);
    let mut l = lines(dir.path());
    l[6] = l[6].replace(r#""i":6,"#, r#""i":7,"#);
    write_lines(dir.path(), &l);
    // The end is intact, so the log opens at once...
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    log.append(kind::SESSION_START, Map::new()).unwrap();
    // ...and the verification names the edit.
    match log.verified().unwrap_err() {
        Error::Broken {
            line, seq, kind, ..
        } => assert_eq!((line, seq, kind), (7, Some(6), ProblemKind::Edited)),
        other => panic!("unexpected error: {other}"),
    }
    assert!(log.append(kind::PROC_EXIT, Map::new()).is_err());
    drop(log);
    assert_eq!(lines(dir.path()), l, "nothing was appended");

    // A broken end (the last event gone) is refused at once, as open_append does.
    let (dir, _) = log_with(20);
    let mut l = lines(dir.path());
    l.pop();
    write_lines(dir.path(), &l);
    assert!(matches!(
        EventLog::resume(dir.path(), SESSION).err().unwrap(),
        Error::Broken {
            kind: ProblemKind::Truncated,
            ..
        }
    ));
    assert_eq!(lines(dir.path()), l);
}

#[test]
fn a_resume_after_a_sync_trusts_the_unchanged_log_and_not_an_edited_one() {
    let (dir, events) = log_with(30);
    {
        let log = EventLog::resume(dir.path(), SESSION).unwrap();
        log.verified().unwrap();
        log.sync().unwrap();
    }
    assert!(dir.path().join(cordon_events::VERIFIED_FILE).exists());
    // Unchanged since the sync: open at once, nothing held.
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    let next = log.append(kind::SESSION_START, Map::new()).unwrap();
    assert_eq!((next.seq, &next.prev), (30, &events[29].hash));
    assert_eq!(lines(dir.path()).len(), 31, "written at once");
    let violations = events.iter().filter(|e| e.is_violation()).count() as u64;
    assert_eq!(
        log.stats(),
        Stats {
            events: 31,
            violations
        }
    );
    log.sync().unwrap();
    drop(log);
    assert!(verify(dir.path(), SESSION).unwrap().ok);

    // The same length, one byte changed: the record no longer matches, so the
    // log is verified in full and the edit found.
    let mut l = lines(dir.path());
    l[3] = l[3].replace(r#""i":3,"#, r#""i":4,"#);
    write_lines(dir.path(), &l);
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    log.append(kind::SESSION_START, Map::new()).unwrap();
    assert!(matches!(
        log.verified().unwrap_err(),
        Error::Broken {
            kind: ProblemKind::Edited,
            line: 4,
            ..
        }
    ));
    drop(log);
    assert_eq!(lines(dir.path()), l);

    // A record that lies about the counts is not trusted either.
    let (dir, _) = log_with(5);
    EventLog::resume(dir.path(), SESSION)
        .unwrap()
        .sync()
        .unwrap();
    let path = dir.path().join(cordon_events::VERIFIED_FILE);
    let mut record: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    record["events"] = json!(500);
    fs::write(&path, record.to_string()).unwrap();
    let log = EventLog::resume(dir.path(), SESSION).unwrap();
    log.append(kind::SESSION_START, Map::new()).unwrap();
    assert_eq!(lines(dir.path()).len(), 5, "held: verified in full");
    log.verified().unwrap();
    assert_eq!(log.stats().events, 6);
}
