//! Plain WebSocket endpoints beside Socket.IO, for the seed systems whose
//! clients speak plain JSON frames: ResearchFlow's `/ws` ([`runs`]) and
//! MeatyMusic's `/ws/workflows[/{runId}]` ([`workflows`]). Each is a
//! [`FanOut`](crate::cluster::FanOut) for its family, so events reach them
//! through the same sequencer, history and Redis path as sessions.
//!
//! Lean per connection, since idle clients are most of them: one task per
//! connection (reading, writing and the heartbeat in one loop), a bounded
//! queue of frames that share their bytes (an event is serialized once per
//! publish, not per client), a small read buffer, and a few words of state.

pub(crate) mod runs;
pub(crate) mod workflows;

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt, task::AtomicWaker};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tracing::debug;

use crate::{limits::Admitted, metrics::Metrics};

/// How the plain WebSocket endpoints treat their clients.
pub(crate) struct Settings {
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    /// Frames larger than this close the connection (1009).
    pub max_payload: usize,
    /// Frames a client may have waiting; a client that falls further behind
    /// is closed (it resumes with `since`).
    pub buffer_frames: usize,
    pub metrics: Arc<Metrics>,
    /// The Socket.IO engine's write linger, which `crate::saturation` sets;
    /// given once the engine is built, after these settings.
    #[cfg(feature = "patched-engine")]
    pub linger: Arc<std::sync::OnceLock<engineioxide::coalesce::Linger>>,
}

/// Bytes read at a time, as on the Socket.IO path: every idle connection
/// holds the buffer, and what it reads most is the heartbeat's pongs. A
/// longer request (an `auth` with a token) takes a few reads; the buffer
/// grows to fit a frame, so nothing is refused for it.
const READ_BUFFER: usize = 128;

/// A connection as the rest of herald sees it: where its frames go.
///
/// A queue of its own rather than an mpsc channel: a channel allocates its
/// first block of slots (a kilobyte for 32 frames) up front, held by every
/// idle connection, where an empty `VecDeque` holds nothing. And the
/// connection wakes only when it asked to: while it holds its writes (see
/// [`serve`]) it does not register, so frames queued meanwhile do not wake
/// it one by one.
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    /// Frames a client may have waiting.
    limit: usize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// Its queue overflowed: it gets nothing more and is closed at the next
    /// heartbeat, so it never sees a gap it does not know of.
    kicked: bool,
    /// Its connection ended: nothing more is kept for it.
    closed: bool,
}

impl Outbox {
    fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            limit: limit.max(1),
        }
    }

    /// Queues a frame; false when the client is gone or too far behind.
    pub(crate) fn offer(&self, frame: &Utf8Bytes) -> bool {
        let mut queue = self.queue.lock().expect("not poisoned");
        if queue.kicked || queue.closed {
            return false;
        }
        if queue.frames.len() >= self.limit {
            queue.kicked = true;
            queue.frames = VecDeque::new();
            debug!("plain WebSocket client too far behind: closing it");
            return false;
        }
        queue.frames.push_back(frame.clone());
        drop(queue);
        self.waker.wake();
        true
    }

    /// Ready when frames are queued; registers to be woken otherwise.
    fn poll_queued(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.queue.lock().expect("not poisoned").frames.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Everything queued, leaving the queue without an allocation.
    fn take(&self) -> VecDeque<Utf8Bytes> {
        std::mem::take(&mut self.queue.lock().expect("not poisoned").frames)
    }

    fn kicked(&self) -> bool {
        self.queue.lock().expect("not poisoned").kicked
    }

    fn close(&self) {
        let mut queue = self.queue.lock().expect("not poisoned");
        queue.closed = true;
        queue.frames = VecDeque::new();
    }
}

