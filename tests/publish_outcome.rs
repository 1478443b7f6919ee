//! What a publish answer promises: 202 published, 503 not published (safe to
//! retry), 504 `OUTCOME_UNKNOWN` maybe published; and `Idempotency-Key`,
//! which makes any retry publish exactly once. Against a real herald, and a
//! real `redis-server` frozen with SIGSTOP mid-publish.

mod common;

use std::time::{Duration, Instant};

use common::{Herald, RawSocket, Redis, RedisCluster, sample};
use serde_json::{Value, json};

/// Publishes a `progress` event whose `clarificationCount` tells it apart.
async fn publish_keyed(herald: &Herald, session: &str, mark: u64, key: &str) -> (u16, Value) {
    let mut data = sample("progress");
    data["clarificationCount"] = json!(mark);
    let res = reqwest::Client::new()
        .post(herald.url(&format!("/api/v1/sessions/{session}/events")))
        .header("idempotency-key", key)
        .body(json!({ "event": "progress", "data": data }).to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("POST");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The (seq, mark) of every event that arrives within `wait`.
async fn arrivals(socket: &mut RawSocket, wait: Duration) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok((name, data)) = tokio::time::timeout(left, socket.next_event()).await else {
            break;
        };
        assert_eq!(name, "progress", "{data}");
        got.push((
            data["seq"].as_u64().unwrap(),
            data["clarificationCount"].as_u64().unwrap(),
        ));
    }
    got
}

#[tokio::test]
async fn a_retry_with_the_same_key_publishes_once() {
    let herald = Herald::start(&[]).await;
    let mut watcher = RawSocket::subscribed(&herald, "idem").await;
    let (status, first) = publish_keyed(&herald, "idem", 1, "job-7:step-1").await;
    assert_eq!((status, first["seq"].as_u64()), (202, Some(1)), "{first}");
    let (status, again) = publish_keyed(&herald, "idem", 1, "job-7:step-1").await;
    assert_eq!(
        (status, again["seq"].as_u64()),
        (202, Some(1)),
        "the first receipt"
    );
    let (status, other) = publish_keyed(&herald, "idem", 2, "job-7:step-2").await;
    assert_eq!((status, other["seq"].as_u64()), (202, Some(2)));
    // The same key for another session is another publish.
    let (status, elsewhere) = publish_keyed(&herald, "idem-other", 3, "job-7:step-1").await;
    assert_eq!((status, elsewhere["seq"].as_u64()), (202, Some(1)));
    // In a batch, per item.
    let item = |mark: u64, key: &str| {
        let mut data = sample("progress");
        data["clarificationCount"] = json!(mark);
        json!({ "sessionId": "idem", "event": "progress", "data": data, "idempotencyKey": key })
    };
    let (status, batch) = herald
        .post(
            "/api/v1/events",
            &json!([item(2, "job-7:step-2"), item(4, "job-7:step-4")]).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let seqs: Vec<u64> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(
        arrivals(&mut watcher, Duration::from_millis(500)).await,
        [(1, 1), (2, 2), (3, 4)],
        "each key delivered once"
    );
    let (status, refused) = publish_keyed(&herald, "idem", 5, "has space").await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );
}

