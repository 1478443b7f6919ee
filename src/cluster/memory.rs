//! The single-instance sequencer: each session's seq and last state in this
//! process's memory, and its events handed straight to the fan-out.
//!
//! Holding the session's lock from the moment a seq is taken until its event
//! is handed to the fan-out is what keeps delivery in seq order when several
//! publishers race on one session; different sessions never wait for each
//! other.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::{DashMap, Entry};
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{
    ClusterFigures, FanOut, LinkProblem, Outbound, Sequenced, Sequencer, SequencerError,
    SessionState,
};
use crate::{
    metrics::Metrics,
    protocol::{Outcome, SessionId},
};

/// How often idle, unwatched sessions are looked for.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// What herald remembers of one session.
#[derive(Debug)]
struct SessionRecord {
    state: SessionState,
    touched: Instant,
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self {
            state: SessionState::default(),
            touched: Instant::now(),
        }
    }
}

impl SessionRecord {
    /// Records a published event: called only once it was handed to the
    /// fan-out, so a failed publish consumes no seq.
    fn commit(&mut self, seq: u64, outcome: Outcome, payload: Box<RawValue>) {
        let state = &mut self.state;
        state.seq = seq;
        state.completed |= outcome.completed;
        state.failed |= outcome.failed;
        if outcome.is_progress {
            state.progress = Some(payload);
        }
        self.touched = Instant::now();
    }
}

/// Sessions sequenced by this process alone.
pub(crate) struct MemorySequencer {
    fanout: Arc<dyn FanOut>,
    sessions: SessionStore,
}

impl MemorySequencer {
    /// The sequencer, and its housekeeping (forgetting idle sessions), which
    /// runs as long as it is polled.
    pub(crate) fn new(
        fanout: Arc<dyn FanOut>,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, BoxFuture<'static, ()>) {
        let sequencer = Arc::new(Self {
            fanout,
            sessions: SessionStore::new(ttl, metrics),
        });
        let housekeeping = sequencer.clone().housekeeping().boxed();
        (sequencer, housekeeping)
    }

    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tick.tick().await;
            let evicted = self.sessions.evict_idle(|id| self.fanout.watches(id));
            if evicted > 0 {
                tracing::info!(evicted, "forgot idle sessions");
            }
        }
    }
}

impl Sequencer for MemorySequencer {
    fn adapter(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, out: Outbound<'a>) -> BoxFuture<'a, Result<u64, SequencerError>> {
        async move {
            // The lock is held until the event is handed to the fan-out: the
            // next publish to this session cannot overtake it.
            let mut record = self.sessions.lock(out.session_id).await;
            let seq = record.state.seq + 1;
            let payload = out.encoded.with_seq(seq);
            self.fanout
                .deliver(Sequenced {
                    session_id: out.session_id,
                    name: out.name,
                    seq,
                    payload: &payload,
                })
                .await;
            record.commit(seq, out.outcome, payload);
            Ok(seq)
        }
        .boxed()
    }

    fn state<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<SessionState, SequencerError>> {
        async move {
            Ok(self
                .sessions
                .read(id, |r| SessionState {
                    seq: r.state.seq,
                    progress: r.state.progress.clone(),
                    completed: r.state.completed,
                    failed: r.state.failed,
                })
                .await
                .unwrap_or_default())
        }
        .boxed()
    }

    fn problem(&self) -> Option<LinkProblem> {
        None
    }

    fn cluster_figures(&self) -> BoxFuture<'_, Option<ClusterFigures>> {
        futures_util::future::ready(None).boxed()
    }
}

/// The session records of this instance.
struct SessionStore {
    records: DashMap<SessionId, Arc<Mutex<SessionRecord>>>,
    ttl: Duration,
    /// Keeps `herald_sessions_known` equal to the number of records.
    metrics: Arc<Metrics>,
}

impl SessionStore {
    fn new(ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            records: DashMap::new(),
            ttl,
            metrics,
        }
    }

    /// Locks the session's record, creating it on first use. Publishes to one
    /// session queue here in arrival order (tokio's mutex is fair).
    async fn lock(&self, id: &SessionId) -> OwnedMutexGuard<SessionRecord> {
        let record = match self.records.entry(id.clone()) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                self.metrics.sessions_known.inc();
                entry.insert(Arc::default()).clone()
            }
        };
        record.lock_owned().await
    }

    /// Reads a session's record without creating one.
    async fn read<T>(&self, id: &SessionId, f: impl FnOnce(&SessionRecord) -> T) -> Option<T> {
        let record = self.records.get(id).map(|r| r.clone())?;
        let guard = record.lock().await;
        Some(f(&guard))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.len()
    }

    /// Forgets sessions idle for longer than the TTL that nobody holds, so a
    /// long-running server's memory follows its live sessions. Returns how
    /// many were dropped.
    fn evict_idle(&self, is_watched: impl Fn(&SessionId) -> bool) -> usize {
        let before = self.records.len();
        let ttl = self.ttl;
        // `strong_count == 1` under the shard lock means no publish holds or
        // waits for the record, so removing it cannot lose a seq in flight.
        self.records.retain(|id, record| {
            Arc::strong_count(record) > 1
                || is_watched(id)
                || record
                    .try_lock()
                    .map(|r| r.touched.elapsed() < ttl)
                    .unwrap_or(true)
        });
        let evicted = before - self.records.len();
        self.metrics.sessions_known.dec_by(evicted as i64);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_tracks_seq_and_outcomes() {
        let store = SessionStore::new(Duration::from_secs(60), Arc::default());
        let id = SessionId::parse("s").unwrap();
        {
            let mut rec = store.lock(&id).await;
            let seq = rec.state.seq + 1;
            let payload = RawValue::from_string("{\"p\":1}".into()).unwrap();
            let outcome = Outcome {
                is_progress: true,
                completed: true,
                failed: false,
            };
            rec.commit(seq, outcome, payload);
        }
        let (seq, done, progress) = store
            .read(&id, |r| {
                (
                    r.state.seq,
                    r.state.completed,
                    r.state.progress.as_ref().map(|p| p.get().to_string()),
                )
            })
            .await
            .unwrap();
        assert_eq!(
            (seq, done, progress.as_deref()),
            (1, true, Some("{\"p\":1}"))
        );
        assert!(
            store
                .read(&SessionId::parse("other").unwrap(), |r| r.state.seq)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn eviction_keeps_fresh_and_watched_sessions() {
        let metrics = Arc::new(Metrics::default());
        let store = SessionStore::new(Duration::ZERO, metrics.clone());
        let a = SessionId::parse("a").unwrap();
        let b = SessionId::parse("b").unwrap();
        drop(store.lock(&a).await);
        drop(store.lock(&b).await);
        assert_eq!(metrics.sessions_known.get(), 2);
        assert_eq!(store.evict_idle(|id| id == &a), 1);
        assert_eq!((store.len(), metrics.sessions_known.get()), (1, 1));
        let fresh = SessionStore::new(Duration::from_secs(3600), Arc::default());
        drop(fresh.lock(&a).await);
        assert_eq!(fresh.evict_idle(|_| false), 0);
    }
}
