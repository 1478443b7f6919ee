//! A storm of abuse at one running herald while well-behaved clients watch a
//! session: malformed Engine.IO and Socket.IO packets, bad handshakes,
//! garbage on the polling transport, oversized and truncated WebSocket
//! frames, subscribe floods, a connection flood and readers that stall.
//! docs/protocol.md section 3: bad input may close the connection that sent
//! it and nothing else. So every well-behaved client must get every event,
//! in order, with no gap and no duplicate; `/health` must keep answering;
//! and the process's memory must stay under a stated bound. Every attacker
//! is bounded in count, and the whole test in time.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Herald, RawSocket, sample};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        Message,
        protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        },
    },
};

/// Clients that behave: subscribed to [`STEADY`], reading everything.
const GOOD_CLIENTS: usize = 3;
const STEADY: &str = "steady";
/// Events published to [`STEADY`], one every [`PACE`].
const STEADY_EVENTS: u64 = 150;
const PACE: Duration = Duration::from_millis(40);
/// Sockets that subscribe to [`STEADY`] and [`STALLED`] and never read.
const STALLED_READERS: usize = 12;
const STALLED: &str = "stalled";
/// Large events published to [`STALLED`] while the steady stream runs:
/// 100 MiB in all, of which herald keeps [`HISTORY`] events.
const LARGE_EVENTS: usize = 400;
const LARGE_EVENT_BYTES: usize = 256 * 1024;
const HISTORY: usize = 20;
/// WebSocket connections opened at once by the flood (more than one address
/// may hold by default), and idle TCP connections that never send a request.
const FLOOD_CONNECTIONS: usize = 300;
const IDLE_CONNECTIONS: usize = 50;
/// Frames each subscribe flooder sends.
const FLOOD_REQUESTS: usize = 3000;
/// herald's `MAX_PAYLOAD_BYTES` in this test.
const MAX_PAYLOAD: usize = 1_048_576;
/// The most herald's resident memory may grow over its idle size, during the
/// storm and after it. What it may hold: the history of [`STALLED`]
/// ([`HISTORY`] x 256 KiB = 5 MiB), the large events a stalled reader's
/// queue holds (bounded in bytes; one copy shared by every queue), the
/// buffers of some 300 open connections, the frames being read (each at
/// most `MAX_PAYLOAD_BYTES`), and the allocator's slack (this is a debug
/// build). Measured with the per-socket byte bound and the WebSocket payload
/// limit in place: 60 to 85 MiB. What it must not hold: every large event
/// ever sent to a reader that stopped reading (100 MiB here), or the
/// oversized messages attackers send (without those limits: 175-185 MiB).
const RSS_GROWTH_BOUND_MIB: u64 = 128;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What went wrong, gathered from every task and asserted once at the end,
/// so that one failure does not hide the others.
#[derive(Clone, Default)]
struct Findings(Arc<Mutex<Vec<String>>>);

