//! Once a second: this instance's [`InstanceReport`] (read from the
//! metrics, never counted twice), told to the cluster, and the cluster's
//! figures gathered back into one sample for the dashboard: kept for the
//! last minutes (the charts) and pushed to every open dashboard.
//!
//! Data flows one way: metrics and sockets -> report -> Redis (with a
//! cluster) -> sample -> dashboards. `/api/v1/stats` reads the same reports.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::watch;

use super::OpsState;
use crate::{cluster::InstanceReport, metrics::Metrics};

/// Samples kept: ten minutes at one a second.
const KEPT: usize = 600;

/// How long the sampler waits for Redis each second.
const CLUSTER_WAIT: Duration = Duration::from_millis(800);

/// The seconds over which the most active sessions are counted.
const ACTIVE_SECONDS: usize = 10;

/// Sessions listed as most watched and most active, per instance and in all.
const TOP: usize = 10;

/// The cluster (or this instance) in one second.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sample {
    /// Unix time, in milliseconds.
    pub t: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub dropped: u64,
    /// Mean publish latency over the second, in milliseconds; `None`
    /// without publishes.
    pub latency_ms: Option<f64>,
    /// Refusals in the second, by reason.
    pub refusals: BTreeMap<String, u64>,
}

/// One instance as the dashboard lists it: its report and its rates.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceRow {
    #[serde(flatten)]
    report: InstanceReport,
    published_per_sec: u64,
    delivered_per_sec: u64,
    received_per_sec: u64,
}

/// What every open dashboard is sent each second.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot<'a> {
    /// The instance serving this dashboard.
    instance: &'a str,
    /// `cluster` when the instances' reports came from Redis, `instance`
    /// without Redis, `unreachable` when Redis could not give them now.
    scope: &'static str,
    instances: &'a [InstanceRow],
    sample: &'a Sample,
    most_watched: Vec<(String, u64)>,
    most_active: Vec<(String, u64)>,
    /// This instance's latest refusals.
    refusals: Vec<crate::metrics::recent::Refusal>,
}

/// The samples and the latest snapshot, shared by the sampler and the
/// dashboards.
pub(crate) struct Feed {
    ops: OpsState,
    samples: Mutex<VecDeque<Sample>>,
    latest: watch::Sender<Arc<str>>,
}

impl Feed {
    pub(crate) fn new(ops: OpsState) -> Arc<Self> {
        Arc::new(Self {
            ops,
            samples: Mutex::new(VecDeque::with_capacity(KEPT)),
            latest: watch::Sender::new(Arc::from("{}")),
        })
    }

    /// The kept samples, oldest first, as JSON.
    pub(crate) fn history(&self) -> String {
        let samples = self.samples.lock().unwrap();
        serde_json::to_string(&*samples).unwrap_or_default()
    }

