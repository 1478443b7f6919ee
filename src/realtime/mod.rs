//! The Socket.IO side: it owns the Socket.IO server, the default namespace,
//! `subscribe`/`unsubscribe`, which local sockets watch which sessions, and
//! delivery to them (the [`FanOut`] every sequencer reports to).
//!
//! socketioxide runs every event handler in a task of its own, so two events
//! from one socket may run in either order, and a `subscribe` sent just before
//! an `unsubscribe` could win. Room changes must follow the client's order, so
//! they are made by the [`InOrder`] extractor, which socketioxide calls while
//! it reads the packet, in the order the packets arrived. Everything done
//! there is synchronous (join, leave, emit, ack only queue packets), so the
//! reading loop never waits.

mod endpoint;

use std::{convert::Infallible, marker::PhantomData, sync::Arc};

use axum::Router;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt};
use smallvec::SmallVec;
use socketioxide::{
    BroadcastError, SocketError, SocketIo, SocketIoBuilder,
    adapter::Adapter,
    extract::{AckSender, SocketRef, State, TryData},
    handler::{ConnectHandler, FromMessageParts, Value},
    socket::{DisconnectReason, Sid, Socket},
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use tracing::{debug, info, info_span, warn};

use crate::{
    cluster::{FanOut, Sequenced},
    http::Origins,
    metrics::Metrics,
    protocol::{
        Ack, Connected, InvalidRequest, RequestError, SessionId, SessionRequest, SubscriptionReply,
        Timestamp,
    },
};

/// Which sessions the sockets of this instance watch: counted per session,
/// so that publishing and the stats never have to walk the rooms, and listed
/// per socket, so that a socket's subscriptions end with it.
///
/// The lists live here rather than in each socket's extensions: a map entry
/// is a fraction of what an extension map and a set cost on every socket,
/// and a socket's first session is kept in the entry itself.
///
/// The gauges `herald_subscriptions` and `herald_sessions_watched` follow
/// every change, so that nothing has to count them when asked.
pub(crate) struct Subscriptions {
    per_session: DashMap<SessionId, u32>,
    per_socket: DashMap<Sid, SmallVec<[SessionId; 1]>>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            per_session: DashMap::new(),
            per_socket: DashMap::new(),
            metrics,
        }
    }

    /// Returns whether the socket was not subscribed yet.
    fn add(&self, socket: Sid, id: &SessionId) -> bool {
        let mut sessions = self.per_socket.entry(socket).or_default();
        if sessions.contains(id) {
            return false;
        }
        sessions.push(id.clone());
        let mut watchers = self.per_session.entry(id.clone()).or_default();
        if *watchers == 0 {
            self.metrics.sessions_watched.inc();
        }
        *watchers += 1;
        self.metrics.subscriptions.inc();
        true
    }

    /// Returns whether the socket was subscribed.
    fn remove(&self, socket: Sid, id: &SessionId) -> bool {
        let mut removed = false;
        self.per_socket.remove_if_mut(&socket, |_, sessions| {
            if let Some(i) = sessions.iter().position(|s| s == id) {
                sessions.swap_remove(i);
                removed = true;
            }
            sessions.is_empty()
        });
        if removed {
            self.uncount(id);
        }
        removed
    }

    /// Ends all of a socket's subscriptions; returns how many there were.
    fn remove_socket(&self, socket: Sid) -> usize {
        let sessions = self
            .per_socket
            .remove(&socket)
            .map(|(_, sessions)| sessions)
            .unwrap_or_default();
        for id in &sessions {
            self.uncount(id);
        }
        sessions.len()
    }

    fn uncount(&self, id: &SessionId) {
        let emptied = self
            .per_session
            .remove_if_mut(id, |_, n| {
                *n -= 1;
                *n == 0
            })
            .is_some();
        if emptied {
            self.metrics.sessions_watched.dec();
        }
        self.metrics.subscriptions.dec();
    }

    /// Local sockets subscribed to the session.
    fn count(&self, id: &SessionId) -> u32 {
        self.per_session.get(id).map_or(0, |n| *n)
    }
}

/// The state socketioxide hands to the handlers.
#[derive(Clone)]
struct Local {
    subscriptions: Arc<Subscriptions>,
    metrics: Arc<Metrics>,
}

/// How the Socket.IO server is set up, whichever adapter it runs on.
pub(crate) struct Settings {
    pub ping_interval: std::time::Duration,
    pub ping_timeout: std::time::Duration,
    pub max_payload: u64,
    pub buffer_packets: usize,
    pub origins: Origins,
}

