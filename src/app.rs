//! The HTTP edge in one place: every route herald serves, mounted here and
//! nowhere else. `/health` and `/ready` stay open to every prober;
//! `/api/v1/` and `/metrics` sit behind the API keys (when set) and refuse
//! browsers from origins not allowed; `/socket.io/` checks browser origins
//! itself; `/dashboard` has its own access rule and the same origin check.
//! CORS, request tracing, the JSON 404 and the list of recent refusals
//! apply to the whole.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{Method, Uri},
    middleware::{self, Next},
    response::Response,
};
use tower::{Layer, Service};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::{
    auth::{
        Verifier,
        reads::{self, Reads},
    },
    http::{self, KeyCheck, KeyRing, Origins, Refused},
    metrics::{Metrics, StatusLabel},
    ops::{self, OpsState, dashboard::Dashboard},
    publish::{
        api::{self, ApiState},
        families,
    },
};

/// What the routes are built from.
pub(crate) struct Edge {
    pub sockets: Router,
    pub api: ApiState,
    pub ops: OpsState,
    pub keys: Option<Arc<KeyRing>>,
    pub origins: Origins,
    /// The key tokens are checked with, when configured.
    pub tokens: Option<Arc<Verifier>>,
    pub dashboard: Dashboard,
}

pub(crate) fn router(edge: Edge) -> Router {
    let Edge {
        sockets,
        api,
        ops,
        keys,
        origins,
        tokens,
        dashboard,
    } = edge;
    let max_body = api.max_body;
    // The origin check runs first (the outer layer): a foreign browser is
    // refused as such, whatever key it holds.
    let guard = |routes: Router| {
        let routes = match &keys {
            Some(keys) => {
                let check = KeyCheck {
                    keys: keys.clone(),
                    max_body,
                };
                routes.route_layer(middleware::from_fn_with_state(check, http::require_key))
            }
            None => routes,
        };
        origins.guard(routes)
    };
    // Counted outside the key check, so that a publish refused for its key
    // counts as a refused publish.
    let publish =
        guard(api::publish_routes(api.clone()).merge(families::routes(api.clone()))).layer(
            middleware::from_fn_with_state(ops.metrics.clone(), count_rejections),
        );
    // Reading a session's history is watching it: a token covering the
    // session lets a client in, outside the key check (see `auth::reads`).
    let history = guard(api::read_routes(api));
    let history = match tokens {
        Some(verifier) => history.route_layer(middleware::from_fn_with_state(
            Reads {
                verifier,
                metrics: ops.metrics.clone(),
                api_key: keys.is_some(),
            },
            reads::check,
        )),
        None => history,
    };
    let v1 = publish
        .merge(history)
        .merge(guard(ops::api_routes(ops.clone())))
        .method_not_allowed_fallback(http::method_not_allowed);
    Router::new()
        .nest("/api/v1", v1)
        .merge(
            guard(ops::metrics_routes(ops.clone()))
                .method_not_allowed_fallback(http::method_not_allowed),
        )
        .merge(
            origins
                .guard(ops::dashboard::routes(dashboard))
                .method_not_allowed_fallback(http::method_not_allowed),
        )
        .merge(ops::routes(ops.clone()).method_not_allowed_fallback(http::method_not_allowed))
        .merge(sockets)
        .fallback(http::not_found)
        .layer(KeepRefusals(ops.metrics.clone()))
        .layer(origins.cors())
        // Refusals are answers, not failures of herald: an outage must log
        // one error, not one per request answered 503.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
}

/// Keeps every 4xx answer among the recent refusals (the dashboard's
/// list): what herald told the client, never what the client sent.
///
/// A layer of its own rather than `middleware::from_fn`, because it wraps
/// every request (Socket.IO polling included): `from_fn` clones the inner
/// service and boxes a future per request. Measured with callgrind over
/// HTTP publishes, the dashboard's additions cost 4.0% more instructions
/// per publish with `from_fn` here, 1.7% with this layer, which clones only
/// the method and the URI (whose bytes are shared).
#[derive(Clone)]
struct KeepRefusals(Arc<Metrics>);

impl<S> Layer<S> for KeepRefusals {
    type Service = KeptRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeptRefusals {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct KeptRefusals<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for KeptRefusals<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The URI shares its bytes: formatted only for a refusal.
        let asked = (req.method().clone(), req.uri().clone());
        Answering {
            answer: self.inner.call(req),
            asked: Some(asked),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way, and what was asked.
    struct Answering<F> {
        #[pin]
        answer: F,
        asked: Option<(Method, Uri)>,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for Answering<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = std::task::ready!(this.answer.poll(cx));
        if let (Ok(res), Some((method, uri))) = (&answered, this.asked.take())
            && res.status().is_client_error()
        {
            let status = res.status();
            let reason = match res.extensions().get::<Refused>() {
                Some(Refused(message)) => message.as_str(),
                None => status.canonical_reason().unwrap_or(""),
            };
            this.metrics.recent_refusals.record(
                "http",
                status.as_u16().to_string(),
                reason,
                format!("{method} {}", uri.path()),
            );
        }
        Poll::Ready(answered)
    }
}

/// Counts refused publishes by status (`herald_publish_rejections_total`).
async fn count_rejections(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let is_publish = req.method() == Method::POST;
    let res = next.run(req).await;
    let status = res.status();
    if is_publish && (status.is_client_error() || status.is_server_error()) {
        metrics
            .publish_rejections
            .get_or_create(&StatusLabel {
                status: status.as_u16(),
            })
            .inc();
    }
    res
}