/// What a connection does with what its client sends.
pub(crate) trait Handler: Send {
    /// Answers a text frame: the replies to send at once.
    fn on_text(&mut self, text: &str) -> impl Future<Output = Vec<String>> + Send;
    /// The reply to a binary frame, if any.
    fn on_binary(&mut self) -> Option<String>;
    /// Until when (Unix seconds) the client's token lets it stay connected;
    /// checked at every heartbeat tick, which is cheaper than a timer per
    /// client and late by at most one ping interval.
    fn until(&self) -> u64;
}

/// Answers a WebSocket upgrade request and serves the connection with the
/// handler `make` builds once it is open.
pub(crate) fn upgrade<H, F>(mut req: Request, settings: &Arc<Settings>, make: F) -> Response
where
    H: Handler + 'static,
    F: FnOnce(Arc<Outbox>) -> H,
{
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    // The client is registered before the handshake is answered, so an
    // event published once the client sees it open reaches it: frames wait
    // in its queue until the connection is up.
    let outbox = Arc::new(Outbox::new(settings.buffer_frames));
    let mut handler = make(outbox.clone());
    let settings = settings.clone();
    // The connection's place in MAX_CONNECTIONS and the per-address cap
    // (taken by the admission layer) lasts as long as the connection, not
    // the upgrade request.
    let admitted = req.extensions().get::<Admitted>().cloned();
    // Taken from the request, which is not kept: whatever the task captures
    // it holds for the connection's whole life.
    let upgrading = hyper::upgrade::on(&mut req);
    let task = async move {
        let _admitted = admitted;
        // On failure the handler is dropped here, which unregisters it.
        let Ok(upgraded) = upgrading.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(settings.max_payload))
            .max_frame_size(Some(settings.max_payload));
        // Boxed, and so freed once built: awaited inline, the building's
        // state (368 bytes) would be part of every idle connection's task.
        let mut ws = Box::pin(WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        ))
        .await;
        // The stream and the handler live here and `serve` borrows them:
        // moved into it, each would take its room twice in the task.
        serve(&mut ws, &outbox, &settings, &mut handler).await;
        outbox.close();
    };
    tokio::spawn(task);
    let accept = derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64"),
        )
        .body(Body::empty())
        .expect("constant parts")
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What woke a connection's loop.
enum Woke {
    Incoming(Option<Result<Message, tungstenite::Error>>),
    Queued,
    HoldOver,
    Beat,
}

/// The connection's one loop: frames in, frames out, heartbeat.
///
/// Frames queued together are written together, with one flush: each flush
/// is a `send` whose fixed cost, not the bytes, is most of a delivery's CPU.
/// While herald is saturated the write linger (see `crate::saturation`)
/// stretches that: the first frames are held for up to the linger, the
/// queue is not read meanwhile, and what arrived is flushed at once at its
/// end, as the Socket.IO transport does (vendor/engineioxide coalesce.rs).
/// Answers are never held: a client that spoke within the linger may be
/// waiting for one.
///
/// Its state is part of every idle connection's task, so what is rare (a
/// client's request, the heartbeat, a close) runs boxed, its state allocated
/// only while it runs; only the writing of queued frames, the hot path, is
/// awaited inline, in a few words.
async fn serve<H: Handler>(ws: &mut Ws, outbox: &Outbox, settings: &Settings, handler: &mut H) {
    // A timer in the task rather than an `Interval`, which boxes its own.
    let beat = tokio::time::sleep(settings.ping_interval);
    tokio::pin!(beat);
    let mut last_heard = Instant::now();
    // Boxed: it exists only under load, and every connection holds the slot.
    let mut hold: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let woke = tokio::select! {
            incoming = ws.next() => Woke::Incoming(incoming),
            () = std::future::poll_fn(|cx| outbox.poll_queued(cx)), if hold.is_none() => Woke::Queued,
            () = async { hold.as_mut().expect("guarded").await }, if hold.is_some() => Woke::HoldOver,
            () = &mut beat => Woke::Beat,
        };
        let open = match woke {
            Woke::Incoming(incoming) => {
                last_heard = Instant::now();
                // The client may be waiting: what was held goes out at the
                // next turn, unheld, as `last_heard` is recent.
                hold = None;
                Box::pin(answer(ws, handler, incoming)).await
            }
            Woke::Queued => {
                feed_queued(ws, outbox).await.is_ok()
                    && match linger(settings, last_heard) {
                        Some(linger) => {
                            hold = Some(Box::pin(tokio::time::sleep(linger)));
                            true
                        }
                        None => ws.flush().await.is_ok(),
                    }
            }
            Woke::HoldOver => {
                // What waited out a hold is not held again.
                hold = None;
                feed_queued(ws, outbox).await.is_ok() && ws.flush().await.is_ok()
            }
            Woke::Beat => {
                beat.as_mut()
                    .reset(tokio::time::Instant::now() + settings.ping_interval);
                Box::pin(heartbeat(ws, outbox, settings, handler.until(), last_heard)).await
            }
        };
        if !open {
            break;
        }
    }
}

