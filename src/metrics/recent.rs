//! What the dashboard shows beyond the counters: the last refusals (a small
//! ring, never payload contents) and which sessions are published to most
//! (counted only while a dashboard is open, so publishing costs nothing
//! more otherwise).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// Refusals kept: enough for a screen, small enough to copy every second.
const KEPT: usize = 64;

/// The longest reason kept: refusal messages name fields and limits, and a
/// long one is cut rather than copied whole every second.
const REASON_CHARS: usize = 160;

/// One refusal, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Refusal {
    /// Unix time, in milliseconds.
    pub at: u64,
    /// `http` (a 4xx answer) or `socket` (an `error` event).
    pub kind: &'static str,
    /// The HTTP status or the error event's code.
    pub code: String,
    /// What herald told the client (its message, never the payload).
    pub reason: String,
    /// `METHOD /path` for HTTP, the socket id for Socket.IO.
    pub client: String,
}

/// The last [`KEPT`] refusals of this instance.
#[derive(Default)]
pub(crate) struct Refusals(Mutex<VecDeque<Refusal>>);

impl Refusals {
    pub(crate) fn record(&self, kind: &'static str, code: String, reason: &str, client: String) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let reason = match reason.char_indices().nth(REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &reason[..cut]),
            None => reason.to_string(),
        };
        let mut ring = self.0.lock().unwrap();
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(Refusal {
            at,
            kind,
            code,
            reason,
            client,
        });
    }

    /// The kept refusals, newest first.
    pub(crate) fn latest(&self) -> Vec<Refusal> {
        self.0.lock().unwrap().iter().rev().cloned().collect()
    }
}

/// Publishes per session since the last [`Activity::take`], while counting
/// is on.
#[derive(Default)]
pub(crate) struct Activity {
    on: AtomicBool,
    counts: Mutex<HashMap<String, u64>>,
}

impl Activity {
    /// Counts one publish to `session`, if counting is on.
    pub(crate) fn count(&self, session: &str) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut counts = self.counts.lock().unwrap();
        match counts.get_mut(session) {
            Some(n) => *n += 1,
            None => {
                counts.insert(session.to_string(), 1);
            }
        }
    }

    pub(crate) fn set_counting(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Whether a dashboard is open somewhere (see `ops::feed`).
    pub(crate) fn counting(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The `n` sessions published to most since the last call, most first;
    /// starts counting afresh.
    pub(crate) fn take(&self, n: usize) -> Vec<(String, u64)> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap());
        top(counts, n)
    }
}

/// The `n` largest counts, largest first (ties by name, for a stable list).
pub(crate) fn top(counts: impl IntoIterator<Item = (String, u64)>, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_latest_and_cuts_long_reasons() {
        let ring = Refusals::default();
        for i in 0..KEPT + 3 {
            ring.record("http", "422".into(), &"x".repeat(i * 10), format!("c{i}"));
        }
        let latest = ring.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest[0].client, format!("c{}", KEPT + 2));
        assert!(latest[0].reason.chars().count() <= REASON_CHARS + 1);
    }

    #[test]
    fn activity_counts_only_while_on() {
        let activity = Activity::default();
        activity.count("a");
        assert!(activity.take(5).is_empty());
        activity.set_counting(true);
        for s in ["a", "b", "b"] {
            activity.count(s);
        }
        assert_eq!(activity.take(1), [("b".to_string(), 2)]);
        assert!(activity.take(5).is_empty(), "taking starts afresh");
    }
}
