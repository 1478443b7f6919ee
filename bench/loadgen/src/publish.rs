//! `publish`: events over the HTTP API, paced, with at most one request in
//! flight per session so that each session's events are sequenced in the
//! order they were sent.
//!
//! Each event carries the time it was due, which the subscribers measure
//! latency from. Paced, an event is due at its slot on the schedule; a
//! send held back by the server (every worker waiting for an answer, or the
//! session's previous publish not answered yet) still counts from then, as
//! a backend's event produced on time and published late is late to its
//! watchers. Measuring from the send instead (as before 2026-11-29) left
//! out exactly the waits of a server falling behind ("coordinated
//! omission"). Unpaced, an event is due when it is sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::PublishArgs;
use crate::common::{self, Target};
use crate::http::Conn;

struct Plan {
    targets: Vec<Target>,
    /// Request path per session.
    paths: Vec<String>,
    count: Option<u64>,
    deadline: Option<Instant>,
    /// Nanoseconds between two sends (0 = unpaced).
    interval_ns: f64,
    start: Instant,
    api_key: Option<String>,
    request_timeout: Duration,
    /// Next event index: decides the session (index mod S) and the send slot.
    next: AtomicU64,
    /// At most one request in flight per session.
    session_locks: Vec<tokio::sync::Mutex<()>>,
    stop: AtomicBool,
    /// Requests answered, for the CPU sampler.
    done: AtomicU64,
}

#[derive(Default)]
struct WorkerResult {
    sent: u64,
    accepted: u64,
    errors: u64,
    statuses: BTreeMap<String, u64>,
    first_error: Option<String>,
    hist: Option<Histogram<u64>>,
    /// How long after its due time each event was sent, µs (paced only).
    lag: Option<Histogram<u64>>,
    last_done: Option<Instant>,
}

fn body(due_ns: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"event\":\"model_result\",\"data\":{{\"modelName\":\"bench\",\"duration\":0,\"result\":\"{due_ns}\",\"status\":\"completed\"}}}}"
    ))
}

async fn worker(w: usize, plan: Arc<Plan>) -> WorkerResult {
    let target = &plan.targets[w % plan.targets.len()];
    let mut r = WorkerResult {
        hist: Some(common::new_histogram()),
        lag: Some(common::new_histogram()),
        ..Default::default()
    };
    let hist = r.hist.as_mut().expect("set above");
    let lag = r.lag.as_mut().expect("set above");
    let mut conn: Option<Conn> = None;
    let sessions = plan.paths.len() as u64;
    loop {
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
        let k = plan.next.fetch_add(1, Ordering::Relaxed);
        if plan.count.is_some_and(|c| k >= c) {
            break;
        }
        let due = if plan.interval_ns > 0.0 {
            let slot = plan.start + Duration::from_nanos((k as f64 * plan.interval_ns) as u64);
            if plan.deadline.is_some_and(|d| slot >= d) {
                break;
            }
            let taken = Instant::now();
            tokio::time::sleep_until(slot).await;
            // Taken after its slot, every worker was waiting on the server:
            // due at the slot. Taken before, due when the timer woke this
            // worker, whose lateness (up to a timer tick) is ours.
            Some(if taken > slot { slot } else { Instant::now() })
        } else {
            None
        };
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let s = (k % sessions) as usize;
        let _guard = plan.session_locks[s].lock().await;
        if conn.as_ref().is_none_or(|c| !c.is_usable()) {
            match Conn::open(target).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    r.sent += 1;
                    r.errors += 1;
                    *r.statuses.entry("connect_error".into()).or_default() += 1;
                    r.first_error.get_or_insert(e);
                    // Do not spin on a refused port.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("opened above");
        let t0 = Instant::now();
        let late = due.map_or(Duration::ZERO, |due| t0 - due);
        if due.is_some() {
            lag.saturating_record(late.as_micros() as u64);
        }
        let due_ns = common::now_unix_ns().saturating_sub(late.as_nanos() as u64);
        r.sent += 1;
        let res = tokio::time::timeout(
            plan.request_timeout,
            c.request(
                target,
                Method::POST,
                &plan.paths[s],
                Some(body(due_ns)),
                plan.api_key.as_deref(),
            ),
        )
        .await;
        let now = Instant::now();
        r.last_done = Some(now);
        plan.done.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(Ok((StatusCode::ACCEPTED, _))) => {
                r.accepted += 1;
                hist.saturating_record((now - t0).as_micros() as u64);
            }
            Ok(Ok((status, body))) => {
                r.errors += 1;
                *r.statuses.entry(status.as_u16().to_string()).or_default() += 1;
                r.first_error.get_or_insert_with(|| {
                    format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )
                });
            }
            Ok(Err(e)) => {
                r.errors += 1;
                *r.statuses.entry("request_error".into()).or_default() += 1;
                r.first_error.get_or_insert(e);
                conn = None;
            }
            Err(_) => {
                r.errors += 1;
                *r.statuses.entry("timeout".into()).or_default() += 1;
                r.first_error.get_or_insert("request timed out".into());
                conn = None;
            }
        }
    }
    r
}

