//! The HTTP API for backends: publish one event, publish a batch, read a
//! session's state. Handlers only translate between HTTP and the publish
//! path; every refusal is JSON `{ error, field? }` with the status
//! docs/protocol.md gives it.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;

use super::{Emitter, EventFamily, Publication, PublishError, Receipt};
use crate::{
    cluster::{
        Fingerprint, Keyed, Sequencer, SequencerError, SessionState,
        history::{Epoch, Page},
    },
    http::{ApiError, Caller, PublishLimit, check_depth, parse_json, read_body},
    protocol::{Invalid, SessionEvent, SessionId, Topic},
    realtime::Sockets,
};

/// What the API handlers read.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub emitter: Emitter,
    pub sequencer: Arc<dyn Sequencer>,
    pub sockets: Arc<dyn Sockets>,
    pub max_body: usize,
    /// `MAX_JSON_DEPTH`: how deep a published event's `data` may nest.
    pub max_depth: usize,
    pub limit: Arc<PublishLimit>,
}

impl ApiState {
    /// Reads one event's publish request as every family's route does, in
    /// the same order: the id in the path (`field` names it in a refusal),
    /// the `Idempotency-Key` header, then the body's size and nesting depth
    /// (below the `envelope` levels of the request's own shape).
    pub(super) async fn single(
        &self,
        field: &'static str,
        path: Result<Path<String>, PathRejection>,
        headers: &HeaderMap,
        body: Body,
        envelope: usize,
    ) -> Result<Single, ApiError> {
        let id = path_id(path, field)?;
        let key = header_key(headers)?.map(str::to_owned);
        let bytes = self.checked_body(headers, body, envelope).await?;
        Ok(Single { id, key, bytes })
    }

    /// The end of every single publish, whatever its family: the caller's
    /// publish rate, then the publish, once per `Idempotency-Key`, answered
    /// 202 with the family's own shape of the receipt.
    pub(super) async fn publish_single<E: EventFamily, R: Serialize>(
        &self,
        caller: &Caller,
        keyed: Option<Keyed<'_>>,
        publication: Publication<E>,
        receipt: impl FnOnce(Receipt) -> R,
    ) -> Result<Response, ApiError> {
        if let Err(refusal) = self.limit.check(caller, 1) {
            return Ok(refusal.into_response());
        }
        let published = self.emitter.publish_keyed(publication, keyed).await?;
        Ok((StatusCode::ACCEPTED, Json(receipt(published))).into_response())
    }

    /// A publish body within `MAX_PAYLOAD_BYTES` and `MAX_JSON_DEPTH`.
    async fn checked_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        envelope: usize,
    ) -> Result<Bytes, ApiError> {
        let bytes = read_body(headers, body, self.max_body).await?;
        check_depth(&bytes, envelope, self.max_depth)?;
        Ok(bytes)
    }
}

/// One event's publish request, read but not yet parsed: its JSON is the
/// family's to parse, borrowing from the body.
pub(super) struct Single {
    pub id: SessionId,
    key: Option<String>,
    bytes: Bytes,
}

impl Single {
    pub(super) fn body<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        parse_json(&self.bytes)
    }

    /// Its idempotency key, if it has one, with the fingerprint of what a
    /// retry must repeat, which `sent` takes from the body. Taken only for a
    /// keyed publish: most have no key, and hashing is not free.
    pub(super) fn keyed(&self, sent: impl FnOnce(&[u8]) -> Fingerprint) -> Option<Keyed<'_>> {
        let key = self.key.as_deref()?;
        Some(Keyed {
            key,
            fingerprint: sent(&self.bytes),
        })
    }
}

/// What a retry of a session event must repeat, alone or in a batch: its
/// event and data.
fn session_fingerprint(event: &str, data: &RawValue) -> Fingerprint {
    let mut sent = event.as_bytes().to_vec();
    sent.push(b'\n');
    sent.extend_from_slice(data.get().as_bytes());
    Fingerprint::of(&sent)
}

/// The publish routes, which `app` mounts under `/api/v1` (and counts the
/// refusals of).
pub(crate) fn publish_routes(state: ApiState) -> Router {
    Router::new()
        .route("/sessions/{session_id}/events", post(publish_one))
        .route("/events", post(publish_batch))
        .with_state(state)
}

