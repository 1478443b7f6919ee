//! The single-instance sequencer: each session's seq, epoch, last state and
//! recent events in this process's memory, and its events handed straight to
//! the fan-out.
//!
//! Holding the session's lock from the moment a seq is taken until its event
//! is handed to the fan-out is what keeps delivery in seq order when several
//! publishers race on one session; different sessions never wait for each
//! other. A subscription takes effect under the same lock, which is what
//! puts its replay and the live events after it edge to edge.
//!
//! History is bounded three ways: `HISTORY_MAX_EVENTS` per session, the
//! session's TTL (an idle, unwatched session is forgotten whole), and
//! `HISTORY_MAX_BYTES` for the process, past which the sessions published to
//! least recently lose their history first (a client resuming into it is told
//! `history_truncated`).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::{DashMap, Entry};
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tracing::{info, warn};

use super::{
    FanOut, Fingerprint, InstanceReport, Join, Keyed, LinkProblem, Outbound, Published, Sequenced,
    Sequencer, SequencerError, SessionState,
    history::{Attached, Epoch, Held, Page, Start, ends_session, recover},
};
use crate::{metrics::Metrics, protocol::Topic};

/// How often idle, unwatched sessions are looked for.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Once over its byte budget, history is trimmed to this share of it, so
/// that trimming does not run again at the next publish.
const TRIM_TO: f64 = 0.9;

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub ttl: Duration,
    pub max_events: usize,
    pub max_bytes: usize,
    /// Sessions kept (MAX_SESSIONS); 0: no limit.
    pub max_sessions: usize,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_ttl: Duration,
}

/// What herald remembers of one session.
#[derive(Debug)]
struct SessionRecord {
    seq: u64,
    epoch: Epoch,
    progress: Option<Held>,
    /// The `completed` or published `error` event that ended the session.
    ended: Option<Held>,
    completed: bool,
    failed: bool,
    history: VecDeque<Held>,
    touched: Instant,
    idempotency: Idempotency,
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self {
            seq: 0,
            epoch: Epoch::fresh(),
            progress: None,
            ended: None,
            completed: false,
            failed: false,
            history: VecDeque::new(),
            touched: Instant::now(),
            idempotency: Idempotency::default(),
        }
    }
}

impl SessionRecord {
    /// The first seq history still holds (`seq + 1` when it holds none).
    fn first_held(&self) -> u64 {
        self.history.front().map_or(self.seq + 1, |e| e.seq)
    }

    fn held_after(&self, after: u64) -> impl Iterator<Item = &Held> {
        self.history.iter().filter(move |e| e.seq > after)
    }

    /// The snapshot: latest progress and the final event, in seq order.
    fn snapshot(&self) -> Vec<Held> {
        let mut events: Vec<Held> = self.progress.iter().chain(&self.ended).cloned().collect();
        events.sort_by_key(|e| e.seq);
        events
    }

    fn attached(&self, start: &Start) -> Attached {
        let (events, recovery) = match start {
            Start::Snapshot => (self.snapshot(), None),
            Start::Resume { since, epoch } => {
                let r = recover(
                    *since,
                    epoch.as_deref(),
                    self.epoch,
                    self.seq,
                    self.first_held(),
                );
                (self.held_after(r.after).cloned().collect(), Some(r))
            }
        };
        Attached {
            seq: self.seq,
            epoch: self.epoch,
            events,
            recovery,
            caught_up: Vec::new(),
            settled: true,
        }
    }

    /// The accounted size of the history held; what dropping it frees.
    fn history_cost(&self) -> usize {
        self.history.iter().map(Held::cost).sum()
    }
}

/// Idempotency keys remembered per session: a memory bound on top of the
/// window, oldest forgotten first.
const IDEMPOTENCY_KEYS_PER_SESSION: usize = 1024;

