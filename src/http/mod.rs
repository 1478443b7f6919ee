//! The pieces of herald's HTTP side that every route shares: the JSON
//! refusal ([`ApiError`]), reading JSON bodies, the API key check and the
//! allowed browser origins. A leaf: it knows no handler; `app` assembles the
//! routes from them.

mod body;
mod error;
mod key;

use axum::{
    extract::{OriginalUri, Request},
    http::{HeaderValue, StatusCode},
};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::warn;

pub(crate) use body::{parse_json, read_body};
pub(crate) use error::ApiError;
pub(crate) use key::{KeyCheck, require_key};

/// Set on a request already authorized by other means than the API key (a
/// token covering the session it reads, see `auth::reads`): the key check
/// lets it through.
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
