//! Tokens and connection limits on the plain WebSocket endpoints and on
//! Socket.IO `{ runId }` (issue 12: one rule for every way in), against a
//! real herald over real sockets: `/ws` `auth` with good, bad, expired and
//! missing tokens, a run the token does not grant, the workflow stream's
//! upgrade check, Socket.IO FORBIDDEN for runs, and `/ws` clients counted by
//! the per-address cap for as long as they are open, and the browser-origin
//! check on the plain endpoints.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket};
use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

const SECRET: &str = "streams-secret";

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A token for user `u1` granting project `p1` and the runs `run-*`.
fn good() -> String {
    token(json!({
        "sub": "u1", "exp": get_current_timestamp() + 600,
        "projects": ["p1"], "runs": ["run-*"],
    }))
}

async fn herald() -> Herald {
    Herald::start(&["--jwt-secret", SECRET]).await
}

fn ws_url(herald: &Herald, path: &str) -> String {
    format!("ws://127.0.0.1:{}{path}", herald.port)
}

async fn client(herald: &Herald) -> RawSocket {
    let mut ws = RawSocket::open(&ws_url(herald, "/ws")).await;
    let hello: Value = serde_json::from_str(&ws.recv().await).unwrap();
    assert_eq!(hello["type"], "connection.established", "{hello}");
    ws
}

async fn ask(ws: &mut RawSocket, kind: &str, payload: Value) -> Value {
    ws.send(&json!({ "type": kind, "payload": payload }).to_string())
        .await;
    serde_json::from_str(&ws.recv().await).unwrap()
}

async fn publish(herald: &Herald, run: &str, pct: u32) {
    let body = json!({ "type": "stage.progress", "payload": { "stageId": "s", "stageName": "Ingest", "progress": pct } });
    let (status, answer) = herald
        .post(&format!("/api/v1/runs/{run}/events"), &body.to_string())
        .await;
    assert_eq!(status, 202, "{answer}");
}

async fn silent(ws: &mut RawSocket) {
    if let Ok(frame) = tokio::time::timeout(Duration::from_millis(400), ws.recv()).await {
        panic!("expected nothing, received {frame}");
    }
}

