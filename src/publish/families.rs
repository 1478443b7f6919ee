//! Publishing the ResearchFlow and MeatyMusic families: their HTTP routes
//! (`POST /api/v1/runs/{runId}/events`, `POST /api/v1/workflows/{runId}/events`)
//! and their `Emitter` helpers, named after seed 001's broadcaster. Both go
//! through [`Emitter::publish`], the path session events take: the same
//! validation style, sequencing (one seq per run), cluster path and history.

use axum::{
    Router,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
    http::HeaderMap,
    response::Response,
    routing::post,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Emitter, Publication, PublishError, Receipt, api::ApiState};
use crate::{
    cluster::Fingerprint,
    http::{ApiError, Caller},
    protocol::{
        ApprovalDenied, ApprovalGranted, ArtifactCreated, GovernanceRequired, Invalid,
        RunCompleted, RunCreated, RunEvent, RunFailed, RunStarted, Scope, SessionId,
        StageCompleted, StageFailed, StageProgress, StageStarted, Timestamp, WorkflowEvent,
        WorkflowFamily,
    },
};

/// The publish routes of the run and workflow families, mounted with the
/// session ones under `/api/v1`.
pub(crate) fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/runs/{run_id}/events", post(publish_run))
        .route("/workflows/{run_id}/events", post(publish_workflow))
        .with_state(state)
}

/// `{ type, payload, to?, timestamp? }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    timestamp: Option<Timestamp>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunReceipt {
    run_id: SessionId,
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
}

impl From<Receipt> for RunReceipt {
    fn from(r: Receipt) -> Self {
        Self {
            run_id: r.session_id,
            kind: r.event,
            seq: r.seq,
        }
    }
}

/// As `POST /sessions/{id}/events`: key, body size and depth, schema,
/// publish rate, then `Idempotency-Key`.
async fn publish_run(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let single = api.single("runId", path, &headers, body, 1).await?;
    let body: RunBody = single.body()?;
    let to = match body.to.as_deref() {
        None => Scope::Topic,
        Some(to) => Scope::parse(to).ok_or_else(|| {
            ApiError::invalid(Invalid::new(
                "to",
                format!("to must be one of run, project, user, all; got {to:?}"),
            ))
        })?,
    };
    let event =
        RunEvent::from_request(&single.id, &body.kind, body.payload).map_err(ApiError::invalid)?;
    let named = match to {
        Scope::Project => event.project().is_some().then_some(()).ok_or("projectId"),
        Scope::User => event.user().is_some().then_some(()).ok_or("userId"),
        _ => Ok(()),
    };
    if let Err(field) = named {
        return Err(ApiError::invalid(Invalid::new(
            format!("payload.{field}"),
            format!("to {:?} needs payload.{field}", to.as_str()),
        )));
    }
    let publication = Publication {
        session_id: single.id.clone(),
        event,
        timestamp: body.timestamp,
        to,
    };
    api.publish_single(
        &caller,
        single.keyed(Fingerprint::of),
        publication,
        RunReceipt::from,
    )
    .await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkflowReceipt {
    run_id: SessionId,
    seq: u64,
}

async fn publish_workflow(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let single = api.single("runId", path, &headers, body, 0).await?;
    let event =
        WorkflowEvent::from_request(&single.id, single.body()?).map_err(ApiError::invalid)?;
    let publication = Publication::<WorkflowFamily>::new(single.id.clone(), event);
    api.publish_single(
        &caller,
        single.keyed(Fingerprint::of),
        publication,
        |receipt| WorkflowReceipt {
            run_id: receipt.session_id,
            seq: receipt.seq,
        },
    )
    .await
}

/// One `Emitter` helper per run event, as seed 001's broadcaster names them.
macro_rules! broadcasters {
    ($($(#[$doc:meta])* $fn:ident($ty:ty);)+) => {
        impl Emitter {
            $(
                $(#[$doc])*
                pub async fn $fn(&self, event: $ty) -> Result<Receipt, PublishError> {
                    let run = event.run().clone();
                    self.publish(Publication::<RunEvent>::new(run, event)).await
                }
            )+
        }
    };
}

broadcasters! {
    /// `run.created`, to the run's clients.
    broadcast_run_created(RunCreated);
    /// `run.started`.
    broadcast_run_started(RunStarted);
    /// `run.completed`.
    broadcast_run_completed(RunCompleted);
    /// `run.failed`.
    broadcast_run_failed(RunFailed);
    /// `stage.started`.
    broadcast_stage_started(StageStarted);
    /// `stage.progress`.
    broadcast_stage_progress(StageProgress);
    /// `stage.completed`.
    broadcast_stage_completed(StageCompleted);
    /// `stage.failed`.
    broadcast_stage_failed(StageFailed);
    /// `artifact.created`.
    broadcast_artifact_created(ArtifactCreated);
    /// `governance.required`.
    broadcast_governance_required(GovernanceRequired);
    /// `approval.granted`.
    broadcast_approval_granted(ApprovalGranted);
    /// `approval.denied`.
    broadcast_approval_denied(ApprovalDenied);
}

impl Emitter {
    /// Publishes a run event to whom `to` says: the run's clients
    /// ([`Scope::Topic`]), the project's or the user's its payload names, or
    /// every `/ws` client. Refuses (with the field) a project or user scope
    /// whose payload names none.
    pub async fn broadcast_run(
        &self,
        event: impl Into<RunEvent>,
        to: Scope,
    ) -> Result<Result<Receipt, PublishError>, Invalid> {
        let event = event.into();
        let missing = match to {
            Scope::Project if event.project().is_none() => Some("projectId"),
            Scope::User if event.user().is_none() => Some("userId"),
            _ => None,
        };
        if let Some(field) = missing {
            return Err(Invalid::new(
                field,
                format!("to {:?} needs {field}", to.as_str()),
            ));
        }
        let run = event.run().clone();
        let mut publication = Publication::<RunEvent>::new(run, event);
        publication.to = to;
        Ok(self.publish(publication).await)
    }

    /// Publishes a `WorkflowEvent` to its run's workflow-stream clients.
    pub async fn workflow_event(&self, event: WorkflowEvent) -> Result<Receipt, PublishError> {
        let run = event.run_id.clone();
        self.publish(Publication::<WorkflowFamily>::new(run, event))
            .await
    }
}
