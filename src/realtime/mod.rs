//! The Socket.IO side: it owns the Socket.IO server and the default
//! namespace ([`requests`]), knows which local sockets watch which sessions
//! ([`subscriptions`]), and delivers to them: it is the [`FanOut`] every
//! sequencer reports to.

mod endpoint;
mod requests;
mod runs;
mod subscriptions;
mod tokens;

use std::{
    collections::VecDeque,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use axum::Router;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt};
use socketioxide::{
    BroadcastError, SocketError, SocketIo, SocketIoBuilder,
    adapter::Adapter,
    handler::ConnectHandler,
    socket::{Sid, Socket},
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use tracing::{debug, warn};

use self::{
    requests::{Queued, on_connect, prepare},
    subscriptions::Subscriptions,
    tokens::{Tokens, authenticate},
};
use crate::{
    auth::Verifier,
    cluster::{FanOut, Sequenced, Sequencer},
    http::Origins,
    limits::{RequestLimits, Throttle},
    metrics::Metrics,
    protocol::{Family, SessionId, Topic},
};

/// A socket that has joined a session but not its room yet: it was sent
/// everything up to `floor` (snapshot or replay) and waits for the first
/// live event past it. Until then, events at or below the floor still on
/// their way (from another instance, through Redis) must not reach it twice.
struct Arrival<A: Adapter> {
    socket: Arc<Socket<A>>,
    floor: u64,
}

/// The state socketioxide hands to the handlers.
struct Local<A: Adapter> {
    subscriptions: Arc<Subscriptions>,
    metrics: Arc<Metrics>,
    /// Per session, the sockets joining it (see [`Arrival`]).
    arriving: Arc<DashMap<SessionId, Vec<Arrival<A>>>>,
    /// Set once the sequencer is built: it needs this side as its fan-out.
    sequencer: Arc<OnceLock<Weak<dyn Sequencer>>>,
    /// Per socket and session, the requests waiting for one in progress;
    /// an entry exists while one is in progress.
    queued: Arc<DashMap<(Sid, SessionId), VecDeque<Queued>>>,
    /// The sockets' tokens, when a key is configured.
    tokens: Option<Arc<Tokens>>,
    /// What each socket may ask (see `limits`).
    limits: Arc<RequestLimits>,
    /// Holds back log lines about refused subscribes, which could flood.
    limit_log: Arc<Throttle>,
    /// Sockets watching runs (`subscribe { runId }`).
    runs: Arc<runs::RunWatchers<A>>,
}

impl<A: Adapter> Clone for Local<A> {
    fn clone(&self) -> Self {
        Self {
            subscriptions: self.subscriptions.clone(),
            metrics: self.metrics.clone(),
            arriving: self.arriving.clone(),
            sequencer: self.sequencer.clone(),
            queued: self.queued.clone(),
            tokens: self.tokens.clone(),
            limits: self.limits.clone(),
            limit_log: self.limit_log.clone(),
            runs: self.runs.clone(),
        }
    }
}

impl<A: Adapter> Local<A> {
    /// Stops `socket` joining `session`, if it was.
    fn forget_arrival(&self, session: &SessionId, socket: Sid) {
        self.arriving.remove_if_mut(session, |_, arrivals| {
            arrivals.retain(|a| a.socket.id != socket);
            arrivals.is_empty()
        });
    }
}

/// How the Socket.IO server is set up, whichever adapter it runs on.
pub(crate) struct Settings {
    pub ping_interval: std::time::Duration,
    pub ping_timeout: std::time::Duration,
    pub max_payload: u64,
    pub buffer_packets: usize,
    /// How long a new Engine.IO session may take to join the namespace
    /// before it is closed (socketioxide's default is 45 s, all the while
    /// holding the session's connection slot).
    pub connect_timeout: std::time::Duration,
    /// Honoured with the patched engine only (vendor patch 15).
    #[cfg_attr(not(feature = "patched-engine"), allow(dead_code))]
    pub buffer_bytes: usize,
    pub origins: Origins,
    /// The key connection tokens are checked with; none: anonymous sockets.
    pub tokens: Option<Arc<Verifier>>,
    pub requests: Arc<RequestLimits>,
}

/// How often a line about refused subscribes is logged at most.
const LIMIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes a WebSocket reads at a time; larger frames take several reads.
/// Clients send herald pongs and subscribes, which fit unless the session id
/// is long; every idle socket holds the buffer, and each 128 bytes of it is
/// 3% of an idle socket's memory.
const WS_READ_BUFFER: usize = 128;

/// The Socket.IO server of this instance and its local subscribers.
pub(crate) struct Realtime<A: Adapter> {
    io: SocketIo<A>,
    local: Local<A>,
}

/// Builds the Socket.IO server on adapter `A`, its default namespace, and
/// the `/socket.io/` routes that serve it.
pub(crate) fn build<A: Adapter + DefinedAdapter>(
    settings: &Settings,
    adapter: A::State,
    metrics: Arc<Metrics>,
) -> (Router, Arc<Realtime<A>>) {
    let local = Local {
        subscriptions: Arc::new(Subscriptions::new(metrics.clone())),
        metrics,
        arriving: Arc::default(),
        sequencer: Arc::default(),
        queued: Arc::default(),
        tokens: settings.tokens.clone().map(|v| Arc::new(Tokens::new(v))),
        limits: settings.requests.clone(),
        limit_log: Arc::new(Throttle::new(LIMIT_LOG_EVERY)),
        runs: Arc::default(),
    };
    let (service, io) = SocketIoBuilder::new()
        .ping_interval(settings.ping_interval)
        .ping_timeout(settings.ping_timeout)
        .connect_timeout(settings.connect_timeout)
        .max_payload(settings.max_payload)
        // Polling bodies are held to max_payload by the engine; a WebSocket
        // message (or one frame of it) is held to the same, or one client
        // could make herald buffer 64 MiB per connection.
        .ws_max_message_size(settings.max_payload as usize)
        .ws_max_frame_size(settings.max_payload as usize)
        .max_buffer_size(settings.buffer_packets)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .with_state(local.clone())
        .with_adapter::<A>(adapter)
        .build_svc();
    // A socket that cannot keep up is disconnected rather than left to
    // miss events unawares: its client reconnects and resumes.
    #[cfg(feature = "patched-engine")]
    io.config().engine_config.slow_consumers.close();
    // The same for a client that stops reading large events: bounded in
    // bytes too, or it pins SOCKET_BUFFER_PACKETS times their size.
    #[cfg(feature = "patched-engine")]
    io.config()
        .engine_config
        .max_buffer_bytes
        .set(settings.buffer_bytes);
    // A remote adapter finishes setting the namespace up in the background;
    // until then clients are told the namespace is unknown, and retry.
    // The token check first: a refused socket gets no handlers.
    io.ns(
        "/",
        on_connect::<A>.with(prepare::<A>).with(authenticate::<A>),
    )
    .spawn();
    let routes = endpoint::routes(service, &settings.origins);
    (routes, Arc::new(Realtime { io, local }))
}

impl<A: Adapter> Realtime<A> {
    /// The handle on this server's write linger: socketioxide builds the
    /// engine's config itself, and every copy of it shares the handle.
    #[cfg(feature = "patched-engine")]
    pub(crate) fn write_linger(&self) -> engineioxide::coalesce::Linger {
        self.io.config().engine_config.write_linger.clone()
    }

    /// Closes the transport of each socket as its token expires, for as long
    /// as it is polled; `None` without tokens. Closing the transport (not a
    /// Socket.IO disconnect) lets the client reconnect with a fresh token;
    /// that needs the patched engine, and without it the socket is
    /// disconnected, which stock clients do not reconnect from.
    pub(crate) fn expire_tokens(self: &Arc<Self>) -> Option<BoxFuture<'static, ()>> {
        let tokens = self.local.tokens.clone()?;
        let metrics = self.local.metrics.clone();
        #[cfg(feature = "patched-engine")]
        let close = {
            let sessions = self.io.config().engine_config.sessions.clone();
            move |id| sessions.close(id, engineioxide::DisconnectReason::ClosingServer)
        };
        #[cfg(not(feature = "patched-engine"))]
        let close = {
            let io = self.io.clone();
            move |id| {
                if let Some(socket) = io.get_socket(id) {
                    let _ = socket.disconnect();
                }
            }
        };
        Some(async move { tokens.expire(&metrics, close).await }.boxed())
    }

    /// Gives subscriptions the sequencer that reports to this side.
    pub(crate) fn subscribe_through(&self, sequencer: &Arc<dyn Sequencer>) {
        let _ = self.local.sequencer.set(Arc::downgrade(sequencer));
    }
}

