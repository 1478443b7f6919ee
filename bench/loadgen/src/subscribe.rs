//! `subscribe`: many raw Socket.IO sockets, each subscribed to one session,
//! counting and timing every delivered event.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::SubscribeArgs;
use crate::common::{self, Target};
use crate::http::Conn;
use crate::scan;

type Ws = WebSocketStream<TcpStream>;

const UNKNOWN: u64 = u64::MAX;

struct Config {
    targets: Vec<Target>,
    sources: Vec<Ipv4Addr>,
    sessions: Vec<Arc<str>>,
    expect: Option<u64>,
    ws_config: WebSocketConfig,
    connect_timeout: Duration,
}

/// State shared by every socket task.
struct Shared {
    /// Sockets that received `--expect-per-socket` events.
    complete: AtomicUsize,
    complete_notify: Notify,
    /// Sockets closed by the server or the network after subscribing.
    disconnects: AtomicUsize,
    /// Per session index: its `seq` when the receive window opened (from
    /// `GET /api/v1/sessions/{id}`), or UNKNOWN.
    baselines: Vec<AtomicU64>,
    stopping: AtomicBool,
}

/// Receive counters, one set per runtime thread (merged at the end).
struct RecvStats {
    deliveries: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// Events for a session this socket did not subscribe to.
    foreign: u64,
    /// Session events whose `result` held no send time.
    untimed: u64,
    first_ns: u64,
    last_ns: u64,
    hist: Histogram<u64>,
}

impl RecvStats {
    fn new() -> Self {
        Self {
            deliveries: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            foreign: 0,
            untimed: 0,
            first_ns: u64::MAX,
            last_ns: 0,
            hist: common::new_histogram(),
        }
    }

    fn merge(&mut self, o: &RecvStats) {
        self.deliveries += o.deliveries;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.foreign += o.foreign;
        self.untimed += o.untimed;
        self.first_ns = self.first_ns.min(o.first_ns);
        self.last_ns = self.last_ns.max(o.last_ns);
        let _ = self.hist.add(&o.hist);
    }
}

static REGISTRY: Mutex<Vec<Arc<Mutex<RecvStats>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<RecvStats>> = {
        let s = Arc::new(Mutex::new(RecvStats::new()));
        REGISTRY.lock().unwrap().push(s.clone());
        s
    };
}

fn merged_stats() -> RecvStats {
    let mut total = RecvStats::new();
    for s in REGISTRY.lock().unwrap().iter() {
        total.merge(&s.lock().unwrap());
    }
    total
}

fn total_deliveries() -> u64 {
    REGISTRY
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.lock().unwrap().deliveries)
        .sum()
}

/// One socket's view of its session.
struct SockState {
    session_index: usize,
    session: Arc<str>,
    last_seq: u64,
    delivered: u64,
}

fn on_frame(frame: &[u8], st: &mut SockState, cfg: &Config, shared: &Shared) {
    let Some(ev) = scan::event_fields(frame) else {
        return;
    };
    let now = common::now_unix_ns();
    LOCAL.with(|s| {
        let mut g = s.lock().unwrap();
        if ev.session != Some(st.session.as_bytes()) {
            g.foreign += 1;
            return;
        }
        g.deliveries += 1;
        g.first_ns = g.first_ns.min(now);
        g.last_ns = g.last_ns.max(now);
        match ev.sent_ns {
            Some(sent) => g.hist.saturating_record(now.saturating_sub(sent) / 1000),
            None => g.untimed += 1,
        }
        let prev = if st.last_seq != UNKNOWN {
            st.last_seq
        } else {
            match shared.baselines[st.session_index].load(Ordering::Relaxed) {
                UNKNOWN => ev.seq.saturating_sub(1),
                b => b,
            }
        };
        if ev.seq > prev {
            g.lost += ev.seq - prev - 1;
            st.last_seq = ev.seq;
        } else if ev.seq == prev {
            g.duplicated += 1;
            st.last_seq = prev;
        } else {
            g.reordered += 1;
            st.last_seq = prev;
        }
    });
    st.delivered += 1;
    if cfg.expect == Some(st.delivered) {
        shared.complete.fetch_add(1, Ordering::AcqRel);
        shared.complete_notify.notify_one();
    }
}

