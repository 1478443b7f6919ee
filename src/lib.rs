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
//! - [`metrics`]: the counters everything updates;
//! - [`saturation`]: whether the runtime has idle time left, and so how long
//!   WebSocket writes may be held together;
//! - [`ops`]: health, readiness, `/metrics`, stats.

pub mod cluster;
pub mod config;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod publish;
pub mod realtime;
pub mod saturation;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, serve::ListenerExt};
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::{Level, debug, info, warn};

pub use config::Config;
pub use protocol::SessionId;
pub use publish::{Emitter, Publication, PublishError, Receipt};

use crate::{
    cluster::{Cluster, memory::MemoryCluster, redis::RedisCluster},
    metrics::Metrics,
    ops::OpsState,
    publish::http::ApiState,
    realtime::{Realtime, Subscriptions},
};

/// Bytes a WebSocket reads at a time; larger frames take several reads.
/// Clients send herald pongs and subscribes, which fit unless the session id
/// is long; every idle socket holds the buffer, and each 128 bytes of it is
/// 3% of an idle socket's memory.
const WS_READ_BUFFER: usize = 128;

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why herald could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(#[from] redis::RedisError),
}

/// A configured herald: its router, its Socket.IO server and its emitter.
pub struct Herald {
    router: Router,
    cluster: Arc<Cluster>,
    emitter: Emitter,
    metrics: Arc<Metrics>,
    write_linger: Duration,
}

impl Herald {
    /// Builds herald from its settings. With a Redis URL it joins the
    /// cluster in the background: it serves its own sockets at once, and
    /// publishes once Redis answers (`/ready` says when).
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::default());
        let subscriptions = Arc::new(Subscriptions::default());
        let local = Realtime {
            subscriptions: subscriptions.clone(),
            metrics: metrics.clone(),
        };
        let origins = realtime::endpoint::Origins::from_config(&config.cors_origins);
        let builder = SocketIo::builder()
            .ping_interval(config.ping_interval())
            .ping_timeout(config.ping_timeout())
            .max_payload(config.max_payload_bytes as u64)
            .max_buffer_size(config.socket_buffer_packets)
            .ws_read_buffer_size(WS_READ_BUFFER)
            .with_state(local.clone());

        // One Socket.IO service behind explicit routes, not a layer: axum
        // applies a layer to each route separately, and socketioxide's layer
        // builds a separate Engine.IO session table each time it is applied,
        // so a polling client's second request would find no session.
        let (sockets, cluster) = match config.redis() {
            None => {
                let (service, io) = builder.build_svc();
                realtime::attach(&io);
                let cluster = MemoryCluster::new(io, local, config.session_ttl());
                (
                    realtime::endpoint::routes(service, &origins),
                    Cluster::Memory(cluster),
                )
            }
            Some(urls) => {
                let (setup, adapter) =
                    cluster::redis::Setup::new(&urls, config.redis_cluster, &config.redis_prefix)?;
                let (service, io) = builder
                    .with_adapter::<cluster::redis::RedisAdapter>(adapter)
                    .build_svc();
                realtime::attach(&io);
                let cluster = RedisCluster::new(io, local, setup, config.session_ttl());
                (
                    realtime::endpoint::routes(service, &origins),
                    Cluster::Redis(cluster),
                )
            }
        };
        let cluster = Arc::new(cluster);

        let emitter = Emitter::new(cluster.clone(), metrics.clone());
        let ops_state = OpsState {
            metrics: metrics.clone(),
            subscriptions,
            cluster: cluster.clone(),
        };
        let api_state = ApiState {
            emitter: emitter.clone(),
            cluster: cluster.clone(),
            max_body: config.max_payload_bytes,
        };
        let router = sockets
            .merge(publish::http::routes(
                api_state,
                ops_state.clone(),
                config.required_api_key().map(str::to_owned),
            ))
            .merge(ops::routes(ops_state))
            .fallback(publish::http::not_found)
            .layer(origins.cors())
            // Refusals are answers, not failures of herald: an outage must
            // log one error, not one per request answered 503.
            .layer(
                TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            );

        Ok(Self {
            router,
            cluster,
            emitter,
            metrics,
            write_linger: config.write_linger(),
        })
    }

    /// `"memory"` or `"redis"`.
    pub fn adapter(&self) -> &'static str {
        self.cluster.readiness().adapter
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

    /// Starts herald's background work (cluster delivery and link watching
    /// with Redis, forgetting idle sessions without; sampling how busy the runtime is).
    /// [`Herald::serve`] does this itself; an app that serves
    /// [`Herald::router`] on its own calls it.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let cluster = self.cluster.clone();
        let saturation = saturation::watch(self.write_linger, self.metrics.clone());
        tokio::spawn(async move {
            tokio::join!(cluster.run(), saturation);
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
        let background = self.spawn_background();
        let cluster = self.cluster.clone();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            shutdown.await;
            info!("shutting down: closing connections");
            tokio::spawn(async move {
                cluster.close_sockets().await;
                let _ = closed_tx.send(());
            });
        };
        // Events are small frames sent as they happen: without TCP_NODELAY,
        // Nagle's algorithm holds one back until the client acknowledges the
        // previous, up to its delayed-ACK timeout (40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                debug!("could not set TCP_NODELAY: {e}");
            }
        });
        // A make-service built once: serving the Router itself makes axum
        // clone and re-finalize the whole route table for every connection.
        let server =
            axum::serve(listener, self.router.into_make_service()).with_graceful_shutdown(stop);
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
        background.abort();
        result
    }
}
