//! herald: a standalone, Socket.IO-compatible realtime event server.
//!
//! Backends publish session events (over HTTP, or in-process through an
//! [`Emitter`]); browsers and scripts subscribe with stock Socket.IO clients.
//! [`Herald`] assembles the pieces into one axum [`Router`], which the
//! `herald` binary serves and which a Rust backend can merge into its own app.
//!
//! Modules, in the direction data flows:
//! - [`config`]: settings from flags and environment;
//! - [`protocol`]: the wire contract as types, no I/O;
//! - [`publish`]: HTTP API and emit helpers -> validate -> sequence -> broadcast;
//! - [`cluster`]: each session's seq and last-known state;
//! - [`realtime`]: the Socket.IO namespace, subscribe and unsubscribe;
//! - [`ops`]: health, readiness, metrics, stats.

pub mod cluster;
pub mod config;
pub mod ops;
pub mod protocol;
pub mod publish;
pub mod realtime;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, http::HeaderValue};
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    trace::TraceLayer,
};
use tracing::{info, warn};

pub use config::Config;
pub use protocol::SessionId;
pub use publish::{Emitter, Publication, PublishError, Receipt};

use crate::{
    cluster::SessionStore,
    ops::{Metrics, OpsState},
    publish::http::ApiState,
    realtime::{Realtime, Subscriptions},
};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A configured herald: its router, its Socket.IO server and its emitter.
pub struct Herald {
    router: Router,
    io: SocketIo,
    emitter: Emitter,
    sessions: Arc<SessionStore>,
    subscriptions: Arc<Subscriptions>,
}

impl Herald {
    pub fn new(config: &Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let subscriptions = Arc::new(Subscriptions::default());
        let sessions = Arc::new(SessionStore::new(config.session_ttl()));

        let (io_service, io) = SocketIo::builder()
            .ping_interval(config.ping_interval())
            .ping_timeout(config.ping_timeout())
            .max_payload(config.max_payload_bytes as u64)
            .max_buffer_size(config.socket_buffer_packets)
            .with_state(Realtime {
                subscriptions: subscriptions.clone(),
                metrics: metrics.clone(),
            })
            .build_svc();
        realtime::attach(&io);

        let emitter = Emitter::new(
            io.clone(),
            sessions.clone(),
            subscriptions.clone(),
            metrics.clone(),
        );
        let ops_state = OpsState {
            metrics,
            subscriptions: subscriptions.clone(),
            sessions: sessions.clone(),
        };
        let api_state = ApiState {
            emitter: emitter.clone(),
            sessions: sessions.clone(),
            subscriptions: subscriptions.clone(),
            max_body: config.max_payload_bytes,
        };
        // One Socket.IO service behind explicit routes, not a layer: axum
        // applies a layer to each route separately, and socketioxide's layer
        // builds a separate Engine.IO session table each time it is applied,
        // so a polling client's second request would find no session.
        let router = Router::new()
            .route_service("/socket.io/", io_service.clone())
            .route_service("/socket.io", io_service)
            .merge(publish::http::routes(
                api_state,
                ops_state.clone(),
                config.api_key.clone(),
            ))
            .merge(ops::routes(ops_state))
            .fallback(publish::http::not_found)
            .layer(cors(&config.cors_origins))
            .layer(TraceLayer::new_for_http());

        Self {
            router,
            io,
            emitter,
            sessions,
            subscriptions,
        }
    }

    /// The handle for publishing from Rust.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// Every route herald serves: `/socket.io/`, `/api/v1/...`, `/health`,
    /// `/ready`, `/metrics`. Merge it into an app, or serve it with [`Herald::serve`].
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Forgets idle sessions every minute, for as long as the server runs.
    pub fn spawn_housekeeping(&self) -> tokio::task::JoinHandle<()> {
        let sessions = self.sessions.clone();
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let evicted = sessions.evict_idle(|id| subscriptions.count(id) > 0);
                if evicted > 0 {
                    info!(evicted, "forgot idle sessions");
                }
            }
        })
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every
    /// socket's transport (so clients see a transport close and reconnect,
    /// rather than `io server disconnect`, which would stop them for good)
    /// and returns once connections have drained or the grace period ends.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let housekeeping = self.spawn_housekeeping();
        let io = self.io.clone();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            shutdown.await;
            info!("shutting down: closing connections");
            tokio::spawn(async move {
                io.close().await;
                let _ = closed_tx.send(());
            });
        };
        let server = axum::serve(listener, self.router).with_graceful_shutdown(stop);
        let server = tokio::spawn(async move { server.await });
        let result = match closed_rx.await {
            // The sockets are closed; give the HTTP side a moment to drain.
            Ok(()) => match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(joined) => joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(_) => {
                    warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
                    Ok(())
                }
            },
            // The server stopped on its own (an accept error): report it.
            Err(_) => server
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
        };
        housekeeping.abort();
        result
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(Any);
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o.trim()) {
            Ok(v) => Some(v),
            Err(_) => {
                warn!(origin = %o, "ignoring an invalid CORS origin");
                None
            }
        })
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}
