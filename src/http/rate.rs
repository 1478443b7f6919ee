//! Publishes per second per caller: each API key (or, without keys, each
//! client address) has its own token bucket (`governor`'s GCRA), so a key
//! over its limit is refused with `429` and `Retry-After` while every other
//! key publishes on. A batch takes one token per event.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use tracing::warn;

use super::{ApiError, KeyId};

/// Who a publish is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    Key(KeyId),
    /// No key is configured: the client's address.
    Addr(IpAddr),
    /// No key and no address known (an embedding app serving herald's
    /// router without connection info): one bucket for all.
    Unknown,
}

/// Read from what the key check and the server left in the request.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = parts.extensions.get::<KeyId>().cloned();
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(match (key, peer) {
            (Some(id), _) => Self::Key(id),
            (None, Some(ConnectInfo(addr))) => Self::Addr(addr.ip()),
            (None, None) => Self::Unknown,
        })
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(id) => write!(f, "key {id}"),
            Self::Addr(addr) => write!(f, "address {addr}"),
            Self::Unknown => f.write_str("an unknown client"),
        }
    }
}

/// `PUBLISH_RATE_PER_KEY` and `PUBLISH_BURST_PER_KEY`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateSettings {
    /// Events per second; 0 for no limit.
    pub per_second: u32,
    /// Events at once after a quiet spell; 0 for the same as `per_second`.
    pub burst: u32,
}

/// How often the buckets of callers gone quiet are forgotten (in checks),
/// so that a stream of new client addresses cannot grow the table.
const FORGET_EVERY: u64 = 4096;

/// At most one refusal line per this, with the count of the ones not logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The publish rate limit of every caller.
pub(crate) struct PublishLimit {
    limiter: Option<DefaultKeyedRateLimiter<Caller>>,
    settings: RateSettings,
    checks: AtomicU64,
    log: LogEvery,
}

impl PublishLimit {
    pub(crate) fn new(settings: RateSettings) -> Self {
        let limiter = NonZeroU32::new(settings.per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            settings,
            checks: AtomicU64::new(0),
            log: LogEvery::default(),
        }
    }

    /// Takes `events` tokens from the caller's bucket, or says why not.
    pub(crate) fn check(&self, caller: &Caller, events: usize) -> Result<(), RateRefusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(n) = u32::try_from(events).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let burst =
            NonZeroU32::new(self.settings.burst).map_or(self.settings.per_second, NonZeroU32::get);
        let refusal = match limiter.check_key_n(caller, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateRefusal::Later {
                    retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    rate: self.settings.per_second,
                    burst,
                }
            }
            Err(_) => RateRefusal::TooBig { events, burst },
        };
        if let Some(unlogged) = self.log.ready() {
            warn!(
                caller = %caller,
                events,
                limit = self.settings.per_second,
                burst,
                unlogged,
                "publish refused: over PUBLISH_RATE_PER_KEY ({unlogged} more refusals since the last line)"
            );
        }
        Err(refusal)
    }
}

/// Why a publish was over the rate limit.
#[derive(Debug)]
pub(crate) enum RateRefusal {
    /// Over the rate: try again in `retry_after` seconds.
    Later {
        retry_after: u64,
        rate: u32,
        burst: u32,
    },
    /// A batch larger than the burst: it can never pass whole.
    TooBig { events: usize, burst: u32 },
}

impl IntoResponse for RateRefusal {
    fn into_response(self) -> Response {
        match self {
            Self::Later {
                retry_after,
                rate,
                burst,
            } => {
                let mut res = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "over the publish rate limit of {rate} events/s per key (burst {burst}, PUBLISH_RATE_PER_KEY): retry after {retry_after} s"
                    ),
                )
                .into_response();
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                res
            }
            Self::TooBig { events, burst } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "a batch of {events} events is larger than the publish burst of {burst} (PUBLISH_BURST_PER_KEY): split it"
                ),
            )
            .into_response(),
        }
    }
}

/// Lets a log line through at most once per [`LOG_EVERY`], counting the
/// ones held back, so that a flood of refusals costs one line per interval.
#[derive(Default)]
pub(crate) struct LogEvery {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogEvery {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub(crate) fn ready(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Caller {
        Caller::Key(KeyId::for_tests(id))
    }

    #[test]
    fn one_key_over_its_limit_leaves_another_alone() {
        let limit = PublishLimit::new(RateSettings {
            per_second: 10,
            burst: 20,
        });
        assert!(limit.check(&key("a"), 20).is_ok());
        match limit.check(&key("a"), 1) {
            Err(RateRefusal::Later { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(limit.check(&key("b"), 20).is_ok(), "b has its own bucket");
        assert!(matches!(
            limit.check(&key("b"), 21),
            Err(RateRefusal::TooBig { events: 21, .. })
        ));
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = PublishLimit::new(RateSettings {
            per_second: 0,
            burst: 0,
        });
        assert!(limit.check(&Caller::Unknown, 1_000_000).is_ok());
    }

    #[test]
    fn the_log_is_held_back_between_lines() {
        let log = LogEvery::default();
        assert_eq!(log.ready(), Some(0));
        assert_eq!(log.ready(), None);
        assert_eq!(log.ready(), None);
    }
}