/// The seqs (and fingerprints) of a session's recent publishes that carried
/// an idempotency key, for as long as the window lasts (at most
/// [`IDEMPOTENCY_KEYS_PER_SESSION`] of them).
#[derive(Debug, Default)]
struct Idempotency {
    seqs: std::collections::HashMap<Box<str>, (u64, Fingerprint)>,
    /// The keys in the order they were first used, with when.
    order: VecDeque<(Instant, Box<str>)>,
}

impl Idempotency {
    /// What the publish that used `key` was, if it is still remembered.
    fn seq(&mut self, key: &str, window: Duration) -> Option<(u64, Fingerprint)> {
        while let Some((at, old)) = self.order.front() {
            if at.elapsed() < window {
                break;
            }
            self.seqs.remove(old);
            self.order.pop_front();
        }
        self.seqs.get(key).copied()
    }

    fn remember(&mut self, keyed: Keyed<'_>, seq: u64) {
        let key = keyed.key;
        if self.order.len() >= IDEMPOTENCY_KEYS_PER_SESSION
            && let Some((_, old)) = self.order.pop_front()
        {
            self.seqs.remove(&old);
        }
        self.seqs.insert(key.into(), (seq, keyed.fingerprint));
        self.order.push_back((Instant::now(), key.into()));
    }
}

/// Sessions sequenced by this process alone.
pub(crate) struct MemorySequencer {
    fanout: Arc<dyn FanOut>,
    sessions: SessionStore,
}

impl MemorySequencer {
    /// The sequencer, and its housekeeping (forgetting idle sessions,
    /// keeping history within its budget), which runs as long as it is polled.
    pub(crate) fn new(
        fanout: Arc<dyn FanOut>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, BoxFuture<'static, ()>) {
        let sequencer = Arc::new(Self {
            fanout,
            sessions: SessionStore::new(limits, metrics),
        });
        let housekeeping = sequencer.clone().housekeeping().boxed();
        (sequencer, housekeeping)
    }

    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let evicted = self.sessions.evict_idle(|id| self.fanout.watches(id));
                    if evicted > 0 {
                        info!(evicted, "forgot idle sessions");
                    }
                }
                () = self.sessions.over_budget.notified() => {}
            }
            self.sessions.evict_excess(|id| self.fanout.watches(id));
            self.sessions.trim_history();
        }
    }
}

impl Sequencer for MemorySequencer {
    fn adapter(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(
        &'a self,
        out: Outbound<'a>,
    ) -> BoxFuture<'a, Result<Published, SequencerError>> {
        async move {
            // The lock is held until the event is handed to the fan-out: the
            // next publish to this session cannot overtake it.
            let mut record = self.sessions.lock(out.topic).await;
            let window = self.sessions.limits.idempotency_ttl;
            if let Some(keyed) = out.idempotency
                && let Some((first, fingerprint)) = record.idempotency.seq(keyed.key, window)
            {
                return Ok(match fingerprint == keyed.fingerprint {
                    true => Published::Repeat(first),
                    false => Published::KeyReused(first),
                });
            }
            let seq = record.seq + 1;
            let payload: Arc<RawValue> = Arc::from(out.encoded.with_seq(seq));
            self.fanout
                .deliver(Sequenced {
                    topic: out.topic,
                    name: out.name,
                    scope: out.scope,
                    seq,
                    payload: &payload,
                })
                .await;
            let held = Held {
                seq,
                name: out.name,
                payload,
            };
            self.sessions.commit(&mut record, held, out.outcome);
            if let Some(keyed) = out.idempotency {
                record.idempotency.remember(keyed, seq);
            }
            Ok(Published::Sent(seq))
        }
        .boxed()
    }

    fn state<'a>(&'a self, id: &'a Topic) -> BoxFuture<'a, Result<SessionState, SequencerError>> {
        async move {
            Ok(self
                .sessions
                .read(id, |r| SessionState {
                    seq: r.seq,
                    epoch: Some(r.epoch),
                    progress: r.progress.as_ref().map(|p| p.payload.clone()),
                    completed: r.completed,
                    failed: r.failed,
                })
                .await
                .unwrap_or_default())
        }
        .boxed()
    }

