//! Requests-per-minute limits, per host (and per rule when a rule sets its own).
//!
//! A token bucket per key: `n` requests per minute allows a burst of `n`, then
//! one request every `60/n` seconds. The table of buckets is bounded: when it
//! is full, buckets that have refilled completely (indistinguishable from new
//! ones) are dropped first, and if none has, the fullest one is (the one
//! whose loss forgives the least). Dropping the oldest instead would let the
//! sandbox clear the bucket it has spent by touching enough new names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most buckets kept; wildcard allow entries let the sandbox invent host
/// names, so the table must not grow without bound.
const MAX_BUCKETS: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: Instant,
    per_minute: u32,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let cap = f64::from(self.per_minute);
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        self.updated = now;
    }
}

/// The limiter shared by every connection of a gateway.
#[derive(Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s budget of `per_minute`; false when the
    /// budget is spent.
    pub(crate) fn check(&self, key: &str, per_minute: u32, now: Instant) -> bool {
        if per_minute == 0 {
            return false;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_BUCKETS {
            evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: f64::from(per_minute),
            updated: now,
            per_minute,
        });
        if bucket.per_minute != per_minute {
            bucket.per_minute = per_minute;
        }
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn evict(buckets: &mut HashMap<String, Bucket>, now: Instant) {
    buckets.retain(|_, b| {
        let full_after = Duration::from_secs(60);
        now.saturating_duration_since(b.updated) < full_after
    });
    let fill = |b: &Bucket| {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        let cap = f64::from(b.per_minute.max(1));
        ((b.tokens + elapsed * cap / 60.0) / cap).min(1.0)
    };
    if buckets.len() >= MAX_BUCKETS
        && let Some(fullest) = buckets
            .iter()
            .max_by(|(_, a), (_, b)| fill(a).total_cmp(&fill(b)))
            .map(|(k, _)| k.clone())
    {
        buckets.remove(&fullest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(rl.check("a", 3, t0));
        assert!(rl.check("a", 3, t0));
        assert!(rl.check("a", 3, t0));
        assert!(!rl.check("a", 3, t0), "fourth request in the same instant");
        assert!(rl.check("b", 3, t0), "other hosts have their own budget");
        assert!(!rl.check("a", 3, t0 + Duration::from_secs(19)));
        assert!(
            rl.check("a", 3, t0 + Duration::from_secs(21)),
            "one token per 20 s"
        );
        assert!(!rl.check("a", 3, t0 + Duration::from_secs(22)));
        let later = t0 + Duration::from_secs(600);
        for _ in 0..3 {
            assert!(rl.check("a", 3, later));
        }
        assert!(!rl.check("a", 3, later), "never more than the burst");
        assert!(!rl.check("z", 0, t0), "zero means none");
    }

    #[test]
    fn new_names_cannot_push_out_a_spent_budget() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check("api.test", 3, t0));
        }
        assert!(!rl.check("api.test", 3, t0));
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..MAX_BUCKETS + 10 {
            assert!(rl.check(&format!("n{i}.wild.test"), 3, t1));
        }
        assert!(
            !rl.check("api.test", 3, t1 + Duration::from_secs(1)),
            "the spent budget was forgotten"
        );
    }

    #[test]
    fn table_stays_bounded() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 50) {
            assert!(rl.check(&format!("h{i}"), 1, t0));
        }
        assert!(rl.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
