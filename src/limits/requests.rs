//! What one socket may ask: CLIENT_REQUESTS_PER_SEC requests a second (a
//! token bucket whose burst fits a reconnecting client subscribing to all it
//! may hold at once), and MAX_SUBSCRIPTIONS_PER_SOCKET sessions. A socket
//! that keeps flooding past its refusals is disconnected.
//!
//! A socket's bucket is kept only while it is in debt: a full bucket is what
//! a socket without one gets, so [`RequestLimits::sweep`] drops the buckets
//! that have filled again. Nearly every socket sends a few requests when it
//! connects and then none, and keeps nothing here once idle.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use dashmap::DashMap;
use socketioxide::socket::Sid;

use super::Limit;
use crate::metrics::Metrics;

/// How long a socket may keep sending past its rate before it is disconnected:
/// long enough for a client that retries once too eagerly, short enough that a
/// flood costs little.
const FLOOD_GRACE: Duration = Duration::from_secs(5);

/// A pause in refusals this long ends a flood.
const FLOOD_ENDS_AFTER: Duration = Duration::from_secs(1);

/// The per-socket limits on requests, and each socket's bucket.
pub(crate) struct RequestLimits {
    /// Tokens a second; 0 means no limit.
    rate: f32,
    burst: f32,
    max_subscriptions: usize,
    buckets: DashMap<Sid, Bucket>,
    metrics: Arc<Metrics>,
}

/// Sixteen bytes: every socket that sent a request in the last sweep period
/// keeps one, so its times are milliseconds on a process-wide clock
/// ([`millis`]) rather than `Instant`s, which would make it 72.
struct Bucket {
    tokens: f32,
    refilled: u32,
    /// When the current run of refusals began ([`CALM`]: none), and the
    /// last refusal.
    flood_began: u32,
    flood_last: u32,
}

/// `flood_began` of a bucket with no refusals running.
const CALM: u32 = u32::MAX;

/// `tokens` of a socket told to disconnect: what it sent before the close
/// is only refused.
const CUT: f32 = f32::NEG_INFINITY;

/// Milliseconds since the clock's first reading, wrapping after 49 days;
/// only differences of seconds are ever taken.
fn millis() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().duration_since(epoch).as_millis() as u32
}

/// Milliseconds from `then` to `now` on the [`millis`] clock.
fn since(now: u32, then: u32) -> Duration {
    Duration::from_millis(now.wrapping_sub(then).into())
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Refused; `first` for the socket's first refusal, the one to log;
    /// `tell` for the first of a run of refusals, the one to send an `error`
    /// for (the rest are acked only: a flood must not make herald write as
    /// much as it reads).
    Refused {
        tell: bool,
        first: bool,
    },
    /// The socket has flooded for [`FLOOD_GRACE`]: disconnect it. `first`
    /// once per socket: its requests still arriving say so again, uncounted.
    Disconnect {
        first: bool,
    },
}

impl RequestLimits {
    pub(crate) fn new(per_sec: u32, max_subscriptions: usize, metrics: Arc<Metrics>) -> Self {
        let rate = per_sec as f32;
        Self {
            rate,
            burst: rate.max(max_subscriptions as f32),
            max_subscriptions,
            buckets: DashMap::new(),
            metrics,
        }
    }

    /// Takes a token for one request of `socket`.
    pub(crate) fn request(&self, socket: Sid) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allowed;
        }
        let now = millis();
        let mut b = self.buckets.entry(socket).or_insert_with(|| Bucket {
            tokens: self.burst,
            refilled: now,
            flood_began: CALM,
            flood_last: now,
        });
        if b.tokens == CUT {
            return Verdict::Disconnect { first: false };
        }
        let elapsed = since(now, b.refilled).as_secs_f32();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Allowed;
        }
        let first = b.flood_began == CALM;
        let new_run = first || since(now, b.flood_last) >= FLOOD_ENDS_AFTER;
        let began = if new_run { now } else { b.flood_began };
        (b.flood_began, b.flood_last) = (began, now);
        if since(now, began) >= FLOOD_GRACE {
            b.tokens = CUT;
            self.metrics.limit_refused(Limit::RequestFlood);
            return Verdict::Disconnect { first: true };
        }
        self.metrics.limit_refused(Limit::Requests);
        Verdict::Refused {
            first,
            tell: new_run,
        }
    }

    /// Whether a socket holding `held` subscriptions may take one more; a
    /// refusal is counted.
    pub(crate) fn may_subscribe(&self, held: usize) -> bool {
        let ok = self.max_subscriptions == 0 || held < self.max_subscriptions;
        if !ok {
            self.metrics.limit_refused(Limit::Subscriptions);
        }
        ok
    }

    pub(crate) fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
    }

    /// Forgets a socket that went away.
    pub(crate) fn forget(&self, socket: Sid) {
        self.buckets.remove(&socket);
    }

    /// Drops the buckets that are full again, which a socket without one
    /// gets on its next request anyway, and gives back the room they took.
    /// A socket ever refused keeps its bucket: its refusal is logged once,
    /// and a cut socket stays cut.
    pub(crate) fn sweep(&self) {
        let now = millis();
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            let full = b.tokens + since(now, b.refilled).as_secs_f32() * rate >= burst;
            !(full && b.flood_began == CALM)
        });
        // The connects of a busy second can leave a table sized for
        // thousands of sockets that now hold nothing.
        if self.buckets.capacity() > 4 * self.buckets.len() + 1024 {
            self.buckets.shrink_to_fit();
        }
    }

    /// Sweeps every `period`, for ever (with the server's tasks).
    pub(crate) async fn sweep_every(self: Arc<Self>, period: Duration) {
        if self.rate == 0.0 {
            return std::future::pending().await;
        }
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_refusals() {
        let limits = RequestLimits::new(10, 20, Arc::new(Metrics::default()));
        let s = Sid::new();
        for _ in 0..20 {
            assert_eq!(limits.request(s), Verdict::Allowed);
        }
        let refused = |first, tell| Verdict::Refused { first, tell };
        assert_eq!(limits.request(s), refused(true, true));
        assert_eq!(limits.request(s), refused(false, false));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(limits.request(s), Verdict::Allowed);
        assert_eq!(
            limits.request(Sid::new()),
            Verdict::Allowed,
            "buckets are per socket"
        );
        assert!(limits.may_subscribe(19));
        assert!(!limits.may_subscribe(20));
    }

    #[test]
    fn a_bucket_is_kept_only_while_in_debt_or_once_refused() {
        let limits = RequestLimits::new(10, 3, Arc::new(Metrics::default()));
        let (light, refused) = (Sid::new(), Sid::new());
        assert_eq!(limits.request(light), Verdict::Allowed);
        for _ in 0..10 {
            assert_eq!(limits.request(refused), Verdict::Allowed);
        }
        assert!(matches!(
            limits.request(refused),
            Verdict::Refused { first: true, .. }
        ));
        limits.sweep();
        assert_eq!(limits.buckets.len(), 2, "both in debt");
        std::thread::sleep(Duration::from_millis(1100));
        limits.sweep();
        assert!(!limits.buckets.contains_key(&light), "full again: dropped");
        assert!(limits.buckets.contains_key(&refused), "refused once: kept");
        // Swept, the light socket has its whole burst again.
        for _ in 0..10 {
            assert_eq!(limits.request(light), Verdict::Allowed);
        }
        assert!(matches!(
            limits.request(light),
            Verdict::Refused { first: true, .. }
        ));
    }
}
