//! Nothing missed: a late subscriber's snapshot, resuming with `since` after
//! a cut connection (on the same instance and on another), replay racing
//! live publishes, truncated history and changed epochs reported, and the
//! HTTP history endpoint. Real herald processes, real Redis, raw sockets.

mod common;

use std::time::Duration;

use common::{Herald, RawSocket, Redis, RedisCluster, sample};
use serde_json::{Value, json};

async fn redis_instances(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Herald> {
    let url = redis.url();
    let mut all = Vec::new();
    for _ in 0..n {
        let mut args = vec!["--redis-url", url.as_str()];
        args.extend_from_slice(extra);
        let herald = Herald::start(&args).await;
        herald.wait_ready(200, Duration::from_secs(10)).await;
        all.push(herald);
    }
    all
}

/// `n` heralds on a Redis Cluster, ready.
/// Subscribes with `request`; returns the `subscribed` reply.
async fn subscribe(socket: &mut RawSocket, request: Value) -> Value {
    socket.emit("subscribe", request).await;
    let (name, reply) = socket.next_event().await;
    assert_eq!(name, "subscribed", "{reply}");
    reply
}

/// Publishes `n` model results numbered from `from`, so that each delivery
/// says which one it is.
async fn publish_numbered(herald: &Herald, session: &str, from: usize, n: usize) {
    for i in from..from + n {
        let mut data = sample("model_result");
        data["result"] = json!(format!("item-{i}"));
        let (status, receipt) = herald.publish(session, "model_result", data).await;
        assert_eq!(status, 202, "{receipt}");
    }
}

/// The next `n` events: their seqs, checking each is a numbered model result
/// whose number matches its seq (numbering starts at 1).
async fn numbered_seqs(socket: &mut RawSocket, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, payload) = socket.next_event().await;
        assert_eq!(name, "model_result", "{payload}");
        let seq = payload["seq"].as_u64().unwrap();
        assert_eq!(payload["result"], json!(format!("item-{seq}")), "{payload}");
        seqs.push(seq);
    }
    seqs
}

