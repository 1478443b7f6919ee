//! CPU saturation: how busy herald's process is, sampled from its CPU time,
//! handed to engineioxide's write coalescing and shown in `/metrics`.
//!
//! Below saturation every event is written to its socket at once. Once
//! herald's CPUs are busy, one `send` per event per socket (a fixed kernel
//! cost each) is most of the work, and writing a socket's events together,
//! at most `WRITE_LINGER_MS` late, lets the same CPUs deliver about half
//! again as many (bench/: publishes/s, see README's Performance section).
//! Measured from the process's own CPU time, not the runtime's queues, so
//! the signal means the same thing on one worker or many.

use std::{sync::Arc, time::Duration};

use nix::time::{ClockId, clock_gettime};
use tokio::time::{Instant, MissedTickBehavior};

use crate::metrics::Metrics;

/// How often the CPU time is sampled: short enough that a burst is noticed
/// within a few milliseconds, long enough to cost nothing.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The share of the CPUs herald may use above which it counts as saturated.
const SATURATED_AT: f64 = 0.9;

/// Samples CPU time until dropped; sets engineioxide's linger first.
pub async fn watch(linger: Duration, metrics: Arc<Metrics>) {
    engineioxide::coalesce::set_linger(linger);
    if linger.is_zero() {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // No CPU clock: never saturated, so nothing is ever held.
    let Some(mut cpu_then) = cpu_time() else {
        return;
    };
    let mut then = Instant::now();
    loop {
        ticks.tick().await;
        let (now, Some(cpu_now)) = (Instant::now(), cpu_time()) else {
            return;
        };
        let wall = now.duration_since(then).as_secs_f64();
        let cpu = cpu_now.saturating_sub(cpu_then).as_secs_f64();
        let saturated = wall > 0.0 && cpu >= SATURATED_AT * wall * cpus;
        engineioxide::coalesce::set_saturated(saturated);
        metrics.saturated.set(i64::from(saturated));
        (then, cpu_then) = (now, cpu_now);
    }
}

/// The CPU time this process has used, all threads together.
fn cpu_time() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}
