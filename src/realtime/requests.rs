//! What a client asks of the default namespace: connecting, `subscribe` and
//! `unsubscribe`, and the replies.
//!
//! socketioxide runs every event handler in a task of its own, so two events
//! from one socket may run in either order, and a `subscribe` sent just before
//! an `unsubscribe` could win. Requests must take effect in the client's
//! order, so they are taken by the [`Requested`] extractor, which socketioxide
//! calls while it reads the packet, in the order the packets arrived. A
//! subscription waits for its snapshot or replay; requests about the same
//! session that follow it wait behind it (in [`Local::queue`]), everything
//! else is done at once, and the reading loop never waits.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Weak},
};

use dashmap::Entry;
use futures_util::future::{BoxFuture, FutureExt};
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, State, TryData},
    handler::{FromMessageParts, Value},
    socket::{DisconnectReason, Sid, Socket},
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Arrival, Local};
use crate::{
    cluster::{
        SequencerError,
        history::{Attached, Start},
    },
    limits::Verdict,
    metrics::Metrics,
    protocol::{
        Ack, Connected, InvalidRequest, RequestError, SessionId, SessionRequest, Subscribed,
        SubscriptionReply, Timestamp,
    },
};

/// A request waiting behind a subscription in the making.
pub(super) type Queued = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>;

impl<A: Adapter> Local<A> {
    /// Runs `request` once the earlier ones about the same socket and session
    /// are done. With none waiting it starts at once, inline: a subscription
    /// whose state is at hand (in memory) completes there, like any other
    /// request, and only one that must wait (for Redis) gets a task, which
    /// then also runs what queues behind it.
    fn queue(&self, key: (Sid, SessionId), request: Queued) {
        // Requests of one socket are taken one at a time, in order, so no
        // other request for this key can arrive between the check and the
        // insert below; the task only ever removes the entry.
        if let Some(mut waiting) = self.queued.get_mut(&key) {
            waiting.push_back(request);
            return;
        }
        let mut first = request();
        if (&mut first).now_or_never().is_some() {
            return;
        }
        self.queued.insert(key.clone(), VecDeque::new());
        let rt = self.clone();
        tokio::spawn(async move {
            first.await;
            loop {
                let next = match rt.queued.entry(key.clone()) {
                    Entry::Occupied(mut waiting) => match waiting.get_mut().pop_front() {
                        Some(request) => request,
                        None => {
                            waiting.remove();
                            return;
                        }
                    },
                    Entry::Vacant(_) => return,
                };
                next().await;
            }
        });
    }
}

/// Runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive.
///
/// One fallback handler rather than one handler per event: socketioxide keeps
/// named handlers in a map on every socket (0.2 KiB for two), where the fallback
/// is a single slot, and [`Requested`] tells the events apart.
pub(super) async fn prepare<A: Adapter>(s: SocketRef<A>) -> Result<(), Infallible> {
    s.on_fallback(async |_: Requested| {});
    s.on_disconnect(on_disconnect::<A>);
    Ok(())
}

