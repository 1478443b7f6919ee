//! Saturation: whether herald's runtime has idle time left, and from that
//! how long a WebSocket may hold events to write them together
//! (engineioxide's write coalescing). Both are shown in `/metrics`.
//!
//! With idle time, every event is written to its socket at once. Once the
//! workers never rest, one `send` per event per socket (a fixed kernel cost
//! each) is most of the work, and writing a socket's events together lets
//! the same CPUs deliver more (bench/: publishes/s, see docs/performance.md).
//! How long to hold is adjusted to the load: the linger doubles
//! each sample the runtime stays saturated, up to `WRITE_LINGER_MS`, and
//! halves each sample it has room to spare, so events wait only as long as
//! the load makes them. Answers to a client (connect, acks) never wait:
//! engineioxide writes those at once.
//!
//! Measured as wall-clock time the workers spent running tasks rather than
//! as CPU time: on a virtual machine the hypervisor takes CPU time away
//! (steal), so a runtime with no idle moment can show well under 90% CPU,
//! and a CPU-time signal would turn coalescing off exactly when the machine
//! is most overloaded.

use std::{sync::Arc, time::Duration};

use tokio::{
    runtime::RuntimeMetrics,
    time::{Instant, MissedTickBehavior},
};

use engineioxide::coalesce::Linger;

use crate::metrics::Metrics;

/// How often busy time is sampled: short enough that a burst is noticed
/// within a few milliseconds, long enough to cost nothing.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Share of the workers' wall-clock time spent running tasks at or above
/// which the runtime counts as saturated, and the linger grows.
const SATURATED_AT: f64 = 0.9;

/// Share below which the linger shrinks. Between the two it stays, so that
/// a linger that brought the load just under saturation is kept.
const RELAXED_BELOW: f64 = 0.75;

/// The first linger once saturated; a halved linger below it is zero.
const LINGER_FLOOR: Duration = Duration::from_millis(1);

/// Samples the current runtime's busy time until dropped, and sets the
/// engine's `linger` from it, never above `max_linger` (zero: never hold).
pub(crate) async fn watch(max_linger: Duration, metrics: Arc<Metrics>, linger: Linger) {
    if max_linger.is_zero() {
        return;
    }
    let runtime = tokio::runtime::Handle::current().metrics();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lingering = Lingering::new(max_linger);
    let (mut then, mut busy_then) = (Instant::now(), busy(&runtime));
    loop {
        ticks.tick().await;
        let (now, busy_now) = (Instant::now(), busy(&runtime));
        let capacity = now.duration_since(then) * runtime.num_workers() as u32;
        let busy = busy_now.saturating_sub(busy_then);
        let saturated = busy >= capacity.mul_f64(SATURATED_AT);
        let relaxed = busy < capacity.mul_f64(RELAXED_BELOW);
        if let Some(changed) = lingering.update(saturated, relaxed) {
            linger.set(changed);
            metrics.write_linger.set(changed.as_secs_f64());
        }
        metrics.saturated.set(i64::from(saturated));
        (then, busy_then) = (now, busy_now);
    }
}

/// How long all the runtime's workers together have spent running tasks.
fn busy(runtime: &RuntimeMetrics) -> Duration {
    (0..runtime.num_workers())
        .map(|worker| runtime.worker_total_busy_duration(worker))
        .sum()
}

/// The linger as the load moves it.
struct Lingering {
    now: Duration,
    max: Duration,
}

impl Lingering {
    fn new(max: Duration) -> Self {
        Self {
            now: Duration::ZERO,
            max: max.max(LINGER_FLOOR),
        }
    }

    /// The next linger after a sample, if it changed.
    fn update(&mut self, saturated: bool, relaxed: bool) -> Option<Duration> {
        let next = if saturated {
            (self.now * 2).clamp(LINGER_FLOOR, self.max)
        } else if relaxed {
            Some(self.now / 2)
                .filter(|half| *half >= LINGER_FLOOR)
                .unwrap_or_default()
        } else {
            self.now
        };
        (next != self.now).then(|| {
            self.now = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    #[test]
    fn grows_while_saturated_and_shrinks_when_relaxed() {
        let mut linger = Lingering::new(20 * MS);
        let mut seen = Vec::new();
        for (saturated, relaxed) in [
            (true, false),
            (true, false),
            (true, false),
            (true, false),
            (true, false),
            (true, false),
            (false, false),
            (false, true),
            (false, true),
            (false, true),
            (false, true),
            (false, true),
            (false, true),
        ] {
            linger.update(saturated, relaxed);
            seen.push(linger.now);
        }
        assert_eq!(
            seen,
            [1, 2, 4, 8, 16, 20, 20, 10, 5]
                .map(|n| n * MS)
                .into_iter()
                .chain([2500 * US, 1250 * US, Duration::ZERO, Duration::ZERO])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn reports_only_changes() {
        let mut linger = Lingering::new(MS);
        assert_eq!(linger.update(false, true), None, "already zero");
        assert_eq!(linger.update(true, false), Some(MS));
        assert_eq!(linger.update(true, false), None, "at the most");
        assert_eq!(linger.update(false, false), None, "kept");
        assert_eq!(linger.update(false, true), Some(Duration::ZERO));
    }
}
