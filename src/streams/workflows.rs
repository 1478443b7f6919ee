//! `/ws/workflows` (every run's `WorkflowEvent`s) and
//! `/ws/workflows/{runId}` (one run's): each event one JSON text frame,
//! byte for byte what MeatyMusic's FastAPI backend sends, in publish order
//! per run. Clients send nothing but WebSocket pongs; a text frame from
//! them is ignored, as the seed's backend ignores it.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::info;

use super::{Handler, Outbox, Settings, upgrade};
use crate::cluster::{FanOut, Sequenced};
use crate::{
    auth::{Refusal, Unauthorized, Verifier, request_token},
    http::ApiError,
    protocol::{Family, Invalid, SessionId, Topic, workflow_frame},
};

/// Every workflow-stream client of this instance.
pub(crate) struct WorkflowHub {
    settings: Arc<Settings>,
    /// Clients of `/ws/workflows`, keyed by their outbox's address.
    every_run: DashMap<usize, Arc<Outbox>>,
    /// Clients of `/ws/workflows/{runId}`.
    by_run: DashMap<SessionId, Vec<Arc<Outbox>>>,
    /// The key upgrade tokens are checked with, when tokens are required.
    verifier: Option<Arc<Verifier>>,
}

impl WorkflowHub {
    pub(crate) fn new(settings: Arc<Settings>, verifier: Option<Arc<Verifier>>) -> Self {
        Self {
            settings,
            verifier,
            every_run: DashMap::new(),
            by_run: DashMap::new(),
        }
    }
}

impl FanOut for WorkflowHub {
    fn watches(&self, topic: &Topic) -> bool {
        topic.family == Family::Workflow
            && (!self.every_run.is_empty() || self.by_run.contains_key(&topic.id))
    }

    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()> {
        async move {
            if event.topic.family != Family::Workflow {
                return;
            }
            // Cut once per publish; every client's queue shares the bytes.
            let frame = Utf8Bytes::from(workflow_frame(event.payload.get()));
            let mut delivered = 0u64;
            for client in self.every_run.iter() {
                delivered += u64::from(client.offer(&frame));
            }
            if let Some(clients) = self.by_run.get(&event.topic.id) {
                for client in clients.iter() {
                    delivered += u64::from(client.offer(&frame));
                }
            }
            self.settings.metrics.events_delivered.inc_by(delivered);
        }
        .boxed()
    }
}

pub(crate) fn routes(hub: Arc<WorkflowHub>) -> Router {
    Router::new()
        .route("/ws/workflows", get(every_run))
        .route("/ws/workflows/{run_id}", get(one_run))
        .with_state(hub)
}

/// Refuses the upgrade, before it happens, unless the request's token
/// grants `run` (a run id, or `*` for every run: only `runs: ["*"]` does);
/// else until when the connection may stay open.
fn admit(hub: &WorkflowHub, req: &Request, run: &str) -> Result<u64, ApiError> {
    let Some(verifier) = hub.verifier.as_ref() else {
        return Ok(u64::MAX);
    };
    let refusal = match request_token(req.uri(), req.headers()).map(|t| verifier.verify(t)) {
        Some(Ok(grant)) if grant.covers_run(run) => return Ok(grant.exp()),
        Some(Ok(grant)) => {
            hub.settings.metrics.auth_refused("forbidden");
            info!(
                run,
                sub = grant.sub(),
                "workflow stream refused: the token does not grant the run"
            );
            let message = format!("forbidden: the token's runs claim does not grant run {run}");
            return Err(ApiError::new(StatusCode::FORBIDDEN, message));
        }
        Some(Err(refusal)) => refusal,
        None => Refusal::Missing,
    };
    hub.settings.metrics.auth_refused(refusal.label());
    info!(run, %refusal, "workflow stream refused");
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        Unauthorized(refusal).to_string(),
    ))
}

async fn every_run(State(hub): State<Arc<WorkflowHub>>, req: Request) -> Response {
    let until = match admit(&hub, &req, "*") {
        Ok(until) => until,
        Err(refused) => return refused.into_response(),
    };
    let settings = hub.settings.clone();
    upgrade(req, &settings, move |outbox| {
        hub.every_run
            .insert(Arc::as_ptr(&outbox) as usize, outbox.clone());
        Client::open(hub, outbox, None, until)
    })
}

async fn one_run(
    State(hub): State<Arc<WorkflowHub>>,
    Path(run): Path<String>,
    req: Request,
) -> Response {
    let run = match SessionId::parse(&run) {
        Ok(run) => run,
        Err(e) => return ApiError::invalid(Invalid::new("runId", e.to_string())).into_response(),
    };
    let until = match admit(&hub, &req, run.as_str()) {
        Ok(until) => until,
        Err(refused) => return refused.into_response(),
    };
    let settings = hub.settings.clone();
    upgrade(req, &settings, move |outbox| {
        hub.by_run
            .entry(run.clone())
            .or_default()
            .push(outbox.clone());
        Client::open(hub, outbox, Some(run), until)
    })
}

/// One workflow-stream connection, forgotten when it ends.
struct Client {
    hub: Arc<WorkflowHub>,
    outbox: Arc<Outbox>,
    run: Option<SessionId>,
    /// When its token expires (Unix seconds).
    until: u64,
}

impl Client {
    fn open(
        hub: Arc<WorkflowHub>,
        outbox: Arc<Outbox>,
        run: Option<SessionId>,
        until: u64,
    ) -> Self {
        hub.settings.metrics.stream_connections("workflows").inc();
        Self {
            hub,
            outbox,
            run,
            until,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        match &self.run {
            None => {
                self.hub
                    .every_run
                    .remove(&(Arc::as_ptr(&self.outbox) as usize));
            }
            Some(run) => {
                self.hub.by_run.remove_if_mut(run, |_, clients| {
                    clients.retain(|c| !Arc::ptr_eq(c, &self.outbox));
                    clients.is_empty()
                });
            }
        }
        self.hub
            .settings
            .metrics
            .stream_connections("workflows")
            .dec();
    }
}

impl Handler for Client {
    async fn on_text(&mut self, _text: &str) -> Vec<String> {
        Vec::new()
    }

    fn until(&self) -> u64 {
        self.until
    }

    fn on_binary(&mut self) -> Option<String> {
        None
    }
}
