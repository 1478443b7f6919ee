//! Saturation: whether herald's runtime has idle time left, and from that
//! how long a WebSocket may hold events to write them together
//! (engineioxide's write coalescing). Both are shown in `/metrics`.
//!
//! With idle time, every event is written to its socket at once. Once the
//! workers never rest, one `send` per event per socket (a fixed kernel cost
//! each) is most of the work, and writing a socket's events together lets
//! the same CPUs deliver more (bench/: publishes/s, see docs/performance.md).
//!
//! How long to hold is steered, not stepped: every sample moves the hold
//! by the log of the ratio of the busy share to a target just under
//! saturation, so it settles at the shortest hold that leaves the runtime a
//! little idle time and shrinks once the runtime has more. Two things make
//! it settle rather than swing. A change to the hold shows only once what
//! it held is written, about one hold later, so each step is paced by the
//! hold's length; and a hold stops growing once writes gather enough that
//! a longer one would save little, unless the runtime is out of time. A
//! controller without either swung between 13 and 100 ms at half of
//! herald's peak, and its p99 followed the swings (issue 15,
//! docs/performance.md). Answers to a client (connect, acks) never wait:
//! engineioxide writes those at once.
//!
//! Measured as wall-clock time the workers spent running tasks rather than
//! as CPU time: on a virtual machine the hypervisor takes CPU time away
//! (steal), and on loopback much of a `send`'s cost is the receiver's TCP
//! work, run in softirq and not counted as herald's CPU time, so a runtime
//! with no idle moment can show well under 90% CPU; both leave too little
//! time for one `send` per event, which holding remedies. What is taken out
//! is the time a worker waited for its core while another process ran (the
//! scheduler's run delay, from `/proc`): the runtime counts it as busy, but
//! a hold does not shorten it, and on a machine shared with other work it
//! made every hold grow to the cap (docs/performance.md, issue 15's
//! section).

use std::{sync::Arc, time::Duration};

use tokio::{
    runtime::RuntimeMetrics,
    time::{Instant, MissedTickBehavior},
};

use engineioxide::coalesce::{Linger, Written};

use crate::metrics::Metrics;

/// How often busy time is sampled: short enough that a burst is noticed
/// within a few milliseconds, long enough to cost nothing.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Share of the workers' wall-clock time spent running tasks at or above
/// which the runtime counts as saturated, and a hold begins.
const SATURATED_AT: f64 = 0.9;

/// The busy share a hold steers towards: under `SATURATED_AT`, so that a
/// settled hold leaves room for a burst, and close to it, so that the hold
/// is no longer than the load needs.
const TARGET_BUSY: f64 = 0.85;

/// The first hold once saturated. A hold steered below half of it is zero:
/// that short, it gathers next to nothing and still costs a timer.
const LINGER_FLOOR: Duration = Duration::from_micros(500);

/// Packets per WebSocket write past which a longer hold is worth its wait
/// only to a runtime out of time (`OVERRUN`): a `send` then costs a few
/// percent of the work per packet, so doubling the hold would double every
/// held event's wait to save that much. At three quarters of herald's peak,
/// where the runtime stays busy whatever the hold, the hold used to grow to
/// the cap for 35 packets a write. An overrun runtime (the closed-loop
/// peak, a burst) still needs those few percent: capped here, the peak and
/// CPU per delivery were 10-20% worse in a full bench run.
const GATHERED_ENOUGH: f64 = 24.0;

/// Packets per write past which the hold grows no more at all: the sends
/// left cost under 2% of one per packet. Not lower: at herald's peak its
/// holds gather 20-50 packets a write.
const GATHERED_PLENTY: f64 = 64.0;

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
    let mut then = Reading::take(&runtime, &linger);
    loop {
        ticks.tick().await;
        let now = Reading::take(&runtime, &linger);
        let capacity = now.at.duration_since(then.at) * runtime.num_workers() as u32;
        let share = busy_share(
            capacity,
            now.busy.saturating_sub(then.busy),
            now.waited.saturating_sub(then.waited),
        );
        let writes = now.written.writes.saturating_sub(then.written.writes);
        let gathered = (writes > 0).then(|| {
            now.written.packets.saturating_sub(then.written.packets) as f64 / writes as f64
        });
        // A sample in which herald hardly ran says nothing about its load.
        if let Some(share) = share {
            if let Some(changed) = lingering.update(share, gathered) {
                linger.set(changed);
                metrics.write_linger.set(changed.as_secs_f64());
            }
            metrics.saturated.set(i64::from(share >= SATURATED_AT));
        }
        if let Some(gathered) = gathered {
            metrics.packets_per_write.set(gathered);
        }
        then = now;
    }
}