pub(super) async fn on_connect<A: Adapter>(s: SocketRef<A>, State(rt): State<Local<A>>) {
    rt.metrics.connections.inc();
    let transport = format!("{:?}", s.transport_type());
    let grant = rt.tokens.as_ref().and_then(|t| t.grant(s.id));
    let sub = grant.as_deref().and_then(|g| g.sub());
    info!(socket = %s.id, %transport, sub, "socket connected");
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
    if let Some(tokens) = &rt.tokens {
        tokens.forget(s.id);
    }
    rt.limits.forget(s.id);
    rt.runs.forget_socket(s.id);
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

    /// The same request about a run (`{ runId }`).
    fn take_run<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: super::runs::RunRequest,
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
        if let Some(why) = rt.tokens.as_ref().and_then(|t| t.forbids(s.id, &request)) {
            return forbid(s, rt, &request.session_id, why, ack);
        }
        let id = &request.session_id;
        if !rt.subscriptions.holds(s.id, id)
            && !rt.limits.may_subscribe(rt.subscriptions.held(s.id))
        {
            if let Some(held_back) = rt.limit_log.pass() {
                warn!(socket = %s.id, session = %id, max = rt.limits.max_subscriptions(), refused_since_last_line = held_back, "subscribe refused: MAX_SUBSCRIPTIONS_PER_SOCKET");
            }
            let why = format!(
                "this socket already holds {} subscriptions (MAX_SUBSCRIPTIONS_PER_SOCKET); unsubscribe from one first",
                rt.limits.max_subscriptions()
            );
            let reply = RequestError::limited(RequestError::TOO_MANY_SUBSCRIPTIONS, why, Some(id));
            return answer_refusal(s, &rt.metrics, &reply, ack);
        }
        let key = (s.id, request.session_id.clone());
        let (s, task_rt) = (s.clone(), rt.clone());
        rt.queue(
            key,
            Box::new(move || subscribe(s, task_rt, request, ack).boxed()),
        );
    }

    fn take_run<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: super::runs::RunRequest,
        ack: AckSender<A>,
    ) {
        let token = request.token();
        if let Some(why) = rt
            .tokens
            .as_ref()
            .and_then(|t| t.forbids_run(s.id, request.run().as_str(), token))
        {
            return super::runs::forbid(s, rt, request.run(), why, ack);
        }
        super::runs::subscribe(s.clone(), rt.clone(), request, ack);
    }
}

impl Request for Unsubscribe {
    const EVENT: &'static str = "unsubscribe";
    /// At once, unless a subscription to the same session is still in the
    /// making (then after it, so that the socket ends unsubscribed) or the
    /// socket does not count as connected yet (see [`super::connected_soon`]).
    fn take<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: SessionRequest,
        ack: AckSender<A>,
    ) {
        let id = request.session_id;
        let key = (s.id, id.clone());
        if rt.queued.contains_key(&key) || !s.connected() {
            let (s, task_rt) = (s.clone(), rt.clone());
            rt.queue(
                key,
                Box::new(move || {
                    async move {
                        if super::connected_soon(&s).await {
                            unsubscribe(&s, &task_rt, &id, ack);
                        }
                    }
                    .boxed()
                }),
            );
        } else {
            unsubscribe(s, rt, &id, ack);
        }
    }

    fn take_run<A: Adapter>(
        s: &Arc<Socket<A>>,
        rt: &Local<A>,
        request: super::runs::RunRequest,
        ack: AckSender<A>,
    ) {
        super::runs::unsubscribe(s, rt, request.run(), ack);
    }
}

/// The extractor that takes `subscribe` and `unsubscribe` as the packet is
/// read (see the module comment for why this happens here and not in the
/// handler); any other event is ignored, as socketioxide ignores an event no
/// handler is named for.
struct Requested;

impl<A: Adapter> FromMessageParts<A> for Requested {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let event = Event::from_message_parts(s, v, ack_id);
        match event.as_deref() {
            Ok(Subscribe::EVENT) => in_order::<A, Subscribe>(s, v, ack_id),
            Ok(Unsubscribe::EVENT) => in_order::<A, Unsubscribe>(s, v, ack_id),
            _ => debug!(socket = %s.id, "event with no handler ignored"),
        }
        Ok(Self)
    }
}

