//! The Socket.IO side: the default namespace, `subscribe`/`unsubscribe`, and
//! which local sockets watch which sessions.
//!
//! socketioxide runs every event handler in a task of its own, so two events
//! from one socket may run in either order, and a `subscribe` sent just before
//! an `unsubscribe` could win. Room changes must follow the client's order, so
//! they are made by the [`InOrder`] extractor, which socketioxide calls while
//! it reads the packet, in the order the packets arrived. Everything done
//! there is synchronous (join, leave, emit, ack only queue packets), so the
//! reading loop never waits.

pub mod endpoint;

use std::{
    convert::Infallible,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use socketioxide::{
    BroadcastError, SocketError, SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, State, TryData},
    handler::{ConnectHandler, FromMessageParts, Value},
    socket::{DisconnectReason, Sid, Socket},
};
use socketioxide_core::adapter::{DefinedAdapter, Spawnable};
use tracing::{debug, info, info_span, warn};

use crate::{
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
#[derive(Default)]
pub struct Subscriptions {
    per_session: DashMap<SessionId, u32>,
    per_socket: DashMap<Sid, SmallVec<[SessionId; 1]>>,
    total: AtomicU64,
}

impl Subscriptions {
    /// Returns whether the socket was not subscribed yet.
    fn add(&self, socket: Sid, id: &SessionId) -> bool {
        let mut sessions = self.per_socket.entry(socket).or_default();
        if sessions.contains(id) {
            return false;
        }
        sessions.push(id.clone());
        *self.per_session.entry(id.clone()).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
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
        self.per_session.remove_if_mut(id, |_, n| {
            *n -= 1;
            *n == 0
        });
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Local sockets subscribed to the session.
    pub fn count(&self, id: &SessionId) -> u32 {
        self.per_session.get(id).map_or(0, |n| *n)
    }

    /// Sessions with at least one local subscriber.
    pub fn sessions(&self) -> usize {
        self.per_session.len()
    }

    /// Socket-session pairs on this instance.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The state socketioxide hands to the handlers.
#[derive(Clone)]
pub struct Realtime {
    pub subscriptions: Arc<Subscriptions>,
    pub metrics: Arc<Metrics>,
}

/// Registers the default namespace. A remote adapter finishes setting it up
/// in the background; until then clients are told the namespace is unknown
/// and retry.
pub fn attach<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) {
    io.ns("/", on_connect::<A>.with(prepare::<A>)).spawn();
}

/// Hands a session's event to this instance's subscribers of it, and counts
/// the deliveries. Returns how many sockets took it.
pub async fn deliver<A: Adapter>(
    io: &SocketIo<A>,
    rt: &Realtime,
    session: &SessionId,
    name: &str,
    payload: &RawValue,
) -> Result<u32, BroadcastError> {
    let recipients = rt.subscriptions.count(session);
    if recipients == 0 {
        return Ok(0);
    }
    let undelivered = match io.local().to(session.room()).emit(name, payload).await {
        Ok(()) => 0,
        // Closing sockets, and slow ones whose buffer is full: those lose
        // this event (counted and logged); everyone else has it.
        Err(BroadcastError::Socket(errors)) => {
            let full = errors
                .iter()
                .filter(|e| matches!(e, SocketError::InternalChannelFull))
                .count();
            if full > 0 {
                rt.metrics.dropped_deliveries.inc_by(full as u64);
                warn!(%session, sockets = full, "socket buffers full: event dropped for slow consumers");
            }
            errors.len() as u32
        }
        Err(e) => return Err(e),
    };
    let delivered = recipients.saturating_sub(undelivered);
    rt.metrics.events_delivered.inc_by(u64::from(delivered));
    Ok(delivered)
}

/// Runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive.
async fn prepare<A: Adapter>(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on("subscribe", async |_: InOrder<Subscribe>| {});
    s.on("unsubscribe", async |_: InOrder<Unsubscribe>| {});
    s.on_disconnect(on_disconnect::<A>);
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, State(rt): State<Realtime>) {
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
    State(rt): State<Realtime>,
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
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Realtime) -> bool;
}

struct Subscribe;
struct Unsubscribe;

impl RoomChange for Subscribe {
    const EVENT: &'static str = "subscribe";
    const REPLY: &'static str = "subscribed";
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Realtime) -> bool {
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
    fn apply<A: Adapter>(s: &Socket<A>, id: &SessionId, rt: &Realtime) -> bool {
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
        let Ok(State(rt)) = State::<Realtime>::from_message_parts(s, v, ack_id) else {
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
    rt: &Realtime,
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

fn refuse<A: Adapter>(s: &Socket<A>, rt: &Realtime, refusal: InvalidRequest, ack: AckSender<A>) {
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
        let subs = Subscriptions::default();
        let (a, b) = (Sid::new(), Sid::new());
        assert!(subs.add(a, &session("s1")));
        assert!(
            !subs.add(a, &session("s1")),
            "subscribing twice counts once"
        );
        assert!(subs.add(a, &session("s2")));
        assert!(subs.add(b, &session("s1")));
        assert_eq!((subs.count(&session("s1")), subs.total()), (2, 3));

        assert!(subs.remove(b, &session("s1")));
        assert!(!subs.remove(b, &session("s1")));
        assert_eq!(subs.count(&session("s1")), 1);

        assert_eq!(subs.remove_socket(a), 2);
        assert_eq!(subs.remove_socket(a), 0);
        assert_eq!((subs.sessions(), subs.total()), (0, 0));
    }
}
