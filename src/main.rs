//! The `herald` binary: read the settings, start logging, serve until SIGINT
//! or SIGTERM.

use clap::Parser;
use herald::{Config, Herald, config::LogFormat};
use tokio::net::TcpListener;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator: herald allocates and frees small
/// blocks per connection and per delivery, where glibc's malloc showed as
/// 17% of the CPU of accepting connections.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_logging(&config);

    let addr = config.listen_addr();
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(%addr, "cannot listen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let herald = match Herald::new(&config) {
        Ok(herald) => herald,
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
    // The address actually bound (with `--port 0`, the port the OS chose):
    // test harnesses read it from this line, target `herald::start`.
    let addr = listener.local_addr().unwrap_or(addr);
    info!(
        target: "herald::start",
        "herald {} listening on http://{addr} (Socket.IO at ws://{addr}/socket.io/, API at /api/v1), adapter: {adapter}, API key: {}",
        env!("CARGO_PKG_VERSION"),
        if config.required_api_key().is_some() {
            "required"
        } else {
            "off"
        },
    );
    match herald.serve(listener, shutdown_signal()).await {
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
