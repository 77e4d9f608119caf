//! Change fan-out for the delta API (`GET /api/client/delta`) and the streaming API
//! (`GET /api/client/streaming`).
//!
//! One [`Feed`] per (environment, project scope) that some client asked for holds the
//! state that scope had at a revision (the sequence number of the newest audit event,
//! see [`Store::revision`]) and the recent changes as frames of Unleash delta events.
//! After every change (made through this server, or announced by another replica) each
//! feed re-reads its scope, compares it flag by flag and segment by segment with what
//! it had, and broadcasts one frame with the differences, if any, to its streams.
//!
//! A client that resumes (SSE `Last-Event-ID`, delta `If-None-Match`) with a revision
//! the feed still has history from gets just the frames after it; any other revision
//! (too old, from the future, or from nowhere) gets a full `hydration` event. A stream
//! that falls behind its broadcast buffer is re-hydrated rather than left with a gap.
//!
//! Everything a client sends here is a header: parsed as a number or ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, broadcast};
use unleash_types::client_features::{ClientFeatures, ClientFeaturesDelta, DeltaEvent};

use crate::store::{Store, StoreError};

/// Most frames a feed keeps for resuming clients.
const MAX_HISTORY_FRAMES: usize = 1024;
/// Most bytes of frames a feed keeps for resuming clients.
const MAX_HISTORY_BYTES: usize = 8 << 20;
/// Frames buffered per stream before a slow stream is re-hydrated instead.
const BROADCAST_CAPACITY: usize = 64;
/// A feed nobody streams from or asked about for this long is dropped.
const IDLE_FEED: Duration = Duration::from_secs(600);

/// (environment, project or `*`).
pub(crate) type Scope = (String, String);

/// A set of delta events at one revision, and its JSON (`{"events": [...]}`).
pub(crate) struct Frame {
    pub revision: u64,
    pub events: Vec<DeltaEvent>,
    pub json: Arc<str>,
}

impl Frame {
    fn new(revision: u64, events: Vec<DeltaEvent>) -> Self {
        let delta = ClientFeaturesDelta { events };
        let json = crate::wire::to_value(&delta).to_string();
        Self {
            revision,
            events: delta.events,
            json: json.into(),
        }
    }
}

/// Unleash's event ids are 32-bit.
fn event_id(revision: u64) -> u32 {
    u32::try_from(revision).unwrap_or(u32::MAX)
}

struct FeedState {
    state: ClientFeatures,
    revision: u64,
    /// The oldest revision a client may resume from.
    base: u64,
    history: VecDeque<Arc<Frame>>,
    history_bytes: usize,
    last_used: Instant,
}

impl FeedState {
    fn hydration(&self) -> Frame {
        Frame::new(
            self.revision,
            vec![DeltaEvent::Hydration {
                event_id: event_id(self.revision),
                features: self.state.features.clone(),
                segments: self.state.segments.clone().unwrap_or_default(),
            }],
        )
    }

    /// The frames after `since`, or `None` when `since` cannot be resumed from here.
    fn since(&self, since: u64) -> Option<Vec<Arc<Frame>>> {
        if since < self.base || since > self.revision {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|f| f.revision > since)
                .cloned()
                .collect(),
        )
    }

    fn push(&mut self, frame: Arc<Frame>) {
        self.history_bytes += frame.json.len();
        self.history.push_back(frame);
        while self.history.len() > MAX_HISTORY_FRAMES || self.history_bytes > MAX_HISTORY_BYTES {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= old.json.len();
            self.base = old.revision;
        }
    }
}

