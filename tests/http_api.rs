//! The HTTP publish API against a real herald: what a backend sends, what
//! subscribers receive, and that every refused request delivers nothing and
//! consumes no seq.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket, build, cases, sample};
use serde_json::{Value, json};

const EVENTS: [&str; 5] = [
    "progress",
    "model_result",
    "clarification",
    "completed",
    "error",
];

#[tokio::test]
async fn every_event_arrives_with_its_fields_and_envelope() {
    let herald = Herald::start(&[]).await;
    let mut sub = RawSocket::subscribed(&herald, "doc-1").await;
    for (i, name) in EVENTS.iter().enumerate() {
        let data = sample(name);
        let (status, receipt) = herald.publish("doc-1", name, data.clone()).await;
        assert_eq!(status, 202, "{receipt}");
        let seq = i as u64 + 1;
        assert_eq!(
            receipt,
            json!({ "sessionId": "doc-1", "event": name, "seq": seq })
        );

        let (got, payload) = sub.next_event().await;
        assert_eq!(&got, name);
        let mut expected = data.as_object().unwrap().clone();
        expected.insert("sessionId".into(), json!("doc-1"));
        expected.insert("seq".into(), json!(seq));
        let ts = payload["timestamp"]
            .as_str()
            .expect("timestamp")
            .to_string();
        assert!(
            ts.ends_with('Z') && ts.len() == 24,
            "ISO timestamp, got {ts}"
        );
        expected.insert("timestamp".into(), json!(ts));
        assert_eq!(payload, Value::Object(expected));
    }
}

#[tokio::test]
async fn backend_timestamp_and_matching_session_id_are_kept() {
    let herald = Herald::start(&[]).await;
    let mut sub = RawSocket::subscribed(&herald, "doc-2").await;
    let mut data = sample("error");
    data["timestamp"] = json!("2026-01-31T12:00:00+02:00");
    data["sessionId"] = json!("doc-2");
    assert_eq!(herald.publish("doc-2", "error", data).await.0, 202);
    let (_, payload) = sub.next_event().await;
    assert_eq!(payload["timestamp"], "2026-01-31T12:00:00+02:00");
    assert_eq!(payload["seq"], 1);
}

#[tokio::test]
async fn optional_fields_pass_and_null_means_absent() {
    let herald = Herald::start(&[]).await;
    let mut sub = RawSocket::subscribed(&herald, "doc-3").await;
    let mut progress = sample("progress");
    progress["hasResult"] = json!(true);
    progress["result"] = json!({ "z": 1, "a": [1, 2, { "deep": null }] });
    assert_eq!(herald.publish("doc-3", "progress", progress).await.0, 202);
    let (_, payload) = sub.next_event().await;
    assert_eq!(
        payload["result"],
        json!({ "z": 1, "a": [1, 2, { "deep": null }] })
    );
    assert_eq!(payload["hasResult"], true);

    let mut result = sample("model_result");
    result["error"] = Value::Null;
    result["provider"] = Value::Null;
    assert_eq!(herald.publish("doc-3", "model_result", result).await.0, 202);
    let (_, payload) = sub.next_event().await;
    assert!(
        payload.get("error").is_none() && payload.get("provider").is_none(),
        "{payload}"
    );
}

/// One refused request: how it is sent and what herald must answer.
struct Refusal {
    label: String,
    path: String,
    content_type: Option<String>,
    body: String,
    status: u16,
    /// `None`: not checked; `Some(None)`: the error must name no field.
    field: Option<Option<String>>,
}

/// Every refusal of tests/fixtures/events.json, sent to session `doc-9`.
fn refusals() -> Vec<Refusal> {
    let one = "/api/v1/sessions/doc-9/events";
    let json = Some("application/json".to_string());
    let field = |case: &Value| case.get("field").map(|f| f.as_str().map(String::from));
    let label = |case: &Value| case["label"].as_str().unwrap().to_string();
    let status = |case: &Value| case["status"].as_u64().unwrap() as u16;
    let mut all = Vec::new();
    for case in cases("/refusals/publish") {
        all.push(Refusal {
            label: label(case),
            path: one.into(),
            content_type: json.clone(),
            body: build(case, None).to_string(),
            status: status(case),
            field: field(case),
        });
    }
    for case in cases("/refusals/batch") {
        let body = match case.get("items") {
            Some(items) => Value::Array(
                items
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|item| build(item, Some("doc-9")))
                    .collect(),
            ),
            None => build(case, None),
        };
        all.push(Refusal {
            label: format!("batch: {}", label(case)),
            path: "/api/v1/events".into(),
            content_type: json.clone(),
            body: body.to_string(),
            status: status(case),
            field: field(case),
        });
    }
    for case in cases("/refusals/raw") {
        let body = match case.get("raw") {
            Some(raw) => raw.as_str().unwrap().to_string(),
            None => build(case, None).to_string(),
        };
        let path = match case["to"].as_str() {
            Some("session") => one,
            Some("batch") => "/api/v1/events",
            other => panic!("raw case to {other:?}"),
        };
        all.push(Refusal {
            label: label(case),
            path: path.into(),
            content_type: case["contentType"].as_str().map(String::from),
            body,
            status: status(case),
            field: None,
        });
    }
    for case in cases("/sessionIds/invalidInPath") {
        let segment = case["segment"].as_str().unwrap();
        all.push(Refusal {
            label: format!("session id in the path: {}", label(case)),
            path: format!("/api/v1/sessions/{segment}/events"),
            content_type: json.clone(),
            body: json!({ "event": "error", "data": sample("error") }).to_string(),
            status: 422,
            field: Some(Some("sessionId".into())),
        });
    }
    all
}

