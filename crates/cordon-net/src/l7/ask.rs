//! The `ask` queue: connections and requests parked until a person decides.
//!
//! Connections to the same `host:port` that arrive while one is parked wait
//! on the same question, and the answer is remembered for the rest of the
//! session (a person approves a host once, not once per connection). Request
//! questions are never merged or remembered: each is a separate intent. The
//! queue is bounded; when it is full, new questions are refused at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

/// Most questions waiting at once.
pub(crate) const MAX_PENDING: usize = 256;

/// A parked connection or request, as the control socket shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingRequest {
    /// What [`Gateway::decide`](super::Gateway::decide) takes.
    pub id: u64,
    /// `"connect"` for a connection to a host no list covers, `"request"` for
    /// a request an `ask` rule matched.
    pub kind: &'static str,
    /// The DNS name (or IP literal) the sandbox connected to.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The HTTP method (`None` for connections).
    pub method: Option<String>,
    /// The request path without the query (`None` for connections).
    pub path: Option<String>,
    /// When the question was asked, in milliseconds since the Unix epoch.
    pub since: u64,
    /// The rule that asked: its index in `[[rule]]`, or `"on_unknown"`.
    pub rule: String,
}

/// How a question ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Allowed,
    Denied,
    TimedOut,
    /// Too many questions already waiting.
    QueueFull,
}

struct Entry {
    info: PendingRequest,
    answer: watch::Sender<Option<bool>>,
    deadline: Instant,
    connect_key: Option<String>,
}

#[derive(Default)]
pub(crate) struct AskQueue {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Answers for `host:port` connection questions.
    remembered: Mutex<HashMap<String, bool>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a caller gets back from [`AskQueue::enqueue`].
pub(crate) enum Ticket {
    /// Already answered for this session.
    Decided(bool),
    QueueFull,
    /// Wait on this; `new` is true when this call created the question (and
    /// should announce it).
    Wait {
        info: PendingRequest,
        answer: watch::Receiver<Option<bool>>,
        deadline: Instant,
        new: bool,
    },
}

impl AskQueue {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a question (`info.id` and `info.since` are filled in here).
    /// Connection questions (`kind == "connect"`) are merged per host:port.
    pub(crate) fn enqueue(&self, mut info: PendingRequest, timeout: Duration) -> Ticket {
        let connect_key = (info.kind == "connect")
            .then(|| format!("{}:{}", info.host.to_ascii_lowercase(), info.port));
        if let Some(key) = &connect_key
            && let Some(answer) = self.remembered().get(key)
        {
            return Ticket::Decided(*answer);
        }
        let mut entries = self.entries();
        // Questions whose waiters went away (the sandbox hung up) expire here.
        let now = Instant::now();
        entries.retain(|_, e| e.deadline > now);
        if let Some(key) = &connect_key
            && let Some(e) = entries
                .values()
                .find(|e| e.connect_key.as_deref() == Some(key.as_str()))
        {
            return Ticket::Wait {
                info: e.info.clone(),
                answer: e.answer.subscribe(),
                deadline: e.deadline,
                new: false,
            };
        }
        if entries.len() >= MAX_PENDING {
            return Ticket::QueueFull;
        }
        info.id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        info.since = now_ms();
        let (tx, rx) = watch::channel(None);
        let deadline = Instant::now() + timeout;
        entries.insert(
            info.id,
            Entry {
                info: info.clone(),
                answer: tx,
                deadline,
                connect_key,
            },
        );
        Ticket::Wait {
            info,
            answer: rx,
            deadline,
            new: true,
        }
    }

    /// Waits for the answer to a question from [`enqueue`](Self::enqueue).
    pub(crate) async fn wait(
        &self,
        id: u64,
        mut answer: watch::Receiver<Option<bool>>,
        deadline: Instant,
    ) -> Answer {
        let got = tokio::time::timeout_at(deadline.into(), answer.wait_for(|a| a.is_some())).await;
        match got {
            Ok(Ok(a)) => {
                if a.unwrap_or(false) {
                    Answer::Allowed
                } else {
                    Answer::Denied
                }
            }
            // The sender is gone: the question was dropped without an answer.
            Ok(Err(_)) => Answer::Denied,
            Err(_) => {
                self.entries().remove(&id);
                Answer::TimedOut
            }
        }
    }

