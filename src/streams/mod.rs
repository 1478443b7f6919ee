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
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
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
#[derive(Clone)]
pub(crate) struct Settings {
    pub ping_interval: Duration,
    pub client_timeout: Duration,
    /// Frames larger than this close the connection (1009).
    pub max_payload: usize,
    /// Frames a client may have waiting; a client that falls further behind
    /// is closed (it resumes with `since`).
    pub buffer_frames: usize,
    pub metrics: Arc<Metrics>,
}

/// Bytes read at a time: clients send short JSON requests.
const READ_BUFFER: usize = 512;

/// A connection as the rest of herald sees it: where its frames go.
pub(crate) struct Outbox {
    frames: mpsc::Sender<Utf8Bytes>,
    /// Its queue overflowed: it gets nothing more and is closed at the next
    /// heartbeat, so it never sees a gap it does not know of.
    kicked: AtomicBool,
}

impl Outbox {
    /// Queues a frame; false when the client is gone or too far behind.
    pub(crate) fn offer(&self, frame: &Utf8Bytes) -> bool {
        if self.kicked.load(Ordering::Relaxed) {
            return false;
        }
        match self.frames.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kicked.store(true, Ordering::Relaxed);
                debug!("plain WebSocket client too far behind: closing it");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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
pub(crate) fn upgrade<H, F>(req: Request, settings: &Settings, make: F) -> Response
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
    let (tx, rx) = mpsc::channel(settings.buffer_frames.max(1));
    let outbox = Arc::new(Outbox {
        frames: tx,
        kicked: AtomicBool::new(false),
    });
    let handler = make(outbox.clone());
    let settings = settings.clone();
    // The connection's place in MAX_CONNECTIONS and the per-address cap
    // (taken by the admission layer) lasts as long as the connection, not
    // the upgrade request.
    let admitted = req.extensions().get::<Admitted>().cloned();
    tokio::spawn(async move {
        let _admitted = admitted;
        // On failure the handler is dropped here, which unregisters it.
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(settings.max_payload))
            .max_frame_size(Some(settings.max_payload));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(ws, &outbox, rx, &settings, handler).await;
    });
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

/// The connection's one loop: frames in, frames out, heartbeat.
async fn serve<H: Handler>(
    mut ws: Ws,
    outbox: &Outbox,
    mut frames: mpsc::Receiver<Utf8Bytes>,
    settings: &Settings,
    mut handler: H,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            incoming = ws.next() => {
                last_heard = Instant::now();
                let replies = match incoming {
                    // Boxed: awaited inline, the request's state would be part
                    // of every idle connection's task.
                    Some(Ok(Message::Text(text))) => Box::pin(handler.on_text(text.as_str())).await,
                    Some(Ok(Message::Binary(_))) => handler.on_binary().into_iter().collect(),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => Vec::new(),
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        debug!("plain WebSocket frame over MAX_PAYLOAD_BYTES: {e}");
                        let close = CloseFrame {
                            code: CloseCode::Size,
                            reason: "frame over MAX_PAYLOAD_BYTES".into(),
                        };
                        let _ = ws.close(Some(close)).await;
                        break;
                    }
                    Some(Err(_)) => break,
                };
                for reply in replies {
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            }
            Some(frame) = frames.recv() => {
                if ws.send(Message::Text(frame)).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                if handler.until() <= crate::auth::unix_now() {
                    debug!("plain WebSocket client's token expired: closing it");
                    let close = CloseFrame { code: CloseCode::Policy, reason: "token expired".into() };
                    let _ = ws.close(Some(close)).await;
                    break;
                }
                if outbox.kicked.load(Ordering::Relaxed) {
                    let close = CloseFrame { code: CloseCode::Again, reason: "too far behind".into() };
                    let _ = ws.close(Some(close)).await;
                    break;
                }
                if last_heard.elapsed() >= settings.client_timeout {
                    debug!("plain WebSocket client silent for too long: closing it");
                    break;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
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