pub async fn run(args: PublishArgs, threads: usize) -> Result<(), String> {
    let targets = common::parse_targets(&args.url)?;
    common::check_session_prefix(&args.session_prefix)?;
    if args.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    if args.count.is_none() && args.duration.is_none() {
        return Err("give --count or --duration".into());
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        paths: (0..args.sessions)
            .map(|s| {
                format!(
                    "{}/api/v1/sessions/{}-{s}/events",
                    targets[0].prefix, args.session_prefix
                )
            })
            .collect(),
        targets,
        count: args.count,
        deadline: args
            .duration
            .filter(|&d| d > 0.0)
            .map(|d| start + Duration::from_secs_f64(d)),
        interval_ns: if args.rate > 0.0 {
            1e9 / args.rate
        } else {
            0.0
        },
        start,
        api_key: args.api_key.clone(),
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        next: AtomicU64::new(0),
        session_locks: (0..args.sessions)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
    });
    let workers = args.concurrency.max(1).min(args.sessions);
    let sampler = Arc::new(common::CpuSampler::new());
    sampler.record(0);
    let sampler_task = {
        let plan = plan.clone();
        common::spawn_sampler(sampler.clone(), Duration::from_millis(200), move || {
            plan.done.load(Ordering::Relaxed)
        })
    };
    let handles: Vec<_> = (0..workers)
        .map(|w| tokio::spawn(worker(w, plan.clone())))
        .collect();
    let all = futures_util::future::join_all(handles);
    tokio::pin!(all);
    let timeout_deadline = args
        .timeout
        .filter(|&t| t > 0.0)
        .map(|t| start + Duration::from_secs_f64(t));
    let stop = common::stop_signal(!args.ignore_stdin, timeout_deadline);
    let mut stop_reason = "finished";
    let results = tokio::select! {
        r = &mut all => r,
        reason = stop => {
            stop_reason = reason;
            plan.stop.store(true, Ordering::Relaxed);
            // Let requests in flight finish (bounded by their own timeout).
            all.await
        }
    };
    sampler_task.abort();
    sampler.record(plan.done.load(Ordering::Relaxed));

    let mut total = WorkerResult {
        hist: Some(common::new_histogram()),
        lag: Some(common::new_histogram()),
        ..Default::default()
    };
    for r in results.into_iter().flatten() {
        total.sent += r.sent;
        total.accepted += r.accepted;
        total.errors += r.errors;
        for (k, v) in r.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        if let (Some(t), Some(h)) = (total.hist.as_mut(), r.hist.as_ref()) {
            let _ = t.add(h);
        }
        if let (Some(t), Some(h)) = (total.lag.as_mut(), r.lag.as_ref()) {
            let _ = t.add(h);
        }
        total.last_done = total.last_done.max(r.last_done);
    }
    let secs = total.last_done.map_or(0.0, |t| (t - start).as_secs_f64());
    let cores = threads.min(common::usable_cpus()).max(1) as f64;
    let busy = sampler.busy_cores();
    if let Some(e) = &total.first_error {
        eprintln!("herald-loadgen: first publish error: {e}");
    }
    common::emit(&json!({
        "phase": "done",
        "pid": std::process::id(),
        "stop_reason": stop_reason,
        "sessions": args.sessions,
        "workers": workers,
        "rate": args.rate,
        "sent": total.sent,
        "accepted": total.accepted,
        "errors": total.errors,
        "error_kinds": total.statuses,
        "secs": common::round3(secs),
        "publishes_per_sec": if secs > 0.0 { common::round3(total.accepted as f64 / secs) } else { 0.0 },
        "latency_us": common::summary(total.hist.as_ref().expect("set above")),
        "send_lag_us": common::summary(total.lag.as_ref().expect("set above")),
        "cpu_secs": common::round3(common::self_cpu_secs()),
        "cpu_util": busy.map(common::round3),
        "threads": threads,
        "saturated": busy.is_some_and(|b| b >= 0.9 * cores),
    }));
    Ok(())
}
