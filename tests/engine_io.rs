//! Raw Engine.IO v4 / Socket.IO v5 over WebSocket: what a `wscat` user sends
//! and sees, including heartbeats, in-order room changes, and garbage that
//! must close at most the connection that sent it.

mod common;

use std::time::{Duration, Instant};

use common::{Herald, RawSocket, cases, event, sample};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshake_advertises_the_configured_heartbeat_and_payload_limit() {
    let herald = Herald::start(&["--ping-interval-ms", "1500", "--ping-timeout-ms", "1000"]).await;
    let mut s = RawSocket::open(&herald.ws_url()).await;
    let open = s.recv().await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    assert!(open["sid"].as_str().is_some_and(|sid| !sid.is_empty()));
    assert_eq!(open["pingInterval"], 1500);
    assert_eq!(open["pingTimeout"], 1000);
    assert_eq!(open["maxPayload"], 1_048_576);

    s.send("40").await;
    let ack = s.recv_skipping_pings().await;
    let sid = serde_json::from_str::<Value>(ack.strip_prefix("40").unwrap()).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let (name, connected) = event(&s.recv_skipping_pings().await);
    assert_eq!(name, "connected");
    assert_eq!(
        connected["socketId"],
        sid.as_str(),
        "socketId is the Socket.IO sid"
    );
    assert!(connected["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn pings_keep_a_socket_alive_and_silence_closes_it() {
    let herald = Herald::start(&["--ping-interval-ms", "200", "--ping-timeout-ms", "300"]).await;
    let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let frame = s.recv().await;
        assert_eq!(frame, "2", "only pings are expected while idle");
        pings += 1;
        s.send("3").await;
    }
    assert!(
        pings >= 3,
        "saw {pings} pings in 1.2 s at a 200 ms interval"
    );

    // Stop answering: herald must close within interval + timeout (+ slack).
    let started = Instant::now();
    // `1` is Engine.IO's close packet.
    while let Some(frame) = s.recv_within(Duration::from_secs(3)).await {
        assert!(frame == "2" || frame == "1", "{frame}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn subscribe_with_ack_objects_and_unknown_events() {
    let herald = Herald::start(&[]).await;
    let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
    s.send(r#"42["no_such_event",{"a":1}]"#).await;
    s.send(r#"421["subscribe",{"sessionId":"raw-1"}]"#).await;
    let (name, reply) = s.next_event().await;
    assert_eq!(
        (
            name.as_str(),
            reply["sessionId"].as_str(),
            reply["seq"].as_u64()
        ),
        ("subscribed", Some("raw-1"), Some(0))
    );
    let epoch = reply["epoch"].as_str().expect("an epoch").to_string();
    assert_eq!(epoch.len(), 12, "{reply}");
    assert_eq!(
        s.recv_skipping_pings().await,
        format!(r#"431[{{"ok":true,"sessionId":"raw-1","seq":0,"epoch":"{epoch}"}}]"#)
    );

    herald
        .publish("raw-1", "progress", sample("progress"))
        .await;
    let (name, payload) = s.next_event().await;
    assert_eq!(
        (name.as_str(), payload["seq"].as_u64()),
        ("progress", Some(1))
    );

    s.send(r#"422["unsubscribe","raw-1"]"#).await;
    assert_eq!(s.next_event().await.0, "unsubscribed");
    assert_eq!(
        s.recv_skipping_pings().await,
        r#"432[{"ok":true,"sessionId":"raw-1"}]"#
    );
}

#[tokio::test]
async fn every_bad_subscribe_is_an_error_event_and_the_socket_stays_usable() {
    let herald = Herald::start(&[]).await;
    let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
    // Every bad payload of tests/fixtures/events.json, to both events.
    let mut bad = Vec::new();
    for case in cases("/sessionIds/invalid") {
        for name in ["subscribe", "unsubscribe"] {
            let mut frame = vec![json!(name)];
            frame.extend(case["args"].as_array().unwrap().iter().cloned());
            bad.push(Value::Array(frame).to_string());
        }
    }
    for (i, payload) in bad.iter().enumerate() {
        s.send(&format!("42{i}{payload}")).await;
        let (name, err) = s.next_event().await;
        assert_eq!(name, "error", "{payload}");
        assert_eq!(err["code"], "INVALID_SESSION_ID", "{payload}");
        assert!(err["error"].as_str().is_some_and(|m| m.len() > 10), "{err}");
        assert!(err.get("seq").is_none() && err["timestamp"].is_string());
        let ack = s.recv_skipping_pings().await;
        let body: Value =
            serde_json::from_str(ack.strip_prefix(&format!("43{i}")).unwrap()).unwrap();
        assert_eq!(body[0]["ok"], false, "{ack}");
    }
    s.emit("subscribe", json!("after-errors")).await;
    assert_eq!(s.next_event().await.0, "subscribed");
    // The boundary cases that are valid are accepted.
    for case in cases("/sessionIds/valid") {
        s.emit("subscribe", case["id"].clone()).await;
        let (name, body) = s.next_event().await;
        assert_eq!(
            (name.as_str(), &body["sessionId"]),
            ("subscribed", &case["id"]),
            "{case}"
        );
    }
    herald
        .publish("after-errors", "error", sample("error"))
        .await;
    assert_eq!(s.next_event().await.1["seq"], 1);
}

#[tokio::test]
async fn room_changes_follow_the_order_the_client_sent_them() {
    let herald = Herald::start(&[]).await;
    let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
    // 1,000 emits back to back: subscribe, unsubscribe, ..., subscribe.
    for i in 0..1000 {
        let name = if i % 2 == 0 {
            "unsubscribe"
        } else {
            "subscribe"
        };
        s.emit(name, json!("flip")).await;
    }
    for i in 0..1000 {
        let expected = if i % 2 == 0 {
            "unsubscribed"
        } else {
            "subscribed"
        };
        assert_eq!(s.next_event().await.0, expected, "reply {i}");
    }
    let (_, state) = herald.get("/api/v1/sessions/flip").await;
    assert_eq!(state["subscribers"], 1);
    herald.publish("flip", "error", sample("error")).await;
    assert_eq!(s.next_event().await.1["seq"], 1);
    let extra = tokio::time::timeout(Duration::from_millis(500), s.recv_skipping_pings()).await;
    assert!(extra.is_err(), "delivered twice: {extra:?}");
}

#[tokio::test]
async fn garbage_closes_at_most_its_own_connection() {
    let herald = Herald::start(&["--max-payload-bytes", "4096"]).await;
    let (mut bystander, _, _) = RawSocket::connect(&herald.ws_url()).await;
    bystander.emit("subscribe", json!("steady")).await;
    assert_eq!(bystander.next_event().await.0, "subscribed");

    let huge = format!(r#"42["subscribe","{}"]"#, "x".repeat(8192));
    let garbage: Vec<Message> = [
        "hello",
        "",
        "9",
        "4",
        "42",
        "42[",
        "42{}",
        r#"42["subscribe""#,
        "42[1,2]",
        "4x",
        "43[]",
        "44",
        "48",
        "40/nowhere,",
        r#"451-["subscribe",{"_placeholder":true,"num":0}]"#,
        "5",
        "6",
        "1",
        "41",
        &huge,
        "\u{0}\u{1}\u{2}",
    ]
    .iter()
    .map(|t| Message::text(t.to_string()))
    .chain([
        Message::binary(vec![0xff, 0x00, 0x42, 0x5b]),
        Message::binary(Vec::new()),
    ])
    .collect();

    for frame in garbage {
        let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
        let shown = format!("{frame:?}");
        s.send_message(frame).await;
        // Whatever herald does with it (ignore it, or close this connection
        // with Engine.IO's `1`), it must not answer with anything else but
        // pings or an error.
        if let Ok(Some(reply)) = tokio::time::timeout(
            Duration::from_millis(150),
            s.recv_within(Duration::from_secs(1)),
        )
        .await
            && reply != "2"
        {
            assert!(
                reply == "1" || reply.starts_with("42[\"error\"") || reply.starts_with("44"),
                "{shown} -> {reply}"
            );
        }
    }

    let mut herald = herald;
    assert!(herald.alive(), "herald died");
    herald
        .publish("steady", "completed", sample("completed"))
        .await;
    let (name, payload) = bystander.next_event().await;
    assert_eq!(
        (name.as_str(), payload["seq"].as_u64()),
        ("completed", Some(1))
    );
    let (mut fresh, _, _) = RawSocket::connect(&herald.ws_url()).await;
    fresh.emit("subscribe", json!("steady")).await;
    assert_eq!(fresh.next_event().await.0, "subscribed");
}

/// A long-poll whose client hangs up (a browser tab closed on the polling
/// transport) ends its socket and subscriptions at once, not after the
/// heartbeat gives up 45 s later; long-polls that answer end nothing.
#[tokio::test]
async fn a_client_hanging_up_on_its_long_poll_is_disconnected() {
    use tokio::io::AsyncWriteExt;

    let herald = Herald::start_logged(&[]).await;
    let http = reqwest::Client::new();
    let polling = herald.url("/socket.io/?EIO=4&transport=polling");
    let open = http
        .get(&polling)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    let poll = format!("{polling}&sid={}", open["sid"].as_str().unwrap());
    let post = |body: &'static str| http.post(&poll).body(body).send();
    assert_eq!(post("40").await.unwrap().status(), 200);
    // Long-polls until a payload carries `what`: the connect ack and the
    // `connected` event may come in one response or two.
    let poll_until = async |what: &str| {
        let mut seen = String::new();
        for _ in 0..3 {
            seen += &http.get(&poll).send().await.unwrap().text().await.unwrap();
            if seen.contains(what) {
                return;
            }
        }
        panic!("no {what} in {seen}");
    };
    poll_until("\"connected\"").await;
    assert_eq!(
        post(r#"42["subscribe","left-open"]"#)
            .await
            .unwrap()
            .status(),
        200
    );
    poll_until("\"subscribed\"").await;
    let (_, stats) = herald.get("/api/v1/stats").await;
    assert_eq!(
        (
            stats["connections"].as_u64(),
            stats["subscriptions"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // A long-poll that nothing answers, then the client goes away.
    let mut conn = TcpStream::connect(("127.0.0.1", herald.port))
        .await
        .unwrap();
    let path = poll.split_once(&format!(":{}", herald.port)).unwrap().1;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, stats) = herald.get("/api/v1/stats").await;
        if stats["connections"] == 0 && stats["subscriptions"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still counted 3 s after the client left: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        herald.log().contains("reason=TransportError"),
        "{}",
        herald.log()
    );
}
