//! Write coalescing under load (herald patch 11).
//!
//! A WebSocket writes each packet as soon as it is queued: the lowest latency,
//! and one `send` per packet. Each `send` has a fixed kernel cost (on
//! loopback it also pays for the reader's wake-up) that, when a process
//! delivers many small packets to many sockets, is most of its CPU. While the
//! process has CPU to spare that cost buys latency; once it is saturated it
//! only makes every queue longer. So the application, which can tell how busy
//! the process is (its CPU time, its runtime), sets a linger: a WebSocket with
//! packets to write holds them for up to that long and writes all that
//! arrived meanwhile at once. The default, zero, holds nothing.
//!
//! Answers are never held: a WebSocket whose client sent a frame within the
//! linger period may be in an exchange with it (a connect, an ack and what
//! the application sends with them), and writes at once, so the exchange
//! does not wait behind the linger however loaded the process is.
//!
//! Load is a property of the process, not of one engine: hence one
//! process-wide setting rather than a field of the engine's config.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use tokio::time::Instant;

static LINGER_MICROS: AtomicU64 = AtomicU64::new(0);

/// How long a WebSocket may hold the packets it is given from now on; zero
/// writes each at once.
pub fn set_linger(linger: Duration) {
    let micros = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
    LINGER_MICROS.store(micros, Ordering::Relaxed);
}

/// How long packets queued now may be held, if at all.
pub(crate) fn linger() -> Option<Duration> {
    match LINGER_MICROS.load(Ordering::Relaxed) {
        0 => None,
        micros => Some(Duration::from_micros(micros)),
    }
}

/// When a client last sent a frame: milliseconds on a process-wide clock,
/// four bytes, as every connection keeps one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heard(u32);

impl Heard {
    pub(crate) fn now() -> Self {
        Self(millis_now())
    }

    /// Whether the client spoke within the last `period`.
    pub(crate) fn is_within(self, period: Duration) -> bool {
        Duration::from_millis(millis_now().wrapping_sub(self.0).into()) < period
    }
}

/// Milliseconds since the clock's first reading, wrapping after 49 days;
/// only differences shorter than a linger are ever taken.
fn millis_now() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().duration_since(epoch).as_millis() as u32
}
