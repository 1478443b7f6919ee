//! `subscribe`: many raw Socket.IO sockets, each subscribed to one session,
//! counting and timing every delivered event. With `--drop-after`, a
//! recovery run: every socket is cut at once, stays cut off for a while,
//! then reconnects and resumes where it left off.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
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

/// How a socket resumes after a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resume {
    /// `subscribe` with `{ sessionId, since: <last seq>, epoch }`
    /// (PROTOCOL.md section 4); the reply says `recovered`.
    Herald,
    /// Socket.IO connection state recovery: the CONNECT packet carries
    /// `{ pid, offset }` (the `pid` of the first CONNECT reply, the last
    /// string argument of the last event received), as socket.io-client
    /// sends them; recovered when the reply has the same `pid`. The server
    /// then restores the rooms and replays what was missed, so there is no
    /// new `subscribe` (a stock app subscribes again only when not
    /// recovered, and so does this).
    Socketio,
}

/// Where a recovery run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    /// Every socket closes its connection abruptly.
    Cut,
    /// Every socket reconnects and resumes.
    Reconnect,
}

struct Config {
    targets: Vec<Target>,
    sources: Vec<Ipv4Addr>,
    sessions: Vec<Arc<str>>,
    expect: Option<u64>,
    ws_config: WebSocketConfig,
    connect_timeout: Duration,
    /// A recovery run (`--drop-after`).
    cut: bool,
    resume: Resume,
    /// The token every socket presents (`--token`).
    token: Option<String>,
    /// Handshakes in progress at once, for the reconnects too.
    connect_sem: Arc<Semaphore>,
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
    /// Recovery run. The phase, moved forward by `run`.
    phase: watch::Receiver<Phase>,
    /// Per session index: its `seq` when the reconnects began; a socket
    /// is caught up once it has every event up to it.
    targets: Vec<AtomicU64>,
    /// Sockets closed at the cut.
    cut: AtomicUsize,
    reconnected: AtomicUsize,
    reconnect_failed: AtomicUsize,
    reconnect_errors: Mutex<std::collections::BTreeMap<String, usize>>,
    /// Resumes the server said were complete (herald `recovered: true`,
    /// Socket.IO the same `pid`), and the others.
    recovered: AtomicUsize,
    not_recovered: AtomicUsize,
    /// herald's `replayed` counts, summed.
    replayed: AtomicU64,
    /// Resumed sockets settled: caught up (every event up to their
    /// session's target), lost one on the way, or not recovered.
    settled: AtomicUsize,
    caught_up: AtomicUsize,
    /// Sockets with a gap: they can never have every event.
    lossy: AtomicUsize,
    /// Nanoseconds from `t0` to the last reconnect handshake done and to the
    /// last socket caught up.
    last_reconnect_ns: AtomicU64,
    last_caught_up_ns: AtomicU64,
    t0: Instant,
}

impl Shared {
    fn mark(&self, at: &AtomicU64) {
        at.fetch_max(self.t0.elapsed().as_nanos() as u64, Ordering::AcqRel);
    }
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
    /// Events this socket missed (seq gaps).
    lost: u64,
    /// The session's epoch from herald's `subscribed`.
    epoch: Option<String>,
    /// Socket.IO connection state recovery: the private session id of the
    /// CONNECT reply and the offset of the last event (empty: none yet).
    pid: Option<String>,
    offset: Vec<u8>,
    /// Reconnected after the cut: watch for it catching up.
    resumed: bool,
    /// Counted in `settled`.
    settled: bool,
    /// Counted in `lossy`.
    lossy: bool,
}

impl SockState {
    fn new(i: usize, cfg: &Config) -> Self {
        let session_index = i % cfg.sessions.len();
        Self {
            session_index,
            session: cfg.sessions[session_index].clone(),
            last_seq: UNKNOWN,
            delivered: 0,
            lost: 0,
            epoch: None,
            pid: None,
            offset: Vec::new(),
            resumed: false,
            settled: false,
            lossy: false,
        }
    }

    /// The last seq this socket has every event up to: the last delivered,
    /// or the baseline before the first delivery.
    fn have_seq(&self, shared: &Shared) -> u64 {
        if self.last_seq != UNKNOWN {
            return self.last_seq;
        }
        match shared.baselines[self.session_index].load(Ordering::Relaxed) {
            UNKNOWN => 0,
            b => b,
        }
    }
}