impl Findings {
    fn add(&self, finding: String) {
        self.0.lock().unwrap().push(finding);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_abuse_leaves_every_other_client_whole() {
    let started = Instant::now();
    let herald = Herald::start(&[
        "--max-payload-bytes",
        &MAX_PAYLOAD.to_string(),
        "--history-max-events",
        &HISTORY.to_string(),
    ])
    .await;
    let herald = Arc::new(herald);
    let idle_rss = herald.rss();
    let findings = Findings::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut good = Vec::new();
    for _ in 0..GOOD_CLIENTS {
        good.push(RawSocket::subscribed(&herald, STEADY).await);
    }
    let readers: Vec<JoinHandle<Vec<u64>>> = good
        .into_iter()
        .map(|s| tokio::spawn(steady_seqs(s)))
        .collect();
    let stalled = stalled_readers(&herald).await;

    let peak_rss = Arc::new(AtomicU64::new(idle_rss));
    let watchers = [
        tokio::spawn(watch_health(
            herald.url("/health"),
            stop.clone(),
            findings.clone(),
        )),
        tokio::spawn(watch_rss(herald.clone(), stop.clone(), peak_rss.clone())),
    ];
    let port = herald.port;
    let attackers = [
        tokio::spawn(engine_io_garbage(herald.ws_url(), port, findings.clone())),
        tokio::spawn(socket_io_garbage(herald.ws_url(), findings.clone())),
        tokio::spawn(oversized_frames(herald.ws_url(), findings.clone())),
        tokio::spawn(bad_handshakes(port, findings.clone())),
        tokio::spawn(polling_garbage(port, findings.clone())),
        tokio::spawn(subscribe_flood(herald.ws_url(), 0)),
        tokio::spawn(subscribe_flood(herald.ws_url(), 1)),
        tokio::spawn(connection_flood(herald.ws_url(), port)),
    ];

    let large = tokio::spawn(publish_large_events(herald.url(""), findings.clone()));
    publish_steady_stream(&herald, &findings).await;
    large.await.unwrap();

    for (i, reader) in readers.into_iter().enumerate() {
        let seqs = reader
            .await
            .unwrap_or_else(|e| panic!("good client {i}: {e}"));
        let expected: Vec<u64> = (1..=STEADY_EVENTS).collect();
        if seqs != expected {
            findings.add(format!(
                "good client {i} received seqs {} (expected 1..={STEADY_EVENTS} in order)",
                describe(&seqs)
            ));
        }
    }
    for attacker in attackers {
        attacker.await.expect("an attacker task panicked");
    }
    stop.store(true, Ordering::Relaxed);
    for watcher in watchers {
        watcher.await.unwrap();
    }
    let peak = peak_rss.load(Ordering::Relaxed);

    // After the storm: the stalled readers go away, herald serves as before.
    drop(stalled);
    let (mut fresh, _, _) = RawSocket::connect(&herald.ws_url()).await;
    fresh
        .emit(
            "subscribe",
            json!({ "sessionId": STEADY, "since": STEADY_EVENTS }),
        )
        .await;
    let (name, reply) = fresh.next_event().await;
    assert_eq!(
        (name.as_str(), &reply["seq"]),
        ("subscribed", &json!(STEADY_EVENTS))
    );
    let (status, _) = herald.publish(STEADY, "error", sample("error")).await;
    assert_eq!(status, 202);
    assert_eq!(fresh.seqs("error", 1).await, [STEADY_EVENTS + 1]);
    // Memory freed by then may stay with the allocator (mimalloc keeps
    // freed pages a while): this bounds what herald still holds, and more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = herald.rss();
    // The refused requests were counted, and the operations side answers.
    let metrics = herald.metrics_text().await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_client_errors_total "))
        .and_then(|n| n.parse::<f64>().ok());
    if !refused.is_some_and(|n| n > 0.0) {
        findings.add(format!(
            "/metrics counts no refused request after the storm: {refused:?}"
        ));
    }

    let bound = idle_rss + RSS_GROWTH_BOUND_MIB * 1024 * 1024;
    eprintln!(
        "abuse: idle RSS {} MiB, peak {} MiB, after {} MiB (bound {} MiB), {:?}",
        idle_rss >> 20,
        peak >> 20,
        after >> 20,
        bound >> 20,
        started.elapsed()
    );
    if peak > bound {
        findings.add(format!(
            "RSS peaked at {} MiB during the storm, over the bound of {} MiB",
            peak >> 20,
            bound >> 20
        ));
    }
    if after > bound {
        findings.add(format!(
            "RSS is {} MiB after the storm, over the bound of {} MiB",
            after >> 20,
            bound >> 20
        ));
    }
    let mut herald = Arc::into_inner(herald).expect("the watchers are done");
    assert!(herald.alive(), "herald died");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let findings = findings.take();
    assert!(
        findings.is_empty(),
        "{} findings:\n{}",
        findings.len(),
        findings.join("\n")
    );
}

/// An HTTP client that gives up on herald after `timeout`.
fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// `1..=150`, or where a list of seqs breaks from counting up by one.
fn describe(seqs: &[u64]) -> String {
    let breaks: Vec<String> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .take(5)
        .map(|w| format!("{} then {}", w[0], w[1]))
        .collect();
    format!(
        "{} of them, first {:?}, last {:?}, breaks: {breaks:?}",
        seqs.len(),
        seqs.first(),
        seqs.last()
    )
}

/// The seqs of the [`STEADY`] events a good client receives, until it has
/// them all or nothing arrives for a while.
async fn steady_seqs(mut s: RawSocket) -> Vec<u64> {
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < STEADY_EVENTS {
        let Some(frame) = s.recv_within(Duration::from_secs(15)).await else {
            break;
        };
        if frame == "2" {
            s.send("3").await;
            continue;
        }
        let Some(body) = frame.strip_prefix("42") else {
            continue;
        };
        let Ok(Value::Array(event)) = serde_json::from_str(body) else {
            continue;
        };
        if event.get(1).and_then(|d| d["sessionId"].as_str()) == Some(STEADY) {
            seqs.push(event[1]["seq"].as_u64().unwrap_or(0));
        }
    }
    seqs
}

/// Publishes the steady stream at its pace; every publish must be accepted.
async fn publish_steady_stream(herald: &Herald, findings: &Findings) {
    for i in 0..STEADY_EVENTS {
        let event = if i % 2 == 0 {
            "progress"
        } else {
            "model_result"
        };
        let (status, receipt) = herald.publish(STEADY, event, sample(event)).await;
        if status != 202 {
            findings.add(format!("steady publish {i} answered {status} {receipt}"));
        }
        tokio::time::sleep(PACE).await;
    }
}

/// Publishes the large events for the stalled readers, back to back.
async fn publish_large_events(base: String, findings: Findings) {
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/sessions/{STALLED}/events");
    let blob = "x".repeat(LARGE_EVENT_BYTES);
    for i in 0..LARGE_EVENTS {
        // Each one distinct, as real results are.
        let body = json!({ "event": "completed", "data": { "result": { "n": i, "blob": blob } } });
        match http.post(&url).json(&body).send().await {
            Ok(res) if res.status() == 202 => {}
            Ok(res) => findings.add(format!("large publish {i} answered {}", res.status())),
            Err(e) => findings.add(format!("large publish {i} failed: {e}")),
        }
    }
}

/// Sockets that subscribe to both sessions and then never read: their
/// queues fill while the large events go out.
async fn stalled_readers(herald: &Herald) -> Vec<Ws> {
    let mut stalled = Vec::new();
    for _ in 0..STALLED_READERS {
        let Some(mut ws) = socket_io(&herald.ws_url()).await else {
            panic!("a stalled reader could not connect before the storm");
        };
        for session in [STALLED, STEADY] {
            let frame = format!(r#"42["subscribe","{session}"]"#);
            let _ = ws.send(Message::text(frame)).await;
        }
        stalled.push(ws);
    }
    stalled
}

/// Polls `/health` through the storm: it must always answer 200, quickly.
async fn watch_health(url: String, stop: Arc<AtomicBool>, findings: Findings) {
    let http = http_client(Duration::from_secs(2));
    let (mut polls, mut slowest) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        match http.get(&url).send().await {
            Ok(res) if res.status() == 200 => slowest = slowest.max(asked.elapsed()),
            Ok(res) => findings.add(format!(
                "/health answered {} during the storm",
                res.status()
            )),
            Err(e) => findings.add(format!("/health failed during the storm: {e}")),
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("abuse: /health polled {polls} times, slowest {slowest:?}");
}

async fn watch_rss(herald: Arc<Herald>, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        peak.fetch_max(herald.rss(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WebSocket connection with its Engine.IO open packet read, or `None` if
/// herald refused it (a connection limit may).
async fn engine_io(url: &str) -> Option<Ws> {
    let (mut ws, _) = connect_async(url).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(open)))) if open.starts_with('0') => Some(ws),
        _ => None,
    }
}

/// [`engine_io`], joined to the default namespace (its reply is not awaited).
async fn socket_io(url: &str) -> Option<Ws> {
    let mut ws = engine_io(url).await?;
    ws.send(Message::text("40")).await.ok()?;
    Some(ws)
}

/// How long an attacker keeps trying to get a connection in while the flood
/// holds what one address may have (a connection limit refuses the rest).
const ADMISSION_PATIENCE: Duration = Duration::from_secs(10);

/// `attempt` (a connection or a polling session), retried while herald
/// refuses it, so that every bad frame is sent even during the connection
/// flood. Never let in: a finding.
async fn admitted<T, F: Future<Output = Option<T>>>(
    what: &str,
    findings: &Findings,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + ADMISSION_PATIENCE;
    loop {
        if let Some(admitted) = attempt().await {
            return Some(admitted);
        }
        if Instant::now() > deadline {
            findings.add(format!(
                "nothing let in for {ADMISSION_PATIENCE:?} to send {what}"
            ));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads what herald sends for a moment after a bad frame: anything but a
/// heartbeat, a close, an `error` event or a connect error is a finding.
async fn expect_at_most_a_refusal(ws: &mut Ws, what: &str, findings: &Findings) {
    let deadline = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
        let Message::Text(text) = message else {
            continue;
        };
        // `honored`: a well-formed request after the bad part of a frame
        // (or in the frame after it) may be carried out.
        let fine = [
            "2",
            "1",
            "40",
            "44",
            "42[\"error\"",
            "42[\"connected\"",
            "42[\"subscribed\",{\"sessionId\":\"honored\"",
        ]
        .iter()
        .any(|ok| text.starts_with(ok))
            || text.starts_with("43");
        if !fine {
            findings.add(format!(
                "{what} was answered with {}",
                &text[..text.len().min(120)]
            ));
        }
    }
}

/// Engine.IO garbage on WebSocket: unknown packet types, invalid UTF-8 in a
/// text frame, binary junk, and frames cut off mid-way.
async fn engine_io_garbage(url: String, port: u16, findings: Findings) {
    let frames: Vec<(&str, Message)> = vec![
        ("an unknown packet type", Message::text("9hello")),
        ("a letter as packet type", Message::text("x")),
        ("an empty text frame", Message::text("")),
        ("a probe outside an upgrade", Message::text("2probe")),
        ("an upgrade packet", Message::text("5")),
        ("binary junk", Message::binary(vec![0xff, 0x00, 0x42, 0x5b])),
        ("bad base64 binary", Message::text("b!!!not base64")),
        (
            "invalid UTF-8 in a text frame",
            Message::Frame(Frame::message(
                vec![b'4', b'2', 0xc3, 0x28, 0xff],
                OpCode::Data(Data::Text),
                true,
            )),
        ),
        (
            "a continuation with no message",
            Message::Frame(Frame::message(
                b"42[]".to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )),
        ),
    ];
    for round in 0..3 {
        for (what, frame) in &frames {
            let Some(mut ws) = admitted(what, &findings, || socket_io(&url)).await else {
                continue;
            };
            if ws.send(frame.clone()).await.is_ok() {
                expect_at_most_a_refusal(&mut ws, what, &findings).await;
            }
        }
        // A WebSocket handshake, then a frame header announcing far more
        // than follows, then the connection dropped.
        if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await {
            let upgrade = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
                 Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
            let _ = tcp.write_all(upgrade.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Text, masked, 64-bit length: 256 MiB.
            let truncated = [
                0x81, 0xff, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 2, 3, 4, b'4', b'2',
            ];
            let _ = tcp.write_all(&truncated[..8 + round * 3]).await;
        }
    }
}

/// Socket.IO garbage, each on a connection of its own: unknown namespaces,
/// broken JSON, huge ack ids, binary attachment counts that lie, events of
/// the wrong arity.
async fn socket_io_garbage(url: String, findings: Findings) {
    let frames = [
        "40/nowhere,",
        "40/nowhere,{\"token\":1}",
        "42/nowhere,[\"subscribe\",\"x\"]",
        "42[",
        "42[\"subscribe\"",
        "42{\"subscribe\":1}",
        "42[]",
        "42[1,2,3]",
        "42[\"subscribe\"]",
        "42[\"subscribe\",{\"sessionId\":{\"deep\":[[[[[[[[[[1]]]]]]]]]]}}]",
        // An ack id too large to be one is dropped, as socketioxide's parser
        // does; the event itself may be honored.
        "4299999999999999999999999[\"subscribe\",\"honored\"]",
        "42-1[\"subscribe\",\"x\"]",
        "431[{\"ok\":true}]",
        "451-[\"subscribe\",{\"_placeholder\":true,\"num\":0}]",
        "459999-[\"subscribe\",{\"_placeholder\":true,\"num\":9998}]",
        "45a-[\"subscribe\"]",
        "461-7[{\"_placeholder\":true,\"num\":3}]",
        "4-1",
        "49",
        "41",
        "4",
    ];
    for frame in frames {
        let Some(mut ws) = admitted(frame, &findings, || socket_io(&url)).await else {
            continue;
        };
        if ws.send(Message::text(frame)).await.is_ok() {
            // A binary packet's promised attachment arrives late, or as text.
            if frame.starts_with("45") {
                let _ = ws
                    .send(Message::text("42[\"subscribe\",\"honored\"]"))
                    .await;
            }
            expect_at_most_a_refusal(&mut ws, frame, &findings).await;
        }
    }
}

/// WebSocket messages over `MAX_PAYLOAD_BYTES`, whole and in fragments:
/// herald must close each connection rather than read them in.
async fn oversized_frames(url: String, findings: Findings) {
    let filler = |n: usize| format!("42[\"subscribe\",\"{}\"]", "x".repeat(n));
    for attempt in 0..4 {
        let Some(mut ws) = admitted("an oversized message", &findings, || socket_io(&url)).await
        else {
            continue;
        };
        let sent = if attempt % 2 == 0 {
            ws.send(Message::text(filler(4 * MAX_PAYLOAD))).await
        } else {
            let piece = vec![b'x'; MAX_PAYLOAD / 2];
            let mut sent = ws
                .send(Message::Frame(Frame::message(
                    b"42[\"subscribe\",\"".to_vec(),
                    OpCode::Data(Data::Text),
                    false,
                )))
                .await;
            for _ in 0..8 {
                if sent.is_err() {
                    break;
                }
                sent = ws
                    .send(Message::Frame(Frame::message(
                        piece.clone(),
                        OpCode::Data(Data::Continue),
                        false,
                    )))
                    .await;
            }
            if sent.is_ok() {
                sent = ws
                    .send(Message::Frame(Frame::message(
                        b"\"]".to_vec(),
                        OpCode::Data(Data::Continue),
                        true,
                    )))
                    .await;
            }
            sent
        };
        if sent.is_err() {
            continue; // closed while sending: refused
        }
        // Closed by herald within a moment, with nothing but heartbeats or
        // a close before.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(Message::Text(t))))
                    if t.as_str() == "2" || t.as_str() == "1" || t.starts_with("40") => {}
                Ok(Some(Ok(Message::Text(t)))) if t.starts_with("42[\"connected\"") => {}
                Ok(Some(Ok(other))) => {
                    findings.add(format!(
                        "a {} KiB WebSocket message (MAX_PAYLOAD_BYTES {} KiB) was read and answered: {:.100}",
                        4 * MAX_PAYLOAD / 1024,
                        MAX_PAYLOAD / 1024,
                        other.to_string()
                    ));
                    break;
                }
                Err(_) => {
                    findings.add(
                        "a WebSocket message over MAX_PAYLOAD_BYTES left its connection open"
                            .into(),
                    );
                    break;
                }
            }
        }
    }
}

/// Handshakes herald must refuse with a 4xx: wrong protocol versions,
/// unknown transports, unknown session ids, requests that are no handshake.
async fn bad_handshakes(port: u16, findings: Findings) {
    let http = http_client(Duration::from_secs(5));
    let base = format!("http://127.0.0.1:{port}/socket.io/");
    let queries = [
        "",
        "?EIO=3&transport=polling",
        "?EIO=5&transport=polling",
        "?EIO=abc&transport=polling",
        "?EIO=4&transport=flash",
        "?EIO=4",
        "?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
        "?EIO=4&transport=polling&sid=%00%ff",
        "?EIO=4&transport=websocket",
    ];
    for _ in 0..3 {
        for query in queries {
            for post in [false, true] {
                let url = format!("{base}{query}");
                let request = if post {
                    http.post(&url).body("40")
                } else {
                    http.get(&url)
                };
                match request.send().await {
                    Ok(res) if res.status().is_client_error() => {}
                    Ok(res) => findings.add(format!(
                        "handshake {} {query:?} answered {}",
                        if post { "POST" } else { "GET" },
                        res.status()
                    )),
                    Err(e) => findings.add(format!("handshake {query:?} failed: {e}")),
                }
            }
        }
    }
}

/// Garbage on an open polling session: whatever herald does with it (refuse
/// it, or close that session), it answers, and never with a 5xx.
async fn polling_garbage(port: u16, findings: Findings) {
    let http = http_client(Duration::from_secs(5));
    let base = format!("http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling");
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..=255u8).rev().cycle().take(600).collect(),
        ),
        ("invalid UTF-8", vec![b'4', b'2', 0xc3, 0x28, 0xa0, 0xa1]),
        ("separators only", vec![0x1e; 1000]),
        ("an unknown packet type", b"9\x1e9\x1e9".to_vec()),
        ("bad base64", b"b!!!!".to_vec()),
        (
            "broken Socket.IO",
            b"40\x1e42[\x1e451-[\"subscribe\"]\x1e42[\"subscribe\"".to_vec(),
        ),
        ("an empty body", Vec::new()),
        ("a body over the limit", vec![b'4'; 2 * MAX_PAYLOAD]),
    ];
    for _ in 0..3 {
        for (what, body) in &bodies {
            let Some(sid) = admitted(what, &findings, || polling_session(&http, &base)).await
            else {
                continue;
            };
            let url = format!("{base}&sid={sid}");
            match http.post(&url).body(body.clone()).send().await {
                Ok(res) if !res.status().is_server_error() => {}
                Ok(res) => {
                    findings.add(format!("polling POST of {what} answered {}", res.status()))
                }
                // Closing the connection on a body over the limit is fair.
                Err(_) if body.len() > MAX_PAYLOAD => {}
                Err(e) => findings.add(format!("polling POST of {what} failed: {e}")),
            }
        }
    }
}

/// A new polling session's sid, or `None` if herald refused it.
async fn polling_session(http: &reqwest::Client, url: &str) -> Option<String> {
    let open = http.get(url).send().await.ok()?.text().await.ok()?;
    let open: Value = serde_json::from_str(open.strip_prefix('0')?).ok()?;
    open["sid"].as_str().map(String::from)
}

/// One socket sending subscribe and unsubscribe as fast as it can, to one
/// session and to thousands, reading (and dropping) what comes back. Rate
/// limits may cut it off: that is its own business.
async fn subscribe_flood(url: String, n: usize) {
    let Some(ws) = socket_io(&url).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    for i in 0..FLOOD_REQUESTS {
        let frame = match i % 3 {
            0 => format!(r#"42["subscribe","flood-{n}-{i}"]"#),
            1 => format!(r#"42["unsubscribe","flood-{n}-{}"]"#, i - 1),
            _ => format!(r#"42["subscribe",{{"sessionId":"{STEADY}","since":0}}]"#),
        };
        if tx.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(tx);
    drain.abort();
}

/// Many WebSocket connections at once, half of them joining the namespace,
/// held a moment and dropped; and TCP connections that never say anything.
async fn connection_flood(url: String, port: u16) {
    let idle: Vec<TcpStream> = futures_util::future::join_all(
        (0..IDLE_CONNECTIONS).map(|_| TcpStream::connect(("127.0.0.1", port))),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    let opened = futures_util::future::join_all((0..FLOOD_CONNECTIONS).map(|i| {
        let url = url.clone();
        async move {
            if i % 2 == 0 {
                socket_io(&url).await
            } else {
                engine_io(&url).await
            }
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(opened);
    drop(idle);
}
