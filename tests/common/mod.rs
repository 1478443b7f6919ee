//! Shared by the Rust integration tests: a real herald process on 127.0.0.1,
//! and a raw Engine.IO v4 / Socket.IO v5 WebSocket client that sees every
//! frame, as a `wscat` user does.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

/// The settings herald reads from the environment: every variable
/// `.env.example` lists (commented out or not), so the list cannot drift
/// from what herald documents. They are removed from the environment of
/// every herald a test starts: the tests pass flags, and a variable in the
/// caller's shell must not change what they test.
pub fn herald_env_vars() -> Vec<&'static str> {
    let vars: Vec<&str> = include_str!("../../.env.example")
        .lines()
        .filter_map(|line| {
            let name = line.trim_start_matches(['#', ' ']).split_once('=')?.0;
            (!name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            .then_some(name)
        })
        .collect();
    assert!(
        vars.contains(&"PORT"),
        ".env.example lists no PORT: {vars:?}"
    );
    vars
}

/// Where herald processes run: a directory without a `.env`, so that a
/// developer's `.env` in the checkout does not reach the tests either.
fn herald_cwd() -> PathBuf {
    std::env::temp_dir()
}

pub struct Herald {
    child: Child,
    pub port: u16,
    log: Option<PathBuf>,
}

impl Herald {
    /// Starts the herald binary with extra flags on a port the OS picks
    /// (`--port 0`), reads the port from its start line, and waits until
    /// `/health` answers. Its log (warnings and errors) goes to this
    /// process's stderr.
    pub async fn start(args: &[&str]) -> Self {
        Self::spawn(args, None, 0).await
    }

    /// Kills it and starts it again with `args` on the same port, as a
    /// restarted deployment comes back where its clients look for it.
    pub async fn restart(&mut self, args: &[&str]) {
        self.kill();
        *self = Self::spawn(args, None, self.port).await;
    }

