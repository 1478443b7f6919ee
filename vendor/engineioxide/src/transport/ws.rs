//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{ops::ControlFlow, pin::Pin, sync::Arc, task::Poll};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc::error::TrySendError,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The upgrade and the handshake are boxed apart from the task that then
    // serves the connection: they are over within a few round trips, and
    // unboxed, their state (3.2 KiB) would stay in the task for as long as
    // the connection lives.
    let setup = Box::pin(async move {
        let conn = match hyper::upgrade::on(req).await {
            Ok(conn) => hyper_util::rt::TokioIo::new(conn),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return None;
            }
        };
        match handshake(&engine, conn, protocol, sid, parts).await {
            Ok(opened) => Some((engine, opened)),
            Err(Error::MultipleWebsocketRequests) => None,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
                None
            }
        }
    });
    tokio::spawn(async move {
        // let-else, not if-let: if-let keeps its scrutinee (the whole opened
        // connection, 350 B) in the task's state beside the bindings.
        let Some((engine, (socket, mut ws, heartbeat))) = setup.await else {
            return;
        };
        let end = serve(&engine, &mut ws, &socket, heartbeat).await;
        close_if_ended(&engine, &socket, end);
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "ws closed")
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, mut ws, heartbeat) = handshake(&engine, conn, protocol, sid, req_data).await?;
    let end = serve(&engine, &mut ws, &socket, heartbeat).await;
    close_if_ended(&engine, &socket, end);
    Ok(())
}

/// Opens the Engine.IO session on a new WebSocket, or moves a polling
/// session onto it; says who keeps the session's heartbeat.
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn handshake<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<S>, Heartbeat), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                Ok((socket, ws, Heartbeat::OwnTask))
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        Ok((socket, ws, Heartbeat::Connection))
    }
}

/// Closes the session once [`serve`] returned, unless it was closed on this
/// side already.
fn close_if_ended<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    end: Result<End, Error>,
) {
    match end {
        Err(ref e) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Ok(End::ClientClosed) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        Ok(End::SessionClosed) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }
}

/// Who keeps a WebSocket session's heartbeat.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// The task serving the connection: the session began on this
    /// WebSocket. Upstream spawns a task per socket for it, 1.4 KiB per
    /// socket for a timer and a signal.
    Connection,
    /// The task spawned when the session began on polling; it goes on
    /// across the upgrade.
    OwnTask,
}

/// How a WebSocket session ended, when it ended without an error.
enum End {
    /// The client closed the WebSocket or the Engine.IO session.
    ClientClosed,
    /// The session was closed on this side (cancellation token).
    SessionClosed,
}

