//! Tokens on the HTTP history routes (`GET /api/v1/sessions/{id}` and
//! `/events`): reading a session's history is watching it, so a browser
//! may do it with the same token it subscribes with. Layered outside the API
//! key check: a token covering the session marks the request
//! [`Authorized`], which the key check lets through; anything else goes on
//! to the key check unchanged (backends keep using their key), except that
//! with no API key configured a covering token is the only way in.

use std::sync::Arc;

use axum::{
    extract::{Path, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::info;

use super::{Refusal, Unauthorized, Verifier, bearer};
use crate::{
    http::{ApiError, Authorized},
    metrics::Metrics,
};

/// What the check needs.
#[derive(Clone)]
pub(crate) struct Reads {
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    /// An API key check follows, which may still let the request in.
    pub api_key: bool,
}

pub(crate) async fn check(
    State(reads): State<Reads>,
    Path(session): Path<String>,
    mut req: Request,
    next: Next,
) -> Response {
    let refusal = match bearer(req.headers()).map(|token| reads.verifier.verify(token)) {
        Some(Ok(grant)) if grant.covers(&session) => {
            req.extensions_mut().insert(Authorized);
            return next.run(req).await;
        }
        // A valid token is not an API key: no point asking the key check.
        Some(Ok(grant)) => {
            reads.metrics.auth_refused("forbidden");
            info!(%session, sub = grant.sub(), "history read refused: the token does not grant this session");
            let message = format!("forbidden: the token does not grant session {session}");
            return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
        }
        // Not a token herald accepts: it may be the API key.
        _ if reads.api_key => return next.run(req).await,
        Some(Err(refusal)) => refusal,
        None => Refusal::Missing,
    };
    reads.metrics.auth_refused(refusal.label());
    info!(%session, %refusal, "history read refused");
    ApiError::new(StatusCode::UNAUTHORIZED, Unauthorized(refusal).to_string()).into_response()
}