async fn next_text(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let b = t.as_bytes();
                if b == b"2" {
                    ws.send(Message::text("3"))
                        .await
                        .map_err(|e| format!("pong: {e}"))?;
                    continue;
                }
                return Ok(b.to_vec());
            }
            Some(Ok(Message::Close(_))) | None => return Err("closed by server".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("websocket: {e}")),
        }
    }
}

fn brief(frame: &[u8]) -> String {
    String::from_utf8_lossy(&frame[..frame.len().min(200)]).into_owned()
}

/// TCP connect (from a source address when given), WebSocket upgrade,
/// Engine.IO open, Socket.IO connect, subscribe.
async fn handshake(i: usize, cfg: &Config) -> Result<Ws, String> {
    let nt = cfg.targets.len();
    let target = &cfg.targets[i % nt];
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if !cfg.sources.is_empty() {
        // Every target sees every source address: the k-th socket of a target
        // takes source k mod n.
        let src = cfg.sources[(i / nt) % cfg.sources.len()];
        // Let connect() pick the port, so ports are unique per 4-tuple rather
        // than per source address.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with an int option value.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = sock
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    let url = format!(
        "ws://{}{}/socket.io/?EIO=4&transport=websocket",
        target.authority, target.prefix
    );
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg.ws_config))
        .await
        .map_err(|e| format!("websocket upgrade: {e}"))?;

    let open = next_text(&mut ws).await?;
    if open.first() != Some(&b'0') {
        return Err(format!("expected Engine.IO open, got {}", brief(&open)));
    }
    ws.send(Message::text("40"))
        .await
        .map_err(|e| format!("send 40: {e}"))?;
    loop {
        let f = next_text(&mut ws).await?;
        if f.starts_with(b"40") {
            break;
        }
        if f.starts_with(b"44") {
            return Err(format!("connect_error: {}", brief(&f)));
        }
    }
    let session = &cfg.sessions[i % cfg.sessions.len()];
    ws.send(Message::text(format!("42[\"subscribe\",\"{session}\"]")))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    loop {
        let f = next_text(&mut ws).await?;
        if f.starts_with(b"42[\"subscribed\"") {
            return Ok(ws);
        }
        if f.starts_with(b"42[\"error\"") && scan::event_fields(&f).is_none() {
            return Err(format!("subscribe refused: {}", brief(&f)));
        }
        if f.first() == Some(&b'1') {
            return Err("closed by server".into());
        }
    }
}

async fn socket_task(
    i: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) {
    let hs = tokio::time::timeout(cfg.connect_timeout, handshake(i, &cfg)).await;
    drop(permit);
    let mut ws = match hs {
        Ok(Ok(ws)) => {
            let _ = ready.send(Ok(()));
            ws
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = ready.send(Err("handshake timed out".into()));
            return;
        }
    };
    drop(ready);
    let session_index = i % cfg.sessions.len();
    let mut st = SockState {
        session_index,
        session: cfg.sessions[session_index].clone(),
        last_seq: UNKNOWN,
        delivered: 0,
    };
    while let Some(msg) = ws.next().await {
        let ping = match msg {
            Ok(Message::Text(t)) => match t.as_bytes().first() {
                Some(b'4') => {
                    on_frame(t.as_bytes(), &mut st, &cfg, &shared);
                    false
                }
                Some(b'2') => true,
                Some(b'1') => break,
                _ => false,
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => false,
        };
        if ping && ws.send(Message::text("3")).await.is_err() {
            break;
        }
    }
    if !shared.stopping.load(Ordering::Relaxed) {
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
        // A socket that can no longer complete must not hold the run open.
        shared.complete_notify.notify_one();
    }
}

/// Reads each session's current `seq`, so that events lost before the first
/// delivery count too. Returns how many sessions got a baseline.
async fn fetch_baselines(cfg: &Config, shared: &Shared, api_key: Option<&str>) -> usize {
    let target = &cfg.targets[0];
    let mut conn: Option<Conn> = None;
    let mut got = 0;
    for (idx, session) in cfg.sessions.iter().enumerate() {
        if conn.as_ref().is_none_or(|c| !c.is_usable()) {
            conn = Conn::open(target).await.ok();
        }
        let Some(c) = conn.as_mut() else { break };
        let path = format!("{}/api/v1/sessions/{session}", target.prefix);
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            c.request(target, hyper::Method::GET, &path, None, api_key),
        )
        .await;
        let Ok(Ok((status, body))) = res else {
            conn = None;
            continue;
        };
        if status != hyper::StatusCode::OK {
            continue;
        }
        if let Some(seq) = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        {
            shared.baselines[idx].store(seq, Ordering::Relaxed);
            got += 1;
        }
    }
    got
}

