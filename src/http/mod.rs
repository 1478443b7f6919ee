//! The pieces of herald's HTTP side that every route shares: the JSON
//! refusal ([`ApiError`]), reading JSON bodies, the API keys, the publish
//! rate limit and the allowed browser origins. A leaf: it knows no handler;
//! `app` assembles the routes from them.

mod body;
mod error;
mod key;
mod rate;

use std::sync::Arc;

use axum::{
    Router,
    extract::{OriginalUri, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::warn;

pub(crate) use body::{check_depth, parse_json, read_body};
pub(crate) use error::{ApiError, Refused};
pub use key::KeyFileError;
pub(crate) use key::{KeyCheck, KeyId, KeyRing, bearer, require_key};
use rate::LogEvery;
pub(crate) use rate::{Caller, PublishLimit, RateSettings};

/// Marks a request as already authorized (by a token the auth middleware
/// checked): the API key check lets it through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authorized;

/// Which browser origins may connect and call the API.
#[derive(Clone)]
pub(crate) enum Origins {
    Any,
    List(Vec<HeaderValue>),
}

impl Origins {
    pub(crate) fn from_config(origins: &[String]) -> Self {
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
    pub(crate) fn cors(&self) -> CorsLayer {
        let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
        match self {
            Self::Any => layer.allow_origin(Any),
            Self::List(list) => layer.allow_origin(AllowOrigin::list(list.clone())),
        }
    }

    /// `routes`, refusing browsers from origins not on the list. CORS alone
    /// does not stop a browser: a "simple" request (a `POST` without a JSON
    /// content type, a WebSocket upgrade) is sent, and acted on, before the
    /// browser looks at the answer's CORS headers.
    pub(crate) fn guard(&self, routes: Router) -> Router {
        match self {
            Self::Any => routes,
            Self::List(list) => {
                let list: Arc<[HeaderValue]> = Arc::from(list.as_slice());
                let log = Arc::new(LogEvery::default());
                routes.route_layer(middleware::from_fn(move |req, next| {
                    check_origin(list.clone(), log.clone(), req, next)
                }))
            }
        }
    }
}

/// Refuses a browser whose `Origin` is not allowed; clients that send no
/// `Origin` (scripts, servers) are not browsers and pass.
async fn check_origin(
    allowed: Arc<[HeaderValue]>,
    log: Arc<LogEvery>,
    req: Request,
    next: Next,
) -> Response {
    match req.headers().get(header::ORIGIN) {
        Some(origin) if !allowed.contains(origin) => {
            if let Some(unlogged) = log.ready() {
                warn!(
                    origin = ?origin,
                    path = req.uri().path(),
                    unlogged,
                    "refused a request from an origin not in CORS_ORIGINS ({unlogged} more refusals since the last line)"
                );
            }
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this origin is not allowed (CORS_ORIGINS)",
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Answers an unknown route with a JSON 404.
pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// Answers a known route called with the wrong method with a JSON 405,
/// naming the path as the client sent it (a nested router sees it without
/// its prefix).
pub(crate) async fn method_not_allowed(OriginalUri(uri): OriginalUri, req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), uri.path()),
    )
}