    /// Everything waiting, oldest first.
    pub(crate) fn pending(&self) -> Vec<PendingRequest> {
        let now = Instant::now();
        self.entries()
            .values()
            .filter(|e| e.deadline > now)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Answers question `id`; false when there is no such question.
    pub(crate) fn decide(&self, id: u64, allow: bool) -> bool {
        let Some(entry) = self.entries().remove(&id) else {
            return false;
        };
        if let Some(key) = entry.connect_key {
            self.remembered().insert(key, allow);
        }
        entry.answer.send_replace(Some(allow));
        true
    }

    /// Asks and waits; `announce` is called once if this call created the
    /// question.
    pub(crate) async fn ask(
        &self,
        info: PendingRequest,
        timeout: Duration,
        announce: impl FnOnce(&PendingRequest),
    ) -> (Answer, Option<u64>) {
        match self.enqueue(info, timeout) {
            Ticket::Decided(true) => (Answer::Allowed, None),
            Ticket::Decided(false) => (Answer::Denied, None),
            Ticket::QueueFull => (Answer::QueueFull, None),
            Ticket::Wait {
                info,
                answer,
                deadline,
                new,
            } => {
                if new {
                    announce(&info);
                }
                (self.wait(info.id, answer, deadline).await, Some(info.id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn q(kind: &'static str, host: &str) -> PendingRequest {
        PendingRequest {
            id: 0,
            kind,
            host: host.into(),
            port: 443,
            method: None,
            path: None,
            since: 0,
            rule: "on_unknown".into(),
        }
    }

    #[tokio::test]
    async fn decide_releases_waiters_and_is_remembered_for_connects() {
        let queue = Arc::new(AskQueue::default());
        let q1 = queue.clone();
        let waiter = tokio::spawn(async move {
            q1.ask(q("connect", "a.test"), Duration::from_secs(30), |_| {})
                .await
        });
        let q2 = queue.clone();
        let second = tokio::spawn(async move {
            q2.ask(q("connect", "A.test"), Duration::from_secs(30), |_| {
                panic!("merged question must not be announced twice")
            })
            .await
        });
        let id = loop {
            if let Some(p) = queue.pending().first() {
                break p.id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            queue.pending().len(),
            1,
            "one question for both connections"
        );
        assert!(queue.decide(id, true));
        assert!(!queue.decide(id, true), "already answered");
        assert_eq!(waiter.await.unwrap().0, Answer::Allowed);
        assert_eq!(second.await.unwrap().0, Answer::Allowed);
        let (again, id) = queue
            .ask(q("connect", "a.test"), Duration::from_secs(1), |_| {})
            .await;
        assert_eq!((again, id), (Answer::Allowed, None));
        assert!(queue.pending().is_empty());
    }

    #[tokio::test]
    async fn requests_time_out_and_leave_the_queue() {
        let queue = AskQueue::default();
        let mut announced = None;
        let (answer, id) = queue
            .ask(q("request", "a.test"), Duration::from_millis(50), |p| {
                announced = Some(p.id)
            })
            .await;
        assert_eq!(answer, Answer::TimedOut);
        assert_eq!(announced, id);
        assert!(queue.pending().is_empty());
        assert!(!queue.decide(id.unwrap(), true));
    }

    #[test]
    fn queue_is_bounded() {
        let queue = AskQueue::default();
        for i in 0..MAX_PENDING {
            assert!(matches!(
                queue.enqueue(q("request", &format!("h{i}")), Duration::from_secs(60)),
                Ticket::Wait { .. }
            ));
        }
        assert!(matches!(
            queue.enqueue(q("request", "x"), Duration::from_secs(60)),
            Ticket::QueueFull
        ));
    }
}
