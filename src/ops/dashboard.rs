//! `/dashboard`: one page, its script and its style compiled into the
//! binary, and the JSON and Server-Sent Events it reads: the feed of
//! [`super::feed`] and, for one session, its state, its subscribers per
//! instance and a live tail of its events (history first).
//!
//! The page shows event contents, so who may see it is decided once, at
//! start ([`access`]): with `ADMIN_TOKEN`, whoever sends it (compared in
//! constant time, as the API keys are); without, only when herald listens
//! on loopback (only this machine can reach it); otherwise it is off.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{OpsState, feed::Feed};
use crate::{
    cluster::history::Page,
    http::{ApiError, KeyRing, bearer},
    limits::Throttle,
    protocol::{SessionId, Topic},
    publish::{PublishError, api::SessionReport},
};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// How often a session's tail looks for new events: well under the second
/// an operator would notice.
const TAIL_EVERY: Duration = Duration::from_millis(250);

/// Events a tail reads at once.
const TAIL_PAGE: usize = 200;

/// Who may open the dashboard.
#[derive(Clone)]
pub(crate) enum Access {
    /// Whoever sends one of the `ADMIN_TOKEN` tokens.
    Token(Arc<KeyRing>),
    /// Anyone who can reach herald: it listens on loopback only.
    Loopback,
    /// Nobody.
    Off,
}

/// The rule: a token when one is set; without one, open on a loopback
/// listener only.
pub(crate) fn access(admin_token: Option<&str>, host: &str) -> Access {
    // A blank token (`ADMIN_TOKEN=`) is no token, as for API_KEY.
    if let Some(ring) = KeyRing::load(admin_token, None).ok().flatten() {
        return Access::Token(ring);
    }
    if is_loopback(host) {
        Access::Loopback
    } else {
        Access::Off
    }
}

/// Whether `host` (as HOST gives it) can only be reached from this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Access {
    /// The start log's note on the dashboard.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Self::Token(_) => "dashboard at /dashboard, ADMIN_TOKEN required",
            Self::Loopback => {
                "dashboard at /dashboard without a token: herald listens on loopback only (set ADMIN_TOKEN to require one)"
            }
            Self::Off => "dashboard off: herald listens beyond loopback and ADMIN_TOKEN is not set",
        }
    }
}

/// What the dashboard's routes read.
#[derive(Clone)]
pub(crate) struct Dashboard {
    pub access: Access,
    pub feed: Arc<Feed>,
    pub ops: OpsState,
}

/// `/dashboard` and what it reads. The page and its assets need no token
/// (they hold no data; the page asks for the token), the `api/` routes do.
pub(crate) fn routes(dashboard: Dashboard) -> Router {
    let api = Router::new()
        .route("/dashboard/api/feed", get(feed))
        .route("/dashboard/api/sessions/{session_id}", get(session))
        .route("/dashboard/api/sessions/{session_id}/tail", get(tail))
        .route_layer(middleware::from_fn_with_state(
            dashboard.access.clone(),
            require_admin,
        ));
    Router::new()
        .route("/dashboard", get(|| asset("text/html", PAGE)))
        .route(
            "/dashboard/dashboard.js",
            get(|| asset("text/javascript", SCRIPT)),
        )
        .route("/dashboard/dashboard.css", get(|| asset("text/css", STYLE)))
        .merge(api)
        .route_layer(middleware::from_fn_with_state(
            dashboard.access.clone(),
            refuse_when_off,
        ))
        .with_state(dashboard)
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("{kind}; charset=utf-8")).unwrap(),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn refuse_when_off(State(access): State<Access>, req: Request, next: Next) -> Response {
    if let Access::Off = access {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the dashboard is off: herald listens beyond loopback, so it needs ADMIN_TOKEN set to turn it on",
        )
        .with_code("DASHBOARD_OFF")
        .into_response();
    }
    next.run(req).await
}

async fn require_admin(State(access): State<Access>, req: Request, next: Next) -> Response {
    if let Access::Token(ring) = &access
        && bearer(&req).and_then(|given| ring.find(given)).is_none()
    {
        // Someone guessing tokens would write a line per guess.
        static LOG: Throttle = Throttle::new(Duration::from_secs(10));
        if let Some(held_back) = LOG.pass() {
            let client = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.to_string());
            warn!(
                client = client.as_deref().unwrap_or("unknown"),
                path = req.uri().path(),
                lines_held_back = held_back,
                "dashboard refused: missing or wrong admin token"
            );
        }
        let mut res = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: send the ADMIN_TOKEN as Authorization: Bearer <token>",
        )
        .with_code("ADMIN_TOKEN")
        .into_response();
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    next.run(req).await
}

