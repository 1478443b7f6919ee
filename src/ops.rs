//! What operators look at: `/health`, `/ready`, `/metrics` (Prometheus text)
//! and `/api/v1/stats`, and the counters behind them.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;

use crate::{cluster::Cluster, realtime::Subscriptions};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// Herald's counters. Cheap to update from any task: each is an atomic.
pub struct Metrics {
    pub connections: Gauge,
    pub events_published: Family<EventLabel, Counter>,
    pub events_delivered: Counter,
    pub dropped_deliveries: Counter,
    pub publish_rejections: Family<StatusLabel, Counter>,
    pub client_errors: Counter,
    subscriptions: Gauge,
    sessions_watched: Gauge,
    sessions_known: Gauge,
    pub published_total: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            connections: Gauge::default(),
            events_published: Family::default(),
            events_delivered: Counter::default(),
            dropped_deliveries: Counter::default(),
            publish_rejections: Family::default(),
            client_errors: Counter::default(),
            subscriptions: Gauge::default(),
            sessions_watched: Gauge::default(),
            sessions_known: Gauge::default(),
            published_total: Counter::default(),
            registry: Registry::with_prefix("herald"),
        };
        m.register();
        m
    }
}

impl Metrics {
    /// Counts one event published through this instance.
    pub fn published(&self, event: &'static str) {
        self.events_published
            .get_or_create(&EventLabel { event })
            .inc();
        self.published_total.inc();
    }

    /// Metric handles share their value with their clones, so the registry
    /// holds clones of the fields above.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Open Socket.IO connections",
            self.connections.clone(),
        );
        r.register(
            "subscriptions",
            "Socket-session subscriptions",
            self.subscriptions.clone(),
        );
        r.register(
            "sessions_watched",
            "Sessions with at least one subscriber",
            self.sessions_watched.clone(),
        );
        r.register(
            "sessions_known",
            "Sessions whose seq and state this instance keeps",
            self.sessions_known.clone(),
        );
        r.register(
            "events_published",
            "Events published, by event name",
            self.events_published.clone(),
        );
        r.register(
            "events_delivered",
            "Event deliveries handed to sockets",
            self.events_delivered.clone(),
        );
        r.register(
            "dropped_deliveries",
            "Deliveries dropped because a socket's buffer was full",
            self.dropped_deliveries.clone(),
        );
        r.register(
            "publish_rejections",
            "Publish requests refused, by HTTP status",
            self.publish_rejections.clone(),
        );
        r.register(
            "client_errors",
            "Invalid subscribe/unsubscribe requests from clients",
            self.client_errors.clone(),
        );
    }
}

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub subscriptions: Arc<Subscriptions>,
    pub cluster: Arc<Cluster>,
}

/// `/health`, `/ready` and `/metrics`, outside the API key.
pub fn routes(state: OpsState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    adapter: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// 200 while this instance can publish to the whole cluster (always, with the
/// in-memory adapter; with Redis, while the subscription is live), 503 with
/// the reason otherwise.
async fn ready(State(ops): State<OpsState>) -> (StatusCode, Json<Ready>) {
    let readiness = ops.cluster.readiness();
    let status = if readiness.problem.is_none() {
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
        adapter: readiness.adapter,
        reason: readiness.problem,
    };
    (status, Json(body))
}

async fn metrics(State(ops): State<OpsState>) -> impl IntoResponse {
    let m = &ops.metrics;
    m.subscriptions.set(ops.subscriptions.total() as i64);
    m.sessions_watched.set(ops.subscriptions.sessions() as i64);
    if let Some(known) = ops.cluster.sessions_known() {
        m.sessions_known.set(known as i64);
    }
    let mut body = String::new();
    match encode(&mut body, &m.registry) {
        Ok(()) => (
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
pub struct Stats {
    connections: u64,
    sessions: u64,
    subscriptions: u64,
    events_published: u64,
    events_delivered: u64,
    scope: &'static str,
}

/// `GET /api/v1/stats`: the whole cluster's figures where Redis can give
/// them (`scope: "cluster"`), this instance's otherwise (`"instance"`).
pub async fn stats(State(ops): State<OpsState>) -> Json<Stats> {
    let stats = match ops.cluster.cluster_totals().await {
        Some(t) => Stats {
            connections: t.connections,
            sessions: t.sessions,
            subscriptions: t.subscriptions,
            events_published: t.events_published,
            events_delivered: t.events_delivered,
            scope: "cluster",
        },
        None => Stats {
            connections: ops.metrics.connections.get().max(0) as u64,
            sessions: ops.subscriptions.sessions() as u64,
            subscriptions: ops.subscriptions.total(),
            events_published: ops.metrics.published_total.get(),
            events_delivered: ops.metrics.events_delivered.get(),
            scope: "instance",
        },
    };
    Json(stats)
}
