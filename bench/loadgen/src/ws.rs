//! `ws` mode: ResearchFlow's plain WebSocket (`/ws`, seed 001's protocol)
//! for bench/run's `ws-fanout`, against herald and the Node reference alike:
//! opens N `/ws` clients, each `auth`ed to run `<prefix>-<i mod runs>`,
//! publishes run events over the HTTP API and counts what every client
//! receives, in order. The same work as `bench/node-reference/ws-load.mjs`
//! at a fraction of its CPU: with Node's `ws` and `JSON.parse` on every
//! frame the load core saturated before either server did, so the figure
//! measured the load client as much as the servers.
//!
//! Prints `{"phase":"ready",...}` once every client is authenticated, then
//! `{"phase":"done",...}` once every client has every event (or after
//! `--grace` seconds, reporting what arrived).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::WsArgs;
use crate::common::{Target, parse_targets};
use crate::http::Conn;

/// What every client reports into.
#[derive(Default)]
struct Shared {
    ready: AtomicUsize,
    deliveries: AtomicU64,
    reordered: AtomicU64,
    unexpected: AtomicU64,
    complete: AtomicUsize,
    /// Nanoseconds since `started` (+1, so 0 means none yet).
    first: AtomicU64,
    last: AtomicU64,
    done: Notify,
    all_ready: Notify,
}

/// The two fields of a frame the count needs; the rest is skipped.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    seq: Option<u64>,
}

fn frame(msg: &Message) -> Option<Frame<'_>> {
    match msg {
        Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
        _ => None,
    }
}

struct Client<'a> {
    target: &'a Target,
    run: String,
    events: u64,
    clients: usize,
    started: Instant,
}

async fn client(c: Client<'_>, shared: &Shared, connecting: &Semaphore) -> Result<(), String> {
    let permit = connecting.acquire().await.map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(c.target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{}{}/ws", c.target.authority, c.target.prefix);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let auth = json!({ "type": "auth", "payload": { "runId": c.run } }).to_string();
    loop {
        let msg = ws
            .next()
            .await
            .ok_or("closed before auth.success")?
            .map_err(|e| format!("read: {e}"))?;
        match frame(&msg).as_ref().map(|f| f.kind.as_ref()) {
            Some("connection.established") => ws
                .send(Message::text(auth.clone()))
                .await
                .map_err(|e| format!("send auth: {e}"))?,
            Some("auth.success") => break,
            _ => {}
        }
    }
    drop(permit);
    if shared.ready.fetch_add(1, Ordering::AcqRel) + 1 == c.clients {
        shared.all_ready.notify_one();
    }
    let (mut count, mut last_seq) = (0u64, 0u64);
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| format!("read: {e}"))?;
        let Some(f) = frame(&msg) else { continue };
        match f.kind.as_ref() {
            "stage.progress" => {
                let at = c.started.elapsed().as_nanos() as u64 + 1;
                let _ = shared
                    .first
                    .compare_exchange(0, at, Ordering::AcqRel, Ordering::Relaxed);
                shared.last.fetch_max(at, Ordering::AcqRel);
                shared.deliveries.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = f.seq {
                    if seq <= last_seq {
                        shared.reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = seq;
                }
                count += 1;
                if count == c.events
                    && shared.complete.fetch_add(1, Ordering::AcqRel) + 1 == c.clients
                {
                    shared.done.notify_one();
                }
            }
            "pong" => {}
            _ => {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

pub async fn run(args: WsArgs) -> Result<(), String> {
    let target = parse_targets(&args.url)?.remove(0);
    if args.publish > 0 && args.runs != 1 {
        return Err(
            "--publish needs --runs 1: every client is expected to receive every event".into(),
        );
    }
    let deadline = Duration::from_secs_f64(args.timeout);
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<String>();
    for i in 0..args.clients {
        let (target, shared, connecting, failed_tx) = (
            target.clone(),
            shared.clone(),
            connecting.clone(),
            failed_tx.clone(),
        );
        let c_run = format!("{}-{}", args.run_prefix, i % args.runs.max(1));
        let (events, clients) = (args.publish, args.clients);
        tokio::spawn(async move {
            let c = Client {
                target: &target,
                run: c_run,
                events,
                clients,
                started,
            };
            let result = client(c, &shared, &connecting).await;
            let _ = failed_tx.send(match result {
                Ok(()) => format!("client {i} closed by the server"),
                Err(e) => format!("client {i}: {e}"),
            });
        });
    }
    drop(failed_tx);
    let fail = |why: String| Err(format!("ws: {why}"));
    if args.clients > 0 {
        tokio::select! {
            () = shared.all_ready.notified() => {}
            Some(why) = failed.recv() => return fail(why),
            () = tokio::time::sleep(deadline) => return fail("still connecting at --timeout".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "phase": "ready", "connected": args.clients, "connect_rate": args.clients as f64 / secs })
    );

    if args.publish > 0 {
        let run = format!("{}-0", args.run_prefix);
        let path = format!("{}/api/v1/runs/{run}/events", target.prefix);
        let mut conn = Conn::open(&target).await?;
        for k in 1..=args.publish {
            let body = json!({
                "type": "stage.progress",
                "payload": { "runId": run, "stageId": "stage-1", "stageName": "Ingest",
                    "progress": (100.0 * k as f64 / args.publish as f64).round() as u64, "itemsProcessed": k, "itemsTotal": args.publish },
            });
            let (status, answer) = conn
                .request(
                    &target,
                    Method::POST,
                    &path,
                    Some(Bytes::from(body.to_string())),
                    None,
                )
                .await?;
            if status != StatusCode::ACCEPTED {
                return fail(format!(
                    "publish {k} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        // What is still on its way gets a grace period; a run that lost
        // events ends then, reporting what arrived.
        tokio::select! {
            () = shared.done.notified() => {}
            Some(why) = failed.recv() => return fail(why),
            () = tokio::time::sleep(Duration::from_secs_f64(args.grace)) => {}
        }
    }
    let deliveries = shared.deliveries.load(Ordering::Acquire);
    let span = (shared.last.load(Ordering::Acquire) as f64
        - shared.first.load(Ordering::Acquire) as f64)
        / 1e9;
    let expected = args.publish * args.clients as u64;
    println!(
        "{}",
        json!({
            "phase": "done", "connected": args.clients, "deliveries": deliveries, "expected": expected,
            "deliveries_per_sec": if span > 0.0 { deliveries as f64 / span } else { 0.0 },
            "lost": expected.saturating_sub(deliveries),
            "reordered": shared.reordered.load(Ordering::Acquire),
            "unexpected": shared.unexpected.load(Ordering::Acquire),
        })
    );
    Ok(())
}