#[tokio::test]
async fn every_refusal_is_json_delivers_nothing_and_consumes_no_seq() {
    let herald = Herald::start(&[]).await;
    let mut sub = RawSocket::subscribed(&herald, "doc-9").await;
    let client = reqwest::Client::new();
    for r in refusals() {
        let mut req = client.post(herald.url(&r.path)).body(r.body.clone());
        if let Some(ct) = &r.content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.expect("JSON error body");
        let what = format!("{}: {} {}", r.label, r.path, r.body);
        assert_eq!(status, r.status, "{what} -> {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: readable error: {body}"
        );
        match &r.field {
            None => {}
            Some(None) => assert!(body.get("field").is_none(), "{what} -> {body}"),
            Some(Some(field)) => assert_eq!(body["field"], *field, "{what} -> {body}"),
        }
    }
    sub.assert_silent(Duration::from_millis(300)).await;
    let (_, state) = herald.get("/api/v1/sessions/doc-9").await;
    assert_eq!(state["seq"], 0, "{state}");

    let (status, receipt) = herald.publish("doc-9", "error", sample("error")).await;
    assert_eq!((status, receipt["seq"].as_u64()), (202, Some(1)));
    let (_, payload) = sub.next_event().await;
    assert_eq!(payload["seq"], 1);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let herald = Herald::start(&["--max-payload-bytes", "2048"]).await;
    let mut data = sample("error");
    data["error"] = json!("x".repeat(4096));
    let (status, body) = herald.publish("doc-1", "error", data).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("2048"));
    assert_eq!(herald.get("/api/v1/sessions/doc-1").await.1["seq"], 0);
}

#[tokio::test]
async fn batches_validate_everything_first_and_sequence_per_session() {
    let herald = Herald::start(&[]).await;
    let mut a = RawSocket::subscribed(&herald, "a").await;
    let (status, body) = herald.post("/api/v1/events", "[]").await;
    assert_eq!((status, body), (202, json!({ "results": [] })));

    let batch = json!([
        { "sessionId": "a", "event": "progress", "data": sample("progress") },
        { "sessionId": "b", "event": "error", "data": sample("error") },
        { "sessionId": "a", "event": "completed", "data": sample("completed") },
    ]);
    let (status, body) = herald.post("/api/v1/events", &batch.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({ "results": [
            { "sessionId": "a", "event": "progress", "seq": 1 },
            { "sessionId": "b", "event": "error", "seq": 1 },
            { "sessionId": "a", "event": "completed", "seq": 2 },
        ]})
    );
    assert_eq!(a.next_event().await.0, "progress");
    let (name, payload) = a.next_event().await;
    assert_eq!(
        (name.as_str(), payload["seq"].as_u64()),
        ("completed", Some(2))
    );
}

#[tokio::test]
async fn session_state_follows_the_events() {
    let herald = Herald::start(&[]).await;
    let (status, state) = herald.get("/api/v1/sessions/never-seen").await;
    assert_eq!(status, 200);
    assert_eq!(
        state,
        json!({ "sessionId": "never-seen", "seq": 0, "epoch": null, "progress": null, "completed": false, "failed": false, "subscribers": 0 })
    );
    let _sub = RawSocket::subscribed(&herald, "s").await;
    herald.publish("s", "progress", sample("progress")).await;
    herald
        .publish("s", "model_result", sample("model_result"))
        .await;
    let (_, state) = herald.get("/api/v1/sessions/s").await;
    assert_eq!(state["seq"], 2);
    assert_eq!(state["subscribers"], 1);
    assert_eq!(
        state["progress"]["progress"],
        sample("progress")["progress"]
    );
    assert_eq!(state["progress"]["seq"], 1);
    assert_eq!(
        (state["completed"].as_bool(), state["failed"].as_bool()),
        (Some(false), Some(false))
    );

    let mut done = sample("progress");
    done["status"] = json!("COMPLETED");
    done["progress"] = json!(100);
    herald.publish("s", "progress", done).await;
    assert_eq!(herald.get("/api/v1/sessions/s").await.1["completed"], true);
    herald.publish("f", "error", sample("error")).await;
    assert_eq!(herald.get("/api/v1/sessions/f").await.1["failed"], true);
    for case in cases("/sessionIds/invalidInPath") {
        let segment = case["segment"].as_str().unwrap();
        let (status, body) = herald.get(&format!("/api/v1/sessions/{segment}")).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("sessionId")),
            "GET {segment}: {body}"
        );
    }
}

