#![doc = include_str!("../README.md")]
//!
//! # The crate
//!
//! An app embedding herald uses [`Herald`] (built from a [`Config`]), the
//! [`Background`] work it returns, the [`Emitter`] to publish from Rust, and
//! the event types of [`protocol`]. Everything else is herald's own.
//!
//! Modules, in the direction data flows (docs/architecture.md has the whole
//! picture):
//! - `config`: settings from flags and environment;
//! - `auth`: tokens (JWT): the keys, what a token grants, expiry;
//! - `protocol`: the wire contract as types, no I/O;
//! - `publish`: the [`Emitter`] and the HTTP publish API: validate -> sequence;
//! - `cluster`: the sequencer (seq and state of every session, run and workflow, in memory or
//!   in Redis) and the fan-out it reports sequenced events to;
//! - `realtime`: the Socket.IO side, which is that fan-out: the server, the
//!   namespace, subscriptions, delivery;
//! - `http` and `app`: the HTTP edge (refusals, bodies, API key, origins) and
//!   every route assembled once;
//! - `ops`, `metrics`: health, readiness, `/metrics`, stats, and the live
//!   `/dashboard` (its page inside the binary, fed once a second);
//! - `limits`: what one client may take (connections, requests,
//!   subscriptions), so that no client takes what the others need;
//! - `streams`: the plain WebSocket endpoints (`/ws`, `/ws/workflows`),
//!   fan-outs beside the Socket.IO one for the run and workflow families;
//! - `serve`: the accept loop, with the timeouts a public server needs;
//! - `reload`: what SIGHUP re-reads (the key files);
//! - `saturation`: how busy the runtime is, and so how long WebSocket writes
//!   may be held together.

mod app;
mod auth;
mod cluster;
pub mod config;
mod http;
mod limits;
mod metrics;
mod ops;
pub mod protocol;
mod publish;
mod realtime;
mod reload;
#[cfg(feature = "patched-engine")]
mod saturation;
mod serve;
mod streams;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, middleware};
use futures_util::future::{BoxFuture, join_all};
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide_core::adapter::DefinedAdapter;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{info, warn};

pub use cluster::{Action, LinkProblem, SequencerError};
pub use config::Config;
pub use protocol::SessionId;
pub use publish::{Emitter, Publication, PublishError, Receipt};