/// Bytes a WebSocket reads at a time; larger frames take several reads.
/// Clients send herald pongs and subscribes, which fit unless the session id
/// is long; every idle socket holds the buffer, and each 128 bytes of it is
/// 3% of an idle socket's memory.
const WS_READ_BUFFER: usize = 128;

/// The Socket.IO server of this instance and its local subscribers.
pub(crate) struct Realtime<A: Adapter> {
    io: SocketIo<A>,
    local: Local,
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
    };
    let (service, io) = SocketIoBuilder::new()
        .ping_interval(settings.ping_interval)
        .ping_timeout(settings.ping_timeout)
        .max_payload(settings.max_payload)
        .max_buffer_size(settings.buffer_packets)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .with_state(local.clone())
        .with_adapter::<A>(adapter)
        .build_svc();
    // A remote adapter finishes setting the namespace up in the background;
    // until then clients are told the namespace is unknown, and retry.
    io.ns("/", on_connect::<A>.with(prepare::<A>)).spawn();
    let routes = endpoint::routes(service, &settings.origins);
    (routes, Arc::new(Realtime { io, local }))
}

impl<A: Adapter> FanOut for Realtime<A> {
    fn watches(&self, session: &SessionId) -> bool {
        self.local.subscriptions.count(session) > 0
    }

    /// Emits to the session's room on this instance, and counts the deliveries.
    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()> {
        async move {
            let session = event.session_id;
            let recipients = self.local.subscriptions.count(session);
            if recipients == 0 {
                return;
            }
            let metrics = &self.local.metrics;
            let emitted = self
                .io
                .local()
                .to(session.room())
                .emit(event.name, event.payload)
                .await;
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
                        warn!(%session, seq = event.seq, sockets = full, "socket buffers full: event dropped for slow consumers");
                    }
                    errors.len() as u32
                }
                // A local broadcast of a JSON payload has no other way to fail.
                Err(e) => {
                    warn!(%session, seq = event.seq, "local delivery failed: {e}");
                    recipients
                }
            };
            let delivered = recipients.saturating_sub(undelivered);
            metrics.events_delivered.inc_by(u64::from(delivered));
        }
        .boxed()
    }
}

/// What the rest of herald asks of the Socket.IO side, whichever adapter it
/// runs on.
pub(crate) trait Sockets: Send + Sync + 'static {
    /// Sockets subscribed to the session on every instance, where the adapter
    /// can say in time; this instance's otherwise.
    fn subscribers<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, usize>;

    /// Sessions with at least one subscriber on any instance; `None` when the
    /// adapter cannot say now.
    fn sessions_watched(&self) -> BoxFuture<'_, Option<u64>>;

    /// Closes every socket's transport: clients see a transport close and
    /// reconnect, rather than `io server disconnect`, which would stop them.
    fn close_all(&self) -> BoxFuture<'_, ()>;
}

impl<A: Adapter> Sockets for Realtime<A> {
    fn subscribers<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, usize> {
        async move {
            match self.io.to(id.room()).fetch_sockets().await {
                Ok(sockets) => sockets.len(),
                Err(e) => {
                    debug!("cluster-wide subscriber count unavailable, counting local ones: {e}");
                    self.local.subscriptions.count(id) as usize
                }
            }
        }
        .boxed()
    }

    fn sessions_watched(&self) -> BoxFuture<'_, Option<u64>> {
        async move {
            let rooms = self.io.rooms().await.ok()?;
            Some(rooms.iter().filter(|r| SessionId::is_room(r)).count() as u64)
        }
        .boxed()
    }

    fn close_all(&self) -> BoxFuture<'_, ()> {
        self.io.close().boxed()
    }
}

/// Runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive.
async fn prepare<A: Adapter>(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("subscribe", async |_: InOrder<Subscribe>| {});
    s.on("unsubscribe", async |_: InOrder<Unsubscribe>| {});
    s.on_disconnect(on_disconnect::<A>);
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, State(rt): State<Local>) {
    rt.metrics.connections.inc();
    let transport = format!("{:?}", s.transport_type());
    info!(socket = %s.id, %transport, "socket connected");
    let hello = Connected {
        socket_id: s.id.as_str(),
        timestamp: Timestamp::now(),
    };
    if let Err(e) = s.emit("connected", &hello) {
        debug!(socket = %s.id, "could not send connected: {e}");
    }
}