/// One text frame from the server, outside the handshake's own replies:
/// events are counted, and the offset kept for Socket.IO recovery.
fn on_text(frame: &[u8], st: &mut SockState, cfg: &Config, shared: &Shared) {
    on_frame(frame, st, cfg, shared);
    if !cfg.cut {
        return;
    }
    if cfg.resume == Resume::Socketio
        && st.pid.is_some()
        && let Some(offset) = scan::trailing_string(frame)
    {
        st.offset.clear();
        st.offset.extend_from_slice(offset);
    }
    check_caught_up(st, shared);
}

/// Recovery runs: counts a socket in `lossy` once it has a gap, and after
/// its resume settles it once it has every event up to its session's target
/// (caught up) or has a gap.
fn check_caught_up(st: &mut SockState, shared: &Shared) {
    if st.lost > 0 && !st.lossy {
        st.lossy = true;
        shared.lossy.fetch_add(1, Ordering::AcqRel);
        shared.complete_notify.notify_one();
    }
    if !st.resumed || st.settled {
        return;
    }
    let target = match shared.targets[st.session_index].load(Ordering::Relaxed) {
        UNKNOWN => 0,
        t => t,
    };
    if st.lost == 0 && st.have_seq(shared) >= target {
        shared.mark(&shared.last_caught_up_ns);
        shared.caught_up.fetch_add(1, Ordering::AcqRel);
    } else if st.lost == 0 {
        return;
    }
    settle(st, shared);
}

fn settle(st: &mut SockState, shared: &Shared) {
    st.settled = true;
    shared.settled.fetch_add(1, Ordering::AcqRel);
    shared.complete_notify.notify_one();
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
            st.lost += ev.seq - prev - 1;
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
/// Engine.IO open, Socket.IO connect, subscribe. With `resume`, after a cut:
/// herald's subscribe carries `since` and `epoch`; Socket.IO's CONNECT
/// carries `pid` and `offset`, and a recovered socket is not subscribed
/// again. Events that arrive meanwhile (Socket.IO sends the missed ones
/// before its CONNECT reply) are counted. Returns whether the server said
/// the resume was complete (None for a first connect, or a server that
/// does not say).
async fn handshake(
    i: usize,
    cfg: &Config,
    shared: &Shared,
    st: &mut SockState,
    resume: bool,
) -> Result<(Ws, Option<bool>), String> {
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
    let sio_resume = resume && cfg.resume == Resume::Socketio;
    let connect = match (&st.pid, sio_resume) {
        (Some(pid), true) => {
            // As socket.io-client builds it: the offset is left out (JSON has
            // no undefined) when no event carried one.
            let mut auth = serde_json::Map::new();
            auth.insert("pid".into(), pid.as_str().into());
            if !st.offset.is_empty() {
                auth.insert(
                    "offset".into(),
                    String::from_utf8_lossy(&st.offset).into_owned().into(),
                );
            }
            format!("40{}", serde_json::Value::Object(auth))
        }
        _ => match &cfg.token {
            Some(token) => format!("40{}", serde_json::json!({ "token": token })),
            None => "40".to_string(),
        },
    };
    ws.send(Message::text(connect))
        .await
        .map_err(|e| format!("send 40: {e}"))?;
    let mut recovered = None;
    loop {
        let f = next_text(&mut ws).await?;
        if f.starts_with(b"40") {
            let pid = scan::string_field(&f, b"\"pid\":\"")
                .map(|p| String::from_utf8_lossy(p).into_owned());
            if sio_resume {
                recovered = Some(pid.is_some() && pid == st.pid);
            }
            if pid.is_some() {
                st.pid = pid;
            }
            break;
        }
        if f.starts_with(b"44") {
            return Err(format!("connect_error: {}", brief(&f)));
        }
        if f.first() == Some(&b'1') {
            return Err("closed by server".into());
        }
        if f.starts_with(b"42") {
            on_text(&f, st, cfg, shared);
        }
    }
    if recovered == Some(true) {
        return Ok((ws, recovered));
    }
    let subscribe = if resume && cfg.resume == Resume::Herald {
        let mut req = serde_json::Map::new();
        req.insert("sessionId".into(), (*st.session).into());
        req.insert("since".into(), st.have_seq(shared).into());
        if let Some(epoch) = &st.epoch {
            req.insert("epoch".into(), epoch.as_str().into());
        }
        format!("42[\"subscribe\",{}]", serde_json::Value::Object(req))
    } else {
        format!("42[\"subscribe\",\"{}\"]", st.session)
    };
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    loop {
        let f = next_text(&mut ws).await?;
        if f.starts_with(b"42[\"subscribed\"") {
            if let Some(epoch) = scan::string_field(&f, b"\"epoch\":\"") {
                st.epoch = Some(String::from_utf8_lossy(epoch).into_owned());
            }
            if resume && cfg.resume == Resume::Herald {
                recovered = if memchr::memmem::find(&f, b"\"recovered\":true").is_some() {
                    Some(true)
                } else if memchr::memmem::find(&f, b"\"recovered\":false").is_some() {
                    Some(false)
                } else {
                    None
                };
                if let Some(n) = scan::number_field(&f, b"\"replayed\":") {
                    shared.replayed.fetch_add(n, Ordering::Relaxed);
                }
            }
            // The reply may carry an offset too (Socket.IO recovery on).
            on_text(&f, st, cfg, shared);
            return Ok((ws, recovered));
        }
        if f.starts_with(b"42[\"error\"") && scan::event_fields(&f).is_none() {
            return Err(format!("subscribe refused: {}", brief(&f)));
        }
        if f.first() == Some(&b'1') {
            return Err("closed by server".into());
        }
        if f.starts_with(b"42") {
            on_text(&f, st, cfg, shared);
        }
    }
}

/// Closes a connection the way a dropped network link looks to the server
/// right away: a TCP reset, no WebSocket or Engine.IO close.
fn cut(ws: Ws) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a linger struct.
    unsafe {
        libc::setsockopt(
            ws.get_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(ws);
}

/// Why a socket's receive loop ended.
enum Ended {
    Closed,
    Cut,
}

/// Receives until the connection closes, or (when `cut_armed`) the run
/// moves to the cut.
async fn receive(
    ws: &mut Ws,
    st: &mut SockState,
    cfg: &Config,
    shared: &Shared,
    phase: &mut watch::Receiver<Phase>,
    cut_armed: bool,
) -> Ended {
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = phase.changed(), if cut_armed => {
                if *phase.borrow_and_update() != Phase::Live {
                    return Ended::Cut;
                }
                continue;
            }
        };
        let ping = match msg {
            Some(Ok(Message::Text(t))) => match t.as_bytes().first() {
                Some(b'4') => {
                    on_text(t.as_bytes(), st, cfg, shared);
                    false
                }
                Some(b'2') => true,
                Some(b'1') => return Ended::Closed,
                _ => false,
            },
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Ended::Closed,
            Some(Ok(_)) => false,
        };
        if ping && ws.send(Message::text("3")).await.is_err() {
            return Ended::Closed;
        }
    }
}

