//! `herald` (and `herald serve`): start logging, serve until SIGINT or
//! SIGTERM.

use herald::{Config, Herald, config::LogFormat};
use tokio::net::{TcpListener, TcpSocket};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// How many tasks a worker runs between two looks at the sockets for
/// readiness (tokio's default: 61). A worker that always has WebSocket
/// writes to run otherwise leaves a publish that arrived meanwhile unread
/// for up to 61 of them, and a backend that publishes a session's events
/// one after another falls behind by the whole queue (issue 15; at half of
/// herald's peak, p99 from the due time 72 against 125 ms, paired runs,
/// docs/performance.md). Looking more often costs an `epoll_wait` without
/// waiting, under 1 µs.
const EVENT_INTERVAL: u32 = 4;

/// Serves with `config`; `dotenv` is how reading `.env` went, to log once
/// logging is set up.
pub(crate) fn run(
    config: Config,
    dotenv: Result<std::path::PathBuf, dotenvy::Error>,
) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(config, dotenv)),
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Config,
    dotenv: Result<std::path::PathBuf, dotenvy::Error>,
) -> std::process::ExitCode {
    init_logging(&config);
    match dotenv {
        Ok(path) => info!("read settings from {}", path.display()),
        Err(e) if e.not_found() => {}
        Err(e) => warn!("ignoring .env: {e}"),
    }

    let (host, port) = config.listen_on();
    let listener = match listen(host, port).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(host, port, "cannot listen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            error!("cannot read the address listened on: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (herald, background) = match Herald::new(&config) {
        Ok(built) => built,
        Err(e) => {
            error!("cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let adapter = match config.redis() {
        Some(urls) => format!(
            "{} at {} (prefix {:?})",
            if config.redis_cluster {
                "redis cluster"
            } else {
                "redis"
            },
            urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
            config.redis_prefix
        ),
        None => "in-memory (single instance)".to_string(),
    };
    // Its own target, so that a quiet log (`warn,herald::start=info`) still
    // says where herald listens: test harnesses start it on port 0 and read
    // the port from this line.
    info!(
        target: "herald::start",
        "herald {} listening on http://{addr} (Socket.IO at ws://{addr}/socket.io/, API at /api/v1), adapter: {adapter}, API key: {}",
        env!("CARGO_PKG_VERSION"),
        if config.api_key_required() {
            "required"
        } else {
            "off"
        },
    );
    let background = background.spawn();
    let served = herald
        .serve(listener, shutdown_signal(config.reloads_on_sighup()))
        .await;
    background.abort();
    match served {
        Ok(()) => {
            info!("herald stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            error!("server error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Connections the kernel may queue for herald to accept (capped by its
/// `somaxconn`). tokio's `TcpListener::bind` asks for 128, and when every
/// client of an instance reconnects at once (a restart, a network blip) the
/// overflow waits a second for a SYN retransmit: measured in bench/'s
/// recovery scenario.
const ACCEPT_BACKLOG: u32 = 4096;

/// Listens on the first address `host` resolves to that accepts it.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut failed = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restarted herald can take its port
        // back while connections of the old one linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(ACCEPT_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host resolves to no address",
        )
    }))
}

/// A URL without its credentials, for the logs.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_string(),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!("invalid LOG_LEVEL {:?} ({e}); using info", config.log_level);
        EnvFilter::new("info")
    });
    // Logs go to stderr, in color only when a person is watching.
    let stderr = std::io::stderr;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Ends on Ctrl-C or SIGTERM. SIGHUP is caught too: operators send it to
/// reload (`systemctl reload`, logrotate), and its default action would stop
/// the server. With a key file (`API_KEY_FILE`, `JWT_SECRET_FILE`,
/// `JWT_PUBLIC_KEY_FILE`) `reload` re-reads it; without, this only says so.
async fn shutdown_signal(reloads_keys: bool) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = term.recv() => break,
                _ = hangup.recv() => if !reloads_keys {
                    info!("SIGHUP: nothing to reload (no API_KEY_FILE, JWT_SECRET_FILE or JWT_PUBLIC_KEY_FILE); still serving");
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloads_keys;
        let _ = ctrl_c.await;
    }
}
