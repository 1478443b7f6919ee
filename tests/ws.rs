//! `/ws`, ResearchFlow's plain WebSocket protocol (PROTOCOL.md section 6),
//! against a real herald over real sockets: every client message and every
//! refusal, type and category filtering, run/project/user/all scoping, the
//! heartbeat, PHI refusals, resume with `since`, and two instances through
//! Redis.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket, Redis};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn ws_url(herald: &Herald, path: &str) -> String {
    format!("ws://127.0.0.1:{}{path}", herald.port)
}

/// A `/ws` client past its `connection.established`.
async fn client(herald: &Herald) -> (RawSocket, Value) {
    let mut ws = RawSocket::open(&ws_url(herald, "/ws")).await;
    let hello: Value = serde_json::from_str(&ws.recv().await).unwrap();
    assert_eq!(hello["type"], "connection.established", "{hello}");
    (ws, hello)
}

async fn ask(ws: &mut RawSocket, message: Value) -> Value {
    ws.send(&message.to_string()).await;
    serde_json::from_str(&ws.recv().await).unwrap()
}

async fn next(ws: &mut RawSocket) -> Value {
    serde_json::from_str(&ws.recv().await).unwrap()
}

/// Publishes a run event; returns the status and the answer.
async fn publish(herald: &Herald, run: &str, body: Value) -> (u16, Value) {
    herald
        .post(&format!("/api/v1/runs/{run}/events"), &body.to_string())
        .await
}

async fn auth(ws: &mut RawSocket, payload: Value) -> Value {
    ask(ws, json!({ "type": "auth", "payload": payload })).await
}

fn event(kind: &str, payload: Value) -> Value {
    json!({ "type": kind, "payload": payload })
}

fn progress(stage: &str, pct: u32) -> Value {
    event(
        "stage.progress",
        json!({ "stageId": stage, "stageName": "Data Ingestion", "progress": pct }),
    )
}

