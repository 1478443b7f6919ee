//! The bounded queue between Redis and an instance's delivery task, and what
//! happens when an instance falls behind.
//!
//! Redis pushes the cluster's events as fast as every instance together
//! publishes them; the delivery task hands them to this instance's sockets.
//! An instance that cannot keep up (its CPU taken by something else, a
//! stalled runtime) must not buffer without limit, so the queue has a bound.
//! An event that finds it full is dropped and counted, and the instance says
//! so: `/ready` answers 503 ("fell behind the cluster's events") from that
//! moment until the delivery task has emptied the queue, so a load balancer
//! steers new clients elsewhere while it catches up. The subscribers of a
//! dropped event see the gap in `seq`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// What waits for the delivery task: the cluster's events and, in the same
/// order, requests about them (`C`), so that a request is served after every
/// event that arrived before it.
pub(crate) enum Item<C> {
    Event(Vec<u8>),
    Command(C),
}

/// The sending side: the Redis connection pushes each message (never
/// blocking), and herald queues its requests behind them.
pub(crate) struct EventQueue<C> {
    tx: mpsc::Sender<Item<C>>,
    state: Arc<Behind>,
}

impl<C> Clone for EventQueue<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }
}

/// The delivery task's side.
pub(crate) struct EventReceiver<C> {
    rx: mpsc::Receiver<Item<C>>,
    state: Arc<Behind>,
}

/// Whether the instance fell behind, shared by both sides.
#[derive(Default)]
pub(crate) struct Behind {
    /// Set by a drop, cleared once the queue is empty again.
    behind: AtomicBool,
    /// Events dropped since the instance last caught up.
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Behind {
    /// Events dropped in the current episode, while the instance is behind.
    pub(crate) fn dropped(&self) -> Option<u64> {
        self.behind
            .load(Ordering::Acquire)
            .then(|| self.dropped.load(Ordering::Relaxed))
    }
}

/// A queue of `capacity` events, and the state `/ready` reads.
pub(crate) fn bounded<C>(
    capacity: usize,
    metrics: Arc<Metrics>,
) -> (EventQueue<C>, EventReceiver<C>, Arc<Behind>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let state = Arc::new(Behind {
        metrics,
        ..Behind::default()
    });
    (
        EventQueue {
            tx,
            state: state.clone(),
        },
        EventReceiver {
            rx,
            state: state.clone(),
        },
        state,
    )
}

impl<C> EventQueue<C> {
    /// Queues a request behind the events already queued, waiting for room;
    /// gives it back if the delivery task is gone.
    pub(crate) async fn request(&self, command: C) -> Result<(), C> {
        self.tx.send(Item::Command(command)).await.map_err(
            |mpsc::error::SendError(item)| match item {
                Item::Command(command) => command,
                Item::Event(_) => unreachable!("a command was sent"),
            },
        )
    }

    pub(crate) fn push(&self, message: Vec<u8>) {
        self.state.metrics.cluster_events_received.inc();
        match self.tx.try_send(Item::Event(message)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.state.metrics.cluster_events_dropped.inc();
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.state.behind.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "this instance fell behind the cluster's events: dropping them until it catches up (its subscribers will see seq gaps); /ready answers 503 meanwhile"
                    );
                }
            }
            // The delivery task is gone: the server is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl<C> EventReceiver<C> {
    /// The next event or request, in the order they came: events in the
    /// order Redis published them.
    pub(crate) async fn next(&mut self) -> Option<Item<C>> {
        let message = self.rx.recv().await?;
        if self.rx.is_empty() && self.state.behind.load(Ordering::Acquire) {
            let dropped = self.state.dropped.swap(0, Ordering::Relaxed);
            self.state.behind.store(false, Ordering::Release);
            tracing::info!(dropped, "this instance caught up with the cluster's events");
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(item: Option<Item<()>>) -> Option<Vec<u8>> {
        match item? {
            Item::Event(event) => Some(event),
            Item::Command(()) => None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_counts_and_recovers_once_drained() {
        let metrics = Arc::new(Metrics::default());
        let (queue, mut receiver, behind) = bounded::<()>(2, metrics.clone());
        for n in 0..5u8 {
            queue.push(vec![n]);
        }
        assert_eq!(behind.dropped(), Some(3), "three did not fit");
        assert_eq!(metrics.cluster_events_dropped.get(), 3);
        // What was queued is delivered, in order, and the instance counts as
        // behind until the queue is empty.
        assert_eq!(event(receiver.next().await), Some(vec![0]));
        assert_eq!(behind.dropped(), Some(3));
        assert_eq!(event(receiver.next().await), Some(vec![1]));
        assert_eq!(behind.dropped(), None, "caught up");
        queue.push(vec![9]);
        assert_eq!(event(receiver.next().await), Some(vec![9]));
        assert_eq!(
            metrics.cluster_events_dropped.get(),
            3,
            "nothing more dropped"
        );
    }
}
