//! The HTTP edge of the Socket.IO endpoint: its routes, which browser
//! origins may use them, and request heads that do not pin memory.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use socketioxide::{SocketIo, adapter::Adapter, socket::Sid};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::{info, warn};

/// The Socket.IO endpoint, with or without the trailing slash. With a list
/// of allowed origins, a browser from another origin is refused on every
/// transport: CORS alone would stop only polling, not a WebSocket upgrade.
pub fn routes<S, A: Adapter>(service: S, io: SocketIo<A>, origins: &Origins) -> Router
where
    S: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let routes = Router::new()
        .route_service("/socket.io/", service.clone())
        .route_service("/socket.io", service)
        .route_layer(middleware::from_fn(move |req, next| {
            end_abandoned_polls(io.clone(), req, next)
        }))
        .route_layer(middleware::from_fn(detach_head));
    match origins {
        Origins::Any => routes,
        Origins::List(list) => {
            let list = Arc::new(list.clone());
            routes.route_layer(middleware::from_fn(move |req, next| {
                check_origin(list.clone(), req, next)
            }))
        }
    }
}

/// Which browser origins may connect and call the API.
#[derive(Clone)]
pub enum Origins {
    Any,
    List(Vec<HeaderValue>),
}

impl Origins {
    pub fn from_config(origins: &[String]) -> Self {
        if origins.iter().any(|o| o.trim() == "*") {
            return Self::Any;
        }
        Self::List(
            origins
                .iter()
                .filter_map(|o| match HeaderValue::from_str(o.trim()) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        warn!(origin = %o, "ignoring an invalid CORS origin");
                        None
                    }
                })
                .collect(),
        )
    }

    /// The CORS layer for every route.
    pub fn cors(&self) -> CorsLayer {
        let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
        match self {
            Self::Any => layer.allow_origin(Any),
            Self::List(list) => layer.allow_origin(AllowOrigin::list(list.clone())),
        }
    }
}

/// Refuses a browser whose `Origin` is not allowed; clients that send no
/// `Origin` (scripts, servers) are not browsers and pass.
async fn check_origin(allowed: Arc<Vec<HeaderValue>>, req: Request, next: Next) -> Response {
    match req.headers().get(header::ORIGIN) {
        Some(origin) if !allowed.contains(origin) => {
            let body = serde_json::json!({ "error": "this origin is not allowed (CORS_ORIGINS)" });
            (StatusCode::FORBIDDEN, Json(body)).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Gives the request its own copy of its URI and headers.
///
/// hyper parses them as slices of the connection's read buffer (16 KiB), and
/// socketioxide keeps every socket's request head for as long as the socket
/// lives: each idle WebSocket would hold a whole read buffer alive. Copied,
/// the head costs a few hundred bytes and the buffer is freed.
async fn detach_head(mut req: Request, next: Next) -> Response {
    let headers: HeaderMap = req
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect();
    *req.headers_mut() = headers;
    if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
    next.run(req).await
}

/// Closes a polling socket whose client hung up on its pending long-poll.
///
/// A browser tab closed on the polling transport leaves no other trace:
/// Engine.IO would count the socket, and keep its subscriptions, until the
/// heartbeat gives up (ping interval + timeout, 45 s by default). hyper drops
/// a request's future when its connection closes, so a long-poll `GET`
/// dropped before it answered means the client is gone. Node's engine.io
/// closes the socket at that moment too ("poll connection closed
/// prematurely").
async fn end_abandoned_polls<A: Adapter>(io: SocketIo<A>, req: Request, next: Next) -> Response {
    let Some(sid) = (req.method() == Method::GET)
        .then(|| polling_sid(req.uri()))
        .flatten()
    else {
        return next.run(req).await;
    };
    let mut guard = PollGuard { io, sid: Some(sid) };
    let response = next.run(req).await;
    guard.sid = None;
    response
}

/// The Engine.IO session of a long-poll request, if the URI names one.
fn polling_sid(uri: &Uri) -> Option<Sid> {
    let query = uri.query()?;
    let mut polling = false;
    let mut sid = None;
    for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match key {
            "transport" => polling = value == "polling",
            "sid" => sid = value.parse().ok(),
            _ => {}
        }
    }
    sid.filter(|_| polling)
}

/// Disconnects its socket if dropped while still holding it: the long-poll
/// never answered.
struct PollGuard<A: Adapter> {
    io: SocketIo<A>,
    sid: Option<Sid>,
}

impl<A: Adapter> Drop for PollGuard<A> {
    fn drop(&mut self) {
        let Some(socket) = self.sid.and_then(|sid| self.io.get_socket(sid)) else {
            return;
        };
        info!(socket = %socket.id, "long-poll abandoned: the client went away");
        // An error means the socket was already closing: nothing left to do.
        socket.disconnect().ok();
    }
}
