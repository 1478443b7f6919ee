//! What operators look at: `/health`, `/ready`, `/metrics` (Prometheus text)
//! and `/api/v1/stats` here; the live `/dashboard` in [`dashboard`], fed
//! once a second by [`feed`].

pub(crate) mod dashboard;
pub(crate) mod feed;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;

use crate::{cluster::Sequencer, metrics::Metrics, realtime::Sockets};

/// What the ops endpoints read.
#[derive(Clone)]
pub(crate) struct OpsState {
    pub metrics: Arc<Metrics>,
    pub sequencer: Arc<dyn Sequencer>,
    pub sockets: Arc<dyn Sockets>,
    /// Set once herald's background work runs: without it nothing reaches
    /// the sockets (with Redis) and nothing watches the load.
    pub background_running: Arc<AtomicBool>,
}

/// `/health` and `/ready`, open to every prober: outside the API key and
/// the origin check.
pub(crate) fn routes(state: OpsState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

/// `/metrics`, behind the API key when one is set: its figures (sessions,
/// rejections, the load) are for the operator's scraper, not for anyone.
pub(crate) fn metrics_routes(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/stats`, which `app` mounts under `/api/v1`, behind the API key.
pub(crate) fn api_routes(state: OpsState) -> Router {
    Router::new().route("/stats", get(stats)).with_state(state)
}

impl OpsState {
    /// Why this instance cannot publish to the whole cluster now, if it
    /// cannot: what `/ready` answers and the dashboard shows.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.background_running.load(Ordering::Acquire) {
            self.sequencer.problem().map(|p| p.to_string())
        } else {
            Some(
                "background work not running (an embedding app must run herald's Background)"
                    .into(),
            )
        }
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// herald's version, for `herald check` and upgrades in progress.
    version: &'static str,
    /// This instance's id, as the dashboard and the cluster name it.
    instance: String,
}

async fn health(State(ops): State<OpsState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        instance: ops.sockets.instance(),
    })
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    adapter: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// 200 while this instance can publish to the whole cluster (always, with the
/// in-memory adapter, once its background work runs; with Redis, while the
/// subscription is live and this instance keeps up), 503 with the reason
/// otherwise.
async fn ready(State(ops): State<OpsState>) -> (StatusCode, Json<Ready>) {
    let reason = ops.not_ready();
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Ready {
        status: if status == StatusCode::OK {
            "ready"
        } else {
            "unavailable"
        },
        adapter: ops.sequencer.adapter(),
        reason,
    };
    (status, Json(body))
}

async fn metrics(State(ops): State<OpsState>) -> impl IntoResponse {
    match ops.metrics.render() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("could not encode metrics: {e}"),
        ),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    connections: u64,
    sessions: u64,
    subscriptions: u64,
    events_published: u64,
    events_delivered: u64,
    scope: &'static str,
    /// Open connections of each endpoint on this instance.
    endpoints: Endpoints,
}

#[derive(Serialize)]
struct Endpoints {
    socketio: u64,
    ws: u64,
    workflows: u64,
}

impl Endpoints {
    fn of(m: &crate::metrics::Metrics) -> Self {
        let open = |gauge: i64| gauge.max(0) as u64;
        Self {
            socketio: open(m.connections.get()),
            ws: open(m.stream_connections("ws").get()),
            workflows: open(m.stream_connections("workflows").get()),
        }
    }
}

/// `GET /api/v1/stats`: the whole cluster's figures where Redis can give
/// them (`scope: "cluster"`, from the instances' reports), this instance's
/// otherwise (`"instance"`).
async fn stats(State(ops): State<OpsState>) -> Json<Stats> {
    let (reports, sessions) =
        tokio::join!(ops.sequencer.instances(), ops.sockets.sessions_watched());
    let stats = match (reports, sessions) {
        (Some(reports), Some(sessions)) => Stats {
            connections: reports.iter().map(|r| r.connections).sum(),
            sessions,
            subscriptions: reports.iter().map(|r| r.subscriptions).sum(),
            events_published: reports.iter().map(|r| r.published).sum(),
            events_delivered: reports.iter().map(|r| r.delivered).sum(),
            scope: "cluster",
            endpoints: Endpoints::of(&ops.metrics),
        },
        _ => {
            let m = &ops.metrics;
            Stats {
                connections: m.connections.get().max(0) as u64,
                sessions: m.sessions_watched.get().max(0) as u64,
                subscriptions: m.subscriptions.get().max(0) as u64,
                events_published: m.published_total.get(),
                events_delivered: m.events_delivered.get(),
                scope: "instance",
                endpoints: Endpoints::of(m),
            }
        }
    };
    Json(stats)
}