    fn attach<'a>(&'a self, id: &'a Topic, start: Start, join: Join) -> BoxFuture<'a, ()> {
        async move {
            // Under the session's lock no event of it is being delivered, so
            // what is handed over and what follows live meet exactly.
            let record = self.sessions.lock(id).await;
            join(Ok(record.attached(&start)));
        }
        .boxed()
    }

    /// Every event is delivered here: nothing to set up.
    fn watch<'a>(&'a self, _id: &'a Topic) -> BoxFuture<'a, Result<(), SequencerError>> {
        Box::pin(async { Ok(()) })
    }

    fn history<'a>(
        &'a self,
        id: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, SequencerError>> {
        async move {
            let page = self.sessions.read(id, |r| Page {
                seq: r.seq,
                epoch: Some(r.epoch),
                recovered: r.first_held() <= since + 1 && since <= r.seq,
                events: r.held_after(since).take(limit).cloned().collect(),
            });
            Ok(page.await.unwrap_or(Page {
                seq: 0,
                epoch: None,
                recovered: since == 0,
                events: Vec::new(),
            }))
        }
        .boxed()
    }

    fn problem(&self) -> Option<LinkProblem> {
        None
    }

    fn report<'a>(&'a self, _: &'a InstanceReport) -> BoxFuture<'a, ()> {
        futures_util::future::ready(()).boxed()
    }

    fn instances(&self) -> BoxFuture<'_, Option<Vec<InstanceReport>>> {
        futures_util::future::ready(None).boxed()
    }
}

/// The session records of this instance, and the history budget they share.
struct SessionStore {
    records: DashMap<Topic, Arc<Mutex<SessionRecord>>>,
    limits: Limits,
    /// Accounted bytes of every session's history together.
    held_bytes: AtomicUsize,
    /// Wakes housekeeping when history went over its byte budget, or the
    /// sessions over MAX_SESSIONS.
    over_budget: Notify,
    /// Keeps `herald_sessions_known` and the history gauges up to date.
    metrics: Arc<Metrics>,
}

