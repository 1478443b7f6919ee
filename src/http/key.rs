//! The API key check in front of `/api/v1/`: `Authorization: Bearer <key>`,
//! compared in constant time.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::{ApiError, body::drain};

/// What the API key check needs.
#[derive(Clone)]
pub(crate) struct KeyCheck {
    pub key: Arc<str>,
    pub max_body: usize,
}

pub(crate) async fn require_key(
    State(check): State<KeyCheck>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<super::Authorized>().is_some() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(check.key.as_bytes()))) {
        return next.run(req).await;
    }
    // Read what the client is sending before answering: a proxy still
    // writing the body to a closed connection counts this instance as failed.
    let drained = drain(req.into_body(), check.max_body).await;
    let refusal = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send Authorization: Bearer <key>",
    )
    .closing(!drained);
    let mut res = refusal.into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}
