//! The single-instance cluster: each session's seq and last state in this
//! process's memory, and delivery straight to the local sockets.
//!
//! Holding the session's lock from the moment a seq is taken until its event
//! is handed to the sockets is what keeps delivery in seq order when several
//! publishers race on one session; different sessions never wait for each
//! other.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, OwnedMutexGuard};

use socketioxide::SocketIo;

use super::{ClusterError, Outbound, SessionSnapshot};
use crate::{
    protocol::{Outcome, SessionId},
    realtime::{self, Realtime},
};

/// What herald remembers of one session.
#[derive(Debug)]
struct SessionRecord {
    /// The last seq handed out; 0 before the first publish.
    seq: u64,
    /// The latest `progress` payload, as subscribers received it.
    progress: Option<Box<RawValue>>,
    completed: bool,
    failed: bool,
    touched: Instant,
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self {
            seq: 0,
            progress: None,
            completed: false,
            failed: false,
            touched: Instant::now(),
        }
    }
}

impl SessionRecord {
    /// Records a published event: called only once it was handed to the
    /// broadcast, so a failed publish consumes no seq.
    fn commit(&mut self, seq: u64, outcome: Outcome, payload: Box<RawValue>) {
        self.seq = seq;
        self.completed |= outcome.completed;
        self.failed |= outcome.failed;
        if outcome.is_progress {
            self.progress = Some(payload);
        }
        self.touched = Instant::now();
    }
}

/// Sessions sequenced and delivered by this process alone.
pub struct MemoryCluster {
    io: SocketIo,
    local: Realtime,
    sessions: SessionStore,
}

impl MemoryCluster {
    pub fn new(io: SocketIo, local: Realtime, ttl: Duration) -> Self {
        Self {
            io,
            local,
            sessions: SessionStore::new(ttl),
        }
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    pub async fn publish(&self, out: Outbound<'_>) -> Result<u64, ClusterError> {
        // The lock is held until the event is handed to the sockets: the
        // next publish to this session cannot overtake it.
        let mut record = self.sessions.lock(out.session_id).await;
        let seq = record.seq + 1;
        let payload = out.encoded.with_seq(seq);
        realtime::deliver(&self.io, &self.local, out.session_id, out.name, &payload)
            .await
            .map_err(|e| {
                ClusterError::Unavailable(format!("the event could not be broadcast: {e}"))
            })?;
        record.commit(seq, out.outcome, payload);
        Ok(seq)
    }

    pub async fn snapshot(&self, id: &SessionId) -> SessionSnapshot {
        let mut snapshot = self
            .sessions
            .read(id, |r| SessionSnapshot {
                seq: r.seq,
                progress: r.progress.clone(),
                completed: r.completed,
                failed: r.failed,
                subscribers: 0,
            })
            .await
            .unwrap_or_default();
        snapshot.subscribers = self.local.subscriptions.count(id) as usize;
        snapshot
    }

    pub fn sessions_known(&self) -> usize {
        self.sessions.len()
    }

    /// Forgets idle, unwatched sessions every minute, for as long as it runs.
    pub async fn housekeeping(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let evicted = self
                .sessions
                .evict_idle(|id| self.local.subscriptions.count(id) > 0);
            if evicted > 0 {
                tracing::info!(evicted, "forgot idle sessions");
            }
        }
    }
}

/// The session records of this instance.
struct SessionStore {
    records: DashMap<SessionId, Arc<Mutex<SessionRecord>>>,
    ttl: Duration,
}

impl SessionStore {
    fn new(ttl: Duration) -> Self {
        Self {
            records: DashMap::new(),
            ttl,
        }
    }

    /// Locks the session's record, creating it on first use. Publishes to one
    /// session queue here in arrival order (tokio's mutex is fair).
    async fn lock(&self, id: &SessionId) -> OwnedMutexGuard<SessionRecord> {
        let record = self.records.entry(id.clone()).or_default().clone();
        record.lock_owned().await
    }

    /// Reads a session's record without creating one.
    async fn read<T>(&self, id: &SessionId, f: impl FnOnce(&SessionRecord) -> T) -> Option<T> {
        let record = self.records.get(id).map(|r| r.clone())?;
        let guard = record.lock().await;
        Some(f(&guard))
    }

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
        before - self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_tracks_seq_and_outcomes() {
        let store = SessionStore::new(Duration::from_secs(60));
        let id = SessionId::parse("s").unwrap();
        {
            let mut rec = store.lock(&id).await;
            let seq = rec.seq + 1;
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
                    r.seq,
                    r.completed,
                    r.progress.as_ref().map(|p| p.get().to_string()),
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
                .read(&SessionId::parse("other").unwrap(), |r| r.seq)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn eviction_keeps_fresh_and_watched_sessions() {
        let store = SessionStore::new(Duration::ZERO);
        let a = SessionId::parse("a").unwrap();
        let b = SessionId::parse("b").unwrap();
        drop(store.lock(&a).await);
        drop(store.lock(&b).await);
        assert_eq!(store.evict_idle(|id| id == &a), 1);
        assert_eq!(store.len(), 1);
        let fresh = SessionStore::new(Duration::from_secs(3600));
        drop(fresh.lock(&a).await);
        assert_eq!(fresh.evict_idle(|_| false), 0);
    }
}