/// A key names one publish: the same key with a different event is a
/// publisher's bug (a key per job instead of per step, say), refused 422
/// rather than answered 202 for an event that was never sent. A retry of
/// the same request still answers the first receipt, and counts once in
/// the published metric. In memory and through Redis alike.
#[tokio::test]
async fn a_key_reused_for_a_different_event_is_refused() {
    let redis = Redis::start().await;
    let memory = Herald::start(&[]).await;
    let clustered = Herald::start(&["--redis-url", &redis.url()]).await;
    clustered.wait_ready(200, Duration::from_secs(10)).await;
    for herald in [&memory, &clustered] {
        let mut watcher = RawSocket::subscribed(herald, "reuse").await;
        assert_eq!(publish_keyed(herald, "reuse", 1, "job-9").await.0, 202);
        let (status, reused) = publish_keyed(herald, "reuse", 2, "job-9").await;
        assert_eq!(status, 422, "{reused}");
        assert_eq!(reused["code"], "IDEMPOTENCY_KEY_REUSED", "{reused}");
        assert!(
            reused["error"].as_str().unwrap().contains("(seq 1)"),
            "names what the key published: {reused}"
        );
        let (status, retry) = publish_keyed(herald, "reuse", 1, "job-9").await;
        assert_eq!((status, retry["seq"].as_u64()), (202, Some(1)), "{retry}");
        // In a batch: the reused item stops it, with what was published.
        let mut data = sample("progress");
        data["clarificationCount"] = json!(3);
        let fresh = json!({ "sessionId": "reuse", "event": "progress", "data": data, "idempotencyKey": "job-10" });
        let mut data = sample("progress");
        data["clarificationCount"] = json!(4);
        let reusing = json!({ "sessionId": "reuse", "event": "progress", "data": data, "idempotencyKey": "job-9" });
        let (status, batch) = herald
            .post("/api/v1/events", &json!([fresh, reusing]).to_string())
            .await;
        assert_eq!(status, 422, "{batch}");
        assert_eq!(batch["code"], "IDEMPOTENCY_KEY_REUSED", "{batch}");
        assert_eq!(batch["results"][0]["seq"], 2, "{batch}");
        assert_eq!(batch["unpublished"], json!([1]), "{batch}");
        assert_eq!(
            arrivals(&mut watcher, Duration::from_millis(500)).await,
            [(1, 1), (2, 3)],
            "only the first publish of each key arrived"
        );
        let metrics = herald.metrics_text().await;
        let published = metrics
            .lines()
            .find(|l| l.starts_with("herald_events_published_total") && l.contains("\"progress\""))
            .unwrap_or_else(|| panic!("no published metric:\n{metrics}"));
        assert!(
            published.ends_with(" 2"),
            "a retry is not a publish: {published}"
        );
    }
}

#[tokio::test]
async fn a_redis_stall_answers_504_or_503_truthfully_and_a_keyed_retry_publishes_once() {
    let redis = Redis::start().await;
    let herald = Herald::start(&["--redis-url", &redis.url()]).await;
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let mut watcher = RawSocket::subscribed(&herald, "stall").await;
    assert_eq!(publish_keyed(&herald, "stall", 1, "k-1").await.0, 202);
    assert_eq!(
        arrivals(&mut watcher, Duration::from_millis(300)).await,
        [(1, 1)]
    );

    // Frozen with its connections open: the publish is sent and never answered.
    redis.signal("STOP");
    let started = Instant::now();
    let (status, unknown) = publish_keyed(&herald, "stall", 2, "k-2").await;
    assert_eq!(status, 504, "{unknown}");
    assert_eq!(unknown["code"], "OUTCOME_UNKNOWN", "{unknown}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Once herald has noticed the stall, a publish is refused unsent: 503.
    herald.wait_ready(503, Duration::from_secs(5)).await;
    let started = Instant::now();
    let (status, refused) = publish_keyed(&herald, "stall", 3, "k-3").await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{refused}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    redis.signal("CONT");
    herald.wait_ready(200, Duration::from_secs(10)).await;
    // The 503 publish never arrives; the 504 one may have (here Redis ran it
    // on waking: the reply was what was missing).
    let after_stall = arrivals(&mut watcher, Duration::from_secs(1)).await;
    assert!(
        after_stall.iter().all(|(_, mark)| *mark == 2),
        "only the unknown publish may arrive: {after_stall:?}"
    );

    // Retries with the same keys: the unknown one publishes only if it had
    // not, the refused one publishes now.
    let (status, retried) = publish_keyed(&herald, "stall", 2, "k-2").await;
    assert_eq!(status, 202, "{retried}");
    let (status, third) = publish_keyed(&herald, "stall", 3, "k-3").await;
    assert_eq!(status, 202, "{third}");
    let mut all = after_stall.clone();
    all.extend(arrivals(&mut watcher, Duration::from_millis(500)).await);
    assert_eq!(all, [(2, 2), (3, 3)], "each publish delivered exactly once");
    assert_eq!(retried["seq"], 2);
    assert_eq!(third["seq"], 3);
}

#[tokio::test]
async fn idempotency_keys_work_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let herald = Herald::start(&["--redis-url", &redis.urls(), "--redis-cluster"]).await;
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let mut watcher = RawSocket::subscribed(&herald, "sharded").await;
    for _ in 0..2 {
        let (status, receipt) = publish_keyed(&herald, "sharded", 1, "once").await;
        assert_eq!(
            (status, receipt["seq"].as_u64()),
            (202, Some(1)),
            "{receipt}"
        );
    }
    assert_eq!(
        arrivals(&mut watcher, Duration::from_millis(500)).await,
        [(1, 1)]
    );
}