/// The read routes, mounted under `/api/v1` too.
pub(crate) fn read_routes(state: ApiState) -> Router {
    Router::new()
        .route("/sessions/{session_id}", get(session_state))
        .route("/sessions/{session_id}/events", get(session_events))
        .with_state(state)
}

/// Events a history page holds when the client does not say.
const PAGE_DEFAULT: usize = 100;
/// The most events one history page holds.
const PAGE_MAX: usize = 1000;

/// 503 `UNAVAILABLE` means "not done" (for a publish: not published, safe
/// to retry); 504 `OUTCOME_UNKNOWN` means
/// Redis got the publish and did not answer in time: it may yet be
/// delivered, and only a retry with the same idempotency key is safe.
impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let (status, code) = e.answer();
        let message = match code {
            OUTCOME_UNKNOWN => {
                format!("{e}; retry with the same Idempotency-Key to publish it exactly once")
            }
            _ => e.to_string(),
        };
        Self::new(status, message).with_code(code)
    }
}

impl PublishError {
    /// The status and code a refused publish is answered with, alone or in
    /// a batch.
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            Self::KeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, KEY_REUSED),
            e if e.outcome_unknown() => (StatusCode::GATEWAY_TIMEOUT, OUTCOME_UNKNOWN),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        }
    }
}

const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
const UNAVAILABLE: &str = "UNAVAILABLE";
const KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// The longest idempotency key accepted.
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// Checks an idempotency key: 1 to 255 visible ASCII characters, as in an
/// HTTP header. `field` names where it came from.
fn idempotency_key<'a>(key: &'a str, field: &str) -> Result<&'a str, ApiError> {
    let fits =
        (1..=IDEMPOTENCY_KEY_MAX).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    fits.then_some(key).ok_or_else(|| {
        ApiError::invalid(Invalid::new(
            field,
            format!(
                "{field} must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters (a UUID will do)"
            ),
        ))
    })
}

/// The `Idempotency-Key` header of a single publish, if any.
fn header_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    idempotency_key(text.trim(), "Idempotency-Key").map(Some)
}

/// The session or run id in a route's path; `field` names it in a refusal.
fn path_id(
    path: Result<Path<String>, PathRejection>,
    field: &'static str,
) -> Result<SessionId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::invalid(Invalid::new(field, e.body_text())))?;
    SessionId::parse(&raw).map_err(|e| ApiError::invalid(Invalid::new(field, e.to_string())))
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
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish_one(
    State(api): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let single = api.single("sessionId", path, &headers, body, 1).await?;
    let body: EventBody = single.body()?;
    let publication =
        Publication::<SessionEvent>::from_json(single.id.clone(), &body.event, body.data)
            .map_err(ApiError::invalid)?;
    let keyed = single.keyed(|_| session_fingerprint(&body.event, body.data));
    api.publish_single(&caller, keyed, publication, |receipt| receipt)
        .await
}

#[derive(Serialize)]
struct BatchReceipt {
    results: Vec<Receipt>,
}

/// A batch that stopped part-way: what was published (with seqs), the index
/// whose outcome is unknown (if that is why it stopped) and the indices of
/// what was not published, so that a client retries exactly those.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchStopped {
    error: String,
    code: &'static str,
    results: Vec<Receipt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_unknown: Option<usize>,
    unpublished: Vec<usize>,
}

