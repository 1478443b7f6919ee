//! What operators look at: `/health`, `/ready`, `/metrics` (Prometheus text)
//! and `/api/v1/stats`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;

use crate::{
    cluster::Cluster,
    metrics::{Levels, Metrics},
    realtime::Subscriptions,
};

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
    let levels = Levels {
        subscriptions: ops.subscriptions.total(),
        sessions_watched: ops.subscriptions.sessions() as u64,
        sessions_known: ops.cluster.sessions_known().map(|n| n as u64),
    };
    match ops.metrics.render(levels) {
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
