//! What both backends hold of a session's past, and the one rule that turns
//! a client's `since` and `epoch` into what it is sent: the history types,
//! the epoch, and the resume decision. Memory and Redis store differently
//! (a ring in the session's record; a Redis Stream beside its hash) but
//! answer through these, so a client gets the same answer from either.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::protocol::Outcome;
pub(crate) use crate::protocol::{Epoch, Lost};

/// Whether the event ends the session (a `completed`, or a published
/// `error`), and so belongs in the snapshot a late subscriber gets beside
/// the latest `progress`.
pub(crate) fn ends_session(outcome: &Outcome) -> bool {
    (outcome.completed || outcome.failed) && !outcome.is_progress
}

/// An event as history holds it: exactly as it was first delivered. The
/// payload is shared: a replay to many sockets copies none of it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub seq: u64,
    pub name: &'static str,
    pub payload: Arc<RawValue>,
}

/// The reference counts an `Arc` keeps beside its value.
const ARC_COUNTS: usize = 2 * std::mem::size_of::<usize>();

impl Held {
    /// What holding it costs, for the process-wide history budget: the
    /// payload and the entry around it.
    pub(crate) fn cost(&self) -> usize {
        self.payload.get().len() + ARC_COUNTS + std::mem::size_of::<Self>()
    }
}

/// How a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// No `since`: the latest state (progress and, once ended, the final event).
    Snapshot,
    /// `since: N`, with the epoch the client last saw, if it sent one.
    Resume { since: u64, epoch: Option<String> },
}

/// The answer to a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// `None`: the client missed nothing after its `since`.
    pub lost: Option<Lost>,
    /// Replay events after this seq (everything held when the epoch changed).
    pub after: u64,
}

/// Decides a resume from what the session holds: `seq` is its last seq,
/// `first_held` the first seq its history still has (`seq + 1` when it holds
/// nothing).
pub(crate) fn recover(
    since: u64,
    given: Option<&str>,
    epoch: Epoch,
    seq: u64,
    first_held: u64,
) -> Recovery {
    let changed = given.is_some_and(|given| Epoch::parse(given) != Some(epoch)) || since > seq;
    if changed {
        return Recovery {
            lost: Some(Lost::EpochChanged),
            after: 0,
        };
    }
    let truncated = first_held > since + 1;
    Recovery {
        lost: truncated.then_some(Lost::HistoryTruncated),
        after: since,
    }
}

/// What a subscriber is handed as its subscription takes effect.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The session's last seq at that moment; every live event after has a
    /// larger one.
    pub seq: u64,
    pub epoch: Epoch,
    /// The snapshot or the replay, in seq order.
    pub events: Vec<Held>,
    /// For a resume: whether the client missed nothing.
    pub recovery: Option<Recovery>,
    /// Live events delivered to the session's room while the subscription
    /// was being prepared, after `seq`: a subscriber that was not in the
    /// room yet must be sent them after `events`; one that was has them.
    pub caught_up: Vec<Held>,
    /// No event of the session at or below `seq` can still be on its way to
    /// this instance's fan-out (in memory: it was all delivered under the
    /// lock). When false (Redis: another instance's event may still be in
    /// flight), the subscriber waits past `seq` before joining the room.
    pub settled: bool,
}

impl Attached {
    /// Keeps the live events delivered while the subscription was being
    /// prepared that come after what was read.
    pub(crate) fn catch_up(&mut self, live: Vec<Held>) {
        let seq = self.seq;
        self.caught_up
            .extend(live.into_iter().filter(|event| event.seq > seq));
    }
}

/// A page of history, for `GET /api/v1/sessions/{id}/events`.
#[derive(Debug)]
pub(crate) struct Page {
    pub seq: u64,
    /// `None` for a session with no state.
    pub epoch: Option<Epoch>,
    /// Whether every event after `since` is still held.
    pub recovered: bool,
    pub events: Vec<Held>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_decisions() {
        let e = Epoch::parse("00000000000a").unwrap();
        let same = Some("00000000000a");
        // Everything after 5 held (history starts at 1).
        assert_eq!(recover(5, same, e, 9, 1).lost, None);
        assert_eq!(recover(5, same, e, 9, 1).after, 5);
        // Without an epoch, no epoch check.
        assert_eq!(recover(5, None, e, 9, 6).lost, None);
        // History starts at 7: event 6 is gone.
        assert_eq!(recover(5, same, e, 9, 7).lost, Some(Lost::HistoryTruncated));
        // Caught up, nothing held at all: fine.
        assert_eq!(recover(9, same, e, 9, 10).lost, None);
        // Another epoch, or a seq this sequence never reached.
        let other = recover(5, Some("00000000000b"), e, 9, 1);
        assert_eq!((other.lost, other.after), (Some(Lost::EpochChanged), 0));
        assert_eq!(recover(12, None, e, 3, 1).lost, Some(Lost::EpochChanged));
        assert_eq!(recover(0, same, e, 0, 1).lost, None);
    }

    #[test]
    fn catching_up_skips_what_the_replay_had() {
        let held = |seq| Held {
            seq,
            name: "progress",
            payload: Arc::from(RawValue::from_string("{}".into()).unwrap()),
        };
        let mut attached = Attached {
            seq: 5,
            epoch: Epoch::fresh(),
            events: vec![held(4), held(5)],
            recovery: None,
            caught_up: Vec::new(),
            settled: false,
        };
        attached.catch_up(vec![held(5), held(6), held(7)]);
        let seqs: Vec<u64> = attached.caught_up.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, attached.seq), (vec![6, 7], 5));
    }
}