/// All-or-nothing validation: every item is checked before any is sequenced.
/// Publishing is in order and stops at the first failure.
async fn publish_batch(
    State(api): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = api.checked_body(&headers, body, 2).await?;
    let items: Vec<BatchItem> = parse_json(&bytes)?;
    let publications = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = item
                .idempotency_key
                .as_deref()
                .map(|key| idempotency_key(key, &format!("[{i}].idempotencyKey")))
                .transpose()?
                .map(|key| Keyed {
                    key,
                    fingerprint: session_fingerprint(&item.event, item.data),
                });
            Publication::<SessionEvent>::from_json(item.session_id.clone(), &item.event, item.data)
                .map(|publication| (publication, key))
                .map_err(|e| ApiError::invalid(e.within(&format!("[{i}]"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total = publications.len();
    if let Err(refusal) = api.limit.check(&caller, total) {
        return Ok(refusal.into_response());
    }
    let mut results = Vec::with_capacity(total);
    for (publication, key) in publications {
        match api.emitter.publish_keyed(publication, key).await {
            Ok(receipt) => results.push(receipt),
            Err(e) => {
                warn!(published = results.len(), total, "batch stopped: {e}");
                let at = results.len();
                let unknown = e.outcome_unknown();
                let (status, code) = e.answer();
                let stopped = BatchStopped {
                    error: e.to_string(),
                    code,
                    outcome_unknown: unknown.then_some(at),
                    unpublished: (at + usize::from(unknown)..total).collect(),
                    results,
                };
                return Ok((status, Json(stopped)).into_response());
            }
        }
    }
    Ok((StatusCode::ACCEPTED, Json(BatchReceipt { results })).into_response())
}

/// A session as its readers see it: its state, and its subscribers (a count
/// for the API, per instance for the dashboard).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionReport<N> {
    session_id: SessionId,
    seq: u64,
    epoch: Option<Epoch>,
    progress: Option<Arc<RawValue>>,
    completed: bool,
    failed: bool,
    subscribers: N,
}

impl<N> SessionReport<N> {
    /// Reads the session's state while `subscribers` counts who watches it.
    pub(crate) async fn read(
        sequencer: &dyn Sequencer,
        session_id: SessionId,
        subscribers: impl Future<Output = N>,
    ) -> Result<Self, SequencerError> {
        let topic = Topic::session(session_id.clone());
        let (state, subscribers) = tokio::join!(sequencer.state(&topic), subscribers);
        let SessionState {
            seq,
            epoch,
            progress,
            completed,
            failed,
        } = state?;
        Ok(Self {
            session_id,
            seq,
            epoch,
            progress,
            completed,
            failed,
            subscribers,
        })
    }
}

async fn session_state(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionReport<usize>>, ApiError> {
    let session_id = path_id(path, "sessionId")?;
    let subscribers = api.sockets.subscribers(&session_id);
    let report = SessionReport::read(api.sequencer.as_ref(), session_id.clone(), subscribers)
        .await
        .map_err(PublishError::from)?;
    Ok(Json(report))
}

/// `?since=N&limit=L` of a history request.
#[derive(Deserialize)]
struct PageQuery {
    since: Option<String>,
    limit: Option<String>,
}

impl PageQuery {
    /// Reads both, refusing what is not a count in range with the field named.
    fn read(self) -> Result<(u64, usize), ApiError> {
        let since = match self.since.as_deref() {
            None => 0,
            Some(text) => text.parse::<u64>().map_err(|_| {
                ApiError::invalid(Invalid::new(
                    "since",
                    format!("since must be a non-negative integer sequence number, got {text:?}"),
                ))
            })?,
        };
        let limit = match self.limit.as_deref() {
            None => PAGE_DEFAULT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=PAGE_MAX).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(Invalid::new(
                        "limit",
                        format!("limit must be an integer from 1 to {PAGE_MAX}, got {text:?}"),
                    ))
                })?,
        };
        Ok((since, limit))
    }
}

#[derive(Serialize)]
struct HeldEvent<'a> {
    event: &'static str,
    data: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage<'a> {
    session_id: SessionId,
    epoch: Option<Epoch>,
    seq: u64,
    recovered: bool,
    events: Vec<HeldEvent<'a>>,
}

/// `GET /api/v1/sessions/{id}/events?since=N&limit=L`: what a client that
/// cannot hold a socket missed, in seq order, exactly as delivered.
async fn session_events(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session_id = path_id(path, "sessionId")?;
    let Query(query) = query.map_err(|e| ApiError::invalid(Invalid::new("", e.body_text())))?;
    let (since, limit) = query.read()?;
    let Page {
        seq,
        epoch,
        recovered,
        events,
    } = api
        .sequencer
        .history(&Topic::session(session_id.clone()), since, limit)
        .await
        .map_err(PublishError::from)?;
    let page = EventsPage {
        session_id,
        epoch,
        seq,
        recovered,
        events: events
            .iter()
            .map(|e| HeldEvent {
                event: e.name,
                data: &e.payload,
            })
            .collect(),
    };
    Ok(Json(page).into_response())
}