impl SessionStore {
    fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            records: DashMap::new(),
            limits,
            held_bytes: AtomicUsize::new(0),
            over_budget: Notify::new(),
            metrics,
        }
    }

    /// Locks the session's record, creating it (and its epoch) on first use.
    /// Publishes to one session queue here in arrival order (tokio's mutex is
    /// fair).
    async fn lock(&self, id: &Topic) -> OwnedMutexGuard<SessionRecord> {
        let record = match self.records.entry(id.clone()) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                self.metrics.sessions_known.inc();
                entry.insert(Arc::default()).clone()
            }
        };
        if self.limits.max_sessions > 0 && self.records.len() > self.limits.max_sessions {
            self.over_budget.notify_one();
        }
        record.lock_owned().await
    }

    /// Reads a session's record without creating one.
    async fn read<T>(&self, id: &Topic, f: impl FnOnce(&SessionRecord) -> T) -> Option<T> {
        let record = self.records.get(id).map(|r| r.clone())?;
        let guard = record.lock().await;
        Some(f(&guard))
    }

    /// Records a published event: called only once it was handed to the
    /// fan-out, so a failed publish consumes no seq.
    fn commit(&self, record: &mut SessionRecord, held: Held, outcome: crate::protocol::Outcome) {
        record.seq = held.seq;
        record.completed |= outcome.completed;
        record.failed |= outcome.failed;
        record.touched = Instant::now();
        if outcome.is_progress {
            record.progress = Some(held.clone());
        } else if ends_session(&outcome) {
            record.ended = Some(held.clone());
        }
        if self.limits.max_events == 0 {
            return;
        }
        self.held_bytes.fetch_add(held.cost(), Ordering::Relaxed);
        record.history.push_back(held);
        while record.history.len() > self.limits.max_events {
            if let Some(old) = record.history.pop_front() {
                self.held_bytes.fetch_sub(old.cost(), Ordering::Relaxed);
            }
        }
        let now = self.held_bytes.load(Ordering::Relaxed);
        self.metrics.history_bytes.set(now as i64);
        if now > self.limits.max_bytes {
            self.over_budget.notify_one();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.len()
    }

    /// Drops the history of the sessions published to least recently until
    /// history fits its budget again. Their seq, epoch and state stay: a
    /// client resuming into the dropped part is told `history_truncated`.
    fn trim_history(&self) {
        let budget = self.limits.max_bytes;
        if self.held_bytes.load(Ordering::Relaxed) <= budget {
            return;
        }
        let mut oldest: Vec<(Instant, Topic)> = self
            .records
            .iter()
            .filter_map(|entry| {
                let record = entry.value().try_lock().ok()?;
                (!record.history.is_empty()).then(|| (record.touched, entry.key().clone()))
            })
            .collect();
        oldest.sort_unstable_by_key(|(touched, _)| *touched);
        let target = (budget as f64 * TRIM_TO) as usize;
        let mut dropped = 0u64;
        for (_, id) in oldest {
            if self.held_bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let Some(record) = self.records.get(&id).map(|r| r.clone()) else {
                continue;
            };
            let Ok(mut record) = record.try_lock() else {
                continue;
            };
            let freed = record.history_cost();
            record.history.clear();
            self.held_bytes.fetch_sub(freed, Ordering::Relaxed);
            dropped += 1;
        }
        self.metrics.history_truncated.inc_by(dropped);
        self.metrics
            .history_bytes
            .set(self.held_bytes.load(Ordering::Relaxed) as i64);
        warn!(
            sessions = dropped,
            budget,
            "history over HISTORY_MAX_BYTES: dropped the history of the sessions published to least recently"
        );
    }

    /// Past MAX_SESSIONS, forgets the sessions published to least recently
    /// down to [`TRIM_TO`] of it, as their TTL would have: only those nobody
    /// watches or holds (a watched session's seq must go on where its
    /// subscribers are). Returns how many were forgotten.
    fn evict_excess(&self, is_watched: impl Fn(&Topic) -> bool) -> usize {
        let max = self.limits.max_sessions;
        if max == 0 || self.records.len() <= max {
            return 0;
        }
        let mut oldest: Vec<(Instant, Topic)> = self
            .records
            .iter()
            .filter(|entry| !is_watched(entry.key()))
            .filter_map(|entry| {
                let record = entry.value().try_lock().ok()?;
                Some((record.touched, entry.key().clone()))
            })
            .collect();
        oldest.sort_unstable_by_key(|(touched, _)| *touched);
        let excess = self.records.len() - (max as f64 * TRIM_TO) as usize;
        let (mut evicted, mut freed) = (0, 0);
        for (_, id) in oldest.into_iter().take(excess) {
            // As in `evict_idle`: nobody holds or waits for the record.
            let removed = self.records.remove_if(&id, |_, record| {
                Arc::strong_count(record) == 1 && record.try_lock().is_ok()
            });
            if let Some((_, record)) = removed {
                freed += record.try_lock().map_or(0, |r| r.history_cost());
                evicted += 1;
            }
        }
        self.metrics.sessions_known.dec_by(evicted as i64);
        self.metrics.sessions_evicted.inc_by(evicted as u64);
        self.held_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.metrics
            .history_bytes
            .set(self.held_bytes.load(Ordering::Relaxed) as i64);
        // A flood of new sessions evicts at every round: one line per minute.
        static LOG: crate::limits::Throttle = crate::limits::Throttle::new(HOUSEKEEPING_EVERY);
        if let Some(rounds_held_back) = LOG.pass() {
            warn!(
                evicted,
                max,
                rounds_held_back,
                "sessions over MAX_SESSIONS: forgot the unwatched sessions published to least recently"
            );
        }
        evicted
    }

    /// Forgets sessions idle for longer than the TTL that nobody holds, so a
    /// long-running server's memory follows its live sessions. Returns how
    /// many were dropped.
    fn evict_idle(&self, is_watched: impl Fn(&Topic) -> bool) -> usize {
        let before = self.records.len();
        let ttl = self.limits.ttl;
        let mut freed = 0;
        // `strong_count == 1` under the shard lock means no publish holds or
        // waits for the record, so removing it cannot lose a seq in flight.
        self.records.retain(|id, record| {
            if Arc::strong_count(record) > 1 || is_watched(id) {
                return true;
            }
            match record.try_lock() {
                Ok(r) if r.touched.elapsed() >= ttl => {
                    freed += r.history_cost();
                    false
                }
                _ => true,
            }
        });
        let evicted = before - self.records.len();
        self.metrics.sessions_known.dec_by(evicted as i64);
        self.held_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.metrics
            .history_bytes
            .set(self.held_bytes.load(Ordering::Relaxed) as i64);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::history::Lost,
        protocol::{Outcome, SessionId},
    };

    fn topic(id: &str) -> Topic {
        Topic::session(SessionId::parse(id).unwrap())
    }

    fn limits(max_events: usize, max_bytes: usize) -> Limits {
        Limits {
            ttl: Duration::from_secs(3600),
            max_events,
            max_bytes,
            max_sessions: 0,
            idempotency_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn idempotency_keys_are_kept_for_the_window_and_within_the_bound() {
        let mut keys = Idempotency::default();
        let print = Fingerprint::of(b"sent");
        fn keyed(key: &str) -> Keyed<'_> {
            Keyed {
                key,
                fingerprint: Fingerprint::of(b"sent"),
            }
        }
        keys.remember(keyed("a"), 1);
        assert_eq!(keys.seq("a", Duration::from_secs(60)), Some((1, print)));
        assert_eq!(keys.seq("b", Duration::from_secs(60)), None);
        for n in 0..IDEMPOTENCY_KEYS_PER_SESSION {
            keys.remember(keyed(&n.to_string()), n as u64 + 2);
        }
        assert_eq!(
            keys.seq("a", Duration::from_secs(60)),
            None,
            "the oldest went first"
        );
        assert_eq!(keys.seq("0", Duration::from_secs(60)), Some((2, print)));
        assert_eq!(keys.seq("0", Duration::ZERO), None, "past the window");
        assert!(keys.seqs.is_empty() && keys.order.is_empty());
    }

    fn held(seq: u64, name: &'static str) -> Held {
        Held {
            seq,
            name,
            // The same size for every seq, so that costs add up simply.
            payload: Arc::from(RawValue::from_string("{\"p\":0}".into()).unwrap()),
        }
    }

    const PROGRESS: Outcome = Outcome {
        is_progress: true,
        completed: false,
        failed: false,
    };
    const COMPLETED: Outcome = Outcome {
        is_progress: false,
        completed: true,
        failed: false,
    };

    async fn publish(store: &SessionStore, id: &Topic, name: &'static str, outcome: Outcome) {
        let mut record = store.lock(id).await;
        let seq = record.seq + 1;
        store.commit(&mut record, held(seq, name), outcome);
    }

    fn seqs(events: &[Held]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn past_max_sessions_the_least_recently_published_unwatched_go_first() {
        let metrics = Arc::new(Metrics::default());
        let store = SessionStore::new(
            Limits {
                max_sessions: 10,
                ..limits(10, usize::MAX)
            },
            metrics.clone(),
        );
        let id = |i: usize| Topic::session(SessionId::parse(&format!("s{i}")).unwrap());
        for i in 0..20 {
            publish(&store, &id(i), "progress", PROGRESS).await;
        }
        // s0 is watched: it stays, however old.
        let evicted = store.evict_excess(|s| *s == id(0));
        assert_eq!(evicted, 11, "down to 90% of the cap");
        assert_eq!(store.len(), 9);
        assert!(store.records.contains_key(&id(0)));
        assert!(!store.records.contains_key(&id(1)));
        assert!(store.records.contains_key(&id(19)));
        assert_eq!(metrics.sessions_evicted.get(), 11);
        assert_eq!(metrics.sessions_known.get(), 9);
    }

    #[tokio::test]
    async fn history_snapshot_and_resume() {
        let store = SessionStore::new(limits(3, usize::MAX), Arc::default());
        let id = topic("s");
        publish(&store, &id, "progress", PROGRESS).await;
        publish(&store, &id, "model_result", Outcome::default()).await;
        publish(&store, &id, "progress", PROGRESS).await;
        publish(&store, &id, "completed", COMPLETED).await;
        let record = store.lock(&id).await;
        assert_eq!((record.seq, record.first_held()), (4, 2), "three held");

        let snapshot = record.attached(&Start::Snapshot);
        assert_eq!(
            seqs(&snapshot.events),
            [3, 4],
            "latest progress, then the end"
        );
        assert!(snapshot.recovery.is_none());

        let epoch = Some(record.epoch.to_string());
        let resume = |since| Start::Resume {
            since,
            epoch: epoch.clone(),
        };
        let full = record.attached(&resume(1));
        assert_eq!(seqs(&full.events), [2, 3, 4]);
        assert_eq!(full.recovery.unwrap().lost, None);
        let cut = record.attached(&resume(0));
        assert_eq!(seqs(&cut.events), [2, 3, 4]);
        assert_eq!(cut.recovery.unwrap().lost, Some(Lost::HistoryTruncated));
        let other = record.attached(&Start::Resume {
            since: 3,
            epoch: Some(Epoch::fresh().to_string()),
        });
        assert_eq!(seqs(&other.events), [2, 3, 4], "the whole held history");
        assert_eq!(other.recovery.unwrap().lost, Some(Lost::EpochChanged));
    }

    #[tokio::test]
    async fn over_budget_the_least_recently_published_lose_their_history() {
        let metrics = Arc::new(Metrics::default());
        let one = held(1, "progress").cost();
        let store = SessionStore::new(limits(100, one * 25), metrics.clone());
        let ids: Vec<Topic> = ["a", "b", "c"].iter().map(|s| topic(s)).collect();
        for id in &ids {
            for _ in 0..10 {
                publish(&store, id, "progress", PROGRESS).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(metrics.history_bytes.get() as usize, one * 30);
        store.trim_history();
        let held_by = |i: usize| {
            let record = store.records.get(&ids[i]).unwrap().clone();
            record.try_lock().map(|r| r.history.len()).unwrap()
        };
        assert_eq!((held_by(0), held_by(1), held_by(2)), (0, 10, 10));
        assert_eq!(metrics.history_truncated.get(), 1);
        assert_eq!(metrics.history_bytes.get() as usize, one * 20);
        // Its seq and state stay.
        let a = store.lock(&ids[0]).await;
        assert_eq!((a.seq, a.first_held()), (10, 11));
    }

    #[tokio::test]
    async fn eviction_keeps_fresh_and_watched_sessions_and_frees_their_history() {
        let metrics = Arc::new(Metrics::default());
        let store = SessionStore::new(
            Limits {
                ttl: Duration::ZERO,
                ..limits(10, usize::MAX)
            },
            metrics.clone(),
        );
        let a = topic("a");
        let b = topic("b");
        publish(&store, &a, "progress", PROGRESS).await;
        publish(&store, &b, "progress", PROGRESS).await;
        assert_eq!(metrics.sessions_known.get(), 2);
        assert_eq!(store.evict_idle(|id| id == &a), 1);
        assert_eq!((store.len(), metrics.sessions_known.get()), (1, 1));
        assert_eq!(
            metrics.history_bytes.get() as usize,
            held(1, "progress").cost()
        );
        let fresh = SessionStore::new(limits(10, usize::MAX), Arc::default());
        drop(fresh.lock(&a).await);
        assert_eq!(fresh.evict_idle(|_| false), 0);
    }
}