fn count_error(map: &mut std::collections::BTreeMap<String, usize>, e: &str, what: &str) {
    // Group errors by their text without digits (ports, addresses vary).
    let key: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
    let n = map.entry(key).or_default();
    if *n == 0 {
        eprintln!("herald-loadgen: {what}: {e}");
    }
    *n += 1;
}

async fn socket_task(
    i: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) {
    let mut st = SockState::new(i, &cfg);
    let mut phase = shared.phase.clone();
    let hs = tokio::time::timeout(
        cfg.connect_timeout,
        handshake(i, &cfg, &shared, &mut st, false),
    )
    .await;
    drop(permit);
    let mut ws = match hs {
        Ok(Ok((ws, _))) => {
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
    let mut ended = receive(&mut ws, &mut st, &cfg, &shared, &mut phase, cfg.cut).await;
    if let Ended::Cut = ended {
        cut(ws);
        shared.cut.fetch_add(1, Ordering::AcqRel);
        shared.complete_notify.notify_one();
        if phase.wait_for(|p| *p == Phase::Reconnect).await.is_err() {
            return;
        }
        let Ok(permit) = cfg.connect_sem.clone().acquire_owned().await else {
            return;
        };
        let hs = tokio::time::timeout(
            cfg.connect_timeout,
            handshake(i, &cfg, &shared, &mut st, true),
        )
        .await;
        drop(permit);
        let hs = match hs {
            Ok(r) => r,
            Err(_) => Err("handshake timed out".into()),
        };
        match hs {
            Ok((w, recovered)) => {
                ws = w;
                shared.mark(&shared.last_reconnect_ns);
                shared.reconnected.fetch_add(1, Ordering::AcqRel);
                let counter = if recovered == Some(true) {
                    &shared.recovered
                } else {
                    &shared.not_recovered
                };
                counter.fetch_add(1, Ordering::Relaxed);
                st.resumed = true;
                if recovered == Some(true) {
                    check_caught_up(&mut st, &shared);
                } else {
                    // The server says events were lost; a gap may only
                    // show with the next event, which may never come.
                    settle(&mut st, &shared);
                }
            }
            Err(e) => {
                count_error(
                    &mut shared.reconnect_errors.lock().unwrap(),
                    &e,
                    "reconnect failed",
                );
                shared.reconnect_failed.fetch_add(1, Ordering::AcqRel);
                shared.complete_notify.notify_one();
                return;
            }
        }
        ended = receive(&mut ws, &mut st, &cfg, &shared, &mut phase, false).await;
    }
    let Ended::Closed = ended else { return };
    if !shared.stopping.load(Ordering::Relaxed) {
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
        // A socket that can no longer complete must not hold the run open.
        shared.complete_notify.notify_one();
    }
}

/// Reads each session's current `seq` into `into` (the baselines, so that
/// events lost before the first delivery count too; or a recovery run's
/// targets). Returns how many sessions got one.
async fn fetch_seqs(cfg: &Config, into: &[AtomicU64], api_key: Option<&str>) -> usize {
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
            into[idx].store(seq, Ordering::Relaxed);
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
        cut: args.drop_after.is_some(),
        resume: args.resume,
        token: args.token.clone(),
        connect_sem: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Live);
    let shared = Arc::new(Shared {
        complete: AtomicUsize::new(0),
        complete_notify: Notify::new(),
        disconnects: AtomicUsize::new(0),
        baselines: (0..args.sessions)
            .map(|_| AtomicU64::new(UNKNOWN))
            .collect(),
        stopping: AtomicBool::new(false),
        phase: phase_rx,
        targets: (0..args.sessions)
            .map(|_| AtomicU64::new(UNKNOWN))
            .collect(),
        cut: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        reconnect_failed: AtomicUsize::new(0),
        reconnect_errors: Mutex::new(Default::default()),
        recovered: AtomicUsize::new(0),
        not_recovered: AtomicUsize::new(0),
        replayed: AtomicU64::new(0),
        settled: AtomicUsize::new(0),
        caught_up: AtomicUsize::new(0),
        lossy: AtomicUsize::new(0),
        last_reconnect_ns: AtomicU64::new(0),
        last_caught_up_ns: AtomicU64::new(0),
        t0: t_start,
    });

    let deadline = args
        .timeout
        .filter(|&t| t > 0.0)
        .map(|t| t_start + Duration::from_secs_f64(t));
    let stop = common::stop_signal(!args.ignore_stdin, deadline);
    tokio::pin!(stop);

    // Connect phase.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let connect_start = Instant::now();
    let first = args.first_socket;
    {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        let sem = cfg.connect_sem.clone();
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
                    count_error(&mut errors, &e, "socket failed");
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
        fetch_seqs(&cfg, &shared.baselines, args.api_key.as_deref()).await
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

    let recovery = match (args.drop_after, stop_reason) {
        (Some(after), None) if connected > 0 => {
            let r = recover(after, &args, &cfg, &shared, &phase_tx, connected, &mut stop).await;
            if let Err(reason) = r {
                stop_reason = Some(reason);
            }
            true
        }
        _ => false,
    };

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
                // In a recovery run a socket with a gap can never complete
                // either (elsewhere the run waits for it, as it always has).
                let lossy = if cfg.cut {
                    shared.lossy.load(Ordering::Acquire)
                } else {
                    0
                };
                let live = connected
                    .saturating_sub(shared.disconnects.load(Ordering::Acquire))
                    .saturating_sub(shared.reconnect_failed.load(Ordering::Acquire))
                    .saturating_sub(lossy);
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
    let recovery = recovery.then(|| recovery_counts(&shared));
    common::emit(&json!({
        "phase": "done",
        "recovery": recovery,
        "server": server_sample(args.server_pid),
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

/// CPU seconds and RSS of `--server-pid`, for the phase lines.
fn server_sample(pid: Option<u32>) -> serde_json::Value {
    let Some(pid) = pid else {
        return serde_json::Value::Null;
    };
    match common::read_proc(&pid.to_string()) {
        Ok(s) => json!({
            "cpu_secs": s.cpu_ticks as f64 / common::clk_tck() as f64,
            "rss_bytes": s.rss_bytes,
        }),
        Err(_) => serde_json::Value::Null,
    }
}

fn recovery_counts(shared: &Shared) -> serde_json::Value {
    json!({
        "cut": shared.cut.load(Ordering::Acquire),
        "reconnected": shared.reconnected.load(Ordering::Acquire),
        "reconnect_failed": shared.reconnect_failed.load(Ordering::Acquire),
        "reconnect_errors": *shared.reconnect_errors.lock().unwrap(),
        "recovered": shared.recovered.load(Ordering::Acquire),
        "not_recovered": shared.not_recovered.load(Ordering::Acquire),
        "replayed": shared.replayed.load(Ordering::Acquire),
        "caught_up": shared.caught_up.load(Ordering::Acquire),
        "lossy": shared.lossy.load(Ordering::Acquire),
    })
}

/// Waits on the shared notify until `done()` holds, or the stop comes.
async fn until<F: Fn() -> bool>(
    shared: &Shared,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
    limit: Option<Instant>,
    done: F,
) -> Result<bool, &'static str> {
    let limit = async {
        match limit {
            Some(l) => tokio::time::sleep_until(l).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(limit);
    loop {
        if done() {
            return Ok(true);
        }
        tokio::select! {
            _ = shared.complete_notify.notified() => {}
            _ = &mut limit => return Ok(false),
            reason = stop.as_mut() => return Err(reason),
        }
    }
}

/// The recovery run, after `ready`: cut every socket at once, wait out the
/// outage, read each session's seq (the targets), let every socket
/// reconnect and resume, and wait until each one has every event up to its
/// target. Prints the `cut`, `reconnecting` and `recovered` lines. Errs with
/// the stop reason when stopped on the way.
async fn recover(
    drop_after: f64,
    args: &SubscribeArgs,
    cfg: &Config,
    shared: &Shared,
    phase: &watch::Sender<Phase>,
    connected: usize,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
) -> Result<(), &'static str> {
    let sleep = |secs: f64| tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0)));
    tokio::select! {
        _ = sleep(drop_after) => {}
        reason = stop.as_mut() => return Err(reason),
    }
    let deliveries_before = total_deliveries();
    let server_before = server_sample(args.server_pid);
    let _ = phase.send(Phase::Cut);
    let cut_at = Instant::now();
    // Every socket still open closes (bounded: a socket stuck in a send).
    let all_cut = until(shared, stop, Some(cut_at + Duration::from_secs(10)), || {
        shared.cut.load(Ordering::Acquire) + shared.disconnects.load(Ordering::Acquire) >= connected
    })
    .await?;
    common::emit(&json!({
        "phase": "cut",
        "sockets_cut": shared.cut.load(Ordering::Acquire),
        "all_cut": all_cut,
        "cut_secs": common::round3(cut_at.elapsed().as_secs_f64()),
        "deliveries": deliveries_before,
        "server_before": server_before,
        "server": server_sample(args.server_pid),
    }));
    tokio::select! {
        _ = tokio::time::sleep_until(cut_at + Duration::from_secs_f64(args.outage.max(0.0))) => {}
        reason = stop.as_mut() => return Err(reason),
    }
    let targeted = fetch_seqs(cfg, &shared.targets, args.api_key.as_deref()).await;
    let targets_total: u64 = shared
        .targets
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .filter(|&t| t != UNKNOWN)
        .sum();
    let server = server_sample(args.server_pid);
    let reconnect_at = Instant::now();
    let reconnect_at_ns = (reconnect_at - shared.t0).as_nanos() as u64;
    let _ = phase.send(Phase::Reconnect);
    common::emit(&json!({
        "phase": "reconnecting",
        "targeted_sessions": targeted,
        "targets_total": targets_total,
        "outage_secs": common::round3((reconnect_at - cut_at).as_secs_f64()),
        "server": server,
    }));
    let cut = shared.cut.load(Ordering::Acquire);
    let settled = || {
        shared.settled.load(Ordering::Acquire) + shared.reconnect_failed.load(Ordering::Acquire)
            >= cut
    };
    until(shared, stop, None, settled).await?;
    let since_reconnect = |at: &AtomicU64| {
        let at = at.load(Ordering::Acquire);
        common::round3(at.saturating_sub(reconnect_at_ns) as f64 / 1e9)
    };
    let mut line = json!({
        "phase": "recovered",
        "all_caught_up": shared.caught_up.load(Ordering::Acquire) == cut,
        "recover_secs": since_reconnect(&shared.last_caught_up_ns),
        "reconnect_secs": since_reconnect(&shared.last_reconnect_ns),
        "server": server_sample(args.server_pid),
    });
    if let (Some(l), serde_json::Value::Object(counts)) =
        (line.as_object_mut(), recovery_counts(shared))
    {
        l.extend(counts);
    }
    common::emit(&line);
    Ok(())
}
