//! What one socket may ask: CLIENT_REQUESTS_PER_SEC requests a second (a
//! token bucket whose burst fits a reconnecting client subscribing to all it
//! may hold at once), and MAX_SUBSCRIPTIONS_PER_SOCKET sessions. A socket
//! that keeps flooding past its refusals is disconnected.

use std::{
    sync::Arc,
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
    rate: f64,
    burst: f64,
    max_subscriptions: usize,
    buckets: DashMap<Sid, Bucket>,
    metrics: Arc<Metrics>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// When the current run of refusals began, and the last refusal.
    flood: Option<(Instant, Instant)>,
    /// Told to disconnect: what it sent before the close is only refused.
    cut: bool,
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
        let rate = f64::from(per_sec);
        Self {
            rate,
            burst: rate.max(max_subscriptions as f64),
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
        let now = Instant::now();
        let mut b = self.buckets.entry(socket).or_insert_with(|| Bucket {
            tokens: self.burst,
            refilled: now,
            flood: None,
            cut: false,
        });
        if b.cut {
            return Verdict::Disconnect { first: false };
        }
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Allowed;
        }
        let first = b.flood.is_none();
        let began = match b.flood {
            Some((began, last)) if now.duration_since(last) < FLOOD_ENDS_AFTER => began,
            _ => now,
        };
        b.flood = Some((began, now));
        if now.duration_since(began) >= FLOOD_GRACE {
            b.cut = true;
            self.metrics.limit_refused(Limit::RequestFlood);
            return Verdict::Disconnect { first: true };
        }
        self.metrics.limit_refused(Limit::Requests);
        Verdict::Refused {
            first,
            tell: began == now,
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
}
