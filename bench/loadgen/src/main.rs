//! herald-loadgen: a load generator for herald and for any server speaking
//! the same contract (Engine.IO v4 / Socket.IO v5 over WebSocket for
//! subscribers, the HTTP publish API for backends). It speaks the wire
//! protocol itself so that a client library is never the bottleneck.
//! See README.md beside this crate.

use clap::{Args, Parser, Subcommand};

mod common;
mod http;
mod proc;
mod publish;
mod scan;
mod subscribe;
mod ws;

#[derive(Parser)]
#[command(name = "herald-loadgen", version, about)]
struct Cli {
    /// Runtime worker threads (default: the CPUs this process may run on,
    /// so `taskset -c 1` gives one; 1 selects the single-threaded runtime)
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open sockets, subscribe them to sessions, count and time deliveries
    Subscribe(SubscribeArgs),
    /// Publish events over the HTTP API
    Publish(PublishArgs),
    /// Print memory, CPU and thread figures of a process
    Proc(ProcArgs),
    /// Plain `/ws` clients (ResearchFlow, seed 001), and run events to them.
    Ws(WsArgs),
}

#[derive(Args)]
pub struct SubscribeArgs {
    /// Server base URL(s); repeat or comma-separate; sockets go round-robin
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    url: Vec<String>,
    /// Number of sockets to open
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Socket i subscribes to session `<prefix>-<i mod sessions>`
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    #[arg(long, default_value = "bench")]
    session_prefix: String,
    /// Index of this process's first socket (when several processes share
    /// the sockets of one scenario, so that sessions and source addresses
    /// continue where the previous process stopped)
    #[arg(long, default_value_t = 0)]
    first_socket: usize,
    /// Handshakes in progress at once
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds allowed for one socket's connect + handshake + subscribe
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Local addresses to bind client sockets to, round-robin:
    /// `127.0.0.2-127.0.0.9` and/or a comma list
    #[arg(long)]
    source_addrs: Option<String>,
    /// Stop once every socket received this many events
    #[arg(long)]
    expect_per_socket: Option<u64>,
    /// Stop this many seconds after the `ready` line
    #[arg(long)]
    duration: Option<f64>,
    /// Stop this many seconds after start, whatever the phase
    #[arg(long)]
    timeout: Option<f64>,
    /// Keep the sockets idle until signalled (or --duration/--timeout);
    /// ignores --expect-per-socket
    #[arg(long)]
    hold: bool,
    /// Do not stop when stdin (a pipe) reaches its end
    #[arg(long)]
    ignore_stdin: bool,
    /// Per-socket WebSocket read buffer, bytes
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Do not read each session's current seq before the receive window
    /// (gaps before the first delivery then go uncounted)
    #[arg(long)]
    no_baseline: bool,
    /// Bearer key for the baseline `GET /api/v1/sessions/{id}`
    #[arg(long, env = "API_KEY")]
    api_key: Option<String>,
    /// Recovery run: this many seconds after `ready`, cut every socket at
    /// once (TCP reset), keep them cut off for --outage seconds, then
    /// reconnect and resume each one (see --resume)
    #[arg(long)]
    drop_after: Option<f64>,
    /// Seconds the sockets stay cut off in a recovery run
    #[arg(long, default_value_t = 1.0)]
    outage: f64,
    /// How a socket resumes after the cut: `herald` subscribes with
    /// `{sessionId, since, epoch}`; `socketio` uses Socket.IO's connection
    /// state recovery (`pid` and `offset` in the CONNECT auth)
    #[arg(long, value_enum, default_value_t = subscribe::Resume::Herald)]
    resume: subscribe::Resume,
    /// A server process whose CPU and RSS the recovery phase lines report
    #[arg(long)]
    server_pid: Option<u32>,
    /// A token (JWT) every socket presents in its CONNECT packet's auth
    #[arg(long)]
    token: Option<String>,
}

#[derive(Args)]
pub struct PublishArgs {
    /// Server base URL(s); repeat or comma-separate; workers go round-robin
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    url: Vec<String>,
    /// Events go round-robin to sessions `<prefix>-0 .. <prefix>-(S-1)`
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    #[arg(long, default_value = "bench")]
    session_prefix: String,
    /// Events to publish in all
    #[arg(long)]
    count: Option<u64>,
    /// Stop publishing after this many seconds
    #[arg(long)]
    duration: Option<f64>,
    /// Events per second over all sessions (0 = as fast as possible)
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requests in flight at most (never more than one per session, so the
    /// effective number is min(concurrency, sessions))
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bearer key (`Authorization: Bearer <key>`)
    #[arg(long, env = "API_KEY")]
    api_key: Option<String>,
    /// Seconds allowed for one request
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Stop this many seconds after start, whatever the progress
    #[arg(long)]
    timeout: Option<f64>,
    /// Do not stop when stdin (a pipe) reaches its end
    #[arg(long)]
    ignore_stdin: bool,
}

/// `ws`: the options of `bench/node-reference/ws-load.mjs`, which it replaces
/// for `ws-fanout`.
#[derive(Args)]
pub struct WsArgs {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    url: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Client i authenticates to run `<run-prefix>-<i mod runs>`.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[arg(long, default_value = "bench-run")]
    run_prefix: String,
    /// Then publishes this many `stage.progress` events to run 0, one after
    /// another, and waits until every client has all of them.
    #[arg(long, default_value_t = 0)]
    publish: u64,
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Seconds to connect every client.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Seconds to wait for what is still on its way after the last publish.
    #[arg(long, default_value_t = 20.0)]
    grace: f64,
}

#[derive(Args)]
pub struct ProcArgs {
    /// Process to sample (default: this one)
    #[arg(long)]
    pid: Option<u32>,
    /// Sum over the process and all its descendants
    #[arg(long)]
    children: bool,
}

fn main() {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(common::usable_cpus).max(1);
    let result = match cli.mode {
        Mode::Proc(args) => proc::run(args),
        Mode::Subscribe(args) => runtime(threads).block_on(subscribe::run(args, threads)),
        Mode::Publish(args) => runtime(threads).block_on(publish::run(args, threads)),
        Mode::Ws(args) => runtime(threads).block_on(ws::run(args)),
    };
    if let Err(e) = result {
        eprintln!("herald-loadgen: {e}");
        std::process::exit(2);
    }
    // Sockets and tasks are left to the OS: tearing down tens of thousands
    // of connections one by one only delays the exit.
    std::process::exit(0);
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("tokio runtime")
}