impl<A: Adapter> Realtime<A> {
    /// Sends `event` to the sockets joining its session that do not have it
    /// yet; returns those that now have every event up to it, to join the
    /// room, and how many sockets were arriving (none of them in the room).
    /// Per socket, but only for the first live event after each subscription.
    fn arrive(&self, event: &Sequenced<'_>) -> (Vec<Arc<Socket<A>>>, u32) {
        let mut arrived = Vec::new();
        let Some(mut arrivals) = self.local.arriving.get_mut(&event.topic.id) else {
            return (arrived, 0);
        };
        let arriving = arrivals.len() as u32;
        arrivals.retain(|a| {
            if event.seq <= a.floor {
                return true;
            }
            if a.socket.emit(event.name, event.payload).is_ok() {
                self.local.metrics.events_delivered.inc();
            }
            arrived.push(a.socket.clone());
            false
        });
        let empty = arrivals.is_empty();
        drop(arrivals);
        if empty {
            self.local
                .arriving
                .remove_if(&event.topic.id, |_, arrivals| arrivals.is_empty());
        }
        (arrived, arriving)
    }
}

impl<A: Adapter> FanOut for Realtime<A> {
    fn watches(&self, topic: &Topic) -> bool {
        match topic.family {
            Family::Session => self.local.subscriptions.count(&topic.id) > 0,
            Family::Run => self.local.runs.watches(&topic.id),
            Family::Workflow => false,
        }
    }

