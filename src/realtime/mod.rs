//! The Socket.IO side: it owns the Socket.IO server, the default namespace,
//! `subscribe`/`unsubscribe`, which local sockets watch which sessions, and
//! delivery to them (the [`FanOut`] every sequencer reports to).
//!
//! socketioxide runs every event handler in a task of its own, so two events
//! from one socket may run in either order, and a `subscribe` sent just before
//! an `unsubscribe` could win. Requests must take effect in the client's
//! order, so they are taken by the [`InOrder`] extractor, which socketioxide
//! calls while it reads the packet, in the order the packets arrived. A
//! subscription waits for its snapshot or replay; requests about the same
//! session that follow it wait behind it (in [`Local::queue`]), everything
//! else is done at once, and the reading loop never waits.

mod endpoint;

use std::{
    collections::VecDeque,
    convert::Infallible,
    marker::PhantomData,
    sync::{Arc, OnceLock, Weak},
};

use axum::Router;
use dashmap::{DashMap, Entry};
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
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    cluster::{
        FanOut, Sequenced, Sequencer, SequencerError,
        history::{Attached, Start},
    },
    http::Origins,
    metrics::Metrics,
    protocol::{
        Ack, Connected, InvalidRequest, RequestError, SessionId, SessionRequest, Subscribed,
        SubscriptionReply, Timestamp,
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

    /// Ends all of a socket's subscriptions; returns the sessions they were to.
    fn remove_socket(&self, socket: Sid) -> SmallVec<[SessionId; 1]> {
        let sessions = self
            .per_socket
            .remove(&socket)
            .map(|(_, sessions)| sessions)
            .unwrap_or_default();
        for id in &sessions {
            self.uncount(id);
        }
        sessions
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

/// A request waiting behind a subscription in the making.
type Queued = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>;

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
}

impl<A: Adapter> Clone for Local<A> {
    fn clone(&self) -> Self {
        Self {
            subscriptions: self.subscriptions.clone(),
            metrics: self.metrics.clone(),
            arriving: self.arriving.clone(),
            sequencer: self.sequencer.clone(),
            queued: self.queued.clone(),
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

    /// Runs `request` once the earlier ones about the same socket and session
    /// are done; at once (on a task of its own) when there are none.
    fn queue(&self, key: (Sid, SessionId), request: Queued) {
        match self.queued.entry(key.clone()) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push_back(request),
            Entry::Vacant(idle) => {
                idle.insert(VecDeque::new());
                let rt = self.clone();
                tokio::spawn(async move {
                    let mut next = request;
                    loop {
                        next().await;
                        next = match rt.queued.entry(key.clone()) {
                            Entry::Occupied(mut waiting) => match waiting.get_mut().pop_front() {
                                Some(request) => request,
                                None => {
                                    waiting.remove();
                                    return;
                                }
                            },
                            Entry::Vacant(_) => return,
                        };
                    }
                });
            }
        }
    }
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

impl<A: Adapter> Realtime<A> {
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
        let Some(mut arrivals) = self.local.arriving.get_mut(event.session_id) else {
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
                .remove_if(event.session_id, |_, arrivals| arrivals.is_empty());
        }
        (arrived, arriving)
    }
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
            let delivered = in_room.saturating_sub(undelivered);
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
            let rooms = [id.room(), id.arriving_room()];
            match self.io.to(rooms).fetch_sockets().await {
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

/// Runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive.
async fn prepare<A: Adapter>(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("subscribe", async |_: InOrder<Subscribe>| {});
    s.on("unsubscribe", async |_: InOrder<Unsubscribe>| {});
    s.on_disconnect(on_disconnect::<A>);
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, State(rt): State<Local<A>>) {
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
    State(rt): State<Local<A>>,
) {
    rt.metrics.connections.dec();
    let sessions = rt.subscriptions.remove_socket(s.id);
    for session in &sessions {
        rt.forget_arrival(session, s.id);
    }
    info!(socket = %s.id, ?reason, subscriptions = sessions.len(), "socket disconnected");
}

/// A client request about one session.
trait Request: Send + Sync + 'static {
    const EVENT: &'static str;
    /// Carries out the request, or queues it behind the socket's earlier
    /// requests about the same session.
    fn take<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: SessionRequest,
        ack: AckSender<A>,
    );
}

struct Subscribe;
struct Unsubscribe;

impl Request for Subscribe {
    const EVENT: &'static str = "subscribe";
    /// Always queued: the subscription takes effect once the sequencer has
    /// the snapshot or the replay ready (see `cluster::Sequencer::attach`).
    fn take<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: SessionRequest,
        ack: AckSender<A>,
    ) {
        let key = (s.id, request.session_id.clone());
        let (s, task_rt) = (s.clone(), rt.clone());
        rt.queue(
            key,
            Box::new(move || subscribe(s, task_rt, request, ack).boxed()),
        );
    }
}

impl Request for Unsubscribe {
    const EVENT: &'static str = "unsubscribe";
    /// At once, unless a subscription to the same session is still in the
    /// making: then after it, so that the socket ends unsubscribed.
    fn take<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: SessionRequest,
        ack: AckSender<A>,
    ) {
        let id = request.session_id;
        let key = (s.id, id.clone());
        if rt.queued.contains_key(&key) {
            let (s, task_rt) = (s.clone(), rt.clone());
            rt.queue(
                key,
                Box::new(move || {
                    unsubscribe(&s, &task_rt, &id, ack);
                    futures_util::future::ready(()).boxed()
                }),
            );
        } else {
            unsubscribe(s, rt, &id, ack);
        }
    }
}

/// An extractor that takes the request `C` as the packet is read: see the
/// module comment for why this happens here and not in the handler.
struct InOrder<C>(PhantomData<C>);