/// What the runtime and the engine's WebSockets had done by one moment.
struct Reading {
    at: Instant,
    /// The workers' wall-clock time running tasks.
    busy: Duration,
    /// herald's threads' time runnable but not running (zero where unknown).
    waited: Duration,
    written: Written,
}

impl Reading {
    fn take(runtime: &RuntimeMetrics, linger: &Linger) -> Self {
        Self {
            at: Instant::now(),
            busy: (0..runtime.num_workers())
                .map(|worker| runtime.worker_total_busy_duration(worker))
                .sum(),
            waited: waited().unwrap_or_default(),
            written: linger.written(),
        }
    }
}

/// The share of the workers' time herald could run in which they ran
/// tasks: busy time, less the time a worker was runnable but another
/// process had its core (the scheduler's run delay, which counts as busy
/// for the runtime, as the worker was in the middle of a task). That time
/// is not herald's work, and a hold does not shorten it: a worker
/// preempted by a build on its core comes back to a backlog, and writes it
/// in larger batches by itself. Time in the kernel for herald (a `send`,
/// and on loopback the receiver's TCP work in softirq) stays busy: holding
/// is what saves it. None when herald could run for under a quarter of the
/// sample.
fn busy_share(capacity: Duration, busy: Duration, waited: Duration) -> Option<f64> {
    let waited = waited.min(busy);
    let could_run = capacity.saturating_sub(waited);
    (could_run >= capacity / 4 && !could_run.is_zero())
        .then(|| (busy - waited).as_secs_f64() / could_run.as_secs_f64())
}

/// The time herald's threads have spent runnable, waiting for a CPU
/// (`/proc/self/task/*/schedstat`, second field, in nanoseconds): all of
/// them, as tokio does not name its workers' thread ids; the others sleep
/// nearly all the time, and a sleeping thread does not wait. None where
/// there is no such file.
fn waited() -> Option<Duration> {
    let mut nanos = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(nanos))
}

/// The linger as the load moves it.
struct Lingering {
    now: Duration,
    max: Duration,
    /// The busy share of the last samples, each weighing `RECENT_WEIGHT`.
    recent: f64,
}

/// The weight of a new sample in `Lingering::recent`: about the last four
/// samples (40 ms) count.
const RECENT_WEIGHT: f64 = 0.25;

/// A busy share at or above which the runtime is out of time outright:
/// events queue up behind it, and the hold follows this sample rather than
/// the recent ones.
const OVERRUN: f64 = 0.97;

/// Below this hold an overrun runtime grows it by `MAX_STEP` a sample, not
/// paced: from the floor to here in 100 ms. At a load that needs a hold of
/// a few milliseconds, a slow start left a backlog that the load generator
/// then sent at full speed, and the hold grew with it (to the cap, for a
/// second, at half of herald's peak).
const RAMP_UNTIL: Duration = Duration::from_millis(10);

/// How strongly the hold answers a busy share above the target: its step,
/// in log space, per unit of log(busy / target), before pacing.
const GROW_GAIN: f64 = 1.0;

/// The same below the target, stronger: holding too long costs every
/// event its wait, holding too little only the idle time the runtime has.
const SHRINK_GAIN: f64 = 3.0;

/// The largest step a sample may take, in log space: 1.35x up, 0.74x down.
const MAX_STEP: f64 = 0.3;

impl Lingering {
    fn new(max: Duration) -> Self {
        Self {
            now: Duration::ZERO,
            max: max.max(LINGER_FLOOR),
            recent: 0.0,
        }
    }