struct Feed {
    state: Mutex<FeedState>,
    tx: broadcast::Sender<Arc<Frame>>,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a new stream starts with.
pub(crate) struct Start {
    /// Sent first: one hydration frame, or the frames missed since `Last-Event-ID`.
    pub frames: Vec<Arc<Frame>>,
    /// Whether `frames` is a hydration (`unleash-connected`) or a replay.
    pub hydration: bool,
    pub live: Live,
}

/// The live part of a stream: frames newer than what was already sent.
pub(crate) struct Live {
    rx: broadcast::Receiver<Arc<Frame>>,
    feed: Arc<Feed>,
    seen: u64,
    _slot: StreamSlot,
}

impl Live {
    /// The next frame to send, or `None` when the feed is gone. A stream that fell
    /// behind gets a fresh hydration instead of the frames it missed.
    pub async fn next(&mut self) -> Option<Arc<Frame>> {
        loop {
            match self.rx.recv().await {
                Ok(frame) if frame.revision <= self.seen => continue,
                Ok(frame) => {
                    self.seen = frame.revision;
                    return Some(frame);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "a slow stream is re-hydrated");
                    let frame = {
                        let s = self.feed.lock();
                        Arc::new(s.hydration())
                    };
                    self.seen = frame.revision;
                    return Some(frame);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Holds one of the limited stream slots until dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a stream or delta could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many open streams ({0}); try again later or use polling")]
    Full(usize),
    #[error("internal error")]
    Task,
}

/// Every feed of one server.
pub(crate) struct Feeds {
    store: Arc<dyn Store>,
    feeds: Mutex<HashMap<Scope, Arc<Feed>>>,
    streams: Arc<AtomicUsize>,
    max_streams: usize,
    wake: Notify,
}

impl Feeds {
    pub fn new(store: Arc<dyn Store>, max_streams: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            feeds: Mutex::new(HashMap::new()),
            streams: Arc::new(AtomicUsize::new(0)),
            max_streams,
            wake: Notify::new(),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self, scope: &Scope) -> Result<(ClientFeatures, u64), FeedError> {
        let store = self.store.clone();
        let (env, project) = scope.clone();
        tokio::task::spawn_blocking(move || store.client_state(&env, &project))
            .await
            .map_err(|_| FeedError::Task)?
            .map_err(FeedError::Store)
    }

    /// The feed of `scope`, created from the store if there is none yet.
    async fn feed(&self, scope: &Scope) -> Result<Arc<Feed>, FeedError> {
        if let Some(f) = self.map().get(scope) {
            f.lock().last_used = Instant::now();
            return Ok(f.clone());
        }
        let (state, revision) = self.read(scope).await?;
        let mut map = self.map();
        let feed = map.entry(scope.clone()).or_insert_with(|| {
            Arc::new(Feed {
                state: Mutex::new(FeedState {
                    state: state.clone(),
                    revision,
                    base: revision,
                    history: VecDeque::new(),
                    history_bytes: 0,
                    last_used: Instant::now(),
                }),
                tx: broadcast::channel(BROADCAST_CAPACITY).0,
            })
        });
        let feed = feed.clone();
        drop(map);
        // Someone else created it meanwhile from an older read: catch it up.
        apply(&feed, state, revision);
        Ok(feed)
    }

    /// Start a stream of `scope`, resuming after `last_event_id` when possible.
    pub async fn subscribe(
        &self,
        scope: &Scope,
        last_event_id: Option<u64>,
    ) -> Result<Start, FeedError> {
        let taken = self.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.streams.clone());
        if taken >= self.max_streams {
            return Err(FeedError::Full(self.max_streams));
        }
        let feed = self.feed(scope).await?;
        let s = feed.lock();
        // Subscribing under the lock that every broadcast happens under: the first
        // live frame is exactly the one after what `frames` covers.
        let rx = feed.tx.subscribe();
        let replay = last_event_id.and_then(|id| s.since(id));
        let hydration = replay.is_none();
        let frames = replay.unwrap_or_else(|| vec![Arc::new(s.hydration())]);
        let seen = s.revision;
        drop(s);
        Ok(Start {
            frames,
            hydration,
            live: Live {
                rx,
                feed,
                seen,
                _slot: slot,
            },
        })
    }

    /// What a delta-API client that has `since` needs, and the current revision.
    /// `None` for the events when it is up to date.
    pub async fn delta(
        &self,
        scope: &Scope,
        since: Option<u64>,
    ) -> Result<(u64, Option<Bytes>), FeedError> {
        let feed = self.feed(scope).await?;
        let s = feed.lock();
        if since == Some(s.revision) {
            return Ok((s.revision, None));
        }
        let frames = since
            .and_then(|id| s.since(id))
            .unwrap_or_else(|| vec![Arc::new(s.hydration())]);
        let events: Vec<DeltaEvent> = frames.iter().flat_map(|f| f.events.clone()).collect();
        Ok((
            s.revision,
            Some(Bytes::from(crate::wire::to_vec(&ClientFeaturesDelta {
                events,
            }))),
        ))
    }

    /// Bring every feed up to date with the store now. Called after each change made
    /// through this server, before it answers, so the writer's own change is already
    /// on its way to every stream when the writer hears back.
    pub async fn refresh(&self) {
        let scopes: Vec<(Scope, Arc<Feed>)> = self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (scope, feed) in scopes {
            match self.read(&scope).await {
                Ok((state, revision)) => apply(&feed, state, revision),
                Err(e) => tracing::error!(error = %e, env = %scope.0, "cannot refresh a flag feed"),
            }
        }
    }

    /// Ask the background task to refresh (a change made elsewhere, e.g. another
    /// replica). Several calls before it runs coalesce into one refresh.
    pub fn changed_elsewhere(&self) {
        self.wake.notify_one();
    }

    /// The background task: refreshes on [`Feeds::changed_elsewhere`], drops idle feeds.
    pub async fn run(self: Arc<Self>) {
        loop {
            let woken = tokio::time::timeout(Duration::from_secs(60), self.wake.notified())
                .await
                .is_ok();
            if woken {
                self.refresh().await;
            }
            self.map().retain(|_, f| {
                f.tx.receiver_count() > 0 || f.lock().last_used.elapsed() < IDLE_FEED
            });
        }
    }
}

/// Move `feed` to `state` at `revision` if that is newer, broadcasting the difference.
fn apply(feed: &Feed, state: ClientFeatures, revision: u64) {
    let mut s = feed.lock();
    if revision <= s.revision {
        return;
    }
    let events = diff(&s.state, &state, event_id(revision));
    s.state = state;
    s.revision = revision;
    if events.is_empty() {
        // Nothing in this scope changed; history stays valid across this revision.
        return;
    }
    let frame = Arc::new(Frame::new(revision, events));
    s.push(frame.clone());
    // No receivers is fine: nobody is streaming this scope right now.
    let _ = feed.tx.send(frame);
}

/// The delta events that turn `old` into `new`: segments first and removed ones last,
/// so a client never holds a flag that names a segment it does not have.
pub(crate) fn diff(old: &ClientFeatures, new: &ClientFeatures, event_id: u32) -> Vec<DeltaEvent> {
    use crate::wire::to_value;
    let mut events = Vec::new();
    let old_segments: BTreeMap<i32, serde_json::Value> = old
        .segments
        .iter()
        .flatten()
        .map(|s| (s.id, to_value(s)))
        .collect();
    let new_segments = new.segments.as_deref().unwrap_or_default();
    for seg in new_segments {
        if old_segments.get(&seg.id) != Some(&to_value(seg)) {
            events.push(DeltaEvent::SegmentUpdated {
                event_id,
                segment: seg.clone(),
            });
        }
    }
    let old_features: HashMap<&str, (serde_json::Value, Option<&str>)> = old
        .features
        .iter()
        .map(|f| (f.name.as_str(), (to_value(f), f.project.as_deref())))
        .collect();
    for f in &new.features {
        if old_features.get(f.name.as_str()).map(|(v, _)| v) != Some(&to_value(f)) {
            events.push(DeltaEvent::FeatureUpdated {
                event_id,
                feature: f.clone(),
            });
        }
    }
    let new_names: std::collections::HashSet<&str> =
        new.features.iter().map(|f| f.name.as_str()).collect();
    let mut removed: Vec<(&str, Option<&str>)> = old_features
        .iter()
        .filter(|(name, _)| !new_names.contains(*name))
        .map(|(name, (_, project))| (*name, *project))
        .collect();
    removed.sort_unstable();
    for (name, project) in removed {
        events.push(DeltaEvent::FeatureRemoved {
            event_id,
            feature_name: name.to_owned(),
            project: project.unwrap_or(crate::store::DEFAULT_PROJECT).to_owned(),
        });
    }
    let new_ids: std::collections::HashSet<i32> = new_segments.iter().map(|s| s.id).collect();
    for id in old_segments.keys().filter(|id| !new_ids.contains(id)) {
        events.push(DeltaEvent::SegmentRemoved {
            event_id,
            segment_id: *id,
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: serde_json::Value) -> ClientFeatures {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn diff_names_exactly_what_changed_in_a_safe_order() {
        let old = state(serde_json::json!({"version": 2, "features": [
            {"name": "a", "enabled": true, "project": "p", "strategies": [{"name": "default", "parameters": {}}]},
            {"name": "b", "enabled": true},
            {"name": "gone", "enabled": true, "project": "q"}
        ], "segments": [{"id": 1, "constraints": []}, {"id": 2, "constraints": []}]}));
        let new = state(serde_json::json!({"version": 2, "features": [
            {"name": "a", "enabled": false, "project": "p", "strategies": [{"name": "default", "parameters": {}}]},
            {"name": "b", "enabled": true},
            {"name": "c", "enabled": true}
        ], "segments": [{"id": 1, "constraints": [{"contextName": "x", "operator": "IN", "values": ["1"]}]}]}));
        let events = diff(&old, &new, 7);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                DeltaEvent::SegmentUpdated { segment, .. } => format!("seg+{}", segment.id),
                DeltaEvent::FeatureUpdated { feature, .. } => format!("+{}", feature.name),
                DeltaEvent::FeatureRemoved {
                    feature_name,
                    project,
                    ..
                } => format!("-{feature_name}@{project}"),
                DeltaEvent::SegmentRemoved { segment_id, .. } => format!("seg-{segment_id}"),
                DeltaEvent::Hydration { .. } => "hydration".into(),
            })
            .collect();
        assert_eq!(kinds, ["seg+1", "+a", "+c", "-gone@q", "seg-2"]);
        assert!(events.iter().all(|e| e.get_event_id() == 7));
        assert!(diff(&new, &new, 8).is_empty());
        // Applying the delta to the old state gives the new one.
        let mut folded = old.clone();
        folded.apply_delta(&ClientFeaturesDelta { events });
        let names = |s: &ClientFeatures| {
            let mut v: Vec<serde_json::Value> =
                s.features.iter().map(crate::wire::to_value).collect();
            v.sort_by_key(|f| f["name"].as_str().unwrap_or_default().to_owned());
            v
        };
        assert_eq!(names(&folded), names(&new));
    }

    #[test]
    fn history_is_bounded_and_moves_the_resume_base() {
        let mut s = FeedState {
            state: state(serde_json::json!({"version": 2, "features": []})),
            revision: 10,
            base: 10,
            history: VecDeque::new(),
            history_bytes: 0,
            last_used: Instant::now(),
        };
        for r in 11..=(11 + MAX_HISTORY_FRAMES as u64) {
            s.revision = r;
            s.push(Arc::new(Frame::new(r, Vec::new())));
        }
        assert_eq!(s.history.len(), MAX_HISTORY_FRAMES);
        assert_eq!(s.base, 11);
        assert!(s.since(10).is_none(), "too old: hydrate");
        assert!(
            s.since(s.revision + 1).is_none(),
            "from the future: hydrate"
        );
        assert_eq!(s.since(s.revision - 2).unwrap().len(), 2);
        assert_eq!(s.since(s.revision).unwrap().len(), 0);
    }
}