    /// The latest snapshot, and each next one.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.latest.subscribe()
    }

    /// Samples every second, for as long as it runs.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: HashMap<String, InstanceReport> = HashMap::new();
        // Each second's busiest sessions, over the cluster, for the last
        // ACTIVE_SECONDS: one second alone flickers.
        let mut active: VecDeque<Vec<(String, u64)>> = VecDeque::with_capacity(ACTIVE_SECONDS);
        loop {
            tick.tick().await;
            let own = self.report();
            // A stalled Redis must not stall the dashboard, which is when it
            // is needed most: this instance is then shown alone.
            let sequencer = &self.ops.sequencer;
            let gathered = tokio::time::timeout(CLUSTER_WAIT, async {
                sequencer.report(&own).await;
                sequencer.instances().await
            });
            let (scope, reports) = match gathered.await {
                Ok(Some(reports)) if !reports.is_empty() => ("cluster", reports),
                _ if sequencer.adapter() == "redis" => ("unreachable", vec![own.clone()]),
                _ => ("instance", vec![own.clone()]),
            };
            // Every instance counts its publishes per session while a
            // dashboard is open anywhere.
            let watched = reports.iter().any(|r| r.dashboard_open);
            self.ops.metrics.activity.set_counting(watched);
            let (rows, sample) = combine(&reports, &previous, now_ms());
            if active.len() == ACTIVE_SECONDS {
                active.pop_front();
            }
            active.push_back(merge_top(rows.iter().map(|r| &r.report.most_active)));
            previous = reports.into_iter().map(|r| (r.id.clone(), r)).collect();
            {
                let mut samples = self.samples.lock().unwrap();
                if samples.len() == KEPT {
                    samples.pop_front();
                }
                samples.push_back(sample.clone());
            }
            let snapshot = Snapshot {
                instance: &own.id,
                scope,
                most_watched: merge_top(rows.iter().map(|r| &r.report.most_watched)),
                most_active: merge_top(active.iter()),
                instances: &rows,
                sample: &sample,
                refusals: self.ops.metrics.recent_refusals.latest(),
            };
            let json = serde_json::to_string(&snapshot).unwrap_or_default();
            self.latest.send_replace(Arc::from(json));
        }
    }

    /// This instance now, from its metrics and its sockets.
    fn report(&self) -> InstanceReport {
        let ops = &self.ops;
        let m = &ops.metrics;
        let level = |gauge: i64| gauge.max(0) as u64;
        InstanceReport {
            id: ops.sockets.instance(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connections: level(m.connections.get()),
            streams: level(m.stream_connections("ws").get())
                + level(m.stream_connections("workflows").get()),
            subscriptions: level(m.subscriptions.get()),
            published: m.published_total.get(),
            delivered: m.events_delivered.get(),
            received: m.cluster_events_received.get(),
            dropped: m.dropped_deliveries.get() + m.cluster_events_dropped.get(),
            publish_seconds: m.publish_seconds.get(),
            refusals: refusal_counts(m),
            saturated: m.saturated.get() > 0,
            write_linger_ms: m.write_linger.get() * 1000.0,
            not_ready: ops.not_ready(),
            // Lists only a dashboard shows: nobody pays for them otherwise.
            most_watched: if m.activity.counting() {
                ops.sockets.most_watched(TOP)
            } else {
                Vec::new()
            },
            most_active: m.activity.take(TOP),
            // The sampler holds no receiver: each is an open dashboard.
            dashboard_open: self.latest.receiver_count() > 0,
            stream_channels: true,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instances with their rates since `previous`, and their sum. An
/// instance seen for the first time has no rate yet; a counter that went
/// back (a restarted instance under the same id cannot happen, but a
/// report from before a restart of Redis could) counts as 0.
fn combine(
    reports: &[InstanceReport],
    previous: &HashMap<String, InstanceReport>,
    t: u64,
) -> (Vec<InstanceRow>, Sample) {
    let mut sample = Sample {
        t,
        ..Sample::default()
    };
    let mut latency = (0.0, 0);
    let mut rows = Vec::with_capacity(reports.len());
    for report in reports {
        let before = previous.get(&report.id);
        let delta = |now: u64, then: fn(&InstanceReport) -> u64| {
            before.map_or(0, |b| now.saturating_sub(then(b)))
        };
        let published = delta(report.published, |b| b.published);
        let delivered = delta(report.delivered, |b| b.delivered);
        sample.connections += report.connections + report.streams;
        sample.subscriptions += report.subscriptions;
        sample.publishes += published;
        sample.deliveries += delivered;
        sample.dropped += delta(report.dropped, |b| b.dropped);
        if let Some(b) = before {
            latency.0 += (report.publish_seconds - b.publish_seconds).max(0.0);
            latency.1 += published;
            for (reason, n) in &report.refusals {
                let new = n.saturating_sub(b.refusals.get(reason).copied().unwrap_or(0));
                if new > 0 {
                    *sample.refusals.entry(reason.clone()).or_default() += new;
                }
            }
        }
        rows.push(InstanceRow {
            report: report.clone(),
            published_per_sec: published,
            delivered_per_sec: delivered,
            received_per_sec: delta(report.received, |b| b.received),
        });
    }
    sample.latency_ms = (latency.1 > 0).then(|| latency.0 * 1000.0 / latency.1 as f64);
    (rows, sample)
}

/// The instances' top lists summed per session, the top of the sum.
fn merge_top<'a>(lists: impl Iterator<Item = &'a Vec<(String, u64)>>) -> Vec<(String, u64)> {
    let mut sums: HashMap<String, u64> = HashMap::new();
    for (session, n) in lists.flatten() {
        *sums.entry(session.clone()).or_default() += n;
    }
    crate::metrics::recent::top(sums, TOP)
}

/// Every refusal counter of the metrics, by reason, read from their
/// Prometheus exposition (the families keep no list of their labels):
/// `publish 422`, `limit requests`, `token expired`, `invalid request`.
fn refusal_counts(metrics: &Metrics) -> BTreeMap<String, u64> {
    let text = metrics.render().unwrap_or_default();
    parse_refusals(&text)
}

fn parse_refusals(text: &str) -> BTreeMap<String, u64> {
    const FAMILIES: [(&str, &str); 4] = [
        ("herald_publish_rejections_total", "publish"),
        ("herald_limit_refusals_total", "limit"),
        ("herald_auth_refusals_total", "token"),
        ("herald_client_errors_total", "invalid request"),
    ];
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let Some((_, kind)) = FAMILIES.iter().find(|(family, _)| *family == name) else {
            continue;
        };
        // One label at most: `{status="422"}`.
        let label = labels.split('"').nth(1);
        let reason = match label {
            Some(label) => format!("{kind} {label}"),
            None => kind.to_string(),
        };
        let n = value.parse::<f64>().unwrap_or(0.0) as u64;
        if n > 0 {
            counts.insert(reason, n);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_by_family_and_label() {
        let text = "# HELP x\nherald_publish_rejections_total{status=\"422\"} 3\n\
            herald_limit_refusals_total{limit=\"requests\"} 2\n\
            herald_client_errors_total 1\nherald_events_delivered_total 9\n\
            herald_auth_refusals_total{reason=\"expired\"} 0\n";
        let counts = parse_refusals(text);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("invalid request".to_string(), 1),
                ("limit requests".to_string(), 2),
                ("publish 422".to_string(), 3),
            ]
        );
    }

    #[test]
    fn rates_come_from_the_previous_report_of_each_instance() {
        let report = |id: &str, published, seconds| InstanceReport {
            id: id.into(),
            published,
            received: published * 2,
            connections: 2,
            publish_seconds: seconds,
            ..InstanceReport::default()
        };
        let before: HashMap<String, InstanceReport> =
            [("a".to_string(), report("a", 10, 1.0))].into();
        let (rows, sample) = combine(&[report("a", 14, 1.02), report("b", 50, 9.0)], &before, 7);
        assert_eq!(rows[0].published_per_sec, 4);
        assert_eq!(rows[0].received_per_sec, 8);
        assert_eq!(rows[1].published_per_sec, 0, "b is new: no rate yet");
        assert_eq!(sample.publishes, 4);
        assert_eq!(sample.connections, 4);
        let latency = sample.latency_ms.unwrap();
        assert!((latency - 5.0).abs() < 1e-6, "{latency}");
    }
}
