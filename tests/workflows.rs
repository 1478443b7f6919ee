//! `/ws/workflows` and `/ws/workflows/{runId}`: MeatyMusic's workflow stream
//! (PROTOCOL.md section 7) against a real herald: frames byte for byte what
//! its FastAPI backend sends, per-run and all-run streams, refusals, and
//! order across two instances through Redis.

mod common;

use common::{Herald, RawSocket, Redis};
use serde_json::{Value, json};

async fn stream(herald: &Herald, path: &str) -> RawSocket {
    // herald registers the client before it answers the handshake.
    RawSocket::open(&format!("ws://127.0.0.1:{}{path}", herald.port)).await
}

async fn publish(herald: &Herald, run: &str, body: &str) -> (u16, Value) {
    herald
        .post(&format!("/api/v1/workflows/{run}/events"), body)
        .await
}

#[tokio::test]
async fn frames_are_byte_for_byte_what_fastapi_sends() {
    let herald = Herald::start(&[]).await;
    let mut one = stream(&herald, "/ws/workflows/run-123").await;
    let mut every = stream(&herald, "/ws/workflows").await;
    let mut other = stream(&herald, "/ws/workflows/run-456").await;

    // Fields in any order and spacing, as a backend may send them.
    let published = [
        r#"{"phase":"start","run_id":"run-123","ts":"2025-11-13T10:00:00Z","data":{"song_id":"song-456","global_seed":12345},"request_id":"req-1"}"#,
        r#"{"run_id":"run-123","node_name":"STYLE","phase":"end","ts":"2025-11-13T10:00:25Z","duration_ms":20000,"data":{ "artifacts": {"style_spec": {"genre": "synthwave"}}, "scores": {"completeness": 0.95} },"request_id":"req-1"}"#,
        r#"{"ts":"2025-11-13T10:00:15Z","run_id":"run-123","node_name":"LYRICS","phase":"fail","duration_ms":null,"data":{"error_message":"Genre not found in blueprint"},"request_id":"req-1"}"#,
    ];
    // What `websocket.send_json(event.model_dump())` sends for each.
    let expected = [
        r#"{"ts":"2025-11-13T10:00:00Z","run_id":"run-123","node_name":null,"phase":"start","duration_ms":null,"data":{"song_id":"song-456","global_seed":12345},"request_id":"req-1"}"#,
        r#"{"ts":"2025-11-13T10:00:25Z","run_id":"run-123","node_name":"STYLE","phase":"end","duration_ms":20000,"data":{"artifacts":{"style_spec":{"genre":"synthwave"}},"scores":{"completeness":0.95}},"request_id":"req-1"}"#,
        r#"{"ts":"2025-11-13T10:00:15Z","run_id":"run-123","node_name":"LYRICS","phase":"fail","duration_ms":null,"data":{"error_message":"Genre not found in blueprint"},"request_id":"req-1"}"#,
    ];
    for (i, body) in published.iter().enumerate() {
        let (status, answer) = publish(&herald, "run-123", body).await;
        assert_eq!(
            (status, answer),
            (202, json!({ "runId": "run-123", "seq": i + 1 }))
        );
    }
    for frame in expected {
        assert_eq!(one.recv().await, frame);
        assert_eq!(every.recv().await, frame);
    }

    // ts is filled when absent; the other run's stream saw none of it.
    let (status, _) = publish(
        &herald,
        "run-456",
        r#"{"run_id":"run-456","phase":"start","request_id":"r2"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let frame = other.recv().await;
    let filled: Value = serde_json::from_str(&frame).unwrap();
    assert!(filled["ts"].as_str().unwrap().ends_with('Z'), "{filled}");
    assert!(frame.starts_with(r#"{"ts":""#), "{frame}");
    assert_eq!(every.recv().await, frame);
}

#[tokio::test]
async fn refusals_name_the_field_and_publish_nothing() {
    let herald = Herald::start(&[]).await;
    let mut every = stream(&herald, "/ws/workflows").await;
    let cases = [
        (
            r#"{"run_id":"elsewhere","phase":"start","request_id":"r"}"#,
            "run_id",
        ),
        (
            r#"{"run_id":"w1","phase":"paused","request_id":"r"}"#,
            "phase",
        ),
        (r#"{"run_id":"w1","phase":"start"}"#, "request_id"),
        (
            r#"{"run_id":"w1","phase":"start","request_id":"r","mrn":"123"}"#,
            "mrn",
        ),
        (
            r#"{"run_id":"w1","phase":"end","request_id":"r","duration_ms":-5}"#,
            "duration_ms",
        ),
        (
            r#"{"run_id":"w1","phase":"end","request_id":"r","data":[1]}"#,
            "data",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = publish(&herald, "w1", body).await;
        assert_eq!(
            (status, answer["field"].clone()),
            (422, json!(field)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = publish(
        &herald,
        "w1",
        r#"{"run_id":"w1","phase":"start","request_id":"r"}"#,
    )
    .await;
    assert_eq!((status, answer["seq"].clone()), (202, json!(1)));
    let frame: Value = serde_json::from_str(&every.recv().await).unwrap();
    assert_eq!(frame["request_id"], "r");
}

#[tokio::test]
async fn two_instances_through_redis_keep_each_runs_order() {
    let redis = Redis::start().await;
    let (a, b) = common::ready_pair(&redis).await;
    let mut on_a = stream(&a, "/ws/workflows/wf").await;
    let mut on_b = stream(&b, "/ws/workflows").await;
    for i in 0..30 {
        let herald = if i % 2 == 0 { &a } else { &b };
        let body = json!({ "run_id": "wf", "node_name": format!("N{i}"), "phase": "start", "request_id": "r" });
        let (status, answer) = publish(herald, "wf", &body.to_string()).await;
        assert_eq!((status, answer["seq"].clone()), (202, json!(i + 1)));
    }
    for ws in [&mut on_a, &mut on_b] {
        for i in 0..30 {
            let frame: Value = serde_json::from_str(&ws.recv().await).unwrap();
            assert_eq!(frame["node_name"], format!("N{i}"));
        }
    }
}
