//! Keeps the sandbox from flooding the event log: one [`EventGate`] per event
//! kind drops repeats of the same event within a window and caps how many
//! events per second get through; what it swallows is counted, and the next
//! event that passes carries the count in `dropped_events`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Most remembered keys before old ones are forgotten.
const MAX_KEYS: usize = 4096;

pub(crate) struct EventGate {
    kind: &'static str,
    emit: crate::Emit,
    per_second: u32,
    repeat_window: Duration,
    window_start: Option<Instant>,
    in_window: u32,
    /// Swallowed by the rate limit since the last emitted event.
    rate_dropped: u64,
    /// Swallowed in total (rate limit and repeats).
    pub(crate) suppressed: u64,
    last_seen: HashMap<String, Instant>,
}

impl EventGate {
    pub(crate) fn new(
        kind: &'static str,
        emit: crate::Emit,
        per_second: u32,
        repeat_window: Duration,
    ) -> Self {
        Self {
            kind,
            emit,
            per_second,
            repeat_window,
            window_start: None,
            in_window: 0,
            rate_dropped: 0,
            suppressed: 0,
            last_seen: HashMap::new(),
        }
    }

    /// Emits `fields` unless an event with the same `key` passed within the
    /// repeat window or this second's budget is spent. Returns whether it was emitted.
    pub(crate) fn offer(&mut self, now: Instant, key: String, fields: Map<String, Value>) -> bool {
        if let Some(&seen) = self.last_seen.get(&key)
            && now.duration_since(seen) < self.repeat_window
        {
            self.suppressed += 1;
            return false;
        }
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window >= self.per_second {
            self.suppressed += 1;
            self.rate_dropped += 1;
            return false;
        }
        self.in_window += 1;
        if self.last_seen.len() >= MAX_KEYS {
            let window = self.repeat_window;
            self.last_seen
                .retain(|_, seen| now.duration_since(*seen) < window);
            if self.last_seen.len() >= MAX_KEYS {
                self.last_seen.clear();
            }
        }
        self.last_seen.insert(key, now);
        let mut fields = fields;
        if self.rate_dropped > 0 {
            fields.insert("dropped_events".into(), self.rate_dropped.into());
            self.rate_dropped = 0;
        }
        (self.emit)(self.kind, fields);
        true
    }
}

/// Builds a JSON object from string pairs.
pub(crate) fn fields<const N: usize>(pairs: [(&str, String); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<Map<String, Value>>>>;

    fn recorder() -> (crate::Emit, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let emit: crate::Emit = Arc::new(move |kind, f| {
            assert_eq!(kind, "net.blocked");
            sink.lock().unwrap().push(f);
        });
        (emit, log)
    }

    #[test]
    fn repeats_are_dropped_within_window() {
        let (emit, log) = recorder();
        let mut gate = EventGate::new("net.blocked", emit, 100, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(gate.offer(t0, "a".into(), fields([("dst", "a".into())])));
        assert!(!gate.offer(t0 + Duration::from_secs(1), "a".into(), Map::new()));
        assert!(gate.offer(t0 + Duration::from_secs(1), "b".into(), Map::new()));
        assert!(gate.offer(t0 + Duration::from_secs(6), "a".into(), Map::new()));
        assert_eq!(log.lock().unwrap().len(), 3);
        assert_eq!(gate.suppressed, 1);
    }

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let (emit, log) = recorder();
        let mut gate = EventGate::new("net.blocked", emit, 10, Duration::ZERO);
        let t0 = Instant::now();
        let passed = (0..1000)
            .filter(|i| gate.offer(t0, format!("k{i}"), Map::new()))
            .count();
        assert_eq!(passed, 10);
        assert!(gate.offer(t0 + Duration::from_secs(1), "next".into(), Map::new()));
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 11);
        assert_eq!(log[10]["dropped_events"], 990);
        assert_eq!(gate.suppressed, 990);
    }
}