async fn late_subscriber_sees_the_state(herald: &Herald) {
    // Running: the latest progress.
    herald.publish("run", "progress", sample("progress")).await;
    herald
        .publish("run", "model_result", sample("model_result"))
        .await;
    let mut progress = sample("progress");
    progress["progress"] = json!(80);
    let (_, receipt) = herald.publish("run", "progress", progress).await;
    assert_eq!(receipt["seq"], 3);
    let (mut late, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let reply = subscribe(&mut late, json!("run")).await;
    assert_eq!(reply["seq"], 3);
    assert!(
        reply.get("recovered").is_none(),
        "a snapshot is no resume: {reply}"
    );
    let (name, snapshot) = late.next_event().await;
    assert_eq!(
        (name.as_str(), &snapshot["seq"], &snapshot["progress"]),
        ("progress", &json!(3), &json!(80))
    );
    late.assert_silent(Duration::from_millis(200)).await;

    // Finished, and failed: the latest progress, then the final event, as
    // first delivered (seq and timestamp included).
    for (session, last) in [("done", "completed"), ("failed", "error")] {
        let mut watcher = RawSocket::subscribed(herald, session).await;
        herald
            .publish(session, "progress", sample("progress"))
            .await;
        herald.publish(session, last, sample(last)).await;
        herald
            .publish(session, "clarification", sample("clarification"))
            .await;
        let first: Vec<(String, Value)> =
            vec![watcher.next_event().await, watcher.next_event().await];
        let (mut late, _, _) = RawSocket::connect(&herald.ws_url()).await;
        let reply = subscribe(&mut late, json!({ "sessionId": session })).await;
        assert_eq!(reply["seq"], 3);
        for (name, original) in first {
            assert_eq!(late.next_event().await, (name, original));
        }
        late.assert_silent(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_late_subscriber_sees_the_sessions_state_in_memory() {
    late_subscriber_sees_the_state(&Herald::start(&[]).await).await;
}

#[tokio::test]
async fn a_late_subscriber_sees_the_sessions_state_with_redis() {
    let redis = Redis::start().await;
    let all = redis_instances(&redis, 1, &[]).await;
    late_subscriber_sees_the_state(&all[0]).await;
}

/// A client cut off while 200 events are published resumes on `resume_on`
/// and ends with every event exactly once, in order.
async fn cut_and_resume(publish_on: &Herald, resume_on: &Herald, session: &str) {
    let (mut socket, _, _) = RawSocket::connect(&publish_on.ws_url()).await;
    let reply = subscribe(&mut socket, json!(session)).await;
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    publish_numbered(publish_on, session, 1, 20).await;
    let mut seen = numbered_seqs(&mut socket, 20).await;
    drop(socket);

    publish_numbered(publish_on, session, 21, 200).await;
    let (mut back, _, _) = RawSocket::connect(&resume_on.ws_url()).await;
    let request = json!({ "sessionId": session, "since": 20, "epoch": epoch });
    let reply = subscribe(&mut back, request).await;
    assert_eq!(
        (
            &reply["recovered"],
            &reply["replayed"],
            &reply["seq"],
            &reply["epoch"]
        ),
        (&json!(true), &json!(200), &json!(220), &json!(epoch)),
        "{reply}"
    );
    seen.extend(numbered_seqs(&mut back, 200).await);
    publish_numbered(publish_on, session, 221, 5).await;
    seen.extend(numbered_seqs(&mut back, 5).await);
    assert_eq!(seen, (1..=225).collect::<Vec<u64>>());
    back.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_cut_client_resumes_with_everything_in_memory() {
    let herald = Herald::start(&[]).await;
    cut_and_resume(&herald, &herald, "cut-mem").await;
}

#[tokio::test]
async fn a_cut_client_resumes_with_everything_on_the_same_and_another_instance() {
    let redis = Redis::start().await;
    let all = redis_instances(&redis, 2, &[]).await;
    cut_and_resume(&all[0], &all[0], "cut-same").await;
    cut_and_resume(&all[0], &all[1], "cut-other").await;
}

/// On a Redis Cluster a session's history and state live on the node that
/// owns its slot, while events reach an instance by pub/sub on another
/// connection: the same promise holds.
#[tokio::test]
async fn a_cut_client_resumes_with_everything_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let all = redis.instances(2).await;
    for session in ["cc-1", "cc-2", "cc-3"] {
        cut_and_resume(&all[0], &all[1], session).await;
    }
}

/// Resumes racing a stream of publishes from two instances: each must see
/// the seqs after its `since` edge to edge, with no gap and no duplicate.
#[tokio::test]
async fn replay_racing_live_publishes_has_no_gap_and_no_duplicate() {
    let redis = Redis::start().await;
    race_resumes(&redis_instances(&redis, 2, &[]).await).await;
}

/// The same on a Redis Cluster, where pub/sub and the history read come
/// over different connections and promise no order to each other.
#[tokio::test]
async fn replay_racing_live_publishes_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let all = redis.instances(2).await;
    race_resumes(&all).await;
}

async fn race_resumes(all: &[Herald]) {
    const EVENTS: usize = 1_500;
    const RESUMES: usize = 25;
    let urls: Vec<String> = all.iter().map(|h| h.url("")).collect();
    let publisher = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..EVENTS {
            let mut data = sample("model_result");
            data["result"] = json!("x");
            let url = format!("{}/api/v1/sessions/race/events", urls[i % 2]);
            let res = client
                .post(url)
                .json(&json!({ "event": "model_result", "data": data }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
        }
    });
    let mut checked = 0;
    for round in 0..RESUMES {
        let herald = &all[round % 2];
        let (_, state) = herald.get("/api/v1/sessions/race").await;
        let since = state["seq"].as_u64().unwrap().saturating_sub(7);
        let (mut socket, _, _) = RawSocket::connect(&herald.ws_url()).await;
        let reply = subscribe(&mut socket, json!({ "sessionId": "race", "since": since })).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let mut expected = since + 1;
        // Replay and live together, up to 40 past the edge.
        while expected <= since + 40 && expected <= EVENTS as u64 {
            let (name, payload) = socket.next_event().await;
            assert_eq!(name, "model_result");
            assert_eq!(payload["seq"], expected, "round {round}, since {since}");
            expected += 1;
            checked += 1;
        }
    }
    publisher.await.unwrap();
    assert!(checked > RESUMES * 10, "only {checked} events checked");
}

#[tokio::test]
async fn truncated_history_is_reported() {
    let herald = Herald::start(&["--history-max-events", "10"]).await;
    publish_numbered(&herald, "short", 1, 30).await;
    let (mut socket, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let reply = subscribe(&mut socket, json!({ "sessionId": "short", "since": 5 })).await;
    assert_eq!(
        (&reply["recovered"], &reply["reason"], &reply["replayed"]),
        (&json!(false), &json!("history_truncated"), &json!(10)),
        "{reply}"
    );
    assert_eq!(
        numbered_seqs(&mut socket, 10).await,
        (21..=30).collect::<Vec<u64>>()
    );
    // Within what is held, nothing is missing.
    let (mut other, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let reply = subscribe(&mut other, json!({ "sessionId": "short", "since": 25 })).await;
    assert_eq!(
        (&reply["recovered"], &reply["replayed"]),
        (&json!(true), &json!(5))
    );
    assert!(reply.get("reason").is_none());
}

#[tokio::test]
async fn a_redis_that_lost_its_data_starts_a_new_epoch() {
    let mut redis = Redis::start().await;
    let all = redis_instances(&redis, 1, &[]).await;
    let herald = &all[0];
    let (mut socket, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let old = subscribe(&mut socket, json!("lost")).await["epoch"].clone();
    publish_numbered(herald, "lost", 1, 5).await;
    numbered_seqs(&mut socket, 5).await;
    drop(socket);

    // Restarted without persistence: every session starts over.
    redis.kill();
    redis.restart().await;
    herald.wait_ready(200, Duration::from_secs(6)).await;
    publish_numbered(herald, "lost", 1, 2).await;
    let (_, state) = herald.get("/api/v1/sessions/lost").await;
    assert_eq!(state["seq"], 2);
    assert_ne!(state["epoch"], old, "a new sequence, a new epoch");

    let (mut back, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let request = json!({ "sessionId": "lost", "since": 5, "epoch": old });
    let reply = subscribe(&mut back, request).await;
    assert_eq!(
        (
            &reply["recovered"],
            &reply["reason"],
            &reply["replayed"],
            &reply["epoch"]
        ),
        (
            &json!(false),
            &json!("epoch_changed"),
            &json!(2),
            &state["epoch"]
        ),
        "{reply}"
    );
    assert_eq!(
        numbered_seqs(&mut back, 2).await,
        [1, 2],
        "the whole new sequence"
    );
}

#[tokio::test]
async fn the_history_endpoint_pages_through_what_is_held() {
    let herald = Herald::start(&["--history-max-events", "50"]).await;
    let (status, page) = herald.get("/api/v1/sessions/paged/events").await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({ "sessionId": "paged", "epoch": null, "seq": 0, "recovered": true, "events": [] })
    );
    publish_numbered(&herald, "paged", 1, 70).await;

    let (status, page) = herald
        .get("/api/v1/sessions/paged/events?since=25&limit=10")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (&page["seq"], &page["recovered"]),
        (&json!(70), &json!(true))
    );
    let events = page["events"].as_array().unwrap();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (26..=35).collect::<Vec<u64>>());
    assert_eq!(events[0]["event"], "model_result");
    assert_eq!(events[0]["data"]["result"], "item-26");
    let (_, state) = herald.get("/api/v1/sessions/paged").await;
    assert_eq!(page["epoch"], state["epoch"]);

    // The first 20 were dropped (50 held): since 5 is not recovered.
    let (_, page) = herald.get("/api/v1/sessions/paged/events?since=5").await;
    assert_eq!(page["recovered"], false);
    assert_eq!(page["events"].as_array().unwrap().len(), 50);
    assert_eq!(page["events"][0]["data"]["seq"], 21);
    // Default limit 100, at most 1000.
    let (_, page) = herald.get("/api/v1/sessions/paged/events?since=69").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);

    for (query, field) in [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("since=1.5", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
    ] {
        let (status, body) = herald
            .get(&format!("/api/v1/sessions/paged/events?{query}"))
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some(field)),
            "{query}: {body}"
        );
    }
    let (status, body) = herald.get("/api/v1/sessions/a%20b/events").await;
    assert_eq!((status, body["field"].as_str()), (422, Some("sessionId")));
}

#[tokio::test]
async fn the_history_endpoint_is_behind_the_api_key() {
    let herald = Herald::start(&["--api-key", "k"]).await;
    let (status, _) = herald.get("/api/v1/sessions/s/events").await;
    assert_eq!(status, 401);
}

/// A client that stops reading is disconnected once its queue is full,
/// rather than left to miss events unawares: it reads what reached it, sees
/// the close, and resuming gets it the rest.
#[tokio::test]
async fn a_stalled_reader_is_disconnected_and_resumes_with_everything() {
    let herald = Herald::start(&["--socket-buffer-packets", "16"]).await;
    let (mut stalled, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let epoch = subscribe(&mut stalled, json!("slow")).await["epoch"].clone();
    // It reads nothing while events of 64 KiB fill the TCP buffers on
    // loopback, then its queue; publishing stops at the first full queue.
    let big = "x".repeat(64 * 1024);
    let mut published = 0u64;
    let full = loop {
        published += 1;
        let mut data = sample("model_result");
        data["result"] = json!(format!("item-{published}{big}"));
        assert_eq!(herald.publish("slow", "model_result", data).await.0, 202);
        let metrics = reqwest::get(herald.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if !metrics.contains("herald_dropped_deliveries_total 0\n") || published == 2_000 {
            break !metrics.contains("herald_dropped_deliveries_total 0\n");
        }
    };
    assert!(full, "its queue never filled in {published} events");

    // What reached it, then the close.
    let mut seen = Vec::new();
    while let Some(frame) = stalled.recv_within(Duration::from_secs(15)).await {
        if frame.starts_with(r#"42["model_result""#) {
            let (_, payload) = common::event(&frame);
            seen.push(payload["seq"].as_u64().unwrap());
        }
    }
    let read = seen.len() as u64;
    assert_eq!(seen, (1..=read).collect::<Vec<u64>>(), "in order, no gap");
    assert!(read < published, "it missed nothing, so nothing to test");
    let (_, stats) = herald.get("/api/v1/stats").await;
    assert_eq!(stats["connections"], 0, "{stats}");

    let (mut back, _, _) = RawSocket::connect(&herald.ws_url()).await;
    let request = json!({ "sessionId": "slow", "since": read, "epoch": epoch });
    let reply = subscribe(&mut back, request).await;
    assert_eq!(
        (&reply["recovered"], &reply["replayed"]),
        (&json!(true), &json!(published - read))
    );
    for seq in read + 1..=published {
        let (name, payload) = back.next_event().await;
        assert_eq!(
            (name.as_str(), payload["seq"].as_u64()),
            ("model_result", Some(seq))
        );
        assert!(
            payload["result"]
                .as_str()
                .unwrap()
                .starts_with(&format!("item-{seq}x"))
        );
    }
}
