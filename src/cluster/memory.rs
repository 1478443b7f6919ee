//! Where each session's `seq` and last-known state live, and the lock that
//! makes "take the next seq, then broadcast" one step per session.
//!
//! Holding the session's lock from the moment a seq is taken until its event
//! is handed to the adapter is what keeps delivery in seq order when several
//! publishers race on one session; different sessions never wait for each
//! other. Today this is one process's memory; the Redis-backed store of the
//! multi-instance setup keeps the same shape (take seq, broadcast, commit).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::protocol::{Outcome, SessionId};

/// What herald remembers of one session.
#[derive(Debug)]
pub struct SessionRecord {
    /// The last seq handed out; 0 before the first publish.
    pub seq: u64,
    /// The latest `progress` payload, as subscribers received it.
    pub progress: Option<Box<RawValue>>,
    pub completed: bool,
    pub failed: bool,
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
    pub fn commit(&mut self, seq: u64, outcome: Outcome, payload: Box<RawValue>) {
        self.seq = seq;
        self.completed |= outcome.completed;
        self.failed |= outcome.failed;
        if outcome.is_progress {
            self.progress = Some(payload);
        }
        self.touched = Instant::now();
    }
}

/// The session records of this instance.
pub struct SessionStore {
    records: DashMap<SessionId, Arc<Mutex<SessionRecord>>>,
    ttl: Duration,
}

impl SessionStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            records: DashMap::new(),
            ttl,
        }
    }

    /// Locks the session's record, creating it on first use. Publishes to one
    /// session queue here in arrival order (tokio's mutex is fair).
    pub async fn lock(&self, id: &SessionId) -> OwnedMutexGuard<SessionRecord> {
        let record = self.records.entry(id.clone()).or_default().clone();
        record.lock_owned().await
    }

    /// Reads a session's record without creating one.
    pub async fn read<T>(&self, id: &SessionId, f: impl FnOnce(&SessionRecord) -> T) -> Option<T> {
        let record = self.records.get(id).map(|r| r.clone())?;
        let guard = record.lock().await;
        Some(f(&guard))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Forgets sessions idle for longer than the TTL that nobody holds, so a
    /// long-running server's memory follows its live sessions. Returns how
    /// many were dropped.
    pub fn evict_idle(&self, is_watched: impl Fn(&SessionId) -> bool) -> usize {
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