    /// Emits to the session's room on this instance, and counts the deliveries.
    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()> {
        async move {
            match event.topic.family {
                Family::Session => {}
                Family::Run => return self.local.runs.deliver(&event, &self.local.metrics),
                Family::Workflow => return,
            }
            let session = &event.topic.id;
            let recipients = self.local.subscriptions.count(session);
            if recipients == 0 {
                return;
            }
            let metrics = &self.local.metrics;
            let (arrived, arriving) = self.arrive(&event);
            let in_room = recipients.saturating_sub(arriving);
            let emitted = self
                .io
                .local()
                .to(session.room())
                .emit(event.name, event.payload)
                .await;
            // After the room's emit, so that an arrival gets this event once.
            for socket in arrived {
                socket.leave(session.arriving_room());
                socket.join(session.room());
            }
            let undelivered = match emitted {
                Ok(()) => 0,
                // Closing sockets, and slow ones whose buffer is full: those
                // lose this event (counted and logged); everyone else has it.
                Err(BroadcastError::Socket(errors)) => {
                    let full = errors
                        .iter()
                        .filter(|e| matches!(e, SocketError::InternalChannelFull))
                        .count();
                    if full > 0 {
                        metrics.dropped_deliveries.inc_by(full as u64);
                        // A large stalled audience would log a line per event.
                        static LOG: Throttle = Throttle::new(std::time::Duration::from_secs(10));
                        if let Some(held_back) = LOG.pass() {
                            warn!(%session, seq = event.seq, sockets = full, lines_held_back = held_back, "socket buffers full: disconnecting slow consumers (they resume on reconnect; herald_dropped_deliveries_total counts them)");
                        }
                    }
                    errors.len() as u32
                }
                // A local broadcast of a JSON payload has no other way to fail.
                Err(e) => {
                    warn!(%session, seq = event.seq, "local delivery failed: {e}");
                    recipients
                }
            };
            let delivered = in_room.saturating_sub(undelivered);
            metrics.events_delivered.inc_by(u64::from(delivered));
        }
        .boxed()
    }
}

