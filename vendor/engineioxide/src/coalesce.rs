//! Write coalescing under load (herald patch 11).
//!
//! A WebSocket writes each packet as soon as it is queued: the lowest latency,
//! and one `send` per packet. Each `send` has a fixed kernel cost (on
//! loopback it also pays for the reader's wake-up) that, when a process
//! delivers many small packets to many sockets, is most of its CPU. While the
//! process has CPU to spare that cost buys latency; once it is saturated it
//! only makes every queue longer. So, while the application says the process
//! is saturated, a WebSocket with packets to write holds them for up to the
//! linger period and writes all that arrived meanwhile at once. Below
//! saturation nothing waits.
//!
//! Saturation is a property of the process, not of one engine, and the
//! application is the one that can measure it (its CPU time, its runtime):
//! hence two process-wide settings rather than a field of the engine's
//! config.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static LINGER_MICROS: AtomicU64 = AtomicU64::new(0);
static SATURATED: AtomicBool = AtomicBool::new(false);

/// How long a WebSocket may hold its packets while the process is saturated;
/// zero, the default, turns coalescing off.
pub fn set_linger(linger: Duration) {
    let micros = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
    LINGER_MICROS.store(micros, Ordering::Relaxed);
}

/// Whether the process is saturated now, as the application measures it.
pub fn set_saturated(saturated: bool) {
    SATURATED.store(saturated, Ordering::Relaxed);
}

/// How long packets queued now may be held: `None` unless the process is
/// saturated and a linger is set.
pub(crate) fn linger() -> Option<Duration> {
    if !SATURATED.load(Ordering::Relaxed) {
        return None;
    }
    match LINGER_MICROS.load(Ordering::Relaxed) {
        0 => None,
        micros => Some(Duration::from_micros(micros)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_while_saturated_and_set() {
        // One test touches the globals, so test order cannot interfere.
        assert_eq!(linger(), None);
        set_saturated(true);
        assert_eq!(linger(), None, "no linger set");
        set_linger(Duration::from_millis(20));
        assert_eq!(linger(), Some(Duration::from_millis(20)));
        set_saturated(false);
        assert_eq!(linger(), None, "not saturated");
        set_linger(Duration::ZERO);
        set_saturated(true);
        assert_eq!(linger(), None, "zero turns it off");
        set_saturated(false);
    }
}