use crate::{
    cluster::{
        FanOut, FanOuts, Sequencer,
        memory::{self, MemorySequencer},
        redis::{self as redis_cluster, RedisAdapter, RedisSequencer},
    },
    http::{KeyRing, Origins, PublishLimit, RateSettings},
    limits::{Admission, RequestLimits, TrustedProxies},
    metrics::Metrics,
    ops::OpsState,
    publish::api::ApiState,
    realtime::Sockets,
};

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why herald could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid REDIS_URL: {0}")]
    RedisUrl(#[from] redis::RedisError),
    #[error(transparent)]
    Tokens(#[from] auth::KeyError),
    #[error(transparent)]
    TrustedProxies(#[from] limits::admission::InvalidProxy),
    #[error(transparent)]
    KeyFile(#[from] http::KeyFileError),
}

/// A configured herald: its routes and its emitter.
pub struct Herald {
    router: Router,
    sockets: Arc<dyn Sockets>,
    emitter: Emitter,
    /// How long [`Herald::serve`] waits for a request's headers.
    header_read_timeout: Duration,
}

/// herald's background work: delivering the cluster's events (with Redis),
/// forgetting idle sessions (without), watching the link and the load. It is
/// a value so that it runs exactly once: [`Herald::new`] hands it out, and
/// until it runs `/ready` answers 503. Dropping its future stops it.
#[must_use = "herald delivers nothing across instances and watches nothing until its background work runs"]
pub struct Background {
    tasks: Vec<BoxFuture<'static, ()>>,
    running: Arc<AtomicBool>,
}

impl Background {
    /// Runs the background work for as long as the future is polled.
    pub async fn run(self) {
        struct Running(Arc<AtomicBool>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.running.store(true, Ordering::Release);
        let _running = Running(self.running);
        join_all(self.tasks).await;
    }

    /// Runs the background work on its own task.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }
}

/// A built herald, with what only herald's own code reaches.
struct Built {
    herald: Herald,
    background: Background,
    /// The write linger of this herald's engine (set by `saturation`), for
    /// the test that two heralds keep theirs apart.
    #[cfg(all(test, feature = "patched-engine"))]
    linger: engineioxide::coalesce::Linger,
}

/// What choosing a backend produces: the same shape for every backend.
struct Wired {
    socket_routes: Router,
    sockets: Arc<dyn Sockets>,
    sequencer: Arc<dyn Sequencer>,
    tasks: Vec<BoxFuture<'static, ()>>,
    /// This server's engine's write linger, which `saturation` sets.
    #[cfg(feature = "patched-engine")]
    linger: engineioxide::coalesce::Linger,
}

impl Herald {
    /// Builds herald from its settings. With a Redis URL it joins the
    /// cluster once its [`Background`] runs: it serves its own sockets at
    /// once, and publishes once Redis answers (`/ready` says when).
    pub fn new(config: &Config) -> Result<(Self, Background), SetupError> {
        Self::build(config).map(|built| (built.herald, built.background))
    }

    fn build(config: &Config) -> Result<Built, SetupError> {
        if config.history_max_events >= config.socket_buffer_packets {
            warn!(
                history = config.history_max_events,
                queue = config.socket_buffer_packets,
                "HISTORY_MAX_EVENTS is not below SOCKET_BUFFER_PACKETS: a long replay will not fit a socket's queue, and the socket will be disconnected instead of resumed"
            );
        }
        let redis = config.redis();
        let metrics = Arc::new(Metrics::new(redis.is_none()));
        let origins = Origins::from_config(&config.cors_origins);
        let tokens = auth::Verifier::from_config(config)?.map(Arc::new);
        match &tokens {
            Some(verifier) => info!(
                "tokens required: every socket must present a JWT, and may watch only the sessions it grants; {}",
                verifier.describe()
            ),
            None => warn!(
                "no JWT_SECRET, JWT_SECRET_FILE or JWT_PUBLIC_KEY_FILE: sockets are anonymous and may watch any session"
            ),
        }
        let max_connections = match config.max_connections {
            0 => limits::nofile::default_max_connections(limits::nofile::raise()),
            set => set,
        };
        let admission = Admission::new(
            max_connections,
            config.max_connections_per_address,
            TrustedProxies::parse(&config.trusted_proxies)?,
            metrics.clone(),
        );
        info!(
            max_connections = admission.max(),
            per_address = config.max_connections_per_address,
            "connection limits"
        );
        let settings = realtime::Settings {
            ping_interval: config.ping_interval(),
            ping_timeout: config.ping_timeout(),
            max_payload: config.max_payload_bytes as u64,
            buffer_packets: config.socket_buffer_packets,
            buffer_bytes: config.socket_buffer_bytes,
            connect_timeout: config.header_read_timeout(),
            origins: origins.clone(),
            tokens: tokens.clone(),
            requests: Arc::new(RequestLimits::new(
                config.client_requests_per_sec,
                config.max_subscriptions_per_socket,
                metrics.clone(),
            )),
        };
        let streams = Streams::new(config, &metrics, tokens.clone());
        let wired = match redis {
            None => wire::<LocalAdapter, _>(&settings, (), &metrics, &streams, |fanout| {
                let limits = memory::Limits {
                    ttl: config.session_ttl(),
                    max_events: config.history_max_events,
                    max_bytes: config.history_max_bytes,
                    max_sessions: config.max_sessions,
                    idempotency_ttl: config.idempotency_ttl(),
                };
                MemorySequencer::new(fanout, limits, metrics.clone())
            }),
            Some(urls) => {
                let redis_settings = redis_cluster::Settings {
                    urls: &urls,
                    cluster: config.redis_cluster,
                    prefix: &config.redis_prefix,
                    session_ttl: config.session_ttl(),
                    history_events: config.history_max_events,
                    queue_events: config.cluster_queue_events,
                    idempotency_ttl: config.idempotency_ttl(),
                };
                let (setup, adapter) = redis_cluster::Setup::new(&redis_settings, metrics.clone())?;
                wire::<RedisAdapter, _>(&settings, adapter, &metrics, &streams, |fanout| {
                    RedisSequencer::new(setup, fanout)
                })
            }
        };
        let Wired {
            socket_routes,
            sockets,
            sequencer,
            mut tasks,
            #[cfg(feature = "patched-engine")]
            linger,
        } = wired;
        // Idle sockets keep no request bucket (limits::requests).
        tasks.push(Box::pin(
            settings
                .requests
                .clone()
                .sweep_every(Duration::from_secs(1)),
        ));
        #[cfg(feature = "patched-engine")]
        tasks.push(Box::pin(saturation::watch(
            config.write_linger(),
            metrics.clone(),
            linger.clone(),
        )));

        let keys = KeyRing::load(config.api_key.as_deref(), config.api_key_file())?;
        let mut reloads: Vec<reload::Reload> = Vec::new();
        if let Some(keys) = keys.clone().filter(|keys| keys.has_file()) {
            reloads.push(Box::new(move || {
                keys.reload()
                    .map(|count| format!("{count} publish keys in force"))
                    .map_err(|e| e.to_string())
            }));
        }
        if let Some(tokens) = tokens.clone().filter(|tokens| tokens.file().is_some()) {
            reloads.push(Box::new(move || tokens.reload().map_err(|e| e.to_string())));
        }
        if !reloads.is_empty() {
            tasks.push(Box::pin(reload::on_sighup(reloads)));
        }
        let emitter = Emitter::new(sequencer.clone(), metrics.clone());
        let running = Arc::new(AtomicBool::new(false));
        let ops = OpsState {
            metrics,
            sequencer: sequencer.clone(),
            sockets: sockets.clone(),
            background_running: running.clone(),
        };
        // Also what `/api/v1/stats` sums with Redis: it runs whether or
        // not a dashboard is open.
        let feed = ops::feed::Feed::new(ops.clone());
        tasks.push(Box::pin(feed.clone().run()));
        let access = ops::dashboard::access(config.admin_token.as_deref(), &config.host);
        // With the start line's target: a quiet log still says whether the
        // dashboard is open, and to whom.
        info!(target: "herald::start", "{}", access.describe());
        let socket_routes = socket_routes.route_layer(middleware::from_fn_with_state(
            admission,
            limits::admission::admit_handshakes,
        ));
        let router = app::router(app::Edge {
            sockets: socket_routes,
            api: ApiState {
                emitter: emitter.clone(),
                sequencer: sequencer.clone(),
                sockets: sockets.clone(),
                max_body: config.max_payload_bytes,
                max_depth: config.max_json_depth,
                limit: Arc::new(PublishLimit::new(RateSettings {
                    per_second: config.publish_rate_per_key,
                    burst: config.publish_burst_per_key,
                })),
            },
            dashboard: ops::dashboard::Dashboard {
                access,
                feed,
                ops: ops.clone(),
            },
            ops,
            keys,
            origins,
            tokens,
        })
        // A client that sends a body a byte at a time holds a descriptor and
        // a task; past this it is refused (the body reader answers 400) and its connection closed.
        .layer(RequestBodyTimeoutLayer::new(config.body_read_timeout()));
        let herald = Self {
            router,
            sockets,
            emitter,
            header_read_timeout: config.header_read_timeout(),
        };
        Ok(Built {
            herald,
            background: Background { tasks, running },
            #[cfg(all(test, feature = "patched-engine"))]
            linger,
        })
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

    /// Serves until `shutdown` resolves, then stops accepting, closes every
    /// socket's transport (so clients see a transport close and reconnect,
    /// rather than `io server disconnect`, which would stop them for good)
    /// and returns once connections have drained or the grace period ends.
    /// The [`Background`] runs beside it, on its own.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sockets = self.sockets.clone();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            shutdown.await;
            info!("shutting down: closing connections");
            tokio::spawn(async move {
                sockets.close_all().await;
                let _ = closed_tx.send(());
            });
        };
        let server = tokio::spawn(serve::connections(
            listener,
            self.router,
            self.header_read_timeout,
            stop,
        ));
        match closed_rx.await {
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
        }
    }
}

/// The plain WebSocket endpoints, one hub per family they serve.
struct Streams {
    runs: Arc<streams::runs::RunHub>,
    workflows: Arc<streams::workflows::WorkflowHub>,
    /// Their settings' write linger, given the engine's once it is built.
    #[cfg(feature = "patched-engine")]
    linger: Arc<std::sync::OnceLock<engineioxide::coalesce::Linger>>,
}

impl Streams {
    /// `tokens` is the key `/ws` and workflow clients' tokens are checked
    /// with, when one is configured.
    fn new(config: &Config, metrics: &Arc<Metrics>, tokens: Option<Arc<auth::Verifier>>) -> Self {
        // Shared: each connection's task keeps a pointer, not a copy.
        let settings = Arc::new(streams::Settings {
            ping_interval: Duration::from_millis(config.ws_ping_interval_ms.max(1)),
            client_timeout: Duration::from_millis(config.ws_client_timeout_ms),
            max_payload: config.max_payload_bytes,
            buffer_frames: config.socket_buffer_packets,
            metrics: metrics.clone(),
            #[cfg(feature = "patched-engine")]
            linger: Default::default(),
        });
        Self {
            #[cfg(feature = "patched-engine")]
            linger: settings.linger.clone(),
            runs: Arc::new(streams::runs::RunHub::new(settings.clone(), tokens.clone())),
            workflows: Arc::new(streams::workflows::WorkflowHub::new(settings, tokens)),
        }
    }
}

/// Builds the Socket.IO server on adapter `A` and the sequencer that reports
/// to it and to the plain WebSocket endpoints: the one place where the
/// backend decides types.
fn wire<A, S>(
    settings: &realtime::Settings,
    adapter: A::State,
    metrics: &Arc<Metrics>,
    streams: &Streams,
    sequencer: impl FnOnce(Arc<dyn FanOut>) -> (Arc<S>, BoxFuture<'static, ()>),
) -> Wired
where
    A: Adapter + DefinedAdapter,
    S: Sequencer,
{
    let (socket_routes, realtime) = realtime::build::<A>(settings, adapter, metrics.clone());
    let fanouts = FanOuts(vec![
        realtime.clone(),
        streams.runs.clone(),
        streams.workflows.clone(),
    ]);
    let (sequencer, run) = sequencer(Arc::new(fanouts));
    let sequencer: Arc<dyn Sequencer> = sequencer;
    realtime.subscribe_through(&sequencer);
    streams.runs.subscribe_through(&sequencer);
    // The same browser-origin check as Socket.IO: a WebSocket upgrade is
    // not stopped by CORS.
    let socket_routes = socket_routes.merge(settings.origins.guard(streams::routes(
        streams.runs.clone(),
        streams.workflows.clone(),
    )));
    // /ws and /ws/workflows hold their writes as the engine does.
    #[cfg(feature = "patched-engine")]
    let _ = streams.linger.set(realtime.write_linger());
    let mut tasks = vec![run];
    tasks.extend(realtime.expire_tokens());
    Wired {
        socket_routes,
        #[cfg(feature = "patched-engine")]
        linger: realtime.write_linger(),
        sockets: realtime,
        sequencer,
        tasks,
    }
}

#[cfg(all(test, feature = "patched-engine"))]
mod tests {
    use std::time::Instant;

    use clap::Parser;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::{connect_async, tungstenite::Message};

    use super::*;
    use crate::protocol::{SessionError, SessionId};

    /// A raw Socket.IO client of `router`, subscribed to `session`.
    async fn subscribed(
        router: Router,
        session: &str,
    ) -> impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = connect_async(url).await.unwrap();
        ws.next().await.unwrap().unwrap(); // the open packet
        ws.send(Message::text("40")).await.unwrap();
        ws.send(Message::text(format!(r#"42["subscribe","{session}"]"#)))
            .await
            .unwrap();
        loop {
            let frame = ws.next().await.unwrap().unwrap().into_text().unwrap();
            if frame.starts_with(r#"42["subscribed""#) {
                return ws;
            }
        }
    }

    /// How long a published event takes to reach `client`.
    async fn arrival(
        emitter: &Emitter,
        client: &mut (
                 impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
             ),
    ) -> Duration {
        let started = Instant::now();
        let session = SessionId::parse("s").unwrap();
        let event = SessionError { error: "x".into() };
        emitter.error(&session, event).await.unwrap();
        loop {
            let frame = client.next().await.unwrap().unwrap().into_text().unwrap();
            if frame.starts_with(r#"42["error""#) {
                return started.elapsed();
            }
        }
    }

    /// Write coalescing is a property of each server's engine: one herald's
    /// hold must not hold another's writes in the same process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_heralds_in_one_process_keep_separate_lingers() {
        let config = Config::parse_from(["herald"]);
        let held = Herald::build(&config).unwrap();
        let quick = Herald::build(&config).unwrap();
        let mut held_client = subscribed(held.herald.router(), "s").await;
        let mut quick_client = subscribed(quick.herald.router(), "s").await;
        held.linger.set(Duration::from_millis(400));
        // Quiet clients: an answer to a client that just spoke is never held.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let quick_took = arrival(&quick.herald.emitter(), &mut quick_client).await;
        let held_took = arrival(&held.herald.emitter(), &mut held_client).await;
        assert!(quick_took < Duration::from_millis(200), "{quick_took:?}");
        assert!(held_took >= Duration::from_millis(300), "{held_took:?}");
    }

    /// `/ws` holds its writes with the engine's linger, and answers its
    /// client at once: a request during a hold ends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ws_holds_events_with_the_engine_linger_but_not_answers() {
        let config = Config::parse_from(["herald"]);
        let held = Herald::build(&config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = held.herald.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let (mut ws, _) = connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap();
        let mut next = async || ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(next().await.contains("connection.established"));
        let auth = r#"{"type":"auth","payload":{"runId":"r1"}}"#;
        ws.send(Message::text(auth)).await.unwrap();
        let mut next = async || ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(next().await.contains("auth.success"));
        held.linger.set(Duration::from_millis(400));
        // Quiet: an answer to a client that just spoke is never held.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let publish = |stage: &'static str| {
            let url = format!("http://127.0.0.1:{port}/api/v1/runs/r1/events");
            async move {
                let body = serde_json::json!({
                    "type": "stage.progress",
                    "payload": { "stageId": stage, "stageName": "Ingest", "progress": 1 },
                });
                let answer = reqwest::Client::new()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success(), "{}", answer.status());
            }
        };
        let started = Instant::now();
        publish("a").await;
        publish("b").await;
        let first = next().await;
        let held_took = started.elapsed();
        assert!(first.contains(r#""stageId":"a""#), "{first}");
        assert!(
            next().await.contains(r#""stageId":"b""#),
            "queued meanwhile, written with it"
        );
        assert!(held_took >= Duration::from_millis(300), "{held_took:?}");

        tokio::time::sleep(Duration::from_millis(500)).await;
        publish("c").await;
        let asked = Instant::now();
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
        let mut next = async || ws.next().await.unwrap().unwrap().into_text().unwrap();
        let frames = [next().await, next().await];
        let answered = asked.elapsed();
        assert!(frames.iter().any(|f| f.contains("pong")), "{frames:?}");
        assert!(
            frames.iter().any(|f| f.contains(r#""stageId":"c""#)),
            "{frames:?}"
        );
        assert!(answered < Duration::from_millis(200), "{answered:?}");
    }
}
