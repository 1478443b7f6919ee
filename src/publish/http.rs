//! The HTTP API for backends: publish one event, publish a batch, read a
//! session's state. Handlers only translate between HTTP and the publish
//! path; every refusal is JSON `{ error, field? }` with the status
//! PROTOCOL.md section 2 gives it.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::{Emitter, Publication, PublishError, Receipt};
use crate::{
    cluster::{Cluster, SessionSnapshot},
    metrics::{Metrics, StatusLabel},
    ops::{self, OpsState},
    protocol::{Invalid, SessionEvent, SessionId, read_json},
};

/// What the API handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub emitter: Emitter,
    pub cluster: Arc<Cluster>,
    pub max_body: usize,
}

/// The `/api/v1` routes, behind the API key when one is configured.
pub fn routes(state: ApiState, ops: OpsState, api_key: Option<String>) -> Router {
    let metrics = ops.metrics.clone();
    let max_body = state.max_body;
    let api = Router::new()
        .route("/sessions/{session_id}/events", post(publish_one))
        .route("/events", post(publish_batch))
        .route("/sessions/{session_id}", get(session_state))
        .with_state(state)
        .merge(
            Router::new()
                .route("/stats", get(ops::stats))
                .with_state(ops),
        )
        .method_not_allowed_fallback(method_not_allowed);
    let api = match api_key {
        Some(key) => {
            let check = KeyCheck {
                key: Arc::from(key),
                max_body,
            };
            api.route_layer(middleware::from_fn_with_state(check, require_key))
        }
        None => api,
    };
    Router::new()
        .nest("/api/v1", api)
        .layer(middleware::from_fn_with_state(metrics, count_rejections))
}

/// How far past the size limit a body is still read (and dropped) before a 413.
const DRAIN_FACTOR: usize = 4;

/// A refused request: status, message, and the field at fault if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    /// The request body was left unread: the connection cannot be reused.
    close: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            close: false,
        }
    }

    fn invalid(e: Invalid) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: e.message,
            field: (!e.field.is_empty()).then_some(e.field),
            close: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            field: self.field.as_deref(),
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.close {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// Answers an unknown route with a JSON 404.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// What the API key check needs.
#[derive(Clone)]
struct KeyCheck {
    key: Arc<str>,
    max_body: usize,
}

async fn require_key(State(check): State<KeyCheck>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(check.key.as_bytes()))) {
        return next.run(req).await;
    }
    let mut refusal = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send Authorization: Bearer <key>",
    );
    // Read what the client is sending before answering: a proxy still
    // writing the body to a closed connection counts this instance as failed.
    refusal.close = !drain(req.into_body(), check.max_body).await;
    let mut res = refusal.into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Reads and discards a body, up to `cap` bytes; whether it all was read.
async fn drain(body: Body, cap: usize) -> bool {
    let mut body = body;
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > cap {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

async fn count_rejections(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    if res.status().is_client_error() || res.status().is_server_error() {
        metrics
            .publish_rejections
            .get_or_create(&StatusLabel {
                status: res.status().as_u16(),
            })
            .inc();
    }
    res
}

/// Reads a body: content type absent or JSON, not empty, size within the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let mime = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let mime = mime.to_ascii_lowercase();
        if mime != "application/json"
            && !(mime.starts_with("application/") && mime.ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {mime:?} is not supported; send application/json"),
            ));
        }
    }
    let too_large = |drained: bool| ApiError {
        close: !drained,
        ..ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body somewhat over the limit is read and dropped, so a proxy that is
    // still sending it sees an answer rather than a reset connection; a far
    // larger one is refused unread, and the connection closed.
    let drain_cap = limit.saturating_mul(DRAIN_FACTOR);
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        let drained = declared <= drain_cap as u64 && drain(body, drain_cap).await;
        return Err(too_large(drained));
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                return Err(too_large(drain(body, drain_cap).await));
            }
            bytes.extend_from_slice(data);
        }
    }
    let bytes = Bytes::from(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty; expected JSON",
        ));
    }
    Ok(bytes)
}

/// Parses JSON: syntax errors are 400, shape errors 422 with the field's path.
fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // The whole body must be JSON before its shape is judged, as `JSON.parse`
    // would: trailing junk or a syntax error after a shape error is a 400.
    let json: &RawValue = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    read_json(json).map_err(ApiError::invalid)
}

fn path_session(path: Result<Path<String>, PathRejection>) -> Result<SessionId, ApiError> {
    let Path(raw) =
        path.map_err(|e| ApiError::invalid(Invalid::new("sessionId", e.body_text())))?;
    SessionId::parse(&raw).map_err(|e| ApiError::invalid(Invalid::new("sessionId", e.to_string())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BatchItem<'a> {
    session_id: SessionId,
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn publish_one(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let session_id = path_session(path)?;
    let bytes = read_body(&headers, body, api.max_body).await?;
    let body: EventBody = parse_json(&bytes)?;
    let publication = Publication::<SessionEvent>::from_json(session_id, &body.event, body.data)
        .map_err(ApiError::invalid)?;
    let receipt = api.emitter.publish(publication).await?;
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}

#[derive(Serialize)]
struct BatchReceipt {
    results: Vec<Receipt>,
}

/// All-or-nothing validation: every item is checked before any is sequenced.
async fn publish_batch(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BatchReceipt>), ApiError> {
    let bytes = read_body(&headers, body, api.max_body).await?;
    let items: Vec<BatchItem> = parse_json(&bytes)?;
    let publications = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            Publication::<SessionEvent>::from_json(item.session_id, &item.event, item.data)
                .map_err(|e| ApiError::invalid(e.within(&format!("[{i}]"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(publications.len());
    for publication in publications {
        match api.emitter.publish(publication).await {
            Ok(receipt) => results.push(receipt),
            Err(e) => {
                warn!(published = results.len(), "batch stopped: {e}");
                return Err(ApiError::from(e));
            }
        }
    }
    Ok((StatusCode::ACCEPTED, Json(BatchReceipt { results })))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionState {
    session_id: SessionId,
    seq: u64,
    progress: Option<Box<RawValue>>,
    completed: bool,
    failed: bool,
    subscribers: usize,
}

async fn session_state(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionState>, ApiError> {
    let session_id = path_session(path)?;
    let SessionSnapshot {
        seq,
        progress,
        completed,
        failed,
        subscribers,
    } = api
        .cluster
        .snapshot(&session_id)
        .await
        .map_err(PublishError::from)?;
    Ok(Json(SessionState {
        session_id,
        seq,
        progress,
        completed,
        failed,
        subscribers,
    }))
}