#[tokio::test]
async fn ws_auth_follows_the_token() {
    let herald = herald().await;
    let mut ws = client(&herald).await;
    let claims = json!({ "userId": "u1", "projectId": "p1", "runId": "run-1" });

    // Before auth: answers to ping and get_status, errors for the rest.
    assert_eq!(ask(&mut ws, "ping", json!({})).await["type"], "pong");
    assert_eq!(
        ask(&mut ws, "get_status", json!({})).await["type"],
        "status"
    );
    let refused = ask(
        &mut ws,
        "subscribe",
        json!({ "eventType": "stage.progress" }),
    )
    .await;
    assert_eq!(refused["type"], "error", "{refused}");
    let refused = ask(&mut ws, "subscribe", json!({ "runId": "run-1" })).await;
    assert_eq!(refused["type"], "error", "{refused}");

    let missing = ask(&mut ws, "auth", claims.clone()).await;
    assert_eq!(missing["type"], "auth.failed");
    assert!(
        missing["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("missing token"),
        "{missing}"
    );
    let with = |token: String| {
        let mut p = claims.clone();
        p["token"] = token.into();
        p
    };
    let bad = ask(&mut ws, "auth", with("not-a-token".into())).await;
    assert_eq!(bad["type"], "auth.failed", "{bad}");
    let expired = token(
        json!({ "sub": "u1", "exp": get_current_timestamp() - 5, "runs": ["*"], "projects": ["*"] }),
    );
    let expired = ask(&mut ws, "auth", with(expired)).await;
    assert!(
        expired["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{expired}"
    );
    let mut other_user = claims.clone();
    other_user["userId"] = "u2".into();
    other_user["token"] = good().into();
    let refused = ask(&mut ws, "auth", other_user).await;
    assert_eq!(refused["type"], "auth.failed", "{refused}");
    let mut other_run = claims.clone();
    other_run["runId"] = "job-1".into();
    other_run["token"] = good().into();
    let refused = ask(&mut ws, "auth", other_run).await;
    assert_eq!(refused["type"], "auth.failed", "{refused}");

    // Nothing was delivered to the unauthenticated client.
    publish(&herald, "run-1", 10).await;
    silent(&mut ws).await;

    let ok = ask(&mut ws, "auth", with(good())).await;
    assert_eq!(ok["type"], "auth.success", "{ok}");
    publish(&herald, "run-1", 20).await;
    let event: Value = serde_json::from_str(&ws.recv().await).unwrap();
    assert_eq!(event["payload"]["progress"], 20, "{event}");

    // A run the token does not grant: an error, and none of its events.
    let refused = ask(&mut ws, "subscribe", json!({ "runId": "job-9" })).await;
    assert_eq!(refused["type"], "error", "{refused}");
    publish(&herald, "job-9", 30).await;
    silent(&mut ws).await;
    // Its own token may grant it.
    let job =
        token(json!({ "sub": "u1", "exp": get_current_timestamp() + 600, "runs": ["job-9"] }));
    let added = ask(
        &mut ws,
        "subscribe",
        json!({ "runId": "job-9", "token": job }),
    )
    .await;
    assert_eq!(added["type"], "subscription.added", "{added}");
}

#[tokio::test]
async fn workflow_upgrades_need_a_covering_token() {
    let herald = herald().await;
    let refused = |url: String| async move {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
            Ok(_) => panic!("upgraded without a covering token"),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused(ws_url(&herald, "/ws/workflows/run-1")).await, 401);
    assert_eq!(
        refused(ws_url(&herald, "/ws/workflows/run-1?token=garbage")).await,
        401
    );
    let path = format!("/ws/workflows/job-1?token={}", good());
    assert_eq!(refused(ws_url(&herald, &path)).await, 403);
    // `run-*` is not every run.
    let path = format!("/ws/workflows?token={}", good());
    assert_eq!(refused(ws_url(&herald, &path)).await, 403);

    let path = format!("/ws/workflows/run-1?token={}", good());
    tokio_tungstenite::connect_async(ws_url(&herald, &path))
        .await
        .expect("a covering token upgrades");
    let all = token(json!({ "exp": get_current_timestamp() + 600, "runs": ["*"] }));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url(
            &herald,
            "/ws/workflows",
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {all}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect("runs: [\"*\"] as a bearer token opens every run's stream");
}

#[tokio::test]
async fn socket_io_run_subscribe_is_forbidden_unless_granted() {
    let herald = herald().await;
    let url = format!("{}&token={}", herald.ws_url(), good());
    let (mut s, _, _) = RawSocket::connect(&url).await;
    s.emit("subscribe", json!({ "runId": "job-1" })).await;
    let (name, error) = s.next_event().await;
    assert_eq!(
        (name.as_str(), &error["code"]),
        ("error", &json!("FORBIDDEN")),
        "{error}"
    );
    let job = token(json!({ "exp": get_current_timestamp() + 600, "runs": ["job-1"] }));
    s.emit("subscribe", json!({ "runId": "job-1", "token": job }))
        .await;
    let (name, data) = s.next_event().await;
    assert_ne!(name, "error", "{data}");
    s.emit("subscribe", json!({ "runId": "run-7" })).await;
    let (name, data) = s.next_event().await;
    assert_ne!(name, "error", "{data}");
}

#[tokio::test]
async fn ws_connections_count_against_the_per_address_cap() {
    let herald = Herald::start(&["--max-connections-per-address", "2"]).await;
    let first = client(&herald).await;
    let _second = client(&herald).await;
    // Both are still counted once open: the third is refused.
    match tokio_tungstenite::connect_async(ws_url(&herald, "/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("expected a 429, got {other:?}"),
    }
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio_tungstenite::connect_async(ws_url(&herald, "/ws"))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_whose_token_expires_is_closed() {
    let herald = Herald::start(&["--jwt-secret", SECRET, "--ws-ping-interval-ms", "200"]).await;
    let soon = token(json!({
        "sub": "u1", "exp": get_current_timestamp() + 2, "runs": ["*"],
    }));
    let mut ws = client(&herald).await;
    let ok = ask(&mut ws, "auth", json!({ "runId": "run-1", "token": soon })).await;
    assert_eq!(ok["type"], "auth.success", "{ok}");
    let path = format!("/ws/workflows/run-1?token={soon}");
    let mut workflow = RawSocket::open(&ws_url(&herald, &path)).await;
    for client in [&mut ws, &mut workflow] {
        assert_eq!(
            client.recv_within(Duration::from_secs(5)).await,
            None,
            "expected the connection closed at the token's exp"
        );
    }
}

#[tokio::test]
async fn a_foreign_browser_origin_is_refused_on_the_plain_endpoints() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let herald = Herald::start(&["--cors-origins", "http://app.test"]).await;
    for path in ["/ws", "/ws/workflows", "/ws/workflows/run-1"] {
        let upgrade = |origin: &str| {
            let mut request = ws_url(&herald, path).into_client_request().unwrap();
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
            tokio_tungstenite::connect_async(request)
        };
        match upgrade("http://evil.test").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 403, "{path}")
            }
            other => panic!("{path}: expected a 403, got {other:?}"),
        }
        upgrade("http://app.test")
            .await
            .unwrap_or_else(|e| panic!("{path}: the allowed origin was refused: {e}"));
    }
}