#[tokio::test]
async fn api_key_guards_the_api_not_health() {
    let herald = Herald::start(&["--api-key", "s3cret"]).await;
    let client = reqwest::Client::new();
    let publish = |auth: Option<&'static str>| {
        let mut req = client
            .post(herald.url("/api/v1/sessions/k/events"))
            .header("content-type", "application/json")
            .body(json!({ "event": "error", "data": sample("error") }).to_string());
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic czNjcmV0"),
    ] {
        let res = publish(auth).await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("API key"));
    }
    assert_eq!(publish(Some("Bearer s3cret")).await.unwrap().status(), 202);
    let stats = client
        .get(herald.url("/api/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 401);
    assert_eq!(herald.get("/health").await.0, 200);
    assert_eq!(herald.get("/ready").await.0, 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let herald = Herald::start(&[]).await;
    let (status, body) = herald.get("/nowhere").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/nowhere"));
    let (status, body) = herald.get("/api/v1/events").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "GET is not allowed on /api/v1/events");
    let (status, body) = herald.post("/health", "{}").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "POST is not allowed on /health");
}

#[tokio::test]
async fn stats_and_metrics_count_what_happened() {
    let herald = Herald::start(&[]).await;
    let _a = RawSocket::subscribed(&herald, "m1").await;
    let _b = RawSocket::subscribed(&herald, "m1").await;
    let _c = RawSocket::subscribed(&herald, "m2").await;
    herald.publish("m1", "progress", sample("progress")).await;
    herald.publish("m2", "error", sample("error")).await;
    herald.publish("m1", "nope", json!({})).await;
    let (_, stats) = herald.get("/api/v1/stats").await;
    assert_eq!(
        stats,
        json!({ "connections": 3, "sessions": 2, "subscriptions": 3, "eventsPublished": 2, "eventsDelivered": 3, "scope": "instance",
            "endpoints": { "socketio": 3, "ws": 0, "workflows": 0 } })
    );
    let text = reqwest::get(herald.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "herald_connections 3",
        "herald_subscriptions 3",
        "herald_sessions_watched 2",
        "herald_events_published_total{family=\"session\",event=\"progress\"} 1",
        "herald_events_delivered_total 3",
        "herald_publish_rejections_total{status=\"422\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Their values follow how busy the machine is, which a test cannot fix.
    for gauge in ["herald_saturated ", "herald_write_linger_seconds "] {
        assert!(text.contains(gauge), "missing {gauge:?} in\n{text}");
    }
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let herald = Herald::start(&["--cors-origins", "http://app.test"]).await;
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            herald.url("/socket.io/?EIO=4&transport=polling"),
        )
        .header("origin", "http://app.test")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://app.test"
    );
}

/// A proxy still writing a body to a connection herald already answered and
/// closed sees a broken pipe and marks the instance failed; so refusals made
/// before the body is read still read it (within reason) and keep the
/// connection usable.
#[tokio::test]
async fn early_refusals_read_the_body_and_keep_the_connection() {
    let herald = Herald::start(&["--api-key", "k", "--max-payload-bytes", "262144"]).await;
    let client = reqwest::Client::new();
    let body = |size: usize| {
        let mut data = sample("error");
        data["error"] = json!("x".repeat(size));
        json!({ "event": "error", "data": data }).to_string()
    };
    for (auth, size, status) in [
        (None, 250_000, 401),
        (Some("Bearer wrong"), 250_000, 401),
        (Some("Bearer k"), 600_000, 413),
        (Some("Bearer k"), 1_000_000, 413),
    ] {
        let mut req = client
            .post(herald.url("/api/v1/sessions/big/events"))
            .header("content-type", "application/json")
            .body(body(size));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let res = req.send().await.expect("an answer, not a reset");
        assert_eq!(res.status(), status);
        assert!(
            res.headers().get("connection").is_none(),
            "{auth:?} {size}: connection kept"
        );
        let answer: serde_json::Value = res.json().await.unwrap();
        assert!(answer["error"].is_string());
    }
    let res = client
        .post(herald.url("/api/v1/sessions/big/events"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer k")
        .body(body(10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// CORS alone stops only polling; a WebSocket upgrade from a browser on
/// another origin must be refused too, while scripts (no Origin) pass.
#[tokio::test]
async fn allowed_origins_apply_to_every_transport() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let herald = Herald::start(&["--cors-origins", "http://app.test"]).await;
    let upgrade = |origin: Option<&'static str>| {
        let mut req = herald.ws_url().into_client_request().unwrap();
        if let Some(origin) = origin {
            req.headers_mut().insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    assert!(upgrade(Some("http://app.test")).await.is_ok());
    assert!(upgrade(None).await.is_ok());
    match upgrade(Some("http://evil.test")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!(
            "expected a 403, got {:?}",
            other.map(|(_, res)| res.status())
        ),
    }
    let polling = reqwest::Client::new()
        .get(herald.url("/socket.io/?EIO=4&transport=polling"))
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(polling.status(), 403);
}