/// What the rest of herald asks of the Socket.IO side, whichever adapter it
/// runs on.
pub(crate) trait Sockets: Send + Sync + 'static {
    /// This instance's id in the cluster: its Socket.IO server's id.
    fn instance(&self) -> String;

    /// Sockets subscribed to the session on every instance, where the adapter
    /// can say in time; this instance's otherwise.
    fn subscribers<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, usize> {
        async move { self.subscribers_by_instance(id).await.values().sum() }.boxed()
    }

    /// The session's subscribers, counted per instance id, as
    /// [`Sockets::subscribers`] finds them.
    fn subscribers_by_instance<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, std::collections::BTreeMap<String, usize>>;

    /// The `n` sessions with the most subscribers on this instance.
    fn most_watched(&self, n: usize) -> Vec<(String, u64)>;

    /// Sessions with at least one subscriber on any instance; `None` when the
    /// adapter cannot say now.
    fn sessions_watched(&self) -> BoxFuture<'_, Option<u64>>;

    /// Closes every socket's transport: clients see a transport close and
    /// reconnect, rather than `io server disconnect`, which would stop them.
    fn close_all(&self) -> BoxFuture<'_, ()>;
}

impl<A: Adapter> Sockets for Realtime<A> {
    fn instance(&self) -> String {
        self.io.config().server_id.to_string()
    }

    fn subscribers_by_instance<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, std::collections::BTreeMap<String, usize>> {
        async move {
            let rooms = [id.room(), id.arriving_room()];
            let mut counts = std::collections::BTreeMap::new();
            match self.io.to(rooms).fetch_sockets().await {
                Ok(sockets) => {
                    for socket in sockets {
                        *counts
                            .entry(socket.data().server_id.to_string())
                            .or_default() += 1;
                    }
                }
                Err(e) => {
                    debug!("cluster-wide subscriber count unavailable, counting local ones: {e}");
                    let local = self.local.subscriptions.count(id) as usize;
                    if local > 0 {
                        counts.insert(self.instance(), local);
                    }
                }
            }
            counts
        }
        .boxed()
    }

    fn most_watched(&self, n: usize) -> Vec<(String, u64)> {
        self.local.subscriptions.most_watched(n)
    }

    fn sessions_watched(&self) -> BoxFuture<'_, Option<u64>> {
        async move {
            let rooms = self.io.rooms().await.ok()?;
            let sessions: std::collections::HashSet<&str> =
                rooms.iter().filter_map(|r| SessionId::of_room(r)).collect();
            Some(sessions.len() as u64)
        }
        .boxed()
    }

    fn close_all(&self) -> BoxFuture<'_, ()> {
        self.io.close().boxed()
    }
}

/// How long a request may wait for its socket to count as connected.
const CONNECT_WAIT: Duration = Duration::from_secs(1);

/// Whether the socket counts as connected, waiting a moment if it does not
/// yet. socketioxide sends the client its connect packet a moment before it
/// marks the socket connected, and refuses to emit until then, so a client
/// that subscribes at once can be heard first: its reply would be lost. A
/// socket that is not connected within [`CONNECT_WAIT`] was closed.
async fn connected_soon<A: Adapter>(s: &Socket<A>) -> bool {
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    while !s.connected() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