/// A stall under load: only the publishes actually sent to Redis (at most
/// 256 per instance) are answered 504; the ones that queued behind them are
/// withdrawn unsent (503) and never delivered, even once Redis resumes.
#[tokio::test]
async fn under_load_a_stall_leaves_only_the_publishes_in_flight_unknown() {
    const BURST: u64 = 300;
    let redis = Redis::start().await;
    let herald = Herald::start(&["--redis-url", &redis.url()]).await;
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let mut watcher = RawSocket::subscribed(&herald, "burst").await;
    // Loads the publish script, so that Redis can run what it holds once it
    // resumes (an EVALSHA it does not know would just fail).
    assert_eq!(
        publish_keyed(&herald, "burst", BURST, "warm-up").await.0,
        202
    );
    assert_eq!(
        arrivals(&mut watcher, Duration::from_millis(300)).await,
        [(1, BURST)]
    );

    redis.signal("STOP");
    let shared = &herald;
    let answers = futures_util::future::join_all((0..BURST).map(|mark| async move {
        publish_keyed(shared, "burst", mark, &format!("burst-{mark}")).await
    }))
    .await;
    let marks = |status: u16| -> Vec<u64> {
        (0..BURST)
            .filter(|&m| answers[m as usize].0 == status)
            .collect()
    };
    let (unknown, refused) = (marks(504), marks(503));
    let mut by_status = std::collections::BTreeMap::new();
    for (status, body) in &answers {
        by_status
            .entry(*status)
            .or_insert_with(Vec::new)
            .push(body.clone());
    }
    assert_eq!(
        unknown.len() + refused.len(),
        BURST as usize,
        "{:?}",
        by_status
            .iter()
            .map(|(s, b)| (s, b.len(), b.first()))
            .collect::<Vec<_>>()
    );
    assert!(
        (1..=256).contains(&unknown.len()),
        "{} unknown",
        unknown.len()
    );
    for (status, body) in &answers {
        let code = if *status == 504 {
            "OUTCOME_UNKNOWN"
        } else {
            "UNAVAILABLE"
        };
        assert_eq!(body["code"], code, "{body}");
    }

    redis.signal("CONT");
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let delivered = arrivals(&mut watcher, Duration::from_secs(2)).await;
    for (_, mark) in &delivered {
        assert!(
            unknown.contains(mark),
            "{mark} was answered 503 and delivered"
        );
    }
    // Every publish retried with its key: each delivered exactly once.
    for mark in 0..BURST {
        let (status, body) = publish_keyed(&herald, "burst", mark, &format!("burst-{mark}")).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut all = delivered;
    all.extend(arrivals(&mut watcher, Duration::from_secs(1)).await);
    let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (2..=BURST + 1).collect::<Vec<_>>());
    let mut marks: Vec<u64> = all.iter().map(|(_, mark)| *mark).collect();
    marks.sort_unstable();
    assert_eq!(marks, (0..BURST).collect::<Vec<_>>());
}