/// Serves a WebSocket session from one task: hands the client's frames to
/// the handler, and writes what the socket queues, until either side ends it.
///
/// Upstream runs a reader task and a writer task over a split stream. One
/// task over the whole stream saves, per connection, a task (2.4 KiB held for
/// as long as the socket lives) and the lock that a split stream takes on
/// every frame, in both directions.
///
/// What is queued before the session closes is still written, in order,
/// before the WebSocket is closed (a close packet queued by
/// [`Socket::close`] in particular).
///
/// Everything is borrowed: an async fn keeps its arguments in its state for
/// as long as it runs, and the stream would be held twice.
///
/// With [`Heartbeat::Connection`] it also keeps the session's heartbeat
/// ([`crate::heartbeat`]), which [`Socket::spawn_heartbeat`] keeps in a task
/// for the other sessions.
async fn serve<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    ws: &mut WebSocketStream<S>,
    socket: &Arc<Socket<H::Data>>,
    heartbeat: Heartbeat,
) -> Result<End, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lock = socket.reader.lock();
    let Some(_reader) = lock
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before the ws started");
        return Ok(End::SessionClosed);
    };
    // In a block of its own, so that none of this is held during the
    // closing flush: an async fn's state is as large as everything alive at
    // any one of its await points.
    let end = {
        let cancelled = socket.cancellation_token.cancelled();
        tokio::pin!(cancelled);
        let mut unflushed = false;
        // Set while written packets are held (see `crate::coalesce`); boxed,
        // as it exists only under load and every connection holds the slot.
        let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // When the client last sent a frame: answers are never held.
        let mut heard: Option<crate::coalesce::Heard> = None;

        let beat = crate::heartbeat::Heartbeat::new(socket, engine.config.ping_interval);
        tokio::pin!(beat);

        // The closure owns the writer's state rather than borrowing it: a
        // borrow is another pointer kept by every connection.
        let ws = &mut *ws;
        std::future::poll_fn(move |cx| {
            // The config is read where it is needed: every byte kept across
            // the await is held by every connection.
            let (interval, timeout) = (engine.config.ping_interval, engine.config.ping_timeout);
            if heartbeat == Heartbeat::Connection
                && beat
                    .as_mut()
                    .poll_expired(cx, socket, interval, timeout)
                    .is_ready()
            {
                // Queues the close packet, written by the closing flush.
                socket.close(DisconnectReason::HeartbeatTimeout);
                return Poll::Ready(Ok(End::SessionClosed));
            }

            // A hold ends when its timer fires. While it lasts the outbox
            // is not read, so packets queued meanwhile do not wake this task
            // one by one: they are read and written together at its end.
            let expired = linger
                .as_mut()
                .is_some_and(|linger| linger.as_mut().poll(cx).is_ready());
            if expired {
                linger = None;
            }

            // Written before reading, and queued packets before volatile ones,
            // as upstream's biased writer did.
            while linger.is_none() {
                match ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from(e))),
                    Poll::Pending => break,
                }
                let batch = match socket.outbox.poll_batch(cx) {
                    Poll::Ready(Some(batch)) => batch,
                    Poll::Ready(None) => return Poll::Ready(Ok(End::SessionClosed)),
                    Poll::Pending => break,
                };
                let mut packets = 0;
                for packet in batch.into_packets().flatten() {
                    if let Some(msg) = to_message(socket.protocol, packet) {
                        ws.start_send_unpin(msg)?;
                        packets += 1;
                    }
                }
                if packets > 0 {
                    engine.config.write_linger.wrote(packets);
                    unflushed = true;
                }
            }
            if unflushed && linger.is_none() {
                // What waited out a hold is not held again, nor is an answer.
                let hold = engine.config.write_linger.get()
                    .filter(|hold| !expired && !heard.is_some_and(|at| at.is_within(*hold)));
                if let Some(hold) = hold {
                    let mut timer = Box::pin(tokio::time::sleep(hold));
                    // Registers the timer; it cannot have fired yet.
                    let _ = timer.as_mut().poll(cx);
                    linger = Some(timer);
                } else {
                    #[cfg(feature = "tracing")]
                    tracing::trace!(sid = %socket.id, "ws flush");
                    match ws.poll_flush_unpin(cx) {
                        Poll::Ready(Ok(())) => {
                            engine.config.write_linger.flushed();
                            unflushed = false;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from(e))),
                        Poll::Pending => {}
                    }
                }
            }

            loop {
                match ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        heard = Some(crate::coalesce::Heard::now());
                        if on_frame(engine, socket, msg)?.is_break() {
                            return Poll::Ready(Ok(End::ClientClosed));
                        }
                        // The client may be waiting for an answer: end the
                        // hold, and write on the next poll.
                        if linger.take().is_some() {
                            cx.waker().wake_by_ref();
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::from(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(End::ClientClosed)),
                    Poll::Pending => break,
                }
            }

            match cancelled.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(End::SessionClosed)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };

    // The closing flush: what was queued until now, then the close frame.
    // Bounded: a client that stopped reading would otherwise keep this task,
    // and with it the channel lock the session's close waits for, forever.
    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %socket.id, "ws closing flush");
    let closing = async {
        for packet in socket.outbox.take_queued().into_iter().flatten() {
            if let Some(msg) = to_message(socket.protocol, packet) {
                ws.feed(msg).await?;
            }
        }
        ws.flush().await?;
        ws.close(None).await
    };
    // Boxed: it runs once, and inline it would add its size to the state
    // every connection holds while it is served.
    if Box::pin(tokio::time::timeout(CLOSING_FLUSH_TIMEOUT, closing))
        .await
        .is_err()
    {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "ws closing flush timed out");
    }
    end
}