/// Answers what the client sent; false when the connection is to end.
async fn answer<H: Handler>(
    ws: &mut Ws,
    handler: &mut H,
    incoming: Option<Result<Message, tungstenite::Error>>,
) -> bool {
    let replies = match incoming {
        Some(Ok(Message::Text(text))) => handler.on_text(text.as_str()).await,
        Some(Ok(Message::Binary(_))) => handler.on_binary().into_iter().collect(),
        Some(Ok(Message::Close(_))) | None => return false,
        Some(Ok(_)) => Vec::new(),
        Some(Err(tungstenite::Error::Capacity(e))) => {
            debug!("plain WebSocket frame over MAX_PAYLOAD_BYTES: {e}");
            close(ws, CloseCode::Size, "frame over MAX_PAYLOAD_BYTES").await;
            return false;
        }
        Some(Err(_)) => return false,
    };
    for reply in replies {
        if ws.feed(Message::text(reply)).await.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}

/// A heartbeat tick: closes a client whose token expired, that fell too far
/// behind or that went silent, and pings the others; false when closed.
async fn heartbeat(
    ws: &mut Ws,
    outbox: &Outbox,
    settings: &Settings,
    until: u64,
    last_heard: Instant,
) -> bool {
    if until <= crate::auth::unix_now() {
        debug!("plain WebSocket client's token expired: closing it");
        close(ws, CloseCode::Policy, "token expired").await;
        return false;
    }
    if outbox.kicked() {
        close(ws, CloseCode::Again, "too far behind").await;
        return false;
    }
    if last_heard.elapsed() >= settings.client_timeout {
        debug!("plain WebSocket client silent for too long: closing it");
        return false;
    }
    ws.send(Message::Ping(Default::default())).await.is_ok()
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    let _ = ws
        .close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await;
}

/// Hands every queued frame to the socket, unflushed. Awaited inline on
/// every delivery, so it keeps no more than the frames' iterator: it waits
/// only for the socket to take a frame, which it nearly always does at once.
async fn feed_queued(ws: &mut Ws, outbox: &Outbox) -> Result<(), tungstenite::Error> {
    for frame in outbox.take() {
        std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
        ws.start_send_unpin(Message::Text(frame))?;
    }
    Ok(())
}

/// How long to hold frames just fed, if at all: not while the client may be
/// waiting for an answer.
fn linger(settings: &Settings, last_heard: Instant) -> Option<Duration> {
    #[cfg(feature = "patched-engine")]
    return settings
        .linger
        .get()
        .and_then(|linger| linger.get())
        .filter(|linger| last_heard.elapsed() >= *linger);
    #[cfg(not(feature = "patched-engine"))]
    {
        let _ = (settings, last_heard);
        None
    }
}

/// The plain WebSocket routes.
pub(crate) fn routes(runs: Arc<runs::RunHub>, workflows: Arc<workflows::WorkflowHub>) -> Router {
    runs::routes(runs).merge(workflows::routes(workflows))
}

/// A random client id, as ResearchFlow's manager makes them.
fn client_id() -> Box<str> {
    format!("client_{:016x}", crate::protocol::random_u64()).into()
}
