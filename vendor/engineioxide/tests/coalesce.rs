//! Write coalescing (herald patch 11): with a linger set, a WebSocket holds
//! what it is given, except the answer to a frame its client just sent; and
//! each engine holds by its own linger; and the linger counts what each
//! write gathered (patch 16).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use engineioxide::{
    Str,
    coalesce::Linger,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

mod fixture;
use fixture::{StreamImpl, create_ws_connection};

/// The linger set; the clock is paused, so it costs the test nothing.
const LINGER: Duration = Duration::from_secs(1);
/// How long a packet that is not held may take to arrive.
const PROMPT: Duration = Duration::from_millis(10);
/// How long the test waits to see that a held packet does not arrive.
const WATCH: Duration = Duration::from_millis(300);

#[derive(Debug)]
struct EchoHandler {
    socket_tx: mpsc::Sender<Arc<Socket<()>>>,
}
impl EngineIoHandler for EchoHandler {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        self.socket_tx.try_send(socket).ok();
    }
    fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<()>>) {
        socket.emit(msg).ok();
    }
    fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
}

/// The next message within `within`, if one arrives.
async fn next(client: &mut WebSocketStream<StreamImpl>, within: Duration) -> Option<Message> {
    let msg = tokio::time::timeout(within, client.next()).await.ok()?;
    Some(msg.unwrap().unwrap())
}

#[tokio::test(start_paused = true)]
async fn packets_are_held_but_answers_are_not() {
    // No ping during the test: the client here does not answer pings.
    let linger = Linger::default();
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .write_linger(linger.clone())
        .build();
    let (socket_tx, mut socket_rx) = mpsc::channel(1);
    let mut svc = EngineIoService::with_config(Arc::new(EchoHandler { socket_tx }), config);
    let mut client = create_ws_connection(&mut svc).await;
    let socket = socket_rx.recv().await.unwrap();
    let _open = client.next().await.unwrap().unwrap();
    linger.set(LINGER);
    socket.emit("held").unwrap();
    assert_eq!(
        next(&mut client, WATCH).await,
        None,
        "a packet should be held"
    );
    assert_eq!(
        next(&mut client, LINGER).await,
        Some(Message::text("4held")),
        "a packet should be held for the linger at most"
    );

    // The client speaks during a hold: what was held, the answer, and what
    // it is sent within the linger after, all go at once.
    socket.emit("a").unwrap();
    assert_eq!(next(&mut client, WATCH).await, None, "a should be held");
    socket.emit("b").unwrap();
    client.send(Message::text("4echo")).await.unwrap();
    for expected in ["4a", "4b", "4echo"] {
        assert_eq!(
            next(&mut client, PROMPT).await,
            Some(Message::text(expected)),
            "speaking should end the hold"
        );
    }
    socket.emit("soon").unwrap();
    assert_eq!(
        next(&mut client, PROMPT).await,
        Some(Message::text("4soon"))
    );

    // A client quiet for longer than the linger is held again.
    tokio::time::sleep(2 * LINGER).await;
    socket.emit("later").unwrap();
    assert_eq!(
        next(&mut client, WATCH).await,
        None,
        "a quiet client's packet should be held"
    );
    assert_eq!(
        next(&mut client, LINGER).await,
        Some(Message::text("4later"))
    );

    linger.set(Duration::ZERO);
    socket.emit("now").unwrap();
    assert_eq!(
        next(&mut client, PROMPT).await,
        Some(Message::text("4now")),
        "with no linger nothing is held"
    );
}

/// An engine built with its own linger handle, its first client, and that
/// client's socket.
async fn engine_with(linger: &Linger) -> (WebSocketStream<StreamImpl>, Arc<Socket<()>>) {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .write_linger(linger.clone())
        .build();
    let (socket_tx, mut socket_rx) = mpsc::channel(1);
    let mut svc = EngineIoService::with_config(Arc::new(EchoHandler { socket_tx }), config);
    let mut client = create_ws_connection(&mut svc).await;
    let socket = socket_rx.recv().await.unwrap();
    let _open = client.next().await.unwrap().unwrap();
    (client, socket)
}

#[tokio::test(start_paused = true)]
async fn each_engine_holds_by_its_own_linger() {
    let (held, quick) = (Linger::default(), Linger::default());
    let (mut held_client, held_socket) = engine_with(&held).await;
    let (mut quick_client, quick_socket) = engine_with(&quick).await;
    held.set(LINGER);
    held_socket.emit("held").unwrap();
    quick_socket.emit("quick").unwrap();
    assert_eq!(
        next(&mut quick_client, PROMPT).await,
        Some(Message::text("4quick")),
        "the other engine's linger must not hold this one"
    );
    assert_eq!(next(&mut held_client, WATCH).await, None, "held by its own");
    assert_eq!(
        next(&mut held_client, LINGER).await,
        Some(Message::text("4held"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_linger_counts_what_each_write_gathered() {
    let linger = Linger::default();
    let (mut client, socket) = engine_with(&linger).await;
    let before = linger.written();
    linger.set(LINGER);
    for msg in ["a", "b", "c"] {
        socket.emit(msg).unwrap();
    }
    for expected in ["4a", "4b", "4c"] {
        assert_eq!(
            next(&mut client, 2 * LINGER).await,
            Some(Message::text(expected))
        );
    }
    let held = linger.written();
    assert_eq!(
        (held.packets - before.packets, held.writes - before.writes),
        (3, 1),
        "three packets held together: one write"
    );

    linger.set(Duration::ZERO);
    socket.emit("d").unwrap();
    assert_eq!(next(&mut client, PROMPT).await, Some(Message::text("4d")));
    let after = linger.written();
    assert_eq!(
        (after.packets - held.packets, after.writes - held.writes),
        (1, 1)
    );
}
