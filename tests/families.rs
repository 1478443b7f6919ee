//! One publish, every transport: a run event reaches `/ws` clients and
//! Socket.IO clients subscribed with `{ runId }`, a workflow event reaches
//! `/ws/workflows` clients, on every instance through Redis, in order; a
//! Socket.IO client resumes a run with `since`; stats count each endpoint.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket, Redis};
use serde_json::{Value, json};

async fn post(herald: &Herald, path: &str, body: Value) -> Value {
    let (status, answer) = herald.post(path, &body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

async fn ws_client(herald: &Herald, run: &str) -> RawSocket {
    let mut ws = RawSocket::open(&format!("ws://127.0.0.1:{}/ws", herald.port)).await;
    ws.recv().await; // connection.established
    ws.send(&json!({ "type": "auth", "payload": { "runId": run } }).to_string())
        .await;
    let ok: Value = serde_json::from_str(&ws.recv().await).unwrap();
    assert_eq!(ok["type"], "auth.success");
    ws
}

async fn socketio_run(herald: &Herald, subscribe: Value) -> (RawSocket, Value) {
    let (mut s, _, _) = RawSocket::connect(&herald.ws_url()).await;
    s.emit("subscribe", subscribe).await;
    let (name, data) = s.next_event().await;
    assert_eq!(name, "subscribed", "{data}");
    (s, data)
}

#[tokio::test]
async fn one_publish_reaches_every_transport_on_every_instance_in_order() {
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Herald::start(&["--redis-url", &url]).await;
    let b = Herald::start(&["--redis-url", &url]).await;
    for herald in [&a, &b] {
        herald.wait_ready(200, Duration::from_secs(10)).await;
    }
    let mut ws = ws_client(&a, "r1").await;
    let (mut sio, subscribed) = socketio_run(&b, json!({ "runId": "r1" })).await;
    assert_eq!(
        (subscribed["runId"].clone(), subscribed["seq"].clone()),
        (json!("r1"), json!(0))
    );
    let mut workflows =
        RawSocket::open(&format!("ws://127.0.0.1:{}/ws/workflows/r1", b.port)).await;

    for i in 0..20u32 {
        let herald = if i % 2 == 0 { &a } else { &b };
        let body = json!({ "type": "stage.progress", "payload": { "stageId": "s", "stageName": "n", "progress": i } });
        post(herald, "/api/v1/runs/r1/events", body).await;
        let wf = json!({ "run_id": "r1", "node_name": format!("N{i}"), "phase": "end", "request_id": "q" });
        post(herald, "/api/v1/workflows/r1/events", wf).await;
    }
    for i in 0..20u64 {
        let frame: Value = serde_json::from_str(&ws.recv().await).unwrap();
        assert_eq!(
            (frame["seq"].clone(), frame["payload"]["progress"].clone()),
            (json!(i + 1), json!(i))
        );
        let (name, data) = sio.next_event().await;
        assert_eq!(name, "stage.progress");
        assert_eq!(
            (
                data["runId"].clone(),
                data["seq"].clone(),
                data["progress"].clone()
            ),
            (json!("r1"), json!(i + 1), json!(i))
        );
        assert_eq!(data["timestamp"], frame["timestamp"]);
        let step: Value = serde_json::from_str(&workflows.recv().await).unwrap();
        assert_eq!(step["node_name"], format!("N{i}"));
    }
    // Workflow events are not run events: the run's clients saw none.
    let stats: Value = reqwest::get(b.url("/api/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["endpoints"],
        json!({ "socketio": 1, "ws": 0, "workflows": 1 }),
        "{stats}"
    );
    let metrics = reqwest::get(a.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("herald_events_published_total{family=\"run\",event=\"stage.progress\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_stream_connections{endpoint=\"ws\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn socketio_clients_resume_a_run_with_since() {
    let herald = Herald::start(&[]).await;
    for i in 0..3 {
        let body = json!({ "type": "stage.progress", "payload": { "stageId": "s", "stageName": "n", "progress": i } });
        post(&herald, "/api/v1/runs/r2/events", body).await;
    }
    let (mut sio, subscribed) = socketio_run(&herald, json!({ "runId": "r2", "since": 1 })).await;
    assert_eq!(
        (
            subscribed["recovered"].clone(),
            subscribed["replayed"].clone()
        ),
        (json!(true), json!(2))
    );
    assert_eq!(sio.seqs("stage.progress", 2).await, [2, 3]);
    post(
        &herald,
        "/api/v1/runs/r2/events",
        json!({ "type": "run.completed", "payload": {} }),
    )
    .await;
    let (name, data) = sio.next_event().await;
    assert_eq!(
        (name.as_str(), data["seq"].clone()),
        ("run.completed", json!(4))
    );
    // A bad run id is refused and the socket stays.
    sio.emit("subscribe", json!({ "runId": "a b" })).await;
    let (name, data) = sio.next_event().await;
    assert_eq!(
        (name.as_str(), data["code"].clone()),
        ("error", json!("INVALID_RUN_ID"))
    );
    sio.emit("unsubscribe", json!({ "runId": "r2" })).await;
    let (name, data) = sio.next_event().await;
    assert_eq!(
        (name.as_str(), data["runId"].clone()),
        ("unsubscribed", json!("r2"))
    );
    post(
        &herald,
        "/api/v1/runs/r2/events",
        json!({ "type": "run.started", "payload": {} }),
    )
    .await;
    sio.assert_silent(Duration::from_millis(300)).await;
}