/// Takes the request `C`, in the order the packets arrived.
fn in_order<A: Adapter, C: Request>(s: &Arc<Socket<A>>, v: &mut Value, ack_id: &Option<i64>) {
    let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
    let Ok(TryData(payload)) = TryData::<serde_json::Value>::from_message_parts(s, v, ack_id);
    let Ok(State(rt)) = State::<Local<A>>::from_message_parts(s, v, ack_id) else {
        unreachable!("the Socket.IO server is always built with its state");
    };
    let _span = info_span!("request", socket = %s.id, event = C::EVENT).entered();
    match rt.limits.request(s.id) {
        Verdict::Allowed => {}
        Verdict::Refused { first, tell } => {
            if first {
                warn!(socket = %s.id, "requests refused: over CLIENT_REQUESTS_PER_SEC (logged once per socket)");
            }
            let why = "too many requests from this socket (CLIENT_REQUESTS_PER_SEC); slow down"
                .to_owned();
            let reply = RequestError::limited(RequestError::RATE_LIMITED, why, None);
            if tell {
                answer_refusal(s, &rt.metrics, &reply, ack);
            } else {
                ack_refusal(&reply, ack);
            }
            return;
        }
        Verdict::Disconnect { first } => {
            if first {
                warn!(socket = %s.id, "disconnecting a socket that kept flooding past CLIENT_REQUESTS_PER_SEC");
                let s = s.clone();
                // Not from inside the packet read: closing runs the disconnect handlers.
                tokio::spawn(async move {
                    let _ = s.disconnect();
                });
            }
            return;
        }
    }
    let payload = payload.ok();
    if let Some(run) = super::runs::run_request(payload.as_ref()) {
        match run {
            Ok(request) => C::take_run(s, &rt, request, ack),
            Err(why) => super::runs::refuse(s, &rt, why, ack),
        }
        return;
    }
    match SessionRequest::parse(payload.as_ref()) {
        Ok(request) => C::take(s, &rt, request, ack),
        Err(refusal) => refuse(s, &rt, refusal, ack),
    }
}

/// Asks the sequencer for the snapshot or the replay, and joins with it.
async fn subscribe<A: Adapter>(
    s: Arc<Socket<A>>,
    rt: Local<A>,
    request: SessionRequest,
    ack: AckSender<A>,
) {
    if !super::connected_soon(&s).await {
        return;
    }
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
    let topic = crate::protocol::Topic::session(id);
    sequencer.attach(&topic, start, join).instrument(span).await;
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
            send_error(s, &rt.metrics, &reply);
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
        settled,
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
    if settled {
        s.join(id.room());
    } else {
        s.join(id.arriving_room());
        rt.arriving.entry(id.clone()).or_default().push(Arrival {
            socket: s.clone(),
            floor,
        });
    }
    // It went away meanwhile: its disconnect may have run before the add.
    if !s.connected() && rt.subscriptions.remove(s.id, id) {
        rt.forget_arrival(id, s.id);
        s.leave([id.room(), id.arriving_room()]);
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

/// Answers a subscribe the socket's tokens do not allow: nothing of the
/// session is joined or sent.
fn forbid<A: Adapter>(
    s: &Socket<A>,
    rt: &Local<A>,
    id: &SessionId,
    why: String,
    ack: AckSender<A>,
) {
    rt.metrics.auth_refused("forbidden");
    let grant = rt.tokens.as_ref().and_then(|t| t.grant(s.id));
    info!(session = %id, sub = grant.as_deref().and_then(|g| g.sub()), "subscribe forbidden");
    answer_refusal(s, &rt.metrics, &RequestError::forbidden(id, why), ack);
}

fn refuse<A: Adapter>(s: &Socket<A>, rt: &Local<A>, refusal: InvalidRequest, ack: AckSender<A>) {
    rt.metrics.client_errors.inc();
    info!(%refusal, "refused");
    answer_refusal(s, &rt.metrics, &RequestError::new(&refusal), ack);
}

/// Sends a refused request its `error` (kept for the dashboard) and its ack.
fn answer_refusal<A: Adapter>(
    s: &Socket<A>,
    metrics: &Metrics,
    reply: &RequestError<'_>,
    ack: AckSender<A>,
) {
    send_error(s, metrics, reply);
    ack_refusal(reply, ack);
}

/// Sends the socket an `error` event, and keeps it among the recent refusals.
fn send_error<A: Adapter>(s: &Socket<A>, metrics: &Metrics, reply: &RequestError<'_>) {
    metrics
        .recent_refusals
        .record("socket", reply.code.into(), &reply.error, s.id.to_string());
    if let Err(e) = s.emit("error", reply) {
        debug!("could not send error: {e}");
    }
}

/// Sends a refused request its ack, if the client asked for one.
fn ack_refusal<A: Adapter>(reply: &RequestError<'_>, ack: AckSender<A>) {
    let _ = ack.send(&Ack {
        session_id: reply.session_id,
        error: Some(&reply.error),
        code: Some(reply.code),
        ..Ack::default()
    });
}