#[tokio::test]
async fn every_message_and_every_refusal() {
    let herald = Herald::start(&["--max-payload-bytes", "4096"]).await;
    let (mut ws, hello) = client(&herald).await;
    assert!(hello["payload"]["clientId"].as_str().unwrap().len() > 4);
    assert!(hello["payload"]["version"].is_string());

    let pong = ask(&mut ws, json!({ "type": "ping" })).await;
    assert_eq!(
        (pong["type"].clone(), pong["payload"].clone()),
        (json!("pong"), json!({}))
    );
    assert!(pong["timestamp"].is_string());

    let auth = json!({ "userId": "u1", "projectId": "p1", "runId": "r1" });
    let ok = ask(&mut ws, json!({ "type": "auth", "payload": auth })).await;
    assert_eq!(ok, json!({ "type": "auth.success", "payload": auth }));
    let bad = ask(
        &mut ws,
        json!({ "type": "auth", "payload": { "runId": "a b" } }),
    )
    .await;
    assert_eq!(bad["type"], "auth.failed");
    assert!(
        bad["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("runId")
    );

    let added = ask(
        &mut ws,
        json!({ "type": "subscribe", "payload": { "eventType": "run.created" } }),
    )
    .await;
    assert_eq!(
        added,
        json!({ "type": "subscription.added", "payload": { "eventType": "run.created", "subscriptions": ["run.created"] } })
    );
    let added = ask(
        &mut ws,
        json!({ "type": "subscribe", "payload": { "eventCategory": "GOVERNANCE_EVENTS" } }),
    )
    .await;
    assert_eq!(
        added["payload"],
        json!({ "eventCategory": "GOVERNANCE_EVENTS",
        "subscriptions": ["run.created", "governance.required", "approval.granted", "approval.denied"] })
    );
    let removed = ask(
        &mut ws,
        json!({ "type": "unsubscribe", "payload": { "eventType": "approval.denied" } }),
    )
    .await;
    assert_eq!(removed["type"], "subscription.removed");
    assert_eq!(
        removed["payload"]["subscriptions"],
        json!(["run.created", "governance.required", "approval.granted"])
    );

    let status = ask(&mut ws, json!({ "type": "get_status" })).await;
    assert_eq!(status["type"], "status");
    assert_eq!(status["payload"]["clientId"], hello["payload"]["clientId"]);
    assert_eq!(status["payload"]["messageCount"], 0);
    assert_eq!(
        status["payload"]["subscriptions"].as_array().unwrap().len(),
        3
    );

    // Every refusal is an `error` frame, and the connection stays usable.
    let refusals = [
        ("not json".to_string(), "Invalid message format"),
        (
            json!({ "payload": {} }).to_string(),
            "Invalid message format",
        ),
        (
            json!({ "type": "dance" }).to_string(),
            "Unknown message type",
        ),
        (
            json!({ "type": "subscribe", "payload": { "eventType": "run.exploded" } }).to_string(),
            "Unknown event type",
        ),
        (
            json!({ "type": "subscribe", "payload": { "eventCategory": "NOPE" } }).to_string(),
            "Unknown event category",
        ),
        (
            json!({ "type": "subscribe" }).to_string(),
            "Invalid subscription",
        ),
        (
            json!({ "type": "unsubscribe", "payload": {} }).to_string(),
            "Invalid subscription",
        ),
    ];
    for (frame, message) in refusals {
        ws.send(&frame).await;
        let error = next(&mut ws).await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["payload"]["message"], message, "{frame}: {error}");
        assert!(error["payload"]["details"].is_string(), "{error}");
    }
    ws.send_message(Message::binary(vec![1, 2, 3])).await;
    let error = next(&mut ws).await;
    assert_eq!(
        error["payload"]["message"],
        "Binary frames are not supported"
    );
    assert_eq!(
        ask(&mut ws, json!({ "type": "ping" })).await["type"],
        "pong"
    );

    // A frame over MAX_PAYLOAD_BYTES closes that connection only.
    let (mut other, _) = client(&herald).await;
    ws.send(&"x".repeat(5000)).await;
    assert_eq!(ws.recv_within(Duration::from_secs(5)).await, None);
    assert_eq!(
        ask(&mut other, json!({ "type": "ping" })).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn filtering_and_scoping() {
    let herald = Herald::start(&[]).await;
    let (mut stages, _) = client(&herald).await; // run r1, stage events only
    auth(&mut stages, json!({ "runId": "r1" })).await;
    ask(
        &mut stages,
        json!({ "type": "subscribe", "payload": { "eventCategory": "STAGE_EVENTS" } }),
    )
    .await;
    let (mut run, _) = client(&herald).await; // run r1, every type
    auth(&mut run, json!({ "runId": "r1" })).await;
    let (mut project, _) = client(&herald).await;
    auth(&mut project, json!({ "projectId": "p1", "runId": "r2" })).await;
    let (mut user, _) = client(&herald).await;
    auth(&mut user, json!({ "userId": "u1" })).await;
    let (mut anonymous, _) = client(&herald).await;

    let sends = [
        ("r1", event("run.started", json!({ "projectId": "p1" }))),
        ("r1", progress("s1", 10)),
        (
            "r3",
            json!({ "type": "run.created", "to": "project", "payload": { "projectId": "p1", "runName": "n", "stageCount": 3, "createdBy": "u9" } }),
        ),
        (
            "r3",
            json!({ "type": "run.failed", "to": "user", "payload": { "userId": "u1", "errorCode": "E" } }),
        ),
        (
            "r4",
            json!({ "type": "approval.granted", "to": "all", "payload": { "approvalId": "a", "governanceId": "g", "grantedBy": "u2" } }),
        ),
        (
            "r5",
            json!({ "type": "stage.completed", "to": "all", "payload": { "stageId": "s", "stageName": "n" } }),
        ),
    ];
    for (run_id, body) in sends {
        let (status, answer) = publish(&herald, run_id, body).await;
        assert_eq!(status, 202, "{answer}");
    }
    let expect = [
        (&mut stages, vec!["stage.progress", "stage.completed"]),
        (
            &mut run,
            vec![
                "run.started",
                "stage.progress",
                "approval.granted",
                "stage.completed",
            ],
        ),
        (
            &mut project,
            vec!["run.created", "approval.granted", "stage.completed"],
        ),
        (
            &mut user,
            vec!["run.failed", "approval.granted", "stage.completed"],
        ),
        (&mut anonymous, vec!["approval.granted", "stage.completed"]),
    ];
    for (ws, types) in expect {
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("stage.completed") {
            let frame = next(ws).await;
            assert!(
                frame["timestamp"].is_string() && frame["seq"].is_u64(),
                "{frame}"
            );
            got.push(frame["type"].as_str().unwrap().to_string());
        }
        assert_eq!(got, types);
    }
    let status = ask(&mut run, json!({ "type": "get_status" })).await;
    assert_eq!(status["payload"]["messageCount"], 4);
}

#[tokio::test]
async fn phi_and_malformed_publishes_are_refused_and_consume_nothing() {
    let herald = Herald::start(&[]).await;
    let (mut ws, _) = client(&herald).await;
    ask(
        &mut ws,
        json!({ "type": "auth", "payload": { "runId": "run-123" } }),
    )
    .await;
    for (field, value) in [
        ("patientName", json!("John Doe")),
        ("mrn", json!("123-45-6789")),
        (
            "analysisResult",
            json!("Patient has elevated HbA1c at 8.2%..."),
        ),
    ] {
        let mut payload = json!({ "projectId": "p", "durationMs": 1 });
        payload[field] = value;
        let (status, answer) = publish(&herald, "run-123", event("run.completed", payload)).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["field"], format!("payload.{field}"));
    }
    let refusals = [
        (event("run.exploded", json!({})), "type"),
        (event("run.failed", json!({})), "payload.errorCode"),
        (
            event("run.started", json!({ "runId": "other" })),
            "payload.runId",
        ),
        (
            event(
                "stage.progress",
                json!({ "stageId": "s", "stageName": "n", "progress": 140 }),
            ),
            "payload.progress",
        ),
        (
            json!({ "type": "run.started", "payload": {}, "to": "team" }),
            "to",
        ),
        (
            json!({ "type": "run.started", "payload": {}, "to": "project" }),
            "payload.projectId",
        ),
    ];
    for (body, field) in refusals {
        let (status, answer) = publish(&herald, "run-123", body.clone()).await;
        assert_eq!(
            (status, answer["field"].clone()),
            (422, json!(field)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = publish(&herald, "run-123", event("run.started", json!({}))).await;
    assert_eq!(
        (status, answer["seq"].clone(), answer["type"].clone()),
        (202, json!(1), json!("run.started"))
    );
    let frame = next(&mut ws).await;
    assert_eq!(
        (frame["type"].clone(), frame["seq"].clone()),
        (json!("run.started"), json!(1))
    );
    assert_eq!(frame["payload"], json!({ "runId": "run-123" }));
}

#[tokio::test]
async fn a_silent_client_is_closed_and_a_live_one_is_not() {
    let herald = Herald::start(&[
        "--ws-ping-interval-ms",
        "100",
        "--ws-client-timeout-ms",
        "400",
    ])
    .await;
    let (mut silent, _) = client(&herald).await;
    let (mut live, _) = client(&herald).await;
    // Reading answers the pings (tungstenite sends the pongs); not reading does not.
    let reading = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_millis(1200),
            live.recv_within(Duration::from_secs(5)),
        )
        .await;
        live
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        silent.recv_within(Duration::from_secs(2)).await,
        None,
        "silent client still open"
    );
    let mut live = reading.await.unwrap();
    assert_eq!(
        ask(&mut live, json!({ "type": "ping" })).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn resume_replays_what_was_missed_then_live_events() {
    let herald = Herald::start(&[]).await;
    for pct in [10, 20, 30] {
        assert_eq!(publish(&herald, "r9", progress("s", pct)).await.0, 202);
    }
    let (mut ws, _) = client(&herald).await;
    let added = ask(
        &mut ws,
        json!({ "type": "subscribe", "payload": { "runId": "r9", "since": 1 } }),
    )
    .await;
    assert_eq!(added["type"], "subscription.added", "{added}");
    assert_eq!(
        (
            added["payload"]["recovered"].clone(),
            added["payload"]["replayed"].clone(),
            added["payload"]["seq"].clone()
        ),
        (json!(true), json!(2), json!(3))
    );
    let replayed: Vec<Value> = vec![next(&mut ws).await, next(&mut ws).await];
    assert_eq!(
        replayed
            .iter()
            .map(|f| f["seq"].clone())
            .collect::<Vec<_>>(),
        [json!(2), json!(3)]
    );
    assert_eq!(replayed[1]["payload"]["progress"], 30);
    publish(&herald, "r9", progress("s", 40)).await;
    let live = next(&mut ws).await;
    assert_eq!(
        (live["seq"].clone(), live["payload"]["progress"].clone()),
        (json!(4), json!(40))
    );
}

#[tokio::test]
async fn two_instances_through_redis_deliver_every_event_in_order() {
    let redis = Redis::start().await;
    let (a, b) = common::ready_pair(&redis).await;
    let mut clients = Vec::new();
    for herald in [&a, &b] {
        let (mut ws, _) = client(herald).await;
        ask(
            &mut ws,
            json!({ "type": "auth", "payload": { "runId": "rc", "projectId": "pc" } }),
        )
        .await;
        clients.push(ws);
    }
    for i in 0..40u32 {
        let herald = if i % 2 == 0 { &a } else { &b };
        let (status, answer) = publish(herald, "rc", progress("s", i)).await;
        assert_eq!((status, answer["seq"].clone()), (202, json!(i + 1)));
    }
    let (status, _) = publish(
        &b,
        "other",
        json!({ "type": "run.started", "to": "project", "payload": { "projectId": "pc" } }),
    )
    .await;
    assert_eq!(status, 202);
    for ws in &mut clients {
        for i in 0..40u32 {
            let frame = next(ws).await;
            assert_eq!(
                (frame["seq"].clone(), frame["payload"]["progress"].clone()),
                (json!(i + 1), json!(i))
            );
        }
        let scoped = next(ws).await;
        assert_eq!(
            (scoped["type"].clone(), scoped["payload"]["runId"].clone()),
            (json!("run.started"), json!("other"))
        );
    }
    // A client resuming on the other instance reads the run's history from Redis.
    let (mut late, _) = client(&b).await;
    let added = ask(
        &mut late,
        json!({ "type": "subscribe", "payload": { "runId": "rc", "since": 38 } }),
    )
    .await;
    assert_eq!(added["payload"]["replayed"], 2, "{added}");
    assert_eq!(next(&mut late).await["seq"], 39);
    assert_eq!(next(&mut late).await["seq"], 40);
}