impl<A: Adapter, C: Request> FromMessageParts<A> for InOrder<C> {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let ack = AckSender::from_message_parts(s, v, ack_id)?;
        let TryData(payload) = TryData::<serde_json::Value>::from_message_parts(s, v, ack_id)?;
        let Ok(State(rt)) = State::<Local<A>>::from_message_parts(s, v, ack_id) else {
            unreachable!("the Socket.IO server is always built with its state");
        };
        let _span = info_span!("request", socket = %s.id, event = C::EVENT).entered();
        match SessionRequest::parse(payload.ok().as_ref()) {
            Ok(request) => C::take(s, &rt, request, ack),
            Err(refusal) => refuse(s, &rt, refusal, ack),
        }
        Ok(Self(PhantomData))
    }
}

/// Asks the sequencer for the snapshot or the replay, and joins with it.
async fn subscribe<A: Adapter>(
    s: Arc<Socket<A>>,
    rt: Local<A>,
    request: SessionRequest,
    ack: AckSender<A>,
) {
    let Some(sequencer) = rt.sequencer.get().and_then(Weak::upgrade) else {
        // Herald is being dropped.
        return;
    };
    let start = match request.since {
        None => Start::Snapshot,
        Some(since) => Start::Resume {
            since,
            epoch: request.epoch,
        },
    };
    let id = request.session_id;
    let span = info_span!("subscribe", socket = %s.id, session = %id);
    let join = {
        let (id, span) = (id.clone(), span.clone());
        Box::new(move |result| span.in_scope(|| joined(&s, &rt, &id, result, ack)))
    };
    sequencer.attach(&id, start, join).instrument(span).await;
}

/// Makes a subscription take effect: see [`crate::cluster::Join`]. Only
/// queues packets, never waits.
fn joined<A: Adapter>(
    s: &Arc<Socket<A>>,
    rt: &Local<A>,
    id: &SessionId,
    result: Result<Attached, SequencerError>,
    ack: AckSender<A>,
) {
    let attached = match result {
        Ok(attached) => attached,
        Err(e) => {
            let why = e.to_string();
            warn!(%why, "subscribe failed");
            let reply = RequestError::unavailable(id, why);
            if let Err(e) = s.emit("error", &reply) {
                debug!("could not send error: {e}");
            }
            let _ = ack.send(&Ack {
                session_id: Some(id),
                error: Some(&reply.error),
                code: Some(reply.code),
                ..Ack::default()
            });
            return;
        }
    };
    if !s.connected() {
        return;
    }
    let added = rt.subscriptions.add(s.id, id);
    let Attached {
        seq,
        epoch,
        events,
        recovery,
        caught_up,
    } = attached;
    let lost = recovery.and_then(|r| r.lost);
    if let Some(r) = recovery {
        rt.metrics.resumed(r.lost, events.len());
    }
    info!(seq, %epoch, replayed = events.len(), lost = ?lost, "subscribed");
    let reply = Subscribed {
        session_id: id,
        timestamp: Timestamp::now(),
        seq,
        epoch,
        recovered: recovery.map(|r| r.lost.is_none()),
        replayed: recovery.map(|_| events.len()),
        reason: lost,
    };
    if let Err(e) = s.emit("subscribed", &reply) {
        warn!("could not send subscribed: {e}");
    }
    let _ = ack.send(&Ack {
        ok: true,
        session_id: Some(id),
        seq: Some(seq),
        epoch: Some(epoch),
        ..Ack::default()
    });
    // A socket already subscribed has had the live events it would catch up.
    let live = if added { caught_up } else { Vec::new() };
    let mut floor = seq;
    for event in events.iter().chain(&live) {
        floor = floor.max(event.seq);
        if let Err(e) = s.emit(event.name, &*event.payload) {
            debug!(seq = event.seq, "could not send a held event: {e}");
        }
    }
    if !added {
        return;
    }
    s.join(id.arriving_room());
    rt.arriving.entry(id.clone()).or_default().push(Arrival {
        socket: s.clone(),
        floor,
    });
    // It went away meanwhile: its disconnect may have run before the add.
    if !s.connected() && rt.subscriptions.remove(s.id, id) {
        rt.forget_arrival(id, s.id);
    }
}

fn unsubscribe<A: Adapter>(s: &Socket<A>, rt: &Local<A>, id: &SessionId, ack: AckSender<A>) {
    let removed = rt.subscriptions.remove(s.id, id);
    if removed {
        rt.forget_arrival(id, s.id);
        s.leave([id.room(), id.arriving_room()]);
    }
    info!(session = %id, removed, "unsubscribed");
    let reply = SubscriptionReply {
        session_id: id,
        timestamp: Timestamp::now(),
    };
    if let Err(e) = s.emit("unsubscribed", &reply) {
        warn!("could not send unsubscribed: {e}");
    }
    let _ = ack.send(&Ack {
        ok: true,
        session_id: Some(id),
        ..Ack::default()
    });
}

fn refuse<A: Adapter>(s: &Socket<A>, rt: &Local<A>, refusal: InvalidRequest, ack: AckSender<A>) {
    rt.metrics.client_errors.inc();
    info!(%refusal, "refused");
    let reply = RequestError::new(&refusal);
    if let Err(e) = s.emit("error", &reply) {
        warn!("could not send error: {e}");
    }
    let _ = ack.send(&Ack {
        error: Some(&reply.error),
        code: Some(reply.code),
        ..Ack::default()
    });
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

        assert_eq!(subs.remove_socket(a).len(), 2);
        assert_eq!(subs.remove_socket(a).len(), 0);
        assert_eq!(levels(), (0, 0));
    }
}