    /// Like [`Herald::start`], with its log (at info level) kept for [`Herald::log`].
    pub async fn start_logged(args: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("herald-test-{}-{n}.log", std::process::id()));
        Self::spawn(args, Some(path), 0).await
    }

    async fn spawn(args: &[&str], log: Option<PathBuf>, port: u16) -> Self {
        let (stderr, level) = match &log {
            Some(path) => (
                Stdio::from(std::fs::File::create(path).expect("log file")),
                "info",
            ),
            None => (Stdio::piped(), "warn,herald::start=info"),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-level", level])
            .args(args)
            .current_dir(herald_cwd())
            .stdout(Stdio::null())
            .stderr(stderr);
        for var in herald_env_vars() {
            command.env_remove(var);
        }
        let mut child = command.spawn().expect("spawn herald");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = match &log {
            Some(path) => loop {
                // herald writes its log straight to the file: poll it.
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if let Some(port) = text.lines().find_map(start_line_port) {
                    break port;
                }
                if let Some(status) = child.try_wait().expect("wait herald") {
                    panic!("herald exited ({status}) before listening:\n{text}");
                }
                assert!(
                    Instant::now() < deadline,
                    "herald logged no start line in 10 s:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
            None => {
                let stderr = child.stderr.take().expect("piped stderr");
                let port = read_port_then_forward(stderr);
                match tokio::time::timeout(Duration::from_secs(10), port).await {
                    Ok(Ok(port)) => port,
                    Ok(Err(_)) => {
                        let status = child.wait().expect("wait herald");
                        panic!("herald exited ({status}) before listening (its log is above)");
                    }
                    Err(_) => {
                        let _ = child.kill();
                        panic!("herald logged no start line in 10 s");
                    }
                }
            }
        };
        let herald = Self { child, port, log };
        loop {
            if let Ok(res) = reqwest::get(herald.url("/health")).await
                && res.status() == 200
            {
                return herald;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not answer /health on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            self.port
        )
    }

    /// What herald logged so far (only for [`Herald::start_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Kills the process at once, as SIGKILL does.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `/ready` until it answers `status`, or panics after `wait`.
    pub async fn wait_ready(&self, status: u16, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let (got, body) = self.get("/ready").await;
            if got == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/ready stayed {got} {body}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let res = reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics");
        res.text().await.expect("/metrics body")
    }

    /// The value of a line of `/metrics` (`name{labels} value`), 0 when absent.
    pub async fn metric(&self, line_start: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until a line of `/metrics` reads `value`; panics after `wait`.
    pub async fn wait_metric(&self, line_start: &str, value: f64, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let now = self.metric(line_start).await;
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{line_start} is {now}, not {value}, after {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The resident memory of the process, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// Sends the process a signal (`HUP`, `STOP`...) with kill(1).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait herald").is_none()
    }

    /// POSTs a JSON body, returning status and parsed body.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = reqwest::get(self.url(path)).await.expect("GET");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn publish(&self, session: &str, event: &str, data: Value) -> (u16, Value) {
        let body = serde_json::json!({ "event": event, "data": data });
        self.post(
            &format!("/api/v1/sessions/{session}/events"),
            &body.to_string(),
        )
        .await
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill();
        if let Some(path) = &self.log {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The port in herald's start line (`... listening on http://127.0.0.1:PORT ...`,
/// target `herald::start`), or `None` for any other line.
pub fn start_line_port(line: &str) -> Option<u16> {
    let addr = line.split("listening on http://").nth(1)?;
    let addr = addr
        .split(|c: char| c.is_whitespace() || c == '/' || c == '"')
        .next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Reads herald's stderr on a thread of its own: resolves with the port of
/// its start line, and copies every line (before and after it) to this
/// process's stderr until herald exits, so the pipe never fills. The
/// receiver errs if herald's stderr ends before the start line.
fn read_port_then_forward(
    stderr: std::process::ChildStderr,
) -> tokio::sync::oneshot::Receiver<u16> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            // The start line is for the harness; warnings are for the reader.
            match start_line_port(&String::from_utf8_lossy(&line)) {
                Some(port) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
                None => {
                    let _ = std::io::stderr().write_all(&line);
                }
            }
            line.clear();
        }
    });
    rx
}

/// A real `redis-server` on a free port, without persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (scripts/install-test-deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends it a signal with kill(1): `STOP` freezes it with every
    /// connection open (a stall, not an outage), `CONT` resumes it.
    pub fn signal(&self, name: &str) {
        signal(self.child.as_ref().expect("redis running").id(), name);
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// A real three-node Redis Cluster (no replicas) on free ports.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let mut nodes = Vec::new();
        for port in &ports {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .current_dir(&node_dir)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .args([
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            nodes.push(child);
        }
        let cluster = Self { nodes, ports, dir };
        for port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis cluster node did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        // Wait until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &cluster.ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "redis cluster never became ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    /// Moves the slot of `key` to another node, its keys with it, the way
    /// `redis-cli --cluster reshard` does; returns the new owner's port.
    pub fn move_slot_of(&self, key: &str) -> u16 {
        let cli = |port: u16, args: &[&str]| -> String {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let slot = cli(self.ports[0], &["cluster", "keyslot", key]);
        let slot_no: u16 = slot.parse().expect("a slot number");
        let id_of = |port: u16| cli(port, &["cluster", "myid"]);
        let owner = *self
            .ports
            .iter()
            .find(|&&port| owns(&cli(port, &["cluster", "nodes"]), &id_of(port), slot_no))
            .expect("an owner");
        let target = *self.ports.iter().find(|&&p| p != owner).unwrap();
        let (from, to) = (id_of(owner), id_of(target));
        cli(target, &["cluster", "setslot", &slot, "importing", &from]);
        cli(owner, &["cluster", "setslot", &slot, "migrating", &to]);
        let keys = cli(owner, &["cluster", "getkeysinslot", &slot, "1000"]);
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let port = target.to_string();
            let migrated = cli(owner, &["migrate", "127.0.0.1", &port, key, "0", "5000"]);
            assert_eq!(migrated, "OK", "MIGRATE {key}");
        }
        for port in &self.ports {
            cli(*port, &["cluster", "setslot", &slot, "node", &to]);
        }
        target
    }

    /// `n` heralds on this cluster, each ready.
    pub async fn instances(&self, n: usize) -> Vec<Herald> {
        let urls = self.urls();
        let mut all = Vec::new();
        for _ in 0..n {
            let herald = Herald::start(&["--redis-url", &urls, "--redis-cluster"]).await;
            herald.wait_ready(200, Duration::from_secs(10)).await;
            all.push(herald);
        }
        all
    }

    /// The seed nodes, as herald's `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether the `CLUSTER NODES` line of `id` lists `slot` among its ranges.
fn owns(nodes: &str, id: &str, slot: u16) -> bool {
    let Some(line) = nodes.lines().find(|l| l.starts_with(id)) else {
        return false;
    };
    line.split_whitespace().skip(8).any(|range| {
        let mut ends = range.split('-').map(|n| n.parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
            (Some(Ok(a)), None) => a == slot,
            _ => false,
        }
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago (bind port 0, read it, close). Only for
/// processes that cannot report the port they bound: redis-server (its
/// `--port 0` means "no TCP at all") and the `embedded` example (it logs
/// the configured address, not the bound one). herald itself is started on
/// `--port 0` and its port read back, which cannot race.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// tests/fixtures/events.json, the sample events and bad inputs every test
/// suite (Rust, Node, Python, browser) shares; its `about` says what is where.
pub fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/events.json"))
            .expect("tests/fixtures/events.json is JSON")
    })
}

/// A valid payload for each session event (a copy of the fixture's).
pub fn sample(event: &str) -> Value {
    fixtures()["events"]
        .get(event)
        .unwrap_or_else(|| panic!("no sample for {event}"))
        .clone()
}

/// The fixture's cases under `pointer` (e.g. `/refusals/publish`).
pub fn cases(pointer: &str) -> &'static [Value] {
    fixtures()
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no {pointer} in tests/fixtures/events.json"))
}

/// A request body built from a fixture case: its `body` as is, or
/// `{event, data: sample(event)}` (plus `sessionId` when given, for a batch
/// item) with the case's `set` (dotted path -> value) and `unset` applied.
pub fn build(case: &Value, session: Option<&str>) -> Value {
    if let Some(body) = case.get("body") {
        return body.clone();
    }
    let event = case["event"].as_str().expect("case has an event");
    let mut body = serde_json::Map::new();
    if let Some(session) = session {
        body.insert("sessionId".into(), Value::from(session));
    }
    body.insert("event".into(), Value::from(event));
    body.insert("data".into(), sample(event));
    let mut body = Value::Object(body);
    if let Some(set) = case.get("set").and_then(Value::as_object) {
        for (path, value) in set {
            let (parent, key) = walk(&mut body, path);
            parent.insert(key.to_string(), value.clone());
        }
    }
    for path in case
        .get("unset")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (parent, key) = walk(&mut body, path.as_str().expect("unset path"));
        parent.remove(key);
    }
    body
}

/// The object holding the last key of a dotted `path`, and that key.
fn walk<'a, 'p>(
    body: &'a mut Value,
    path: &'p str,
) -> (&'a mut serde_json::Map<String, Value>, &'p str) {
    let (parents, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut at = body;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        at = at
            .get_mut(part)
            .unwrap_or_else(|| panic!("no {part} in {path}"));
    }
    (at.as_object_mut().expect("an object"), key)
}

/// A raw Engine.IO WebSocket connection: text frames in, text frames out.
pub struct RawSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawSocket {
    pub async fn open(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("websocket handshake");
        Self { ws }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send frame");
    }

    /// The next text frame, or `None` when the server closed the connection.
    /// Panics after `wait` with no frame.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<String> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("no frame from herald in time");
            match next {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> String {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("connection closed by herald")
    }

    /// The next frame that is not an Engine.IO ping (pings are answered).
    pub async fn recv_skipping_pings(&mut self) -> String {
        loop {
            let frame = self.recv().await;
            if frame == "2" {
                self.send("3").await;
            } else {
                return frame;
            }
        }
    }

    /// Waits until the server closes the connection, answering pings, and
    /// panics on anything else arriving first.
    pub async fn expect_closed(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                None => return,
                Some(frame) if frame == "2" => self.send("3").await,
                Some(frame) => panic!("expected the connection to close, got {frame}"),
            }
        }
    }

    /// Opens the Engine.IO session and joins the default namespace; returns
    /// the Socket.IO socket id and the `connected` payload.
    pub async fn connect(url: &str) -> (Self, String, Value) {
        let mut s = Self::open(url).await;
        let open = s.recv().await;
        assert!(
            open.starts_with("0{"),
            "expected the Engine.IO open packet, got {open}"
        );
        s.send("40").await;
        let ack = s.recv_skipping_pings().await;
        let sid = ack
            .strip_prefix("40")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|v| v["sid"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("expected 40{{sid}}, got {ack}"));
        let (name, connected) = event(&s.recv_skipping_pings().await);
        assert_eq!(name, "connected");
        (s, sid, connected)
    }

    /// Sends a Socket.IO event and returns the next event frame (name, data).
    pub async fn emit(&mut self, name: &str, data: Value) {
        let frame = format!("42{}", serde_json::json!([name, data]));
        self.send(&frame).await;
    }

    pub async fn next_event(&mut self) -> (String, Value) {
        event(&self.recv_skipping_pings().await)
    }

    /// A socket on `herald`, subscribed to `session`.
    pub async fn subscribed(herald: &Herald, session: &str) -> Self {
        let (mut s, _, _) = Self::connect(&herald.ws_url()).await;
        s.emit("subscribe", serde_json::json!(session)).await;
        let (name, data) = s.next_event().await;
        assert_eq!(
            (name.as_str(), data["sessionId"].as_str()),
            ("subscribed", Some(session))
        );
        s
    }

    /// Asserts no event frame arrives for `wait` (pings are answered).
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.recv_skipping_pings()).await {
            panic!("expected nothing, received {frame}");
        }
    }

    /// The seqs of the next `n` events, which must all be `name`.
    pub async fn seqs(&mut self, name: &str, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let (got, payload) = self.next_event().await;
            assert_eq!(got, name, "{payload}");
            seqs.push(payload["seq"].as_u64().expect("seq"));
        }
        seqs
    }
}

/// Splits a `42["name",data]` frame.
pub fn event(frame: &str) -> (String, Value) {
    let body = frame
        .strip_prefix("42")
        .unwrap_or_else(|| panic!("expected an event frame, got {frame}"));
    let v: Value = serde_json::from_str(body).expect("event JSON");
    (v[0].as_str().expect("event name").to_string(), v[1].clone())
}

/// Two heralds sharing `redis`, both ready to publish cluster-wide.
pub async fn ready_pair(redis: &Redis) -> (Herald, Herald) {
    let url = redis.url();
    let a = Herald::start(&["--redis-url", &url]).await;
    let b = Herald::start(&["--redis-url", &url]).await;
    for herald in [&a, &b] {
        herald.wait_ready(200, Duration::from_secs(10)).await;
    }
    (a, b)
}