/// How long a closing WebSocket may take to write what was queued for it.
const CLOSING_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands one frame from the client to the handler; breaks when the client
/// closed the session.
fn on_frame<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<ControlFlow<()>, Error> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                return Ok(ControlFlow::Break(()));
            }
            Packet::Pong | Packet::Ping => socket.heartbeat.notify_one(),
            Packet::Message(msg) => engine.handler.on_message(msg, socket.clone()),
            p => return Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            return Ok(ControlFlow::Break(()));
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The WebSocket frame of a packet, if it has one.
fn to_message(protocol: ProtocolVersion, packet: Packet) -> Option<Message> {
    match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        Packet::Noop => None,
        packet => {
            let packet: String = packet.try_into().unwrap();
            Some(Message::Text(packet.into()))
        }
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    // A full outbox has no polling request waiting on it.
    if let Err(TrySendError::Closed(_)) = socket.outbox.try_send(smallvec![Packet::Noop]) {
        return Err(Error::Upgrade);
    }

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.reader.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn engine() -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ))
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let (engine, socket) = (engine(), socket());
        let (mut server, mut client) = ws_pair().await;

        let polling = socket.reader.lock().await;
        let serving = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve(&engine, &mut server, &socket, Heartbeat::OwnTask)
                    .await
                    .map(|_| ())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !serving.is_finished(),
            "the writer should wait for the lock"
        );

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let (engine, socket) = (engine(), socket());
        let (mut server, _client) = ws_pair().await;

        let _polling = socket.reader.lock().await;
        let serving = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve(&engine, &mut server, &socket, Heartbeat::OwnTask)
                    .await
                    .map(|_| ())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, serving)
            .await
            .expect("the writer should stop")
            .unwrap()
            .unwrap();
    }

    /// Packets queued before the session closes are written before the
    /// close frame, and frames from the client reach the handler.
    #[tokio::test]
    async fn queued_packets_are_written_before_the_close_frame() {
        let (engine, socket) = (engine(), socket());
        let (mut server, mut client) = ws_pair().await;
        let serving = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve(&engine, &mut server, &socket, Heartbeat::OwnTask)
                    .await
                    .map(|_| ())
            }
        });
        client.send(Message::text("3")).await.unwrap();
        tokio::time::timeout(TIMEOUT, socket.heartbeat.notified())
            .await
            .expect("the pong should reach the heartbeat");

        socket.emit(Str::from("one")).unwrap();
        socket.emit(Str::from("two")).unwrap();
        socket.cancellation_token.cancel();
        let mut seen = Vec::new();
        while let Some(Ok(msg)) = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap() {
            seen.push(msg);
        }
        assert_eq!(
            seen,
            [
                Message::text("4one"),
                Message::text("4two"),
                Message::Close(None)
            ]
        );
        serving.await.unwrap().unwrap();
    }

    /// A client that stopped reading holds its connection's close for at
    /// most the closing flush's timeout.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stopped_reading_does_not_hold_the_close() {
        let (engine, socket) = (engine(), socket());
        // The pipe holds 1 KiB and the client never reads.
        let (mut server, _client) = ws_pair().await;
        let serving = tokio::spawn({
            let socket = socket.clone();
            async move {
                serve(&engine, &mut server, &socket, Heartbeat::OwnTask)
                    .await
                    .map(|_| ())
            }
        });
        socket.emit(Str::from("x".repeat(4096))).unwrap();
        socket.emit(Str::from("y".repeat(4096))).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        socket.cancellation_token.cancel();
        tokio::time::timeout(CLOSING_FLUSH_TIMEOUT + TIMEOUT, serving)
            .await
            .expect("the close should give up on the client")
            .unwrap()
            .unwrap();
    }
}