async fn on_disconnect<A: Adapter>(
    s: SocketRef<A>,
    reason: DisconnectReason,
    State(rt): State<Local>,
) {
    rt.metrics.connections.dec();
    let subscriptions = rt.subscriptions.remove_socket(s.id);
    info!(socket = %s.id, ?reason, subscriptions, "socket disconnected");
}

/// A room change a client asks for.
trait RoomChange: Send + Sync + 'static {
    const EVENT: &'static str;
    const REPLY: &'static str;
    /// Makes the change; returns whether the socket's membership changed.
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Local) -> bool;
}

struct Subscribe;
struct Unsubscribe;

impl RoomChange for Subscribe {
    const EVENT: &'static str = "subscribe";
    const REPLY: &'static str = "subscribed";
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Local) -> bool {
        let added = rt.subscriptions.add(s.id, id);
        if added {
            s.join(id.room());
        }
        added
    }
}

impl RoomChange for Unsubscribe {
    const EVENT: &'static str = "unsubscribe";
    const REPLY: &'static str = "unsubscribed";
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Local) -> bool {
        let removed = rt.subscriptions.remove(s.id, id);
        if removed {
            s.leave(id.room());
        }
        removed
    }
}

/// An extractor that performs the room change `C` as the packet is read: see
/// the module comment for why the work happens here and not in the handler.
struct InOrder<C>(PhantomData<C>);

impl<A: Adapter, C: RoomChange> FromMessageParts<A> for InOrder<C> {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let ack = AckSender::from_message_parts(s, v, ack_id)?;
        let TryData(payload) = TryData::<serde_json::Value>::from_message_parts(s, v, ack_id)?;
        let Ok(State(rt)) = State::<Local>::from_message_parts(s, v, ack_id) else {
            unreachable!("the Socket.IO server is always built with its state");
        };
        let _span = info_span!("room", socket = %s.id, event = C::EVENT).entered();
        match SessionRequest::parse(payload.ok().as_ref()) {
            Ok(request) => change_room::<A, C>(s, &rt, &request.session_id, ack),
            Err(refusal) => refuse(s, &rt, refusal, ack),
        }
        Ok(Self(PhantomData))
    }
}

fn change_room<A: Adapter, C: RoomChange>(
    s: &Socket<A>,
    rt: &Local,
    id: &SessionId,
    ack: AckSender<A>,
) {
    let changed = C::apply(s, id, rt);
    info!(session = %id, changed, "{}", C::REPLY);
    let reply = SubscriptionReply {
        session_id: id,
        timestamp: Timestamp::now(),
    };
    if let Err(e) = s.emit(C::REPLY, &reply) {
        warn!("could not send {}: {e}", C::REPLY);
    }
    let answer = Ack {
        ok: true,
        session_id: Some(id),
        error: None,
    };
    let _ = ack.send(&answer);
}

fn refuse<A: Adapter>(s: &Socket<A>, rt: &Local, refusal: InvalidRequest, ack: AckSender<A>) {
    rt.metrics.client_errors.inc();
    info!(%refusal, "refused");
    let reply = RequestError::new(&refusal);
    let answer = Ack {
        ok: false,
        session_id: None,
        error: Some(&reply.error),
    };
    if let Err(e) = s.emit("error", &reply) {
        warn!("could not send error: {e}");
    }
    let _ = ack.send(&answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse(id).unwrap()
    }

    #[test]
    fn subscriptions_are_counted_per_session_and_end_with_their_socket() {
        let metrics = Arc::new(Metrics::default());
        let subs = Subscriptions::new(metrics.clone());
        let levels = || (metrics.subscriptions.get(), metrics.sessions_watched.get());
        let (a, b) = (Sid::new(), Sid::new());
        assert!(subs.add(a, &session("s1")));
        assert!(
            !subs.add(a, &session("s1")),
            "subscribing twice counts once"
        );
        assert!(subs.add(a, &session("s2")));
        assert!(subs.add(b, &session("s1")));
        assert_eq!(subs.count(&session("s1")), 2);
        assert_eq!(levels(), (3, 2));

        assert!(subs.remove(b, &session("s1")));
        assert!(!subs.remove(b, &session("s1")));
        assert_eq!(subs.count(&session("s1")), 1);

        assert_eq!(subs.remove_socket(a), 2);
        assert_eq!(subs.remove_socket(a), 0);
        assert_eq!(levels(), (0, 0));
    }
}
