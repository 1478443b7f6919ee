//! Several herald processes sharing a real `redis-server`: one room space,
//! one seq per session, delivery in seq order on every instance, and what
//! happens when Redis or an instance dies.

mod common;

use std::time::{Duration, Instant};

use common::{Herald, RawSocket, Redis, RedisCluster, sample};
use serde_json::json;

async fn instances(redis: &Redis, n: usize) -> Vec<Herald> {
    let url = redis.url();
    let mut all = Vec::new();
    for _ in 0..n {
        let herald = Herald::start(&["--redis-url", &url]).await;
        herald.wait_ready(200, Duration::from_secs(10)).await;
        all.push(herald);
    }
    all
}

#[tokio::test]
async fn every_event_published_on_one_instance_reaches_the_other() {
    let redis = Redis::start().await;
    let [a, b]: [Herald; 2] = instances(&redis, 2).await.try_into().ok().unwrap();
    let mut on_a = RawSocket::subscribed(&a, "x-1").await;
    for (i, name) in [
        "progress",
        "model_result",
        "clarification",
        "completed",
        "error",
    ]
    .iter()
    .enumerate()
    {
        let (status, receipt) = b.publish("x-1", name, sample(name)).await;
        assert_eq!(
            (status, receipt["seq"].as_u64()),
            (202, Some(i as u64 + 1)),
            "{receipt}"
        );
        let (got, payload) = on_a.next_event().await;
        assert_eq!(&got, name);
        let mut expected = sample(name);
        for (k, v) in [
            ("sessionId", json!("x-1")),
            ("seq", json!(i + 1)),
            ("timestamp", payload["timestamp"].clone()),
        ] {
            expected[k] = v;
        }
        assert_eq!(payload, expected);
    }
    let (_, state) = a.get("/api/v1/sessions/x-1").await;
    assert_eq!(
        (state["seq"].as_u64(), state["failed"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(state["progress"]["seq"], 1);
}

#[tokio::test]
async fn sequential_publishes_alternating_instances_arrive_in_order_everywhere() {
    let redis = Redis::start().await;
    let [a, b]: [Herald; 2] = instances(&redis, 2).await.try_into().ok().unwrap();
    let mut on_a = RawSocket::subscribed(&a, "alt").await;
    let mut on_b = RawSocket::subscribed(&b, "alt").await;
    const N: u64 = 1000;
    for i in 0..N {
        let via = if i % 2 == 0 { &a } else { &b };
        let (status, receipt) = via
            .publish("alt", "error", json!({ "error": format!("e{i}") }))
            .await;
        assert_eq!((status, receipt["seq"].as_u64()), (202, Some(i + 1)));
    }
    let expected: Vec<u64> = (1..=N).collect();
    assert_eq!(on_a.seqs("error", N as usize).await, expected);
    assert_eq!(on_b.seqs("error", N as usize).await, expected);
    on_a.assert_silent(Duration::from_millis(300)).await;
    on_b.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn concurrent_publishers_on_several_instances_share_one_ordered_sequence() {
    let redis = Redis::start().await;
    let all = instances(&redis, 2).await;
    let mut subs = vec![
        RawSocket::subscribed(&all[0], "race").await,
        RawSocket::subscribed(&all[1], "race").await,
    ];
    let client = reqwest::Client::new();
    let publishers = (0..4).map(|p| {
        let url = all[p % 2].url("/api/v1/sessions/race/events");
        let client = client.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                let body = json!({ "event": "error", "data": { "error": format!("p{p}-{i}") } });
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
                let receipt: serde_json::Value = res.json().await.unwrap();
                seqs.push(receipt["seq"].as_u64().unwrap());
            }
            seqs
        })
    });
    let mut granted: Vec<u64> = Vec::new();
    for p in publishers.collect::<Vec<_>>() {
        granted.extend(p.await.unwrap());
    }
    granted.sort_unstable();
    let expected: Vec<u64> = (1..=400).collect();
    assert_eq!(granted, expected, "every seq granted once");
    for sub in &mut subs {
        assert_eq!(sub.seqs("error", 400).await, expected);
    }
}

#[tokio::test]
async fn a_refused_publish_consumes_no_cluster_seq() {
    let redis = Redis::start().await;
    let [a, b]: [Herald; 2] = instances(&redis, 2).await.try_into().ok().unwrap();
    let mut on_a = RawSocket::subscribed(&a, "r").await;
    assert_eq!(a.publish("r", "error", sample("error")).await.0, 202);
    assert_eq!(b.publish("r", "error", json!({ "error": 5 })).await.0, 422);
    assert_eq!(b.publish("r", "nope", json!({})).await.0, 422);
    let (_, receipt) = b.publish("r", "error", sample("error")).await;
    assert_eq!(receipt["seq"], 2);
    assert_eq!(on_a.seqs("error", 2).await, [1, 2]);
}

#[tokio::test]
async fn cluster_wide_subscriber_counts_and_stats() {
    let redis = Redis::start().await;
    let [a, b]: [Herald; 2] = instances(&redis, 2).await.try_into().ok().unwrap();
    let _s1 = RawSocket::subscribed(&a, "counted").await;
    let _s2 = RawSocket::subscribed(&a, "counted").await;
    let _s3 = RawSocket::subscribed(&b, "counted").await;
    let _s4 = RawSocket::subscribed(&b, "other").await;
    let (_, state) = b.get("/api/v1/sessions/counted").await;
    assert_eq!(state["subscribers"], 3, "{state}");
    b.publish("counted", "error", sample("error")).await;

    // Instances report their figures every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, stats) = a.get("/api/v1/stats").await;
        assert_eq!(stats["scope"], "cluster");
        if stats["connections"] == 4 && stats["subscriptions"] == 4 && stats["eventsDelivered"] == 3
        {
            assert_eq!(
                (
                    stats["sessions"].as_u64(),
                    stats["eventsPublished"].as_u64()
                ),
                (Some(2), Some(1)),
                "{stats}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "stats never added up: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn redis_down_and_back_mid_stream() {
    let mut redis = Redis::start().await;
    let url = redis.url();
    let a = Herald::start_logged(&["--redis-url", &url]).await;
    let b = Herald::start(&["--redis-url", &url]).await;
    a.wait_ready(200, Duration::from_secs(10)).await;
    b.wait_ready(200, Duration::from_secs(10)).await;
    let mut on_a = RawSocket::subscribed(&a, "flaky").await;
    for _ in 0..20 {
        assert_eq!(b.publish("flaky", "error", sample("error")).await.0, 202);
    }
    assert_eq!(on_a.seqs("error", 20).await, (1..=20).collect::<Vec<u64>>());

    redis.kill();
    a.wait_ready(503, Duration::from_secs(4)).await;
    b.wait_ready(503, Duration::from_secs(4)).await;
    let (_, ready) = a.get("/ready").await;
    assert!(
        ready["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Redis")),
        "{ready}"
    );
    for herald in [&a, &b] {
        let started = Instant::now();
        let (status, body) = herald.publish("flaky", "error", sample("error")).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("cluster-wide"),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "503 took {:?}",
            started.elapsed()
        );
    }
    // A subscription made during the outage waits for Redis (nothing is
    // published meanwhile), then takes effect with its snapshot.
    on_a.emit("subscribe", json!("during-outage")).await;
    on_a.assert_silent(Duration::from_secs(2)).await;

    redis.restart().await;
    a.wait_ready(200, Duration::from_secs(6)).await;
    b.wait_ready(200, Duration::from_secs(6)).await;
    let (name, reply) = on_a.next_event().await;
    assert_eq!(
        (
            name.as_str(),
            reply["sessionId"].as_str(),
            reply["seq"].as_u64()
        ),
        ("subscribed", Some("during-outage"), Some(0))
    );
    let (status, receipt) = b.publish("flaky", "completed", sample("completed")).await;
    assert_eq!(status, 202, "{receipt}");
    let (name, payload) = on_a.next_event().await;
    assert_eq!(name, "completed");
    // This Redis kept nothing: the session's seq starts again.
    assert_eq!(payload["seq"], receipt["seq"]);

    let log = a.log();
    assert_eq!(
        log.matches("cluster link down").count(),
        1,
        "one error per outage:\n{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn redis_down_at_start_then_up() {
    let mut redis = Redis::start().await;
    redis.kill();
    let url = redis.url();
    let herald = Herald::start(&["--redis-url", &url]).await;
    herald.wait_ready(503, Duration::from_secs(3)).await;
    let (mut socket, _, _) = RawSocket::connect(&herald.ws_url()).await;
    socket.emit("subscribe", json!("late")).await;
    assert_eq!(
        herald.publish("late", "error", sample("error")).await.0,
        503
    );
    redis.restart().await;
    herald.wait_ready(200, Duration::from_secs(6)).await;
    let (name, reply) = socket.next_event().await;
    assert_eq!(
        (name.as_str(), reply["seq"].as_u64()),
        ("subscribed", Some(0))
    );
    let (status, _) = herald.publish("late", "error", sample("error")).await;
    assert_eq!(status, 202);
    assert_eq!(socket.seqs("error", 1).await, [1]);
}

#[tokio::test]
async fn a_killed_instance_stalls_no_one_and_its_clients_resume_elsewhere() {
    let redis = Redis::start().await;
    let mut all = instances(&redis, 3).await;
    let mut on_a = RawSocket::subscribed(&all[0], "survive").await;
    let on_c = RawSocket::subscribed(&all[2], "survive").await;
    for _ in 0..10 {
        assert_eq!(
            all[1].publish("survive", "error", sample("error")).await.0,
            202
        );
    }
    all[2].kill();
    drop(on_c);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(
            all[1].publish("survive", "error", sample("error")).await.0,
            202
        );
        let (status, stats) = all[0].get("/api/v1/stats").await;
        assert_eq!(status, 200, "{stats}");
        let (status, _) = all[1].get("/api/v1/sessions/survive").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a request took {slowest:?} after the kill"
    );
    assert_eq!(on_a.seqs("error", 20).await, (1..=20).collect::<Vec<u64>>());

    // The killed instance's client reconnects to a survivor and re-subscribes:
    // its snapshot is the session's last (final) event.
    let mut moved = RawSocket::subscribed(&all[0], "survive").await;
    assert_eq!(moved.seqs("error", 1).await, [20]);
    let (_, receipt) = all[1]
        .publish("survive", "completed", sample("completed"))
        .await;
    assert_eq!(receipt["seq"], 21);
    assert_eq!(moved.seqs("completed", 1).await, [21]);
    assert_eq!(on_a.seqs("completed", 1).await, [21]);
}

#[tokio::test]
async fn a_redis_cluster_works_the_same() {
    let redis = RedisCluster::start().await;
    let [a, b]: [Herald; 2] = redis.instances(2).await.try_into().ok().unwrap();
    // Each stream's own channel, sharded: published from the script that
    // takes the seq, on the node that owns the session's slot.
    channels_per_stream(&[&a, &b], true).await;
    // Sessions hash to different nodes; each keeps its own order.
    let sessions = ["c-1", "c-2", "c-3"];
    let mut subs = Vec::new();
    for session in sessions {
        subs.push((
            RawSocket::subscribed(&a, session).await,
            RawSocket::subscribed(&b, session).await,
        ));
    }
    for i in 0..60u64 {
        let via = if i % 2 == 0 { &a } else { &b };
        let session = sessions[(i % 3) as usize];
        let (status, receipt) = via.publish(session, "error", sample("error")).await;
        assert_eq!(
            (status, receipt["seq"].as_u64()),
            (202, Some(i / 3 + 1)),
            "{receipt}"
        );
    }
    for (on_a, on_b) in &mut subs {
        let expected: Vec<u64> = (1..=20).collect();
        assert_eq!(on_a.seqs("error", 20).await, expected);
        assert_eq!(on_b.seqs("error", 20).await, expected);
    }
    let (_, state) = b.get("/api/v1/sessions/c-2").await;
    assert_eq!(
        (state["seq"].as_u64(), state["subscribers"].as_u64()),
        (Some(20), Some(2)),
        "{state}"
    );
    // Both watch every session: each read each event once.
    for herald in [&a, &b] {
        assert_eq!(herald.metric(RECEIVED).await, 60.0);
    }
}

/// A Redis Cluster moving a watched session's slot to another node (a
/// reshard, or a failover) ends the instance's subscription to its channel
/// there: the instance subscribes on the new node, and the watcher gets the
/// events that follow. (One published before that would be missed, and
/// seen as a gap in `seq`.)
#[tokio::test]
async fn a_session_whose_slot_moves_to_another_node_keeps_its_watchers() {
    let redis = RedisCluster::start().await;
    let [a, b]: [Herald; 2] = redis.instances(2).await.try_into().ok().unwrap();
    channels_per_stream(&[&a, &b], true).await;
    let mut on_a = RawSocket::subscribed(&a, "moving-1").await;
    for _ in 0..5 {
        assert_eq!(b.publish("moving-1", "error", sample("error")).await.0, 202);
    }
    assert_eq!(on_a.seqs("error", 5).await, vec![1, 2, 3, 4, 5]);
    let new_owner = redis.move_slot_of("moving-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &new_owner.to_string(), "pubsub", "shardnumsub"])
            .arg("herald:session-events:{moving-1}")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.lines().nth(1) == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never subscribed on the new node: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let (status, receipt) = b.publish("moving-1", "error", sample("error")).await;
        assert_eq!(status, 202, "{receipt}");
    }
    assert_eq!(on_a.seqs("error", 5).await, vec![6, 7, 8, 9, 10]);
}

const PER_STREAM: &str = "herald_cluster_per_stream ";

/// Waits until every instance publishes on the streams' own channels (or,
/// with `false`, on the shared one).
async fn channels_per_stream(heralds: &[&Herald], on: bool) {
    for herald in heralds {
        let value = if on { 1.0 } else { 0.0 };
        herald
            .wait_metric(PER_STREAM, value, Duration::from_secs(10))
            .await;
    }
}
const RECEIVED: &str = "herald_cluster_events_received_total ";
const STREAMS: &str = "herald_cluster_streams ";

/// Each stream's events travel on a channel of its own, which only the
/// instances watching the stream subscribe to: an instance carries the
/// events its clients watch, not the cluster's. The channel is left some
/// seconds after the last watcher, and taken again by the next.
#[tokio::test]
async fn events_reach_only_the_instances_that_watch_their_stream() {
    let redis = Redis::start().await;
    let (a, b) = common::ready_pair(&redis).await;
    channels_per_stream(&[&a, &b], true).await;
    let mut on_a = RawSocket::subscribed(&a, "only-1").await;
    for _ in 0..20 {
        assert_eq!(b.publish("only-1", "error", sample("error")).await.0, 202);
        assert_eq!(b.publish("nobody-1", "error", sample("error")).await.0, 202);
    }
    let want: Vec<u64> = (1..=20).collect();
    assert_eq!(on_a.seqs("error", 20).await, want);
    assert_eq!(a.metric(RECEIVED).await, 20.0, "only the watched stream");
    assert_eq!(b.metric(RECEIVED).await, 0.0, "b watches nothing");
    assert_eq!(
        (a.metric(STREAMS).await, b.metric(STREAMS).await),
        (1.0, 0.0)
    );

    // The last watcher leaves: the channel goes after its linger (10 s).
    drop(on_a);
    a.wait_metric(STREAMS, 0.0, Duration::from_secs(20)).await;
    for _ in 0..5 {
        assert_eq!(b.publish("only-1", "error", sample("error")).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.metric(RECEIVED).await, 20.0, "a left the channel");

    // A new watcher takes it again, with nothing missed between its
    // snapshot (the last `error`, a final event) and the live events.
    let mut again = RawSocket::subscribed(&a, "only-1").await;
    assert_eq!(b.publish("only-1", "error", sample("error")).await.0, 202);
    assert_eq!(again.seqs("error", 2).await, vec![25, 26]);
    assert_eq!(a.metric(STREAMS).await, 1.0);
}

/// An instance of an older release reads only the shared channel: while one
/// is live (its report in the registry carries no `streamChannels`), every
/// instance publishes there, and goes back to the streams' own channels
/// once it is gone.
#[tokio::test]
async fn while_an_older_instance_is_live_events_go_on_the_shared_channel() {
    use futures_util::StreamExt;
    let redis = Redis::start().await;
    let (a, b) = common::ready_pair(&redis).await;
    channels_per_stream(&[&a, &b], true).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let older = r#"{"id":"older","version":"0.9.0"}"#;
    let () = redis::pipe()
        .set_ex("{herald}:instance:older", older, 60)
        .ignore()
        .sadd("{herald}:instances", "older")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    channels_per_stream(&[&a, &b], false).await;
    let mut shared = client.get_async_pubsub().await.unwrap();
    shared.subscribe("herald:events").await.unwrap();
    let mut on_b = RawSocket::subscribed(&b, "old-1").await;
    for via in [&a, &b, &a] {
        assert_eq!(via.publish("old-1", "error", sample("error")).await.0, 202);
    }
    assert_eq!(on_b.seqs("error", 3).await, vec![1, 2, 3]);
    let mut messages = shared.on_message();
    for seq in 1..=3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("the older instance's channel carries the event")
            .unwrap();
        let text: String = message.get_payload().unwrap();
        let lines: Vec<&str> = text.splitn(4, '\n').collect();
        assert_eq!(&lines[..3], &["error", "old-1", &seq.to_string()]);
    }

    // It is gone: back to the streams' own channels.
    let () = redis::cmd("DEL")
        .arg("{herald}:instance:older")
        .query_async(&mut conn)
        .await
        .unwrap();
    channels_per_stream(&[&a, &b], true).await;
    assert_eq!(b.publish("old-1", "error", sample("error")).await.0, 202);
    assert_eq!(on_b.seqs("error", 1).await, vec![4]);
    let quiet = tokio::time::timeout(Duration::from_millis(300), messages.next()).await;
    assert!(quiet.is_err(), "nothing more on the shared channel");
}

/// A batch interrupted by Redis dying answers with what was published (with
/// seqs) and which items were not, so that a retry of exactly those items
/// delivers every item once: none lost, none twice.
#[tokio::test]
async fn a_batch_cut_by_redis_dying_says_what_to_retry() {
    const ITEMS: usize = 3_000;
    let mut redis = Redis::start().await;
    let url = redis.url();
    // A batch this large is over the default publish burst (2000).
    let herald = Herald::start(&["--redis-url", &url, "--publish-rate-per-key", "0"]).await;
    herald.wait_ready(200, Duration::from_secs(10)).await;
    let mut watcher = RawSocket::subscribed(&herald, "cut").await;
    let item = |i: usize| {
        let mut data = sample("model_result");
        data["result"] = json!(format!("item-{i}"));
        json!({ "sessionId": "cut", "event": "model_result", "data": data })
    };
    let batch: Vec<_> = (0..ITEMS).map(item).collect();
    let client = reqwest::Client::new();
    let request = client
        .post(herald.url("/api/v1/events"))
        .json(&batch)
        .send();
    let answer = tokio::spawn(async move {
        let res = request.await.expect("POST");
        (
            res.status().as_u16(),
            res.json::<serde_json::Value>().await.unwrap(),
        )
    });

    // Kill Redis once the batch is well under way.
    let mut received = Vec::new();
    while received.len() < 50 {
        let (_, payload) = watcher.next_event().await;
        received.push(payload["result"].as_str().unwrap().to_string());
    }
    redis.kill();
    let (status, body) = answer.await.unwrap();
    // The item in flight when Redis died may have run before it died: the
    // answer is then 504 and names it; a kill between two items is a 503.
    let unknown = body["outcomeUnknown"].as_u64().map(|i| i as usize);
    let expected = match unknown {
        Some(_) => (504, Some("OUTCOME_UNKNOWN")),
        None => (503, Some("UNAVAILABLE")),
    };
    assert_eq!((status, body["code"].as_str()), expected, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cluster-wide"),
        "{body}"
    );
    let published = body["results"].as_array().unwrap();
    let unpublished: Vec<usize> = body["unpublished"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    let k = published.len();
    assert!((50..ITEMS).contains(&k), "stopped after {k} of {ITEMS}");
    let seqs: Vec<u64> = published
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=k as u64).collect::<Vec<_>>());
    if let Some(at) = unknown {
        assert_eq!(at, k, "the unknown item is the one after the published");
    }
    let first_unpublished = k + usize::from(unknown.is_some());
    assert_eq!(unpublished, (first_unpublished..ITEMS).collect::<Vec<_>>());
    // Everything answered as published reached the subscriber, then at most
    // the unknown item, nothing else.
    while received.len() < k {
        let (_, payload) = watcher.next_event().await;
        received.push(payload["result"].as_str().unwrap().to_string());
    }
    if let Some(at) = unknown
        && let Ok((_, payload)) =
            tokio::time::timeout(Duration::from_millis(300), watcher.next_event()).await
    {
        assert_eq!(payload["result"], format!("item-{at}"));
        received.push(format!("item-{at}"));
    }
    watcher.assert_silent(Duration::from_millis(300)).await;

    // Redis is back (empty): retry exactly what was not published (and the
    // unknown item, if it did not arrive).
    redis.restart().await;
    herald.wait_ready(200, Duration::from_secs(6)).await;
    let retry: Vec<_> = (received.len()..ITEMS).map(item).collect();
    let res = client
        .post(herald.url("/api/v1/events"))
        .json(&retry)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    while received.len() < ITEMS {
        let (_, payload) = watcher.next_event().await;
        received.push(payload["result"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = (0..ITEMS).map(|i| format!("item-{i}")).collect();
    assert_eq!(received, expected, "every item exactly once, in order");
}