    /// The next linger after a sample in which the workers were busy for
    /// `busy` of their time and WebSockets wrote `gathered` packets per
    /// write (None: nothing written), if it changed.
    ///
    /// The step, in log space, is the log of the busy share over the
    /// target (the share of the last samples, so that a brief lull or burst
    /// does not move it far, or this one alone once the runtime is out of
    /// time), times the gain, times sample / (sample + hold): what a hold
    /// changes shows about one hold later.
    fn update(&mut self, busy: f64, gathered: Option<f64>) -> Option<Duration> {
        let busy = busy.clamp(0.0, 1.0);
        self.recent += RECENT_WEIGHT * (busy - self.recent);
        let next = if self.now.is_zero() {
            if busy >= SATURATED_AT {
                LINGER_FLOOR.min(self.max)
            } else {
                Duration::ZERO
            }
        } else {
            let mut step = if busy >= OVERRUN && self.now < RAMP_UNTIL {
                MAX_STEP
            } else {
                let share = if busy >= OVERRUN { busy } else { self.recent };
                let off = (share.max(0.01) / TARGET_BUSY).ln();
                let gain = if off > 0.0 { GROW_GAIN } else { SHRINK_GAIN };
                let pace = SAMPLE_EVERY.as_secs_f64() / (SAMPLE_EVERY + self.now).as_secs_f64();
                (gain * off * pace).clamp(-MAX_STEP, MAX_STEP)
            };
            let enough = if busy >= OVERRUN {
                GATHERED_PLENTY
            } else {
                GATHERED_ENOUGH
            };
            if gathered.is_some_and(|gathered| gathered >= enough) {
                step = step.min(0.0);
            }
            let steered = self.now.mul_f64(step.exp()).min(self.max);
            if steered < LINGER_FLOOR / 2 {
                Duration::ZERO
            } else {
                steered
            }
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

    /// The hold after each of `samples` (busy shares), from none.
    fn steer(max: Duration, samples: &[f64]) -> Vec<Duration> {
        let mut linger = Lingering::new(max);
        samples
            .iter()
            .map(|&busy| {
                linger.update(busy, Some(1.0));
                linger.now
            })
            .collect()
    }

    #[test]
    fn holds_nothing_while_the_runtime_has_idle_time() {
        let holds = steer(100 * MS, &[0.5, 0.85, 0.89, 0.3]);
        assert!(holds.iter().all(Duration::is_zero), "{holds:?}");
    }

    #[test]
    fn ramps_at_once_then_grows_paced_up_to_the_most() {
        let holds = steer(100 * MS, &[1.0; 200]);
        assert_eq!(
            holds[0], LINGER_FLOOR,
            "the first saturated sample starts at the floor"
        );
        assert!(holds.windows(2).all(|w| w[1] >= w[0]), "{holds:?}");
        let ramped = holds.iter().position(|h| *h >= RAMP_UNTIL);
        assert_eq!(ramped, Some(10), "floor to 10 ms in 100 ms: {holds:?}");
        // Past the ramp a saturated sample grows it by (1 / 0.85)^(10 / (10 + hold ms)).
        let step = holds[11].as_secs_f64() / holds[10].as_secs_f64();
        let paced = (1.0 / TARGET_BUSY).powf(10.0 / (10.0 + holds[10].as_secs_f64() * 1e3));
        assert!((step - paced).abs() < 1e-6, "{step} against {paced}");
        let at_most = holds.iter().position(|h| *h == 100 * MS);
        assert!(
            at_most.is_some_and(|at| (60..150).contains(&at)),
            "paced to 100 ms in 0.6-1.5 s: {at_most:?}"
        );
    }

    /// Samples of a runtime whose busy share follows the hold one hold and
    /// `later` samples late (what is held now is written then, and what
    /// that frees shows after its queues), and falls by `slope` of its time
    /// per ms held from 0.85 at 12.5 ms.
    fn late_runtime(slope: f64, later: usize, samples: usize) -> Vec<Duration> {
        let busy =
            |hold: Duration| (0.85 + slope * (12.5 - hold.as_secs_f64() * 1e3)).clamp(0.5, 1.0);
        let mut linger = Lingering::new(100 * MS);
        let mut seen: Vec<Duration> = Vec::new();
        for k in 0..samples {
            let late = (linger.now.as_millis() as usize).div_ceil(10).max(1) + later;
            let shown = k.checked_sub(late).map_or(Duration::ZERO, |at| seen[at]);
            linger.update(busy(shown), Some(2.0));
            seen.push(linger.now);
        }
        seen
    }

    #[test]
    fn settles_where_the_load_is_just_under_saturation() {
        let seen = late_runtime(0.02, 0, 300);
        let settled = &seen[150..];
        assert!(
            settled.iter().all(|h| (11 * MS..=14 * MS).contains(h)),
            "settled between 11 and 14 ms: {:?}",
            &settled[..10]
        );
    }

    #[test]
    fn does_not_swing_while_its_last_steps_take_effect() {
        // Twice as steep and 20 ms later: the controller before issue 15's
        // swung between 5 ms and the cap here.
        let seen = late_runtime(0.04, 2, 300);
        let most = seen.iter().max().unwrap();
        assert!(*most <= 20 * MS, "no higher than 20 ms: {most:?}");
        assert!(
            seen[150..].iter().all(|h| (5 * MS..=20 * MS).contains(h)),
            "{:?}",
            &seen[150..170]
        );
    }

    #[test]
    fn shrinks_to_nothing_once_the_load_is_gone_faster_than_it_grew() {
        let mut linger = Lingering::new(100 * MS);
        let mut grew = 0;
        while linger.now < 100 * MS {
            linger.update(1.0, None);
            grew += 1;
        }
        let mut shrank = 0;
        while !linger.now.is_zero() {
            linger.update(0.3, None);
            shrank += 1;
        }
        assert!(
            shrank < grew / 2,
            "shrank in {shrank} samples, grew in {grew}"
        );
    }

    #[test]
    fn a_brief_lull_keeps_the_hold_a_long_one_shrinks_it() {
        let mut linger = Lingering::new(100 * MS);
        for _ in 0..150 {
            linger.update(1.0, None);
        }
        assert_eq!(linger.now, 100 * MS);
        linger.update(0.5, None);
        assert_eq!(linger.now, 100 * MS, "one idle sample: kept");
        for _ in 0..20 {
            linger.update(0.8, None);
        }
        assert!(
            linger.now < 100 * MS && linger.now > 50 * MS,
            "just under the target it shrinks slowly: {:?}",
            linger.now
        );
    }

    #[test]
    fn stops_growing_once_writes_gather_enough() {
        let mut linger = Lingering::new(100 * MS);
        for _ in 0..15 {
            linger.update(1.0, Some(3.0));
        }
        let held = linger.now;
        assert!(held > RAMP_UNTIL);
        assert_eq!(linger.update(0.95, Some(GATHERED_ENOUGH)), None, "kept");
        assert!(
            linger
                .update(1.0, Some(GATHERED_ENOUGH))
                .is_some_and(|h| h > held),
            "out of time, it grows on"
        );
        let held = linger.now;
        assert_eq!(linger.update(1.0, Some(GATHERED_PLENTY)), None, "kept");
        assert!(
            linger.update(1.0, None).is_some_and(|h| h > held),
            "grows again once it gathers less"
        );
        let held = linger.now;
        assert!(
            linger.update(0.3, Some(40.0)).is_some_and(|h| h < held),
            "idle time still shrinks it"
        );
    }

    #[test]
    fn time_another_process_took_is_not_busy() {
        let wall = 10 * MS;
        assert_eq!(busy_share(wall, wall, Duration::ZERO), Some(1.0));
        // Busy throughout, but preempted for 4 of the 10 ms: 6 of 6 ms.
        assert_eq!(busy_share(wall, wall, 4 * MS), Some(1.0));
        // Busy for 8 ms of which 4 preempted: 4 ms of work in 6 ms it could run.
        let share = busy_share(wall, 8 * MS, 4 * MS).unwrap();
        assert!((share - 4.0 / 6.0).abs() < 1e-9, "{share}");
        // Run delay outside busy time (waking from idle) takes nothing from busy.
        let share = busy_share(wall, 2 * MS, 3 * MS).unwrap();
        assert!(share.abs() < 1e-9, "{share}");
        assert_eq!(busy_share(wall, wall, 8 * MS), None, "hardly ran");
        assert_eq!(
            busy_share(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            None
        );
    }

    #[test]
    fn run_delay_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(waited().is_some());
        }
    }

    #[test]
    fn reports_only_changes() {
        let mut linger = Lingering::new(MS);
        assert_eq!(linger.update(0.5, None), None, "already zero");
        assert_eq!(linger.update(0.95, None), Some(LINGER_FLOOR));
        assert_eq!(
            linger.update(1.0, None),
            Some(LINGER_FLOOR.mul_f64(MAX_STEP.exp()))
        );
        assert!(linger.update(1.0, None).is_some_and(|h| h < MS));
        assert_eq!(linger.update(1.0, None), Some(MS));
        assert_eq!(linger.update(1.0, None), None, "at the most");
        let shrinking: Vec<_> = (0..10).map(|_| linger.update(0.1, None)).collect();
        assert_eq!(
            shrinking.iter().flatten().last(),
            Some(&Duration::ZERO),
            "{shrinking:?}"
        );
        assert_eq!(shrinking.last(), Some(&None), "zero, kept");
    }
}
