//! The few parts of a Socket.IO v5 client (over an Engine.IO v4 WebSocket)
//! that `herald tail` needs: connect with an `auth` payload, emit with an
//! ack, receive events and acks, answer pings, and notice a dead link. One
//! connection, no reconnection: the caller reconnects, because resuming is
//! its business (it re-subscribes with `since`). Written here rather than
//! taken from `rust_socketio`, whose reconnection cannot re-subscribe with
//! the seq seen last, and which would bring a second WebSocket stack (and
//! native TLS) into the server's binary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::{Value, value::RawValue};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The link broke, or never came up: worth connecting again.
    Lost(String),
    /// herald refused the connection (`connect_error`, e.g. a bad token):
    /// connecting again would be refused again.
    Refused(String),
}

/// What herald sent.
pub(crate) enum Incoming {
    /// An event's name and first argument, as herald wrote it.
    Event(String, Box<RawValue>),
    /// The ack of the emit with this id: its first argument.
    Ack(u64, Value),
}

pub(crate) struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// How long herald may stay silent: it pings every `pingInterval` and
    /// gives us `pingTimeout` to answer; past both, the link is dead.
    silence: Duration,
    next_ack: u64,
}

/// How long connecting (TCP, WebSocket and Socket.IO handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Socket {
    /// Connects to herald's Socket.IO endpoint under `base`, presenting
    /// `auth` in the CONNECT packet.
    pub(crate) async fn connect(base: &Url, auth: Option<&Value>) -> Result<Self, Failure> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::handshake(base, auth)).await {
            Ok(connected) => connected,
            Err(_) => Err(Failure::Lost(format!(
                "no Socket.IO handshake within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn handshake(base: &Url, auth: Option<&Value>) -> Result<Self, Failure> {
        let mut url = super::http::endpoint(base, "socket.io/");
        url.set_scheme("ws").expect("http and ws are both special");
        url.set_query(Some("EIO=4&transport=websocket"));
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| Failure::Lost(e.to_string()))?;
        let mut socket = Self {
            ws,
            silence: CONNECT_TIMEOUT,
            next_ack: 0,
        };
        let open = socket.read_text().await?;
        let open: Value = open
            .strip_prefix('0')
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| Failure::Lost(format!("not an Engine.IO open packet: {open:?}")))?;
        let millis = |name| open.get(name).and_then(Value::as_u64).unwrap_or(0);
        socket.silence = Duration::from_millis(millis("pingInterval") + millis("pingTimeout"));
        let connect = match auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_string(),
        };
        socket.send(connect).await?;
        loop {
            let packet = socket.read_text().await?;
            if packet.starts_with("40") {
                return Ok(socket);
            }
            if let Some(error) = packet.strip_prefix("44") {
                let message = serde_json::from_str::<Value>(error)
                    .ok()
                    .and_then(|e| e.get("message")?.as_str().map(str::to_string))
                    .unwrap_or_else(|| error.to_string());
                return Err(Failure::Refused(message));
            }
        }
    }

    /// Emits `event` with `data`, asking for an ack; returns the ack's id.
    pub(crate) async fn emit_with_ack(
        &mut self,
        event: &str,
        data: &Value,
    ) -> Result<u64, Failure> {
        let id = self.next_ack;
        self.next_ack += 1;
        let packet = serde_json::json!([event, data]);
        self.send(format!("42{id}{packet}")).await?;
        Ok(id)
    }

    /// The next event or ack.
    pub(crate) async fn next(&mut self) -> Result<Incoming, Failure> {
        loop {
            let packet = self.read_text().await?;
            let Some(socketio) = packet.strip_prefix('4') else {
                continue;
            };
            if let Some(event) = socketio.strip_prefix('2') {
                // An event herald sends asks for no ack: no id before `[`.
                if let Ok((name, data)) = serde_json::from_str::<(String, Box<RawValue>)>(event) {
                    return Ok(Incoming::Event(name, data));
                }
            } else if let Some(ack) = socketio.strip_prefix('3') {
                let digits = ack.bytes().take_while(u8::is_ascii_digit).count();
                if let (Ok(id), Ok(Value::Array(mut args))) =
                    (ack[..digits].parse(), serde_json::from_str(&ack[digits..]))
                {
                    let first = args.get_mut(0).map_or(Value::Null, Value::take);
                    return Ok(Incoming::Ack(id, first));
                }
            } else if socketio.starts_with('1') {
                return Err(Failure::Lost("herald disconnected the socket".into()));
            }
        }
    }

    /// The next Engine.IO text packet, answering pings on the way.
    async fn read_text(&mut self) -> Result<String, Failure> {
        loop {
            let frame = tokio::time::timeout(self.silence, self.ws.next())
                .await
                .map_err(|_| {
                    Failure::Lost(format!(
                        "herald sent nothing, not even a ping, for {} ms",
                        self.silence.as_millis()
                    ))
                })?;
            match frame {
                Some(Ok(Message::Text(text))) => match text.as_str() {
                    "2" => self.send("3".to_string()).await?,
                    "1" => return Err(Failure::Lost("herald closed the connection".into())),
                    _ => return Ok(text.to_string()),
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Failure::Lost("herald closed the connection".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Failure::Lost(e.to_string())),
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Failure> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| Failure::Lost(e.to_string()))
    }
}