pub async fn run(args: SubscribeArgs, threads: usize) -> Result<(), String> {
    let t_start = Instant::now();
    let targets = common::parse_targets(&args.url)?;
    let sources = match &args.source_addrs {
        Some(s) => common::parse_source_addrs(s)?,
        None => Vec::new(),
    };
    common::check_session_prefix(&args.session_prefix)?;
    if args.sessions == 0 || args.sockets == 0 {
        return Err("--sockets and --sessions must be at least 1".into());
    }
    let sessions: Vec<Arc<str>> = (0..args.sessions)
        .map(|s| Arc::from(format!("{}-{s}", args.session_prefix)))
        .collect();
    let cfg = Arc::new(Config {
        targets,
        sources,
        expect: if args.hold {
            None
        } else {
            args.expect_per_socket.filter(|&k| k > 0)
        },
        ws_config: WebSocketConfig::default()
            .read_buffer_size(args.read_buffer.max(256))
            .write_buffer_size(0),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        sessions,
    });
    let shared = Arc::new(Shared {
        complete: AtomicUsize::new(0),
        complete_notify: Notify::new(),
        disconnects: AtomicUsize::new(0),
        baselines: (0..args.sessions)
            .map(|_| AtomicU64::new(UNKNOWN))
            .collect(),
        stopping: AtomicBool::new(false),
    });

    let deadline = args
        .timeout
        .filter(|&t| t > 0.0)
        .map(|t| t_start + Duration::from_secs_f64(t));
    let stop = common::stop_signal(!args.ignore_stdin, deadline);
    tokio::pin!(stop);

    // Connect phase.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_start = Instant::now();
    let first = args.first_socket;
    {
        let (cfg, shared, sem) = (cfg.clone(), shared.clone(), sem.clone());
        let n = args.sockets;
        tokio::spawn(async move {
            for i in first..first + n {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(socket_task(
                    i,
                    cfg.clone(),
                    shared.clone(),
                    permit,
                    ready_tx.clone(),
                ));
            }
        });
    }
    let mut connected = 0usize;
    let mut last_subscribed = connect_start;
    let mut failed = 0usize;
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    let mut stop_reason: Option<&'static str> = None;
    while connected + failed < args.sockets {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(Ok(())) => {
                    connected += 1;
                    last_subscribed = Instant::now();
                }
                Some(Err(e)) => {
                    failed += 1;
                    // Group errors by their text without digits (ports, addresses vary).
                    let key: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
                    let n = errors.entry(key).or_default();
                    if *n == 0 {
                        eprintln!("herald-loadgen: socket failed: {e}");
                    }
                    *n += 1;
                }
                None => break,
            },
            reason = &mut stop => { stop_reason = Some(reason); break; }
        }
    }
    // From the first connect to the last `subscribed` (sockets that failed
    // late, e.g. by timing out, do not stretch it).
    let connect_secs = (last_subscribed - connect_start).as_secs_f64();

    let baselined = if stop_reason.is_none() && !args.no_baseline {
        fetch_baselines(&cfg, &shared, args.api_key.as_deref()).await
    } else {
        0
    };

    let cores = threads.min(common::usable_cpus()).max(1) as f64;
    let sampler = Arc::new(common::CpuSampler::new());
    sampler.record(total_deliveries());
    let sampler_task = common::spawn_sampler(
        sampler.clone(),
        Duration::from_millis(200),
        total_deliveries,
    );

    common::emit(&json!({
        "phase": "ready",
        "pid": std::process::id(),
        "sockets": args.sockets,
        "connected": connected,
        "failed": failed,
        "connect_errors": errors,
        "connect_secs": common::round3(connect_secs),
        "connect_rate": common::round3(connected as f64 / connect_secs.max(1e-9)),
        "sessions": args.sessions,
        "baselined_sessions": baselined,
        "rss_bytes": common::self_rss_bytes(),
        "cpu_secs": common::round3(common::self_cpu_secs()),
    }));

    // Receive window.
    let window_deadline = args
        .duration
        .filter(|&d| d > 0.0)
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    if stop_reason.is_none() {
        let window = async {
            match window_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(window);
        stop_reason = Some(loop {
            if cfg.expect.is_some() {
                let live = connected.saturating_sub(shared.disconnects.load(Ordering::Acquire));
                let done = shared.complete.load(Ordering::Acquire);
                if connected > 0 && done >= live {
                    break if done >= connected {
                        "expected_deliveries"
                    } else {
                        "expected_deliveries_on_live_sockets"
                    };
                }
            }
            tokio::select! {
                _ = shared.complete_notify.notified() => {}
                _ = &mut window => break "duration",
                reason = &mut stop => break reason,
            }
        });
    }
    shared.stopping.store(true, Ordering::Relaxed);
    sampler_task.abort();
    sampler.record(total_deliveries());

    let s = merged_stats();
    let complete = shared.complete.load(Ordering::Acquire);
    let (missing, incomplete) = match cfg.expect {
        Some(k) => {
            // Sockets that connected but did not reach K deliveries.
            let incomplete = connected.saturating_sub(complete);
            let expected_total = k * connected as u64;
            (
                Some(expected_total.saturating_sub(s.deliveries)),
                Some(incomplete),
            )
        }
        None => (None, None),
    };
    let (first, last) = if s.deliveries > 0 {
        (Some(s.first_ns), Some(s.last_ns))
    } else {
        (None, None)
    };
    let span_secs = match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    let busy = sampler.busy_cores();
    common::emit(&json!({
        "phase": "done",
        "pid": std::process::id(),
        "stop_reason": stop_reason,
        "sockets": args.sockets,
        "connected": connected,
        "failed": failed,
        "disconnects": shared.disconnects.load(Ordering::Relaxed),
        "connect_secs": common::round3(connect_secs),
        "connect_rate": common::round3(connected as f64 / connect_secs.max(1e-9)),
        "expect_per_socket": cfg.expect,
        "complete_sockets": cfg.expect.map(|_| complete),
        "incomplete_sockets": incomplete,
        "missing": missing,
        "deliveries": s.deliveries,
        "lost": s.lost,
        "duplicated": s.duplicated,
        "reordered": s.reordered,
        "foreign": s.foreign,
        "untimed": s.untimed,
        "latency_us": common::summary(&s.hist),
        "first_delivery_unix_ns": first,
        "last_delivery_unix_ns": last,
        "deliveries_per_sec": if span_secs > 0.0 { common::round3(s.deliveries as f64 / span_secs) } else { 0.0 },
        "cpu_secs": common::round3(common::self_cpu_secs()),
        "cpu_util": busy.map(common::round3),
        "threads": threads,
        "saturated": busy.is_some_and(|b| b >= 0.9 * cores),
        "rss_bytes": common::self_rss_bytes(),
    }));
    Ok(())
}
