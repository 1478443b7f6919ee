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
    let (a, b) = common::ready_pair(&redis).await;
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

/// The `Emitter` helpers named after seed 001's broadcaster, from an app
/// that embeds herald: the same frames as the HTTP routes publish.
#[tokio::test]
async fn rust_helpers_publish_run_and_workflow_events() {
    use clap::Parser;
    use herald::protocol::{Phase, Scope, StageProgress, WorkflowEvent};

    let config = herald::Config::parse_from(["herald"]);
    let (herald, background) = herald::Herald::new(&config).unwrap();
    background.spawn();
    let emitter = herald.emitter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(herald.serve(listener, std::future::pending()));

    let mut ws = RawSocket::open(&format!("ws://127.0.0.1:{port}/ws")).await;
    ws.recv().await; // connection.established
    ws.send(r#"{"type":"auth","payload":{"runId":"run-rs","projectId":"p-rs"}}"#)
        .await;
    ws.recv().await; // auth.success
    let mut steps = RawSocket::open(&format!("ws://127.0.0.1:{port}/ws/workflows/run-rs")).await;

    let progress: StageProgress = serde_json::from_value(json!({
        "runId": "run-rs", "stageId": "s1", "stageName": "Data Ingestion", "progress": 45,
        "itemsProcessed": 450, "itemsTotal": 1000
    }))
    .unwrap();
    let receipt = emitter
        .broadcast_stage_progress(progress.clone())
        .await
        .unwrap();
    assert_eq!(receipt.seq, 1);
    let frame: Value = serde_json::from_str(&ws.recv().await).unwrap();
    assert_eq!(
        (frame["type"].clone(), frame["seq"].clone()),
        (json!("stage.progress"), json!(1))
    );
    assert_eq!(frame["payload"]["itemsTotal"], 1000);

    // `to: project` needs the payload to name the project.
    assert!(
        emitter
            .broadcast_run(progress.clone(), Scope::Project)
            .await
            .is_err()
    );
    let mut scoped = progress;
    scoped.project_id = Some("p-rs".into());
    emitter
        .broadcast_run(scoped, Scope::Project)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&ws.recv().await).unwrap()["seq"],
        2
    );

    let step: WorkflowEvent = serde_json::from_value(json!({
        "ts": "2025-11-13T10:00:05Z", "run_id": "run-rs", "node_name": "STYLE",
        "phase": "start", "data": { "node_index": 1 }, "request_id": "q"
    }))
    .unwrap();
    assert_eq!(step.phase, Phase::Start);
    emitter.workflow_event(step).await.unwrap();
    assert_eq!(
        steps.recv().await,
        r#"{"ts":"2025-11-13T10:00:05Z","run_id":"run-rs","node_name":"STYLE","phase":"start","duration_ms":null,"data":{"node_index":1},"request_id":"q"}"#
    );
}