/// The kept samples as a `history` event, then a `snapshot` event every
/// second.
async fn feed(State(d): State<Dashboard>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let history = Event::default().event("history").data(d.feed.history());
    let mut latest = d.feed.subscribe();
    latest.mark_changed();
    let snapshots = stream::unfold(latest, |mut latest| async move {
        latest.changed().await.ok()?;
        let json = latest.borrow_and_update().clone();
        Some((Event::default().event("snapshot").data(&*json), latest))
    });
    Sse::new(stream::once(async { history }).chain(snapshots).map(Ok))
        .keep_alive(KeepAlive::default())
}

fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// One session: its state and who watches it where.
async fn session(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
) -> Result<Json<SessionReport<BTreeMap<String, usize>>>, ApiError> {
    let id = session_id(&id)?;
    let subscribers = d.ops.sockets.subscribers_by_instance(&id);
    let report = SessionReport::read(d.ops.sequencer.as_ref(), id.clone(), subscribers)
        .await
        .map_err(PublishError::from)?;
    Ok(Json(report))
}

#[derive(Deserialize)]
struct TailQuery {
    #[serde(default)]
    since: u64,
}

#[derive(Serialize)]
struct TailEvent<'a> {
    seq: u64,
    event: &'a str,
    payload: &'a serde_json::value::RawValue,
}

/// The session's held events after `since` (its history), then each new
/// one as it is published: an `event` per event, and a `gap` when events
/// were published faster than the history keeps them or the session
/// started again at seq 1 (a new epoch).
async fn tail(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(q): Query<TailQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let topic = Topic::session(session_id(&id)?);
    let sequencer = d.ops.sequencer.clone();
    // (since, wait): a full page is followed at once by the next.
    let pages = stream::unfold((q.since, false), move |(since, wait)| {
        let (sequencer, topic) = (sequencer.clone(), topic.clone());
        async move {
            if wait {
                tokio::time::sleep(TAIL_EVERY).await;
            }
            let (events, since) = match sequencer.history(&topic, since, TAIL_PAGE).await {
                Ok(page) if page.seq < since => {
                    let again = format!("the session started again (epoch {})", epoch_of(&page));
                    (vec![(None, Event::default().event("gap").data(again))], 0)
                }
                Ok(page) => (page_events(page, since), since),
                Err(e) => {
                    let problem = Event::default().event("problem").data(e.to_string());
                    (vec![(None, problem)], since)
                }
            };
            let read: Vec<u64> = events.iter().filter_map(|(seq, _)| *seq).collect();
            let next = read.iter().copied().max().unwrap_or(since);
            let events: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
            Some((stream::iter(events), (next, read.len() < TAIL_PAGE)))
        }
    });
    Ok(Sse::new(pages.flatten().map(Ok)).keep_alive(KeepAlive::default()))
}

fn epoch_of(page: &Page) -> String {
    page.epoch.map_or_else(|| "none".into(), |e| e.to_string())
}

/// A page of history as tail events, each with its seq.
fn page_events(page: Page, since: u64) -> Vec<(Option<u64>, Event)> {
    let mut events = Vec::with_capacity(page.events.len() + 1);
    if !page.recovered && page.seq > since {
        let gap = format!("events after seq {since} are no longer held");
        events.push((None, Event::default().event("gap").data(gap)));
    }
    for held in &page.events {
        let event = TailEvent {
            seq: held.seq,
            event: held.name,
            payload: &held.payload,
        };
        let data = serde_json::to_string(&event).unwrap_or_default();
        events.push((Some(held.seq), Event::default().event("event").data(data)));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_turns_it_on_anywhere_and_loopback_without_one() {
        assert!(matches!(access(Some("t"), "0.0.0.0"), Access::Token(_)));
        assert!(matches!(access(Some("t"), "127.0.0.1"), Access::Token(_)));
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
            assert!(matches!(access(None, host), Access::Loopback), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.5", "herald.example", "192.168.1.2"] {
            assert!(matches!(access(None, host), Access::Off), "{host}");
            assert!(matches!(access(Some(" "), host), Access::Off), "{host}");
        }
    }

    #[test]
    fn the_token_is_checked_as_configured() {
        let Access::Token(ring) = access(Some("s3cret"), "0.0.0.0") else {
            panic!("a token turns the dashboard on");
        };
        assert!(ring.find("s3cret").is_some());
        assert!(ring.find("s3cre").is_none());
        assert!(ring.find("").is_none());
    }
}
