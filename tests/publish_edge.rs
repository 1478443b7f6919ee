//! The publish edge against a real herald: several API keys and their
//! rotation on SIGHUP, the key check's old bugs (whitespace, lower-case
//! `bearer`, `/metrics` open), foreign browser origins, the per-key publish
//! rate and the nesting depth of published JSON.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket, sample};
use serde_json::{Value, json};

/// POSTs a publish with an optional `Authorization` and `Origin`.
async fn publish_as(
    herald: &Herald,
    session: &str,
    auth: Option<&str>,
    origin: Option<&str>,
    body: String,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(herald.url(&format!("/api/v1/sessions/{session}/events")))
        .body(body);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let res = req.send().await.expect("POST");
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

fn progress_body() -> String {
    json!({ "event": "progress", "data": sample("progress") }).to_string()
}

/// GETs `path` with an optional `Authorization`: status and body text.
async fn get_as(herald: &Herald, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(herald.url(path));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let res = req.send().await.expect("GET");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

async fn status_with(herald: &Herald, path: &str, auth: Option<&str>) -> u16 {
    get_as(herald, path, auth).await.0
}

#[tokio::test]
async fn several_keys_trimmed_any_bearer_case_and_metrics_behind_them() {
    // The second key has whitespace around it, as an .env line may.
    let herald = Herald::start(&["--api-key", "first, second "]).await;
    let publish =
        |auth: &'static str| publish_as(&herald, "keys", Some(auth), None, progress_body());
    assert_eq!(publish("Bearer first").await.0, 202);
    assert_eq!(publish("Bearer second").await.0, 202);
    assert_eq!(
        publish("bearer first").await.0,
        202,
        "the scheme is case-insensitive"
    );
    assert_eq!(publish("BEARER  second ").await.0, 202);
    assert_eq!(publish("Bearer third").await.0, 401);
    assert_eq!(publish("Bearer first,second").await.0, 401);
    assert_eq!(status_with(&herald, "/metrics", None).await, 401);
    assert_eq!(
        status_with(&herald, "/metrics", Some("Bearer wrong")).await,
        401
    );
    assert_eq!(
        status_with(&herald, "/metrics", Some("Bearer second")).await,
        200
    );
    assert_eq!(status_with(&herald, "/health", None).await, 200);
    assert_eq!(status_with(&herald, "/ready", None).await, 200);
}

#[tokio::test]
async fn the_publish_log_names_the_key_id_never_the_key() {
    let herald = Herald::start_logged(&[
        "--api-key",
        "top-secret-key",
        "--publish-rate-per-key",
        "1",
        "--publish-burst-per-key",
        "1",
    ])
    .await;
    let publish = || {
        publish_as(
            &herald,
            "logged",
            Some("Bearer top-secret-key"),
            None,
            progress_body(),
        )
    };
    assert_eq!(publish().await.0, 202);
    // A refusal is logged (at warn) inside the request's span.
    assert_eq!(publish().await.0, 429);
    // The first 8 hex digits of SHA-256("top-secret-key").
    let id = "2534d1b4";
    wait_for(|| async {
        let log = herald.log();
        assert!(
            !log.contains("top-secret-key"),
            "the key itself was logged:\n{log}"
        );
        log.lines()
            .any(|l| l.contains(&format!("api{{key={id}}}")) && l.contains("publish refused"))
    })
    .await;
}

#[tokio::test]
async fn sighup_rereads_the_key_file() {
    let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, "# rotated keys\nold-key\n\n  kept-key  \n").unwrap();
    let herald = Herald::start_logged(&[
        "--api-key-file",
        file.to_str().unwrap(),
        "--api-key",
        "inline",
    ])
    .await;
    let publish =
        |auth: &'static str| publish_as(&herald, "rotate", Some(auth), None, progress_body());
    for key in ["Bearer old-key", "Bearer kept-key", "Bearer inline"] {
        assert_eq!(publish(key).await.0, 202, "{key}");
    }
    assert_eq!(publish("Bearer new-key").await.0, 401);

    std::fs::write(&file, "kept-key\nnew-key\n").unwrap();
    herald.signal("HUP");
    wait_for(|| async { publish("Bearer new-key").await.0 == 202 }).await;
    assert_eq!(
        publish("Bearer old-key").await.0,
        401,
        "the removed key stops working"
    );
    assert_eq!(publish("Bearer kept-key").await.0, 202);
    assert_eq!(publish("Bearer inline").await.0, 202, "API_KEY stays");
    assert!(
        herald.log().contains("SIGHUP: 3 publish keys in force"),
        "{}",
        herald.log()
    );

    // A file gone on the next SIGHUP keeps the keys in force.
    std::fs::remove_file(&file).unwrap();
    herald.signal("HUP");
    wait_for(|| async { herald.log().contains("keeping the keys in force") }).await;
    assert_eq!(publish("Bearer new-key").await.0, 202);
    let log = herald.log();
    for key in ["old-key", "kept-key", "new-key"] {
        assert!(!log.contains(key), "a key was logged:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `systemctl reload` and logrotate send SIGHUP; without a key file to
/// re-read it must not stop the server (its default action would).
#[tokio::test]
async fn sighup_without_a_key_file_keeps_serving() {
    let mut herald = Herald::start_logged(&["--api-key", "k"]).await;
    herald.signal("HUP");
    wait_for(|| async { herald.log().contains("nothing to reload") }).await;
    assert!(herald.alive(), "SIGHUP stopped herald:\n{}", herald.log());
    assert_eq!(
        publish_as(&herald, "hup", Some("Bearer k"), None, progress_body())
            .await
            .0,
        202
    );
}

async fn wait_for<F: std::future::Future<Output = bool>>(check: impl Fn() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_the_api_and_nothing_is_published() {
    let herald = Herald::start(&["--cors-origins", "http://app.test"]).await;
    let mut watcher = RawSocket::subscribed(&herald, "cors").await;
    // No content type: a "simple" request a browser sends without preflight.
    let (status, _, body) = publish_as(
        &herald,
        "cors",
        None,
        Some("http://evil.test"),
        progress_body(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("origin"), "{body}");
    watcher.assert_silent(Duration::from_millis(300)).await;
    let (status, _, body) = publish_as(
        &herald,
        "cors",
        None,
        Some("http://app.test"),
        progress_body(),
    )
    .await;
    assert_eq!((status, body["seq"].as_u64()), (202, Some(1)));
    let (status, _, _) = publish_as(&herald, "cors", None, None, progress_body()).await;
    assert_eq!(status, 202, "a server sends no Origin");
    assert_eq!(watcher.seqs("progress", 2).await, [1, 2]);
    let foreign = reqwest::Client::new()
        .get(herald.url("/health"))
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 200, "probes stay open");
    let foreign = reqwest::Client::new()
        .get(herald.url("/metrics"))
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_while_another_key_publishes() {
    let herald = Herald::start(&[
        "--api-key",
        "busy,calm",
        "--publish-rate-per-key",
        "5",
        "--publish-burst-per-key",
        "10",
    ])
    .await;
    let batch = |n: usize| {
        let items: Vec<Value> = (0..n)
            .map(
                |_| json!({ "sessionId": "rate", "event": "progress", "data": sample("progress") }),
            )
            .collect();
        Value::Array(items).to_string()
    };
    let post_batch = |auth: &'static str, body: String| {
        reqwest::Client::new()
            .post(herald.url("/api/v1/events"))
            .header("authorization", auth)
            .body(body)
            .send()
    };
    assert_eq!(
        post_batch("Bearer busy", batch(8)).await.unwrap().status(),
        202
    );
    // Two left of the burst: a batch of 3 counts 3.
    let refused = post_batch("Bearer busy", batch(3)).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("5 events/s"),
        "{body}"
    );
    let (status, retry, _) =
        publish_as(&herald, "rate", Some("Bearer busy"), None, progress_body()).await;
    assert_eq!(status, 202, "two single events still fit");
    assert!(retry.is_none());
    publish_as(&herald, "rate", Some("Bearer busy"), None, progress_body()).await;
    let (status, retry, _) =
        publish_as(&herald, "rate", Some("Bearer busy"), None, progress_body()).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    // The other key has its own bucket.
    assert_eq!(
        post_batch("Bearer calm", batch(10)).await.unwrap().status(),
        202
    );
    let too_big = post_batch("Bearer calm", batch(11)).await.unwrap();
    assert_eq!(
        too_big.status(),
        422,
        "a batch over the burst can never pass"
    );
    // A refused publish consumed no seq: 8 + 1 + 1 + 10.
    let (_, state) = get_as(&herald, "/api/v1/sessions/rate", Some("Bearer calm")).await;
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["seq"], 20, "{state}");
    let (_, metrics) = get_as(&herald, "/metrics", Some("Bearer calm")).await;
    assert!(
        metrics.contains("herald_publish_rejections_total{status=\"429\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_keys_the_rate_is_per_client_address() {
    let herald = Herald::start(&[
        "--publish-rate-per-key",
        "1",
        "--publish-burst-per-key",
        "1",
    ])
    .await;
    assert_eq!(
        publish_as(&herald, "addr", None, None, progress_body())
            .await
            .0,
        202
    );
    assert_eq!(
        publish_as(&herald, "addr", None, None, progress_body())
            .await
            .0,
        429
    );
}

/// An object holding `levels - 1` nested arrays around a number, as text
/// (`result` must be an object; arrays keep 200,000 levels under 1 MiB).
fn nested_text(levels: usize) -> String {
    let arrays = levels - 1;
    format!("{{\"a\":{}1{}}}", "[".repeat(arrays), "]".repeat(arrays))
}

fn nested(levels: usize) -> Value {
    serde_json::from_str(&nested_text(levels)).unwrap()
}

fn completed_with_result(result_levels: usize) -> String {
    let inner = nested_text(result_levels);
    let mut data = sample("completed");
    data["result"] = json!("PLACEHOLDER");
    json!({ "event": "completed", "data": data })
        .to_string()
        .replace("\"PLACEHOLDER\"", &inner)
}

#[tokio::test]
async fn nesting_deeper_than_the_limit_is_refused_with_422() {
    let herald = Herald::start(&["--max-json-depth", "8"]).await;
    let mut watcher = RawSocket::subscribed(&herald, "deep").await;
    // data (1) + result's 7 objects = 8: at the limit.
    let (status, _, body) = publish_as(&herald, "deep", None, None, completed_with_result(7)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(watcher.seqs("completed", 1).await, [1]);
    for levels in [8, 200_000] {
        let (status, _, body) =
            publish_as(&herald, "deep", None, None, completed_with_result(levels)).await;
        assert_eq!(status, 422, "{levels}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("8 levels"),
            "{body}"
        );
    }
    // In a batch too.
    let item = |levels: usize| {
        let mut data = sample("completed");
        data["result"] = nested(levels);
        json!({ "sessionId": "deep", "event": "completed", "data": data })
    };
    let res = reqwest::Client::new()
        .post(herald.url("/api/v1/events"))
        .body(Value::Array(vec![item(7), item(8)]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    watcher.assert_silent(Duration::from_millis(300)).await;
}
