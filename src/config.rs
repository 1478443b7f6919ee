//! Settings, from command-line flags or the environment (flags win), with
//! defaults that let a bare `herald` start on port 3000 with nothing else.
//! The binary also reads a `.env` file when there is one. `.env.example`
//! lists the same variables; a test keeps the two in step.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald",
    version,
    about = "Socket.IO-compatible realtime event server"
)]
pub struct Config {
    /// Address or host name to listen on (`localhost`, `::1`). Use 0.0.0.0
    /// to accept connections from other hosts.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// When set, every /api/v1/ request (and /metrics) must carry
    /// `Authorization: Bearer <key>` with one of these comma-separated keys.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file of publish keys, one a line (blank lines and `#` comments
    /// ignored), re-read on SIGHUP; used together with API_KEY.
    #[arg(long, env = "API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Origins allowed by CORS, comma-separated, or `*` for any.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Shared secret of HS256 tokens. When set (or JWT_PUBLIC_KEY_FILE is),
    /// every Socket.IO connection must present a token, and its `sessions`
    /// claim says which sessions it may watch.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File of HS256 secrets, one a line (`#` starts a comment), instead of
    /// JWT_SECRET: a token signed with any of them is accepted, and the file
    /// is re-read on SIGHUP, so that secrets rotate without a restart.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// PEM file of the public keys tokens are signed with: RSA (RS256), EC
    /// P-256 (ES256) or Ed25519 (EdDSA), told apart by the key. Several
    /// keys may follow one another (any of them verifies a token), and the
    /// file is re-read on SIGHUP, so that keys rotate without a restart.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// When set, a token's `aud` must be this.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, a token's `iss` must be this.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Engine.IO ping interval, in milliseconds.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// How long to wait for a pong before closing the connection, in milliseconds.
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,

    /// Largest HTTP request body and Engine.IO payload, in bytes (Node's
    /// `maxHttpBufferSize` default).
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 1_048_576)]
    pub max_payload_bytes: usize,

    /// Deepest nesting of arrays and objects a published event's `data` may
    /// have; deeper is refused with 422.
    #[arg(long, env = "MAX_JSON_DEPTH", default_value_t = 64)]
    pub max_json_depth: usize,

    /// Events each API key (each client address, without keys) may publish
    /// per second; past that, 429 with Retry-After. 0: no limit.
    #[arg(long, env = "PUBLISH_RATE_PER_KEY", default_value_t = 1000)]
    pub publish_rate_per_key: u32,

    /// Events a key may publish at once after a quiet spell (the largest
    /// batch that can pass); 0: the same as PUBLISH_RATE_PER_KEY.
    #[arg(long, env = "PUBLISH_BURST_PER_KEY", default_value_t = 2000)]
    pub publish_burst_per_key: u32,

    /// How long a publish's idempotency key is remembered, in seconds: a
    /// retry with the same key within it publishes nothing again.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,

    /// Packets that may wait for one socket before further events to it are
    /// dropped (and counted in `herald_dropped_deliveries_total`).
    #[arg(long, env = "SOCKET_BUFFER_PACKETS", default_value_t = 4096)]
    pub socket_buffer_packets: usize,

    /// Bytes of events that may wait for one socket; past it the socket is
    /// treated as a slow consumer, as when SOCKET_BUFFER_PACKETS is reached.
    #[arg(long, env = "SOCKET_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub socket_buffer_bytes: usize,

    /// Sessions one socket may be subscribed to at once; past it a subscribe
    /// is refused with `TOO_MANY_SUBSCRIPTIONS`. 0: no limit.
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_SOCKET", default_value_t = 1000)]
    pub max_subscriptions_per_socket: usize,

    /// Requests (subscribe, unsubscribe) one socket may send per second, with
    /// bursts up to MAX_SUBSCRIPTIONS_PER_SOCKET; past it they are refused
    /// with `RATE_LIMITED`, and a socket that keeps on for 5 s is
    /// disconnected. 0: no limit.
    #[arg(long, env = "CLIENT_REQUESTS_PER_SEC", default_value_t = 50)]
    pub client_requests_per_sec: u32,

    /// Socket.IO connections one client address may hold; past it the
    /// handshake is answered 429. 0: no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: u32,

    /// Reverse proxies (addresses or CIDRs, comma-separated) whose
    /// `X-Forwarded-For` names the client; from anyone else it is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Socket.IO connections this process accepts in all; past it the
    /// handshake is answered 503. 0: the open-file limit less a 32nd of it
    /// (64 to 1024), kept for the operations and publish endpoints.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Seconds a client may take to send a request's headers (and a new
    /// connection its first request) before the connection is closed; also
    /// how long a new Engine.IO session may take to join the namespace.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Seconds a client may take to send a request's body.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub body_read_timeout_secs: u64,

    /// The longest a WebSocket may hold events while herald is saturated, to
    /// write them together, in milliseconds; 0 writes each at once even then.
    /// Below saturation nothing waits.
    #[arg(long, env = "WRITE_LINGER_MS", default_value_t = 100)]
    pub write_linger_ms: u64,

    /// How long a session's seq and last state are kept after its last publish
    /// when no one is subscribed, in seconds.
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 86_400)]
    pub session_ttl_secs: u64,

    /// Events kept per session for late subscribers and resuming clients
    /// (in Redis when Redis is configured); 0 keeps none.
    #[arg(long, env = "HISTORY_MAX_EVENTS", default_value_t = 1000)]
    pub history_max_events: usize,

    /// Bytes of history this process may hold without Redis, all sessions
    /// together; past that the sessions published to least recently lose
    /// their history first (resuming clients are told it was truncated).
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Sessions whose seq and state this process keeps without Redis; past
    /// it the least recently published unwatched sessions are forgotten
    /// first (as if their TTL had passed). 0: no limit.
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// Redis URL (`redis://host:6379`). Set it to run several instances as one
    /// cluster; unset, herald runs alone with an in-memory adapter. With
    /// `--redis-cluster`, the comma-separated seed nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Events from Redis that may wait for this instance's delivery; past
    /// that it has fallen behind, drops them (counted) and answers /ready
    /// with 503 until it catches up.
    #[arg(long, env = "CLUSTER_QUEUE_EVENTS", default_value_t = 65_536)]
    pub cluster_queue_events: usize,

    /// Treat REDIS_URL as the seed nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Prefix of herald's Redis keys and channels, so several clusters can
    /// share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// How often a plain WebSocket client (`/ws`, `/ws/workflows`) is sent a
    /// WebSocket ping, in milliseconds.
    #[arg(long, env = "WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// A plain WebSocket client that sent nothing (not even a pong) for this
    /// long, in milliseconds, is closed.
    #[arg(long, env = "WS_CLIENT_TIMEOUT_MS", default_value_t = 60_000)]
    pub ws_client_timeout_ms: u64,

    /// The token (or comma-separated tokens) that opens `/dashboard`, which
    /// shows event contents. Unset: the dashboard is open without a token
    /// when HOST is a loopback address (only this machine can reach it),
    /// and off otherwise.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log filter: a level (`info`) or a tracing directive (`herald=debug,info`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The Redis URLs (one, or a cluster's seed nodes), if any; an empty
    /// `REDIS_URL=` means none.
    pub fn redis(&self) -> Option<Vec<&str>> {
        let urls: Vec<&str> = self
            .redis_url
            .as_deref()?
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        (!urls.is_empty()).then_some(urls)
    }

    /// Whether publish keys are configured (inline or by file).
    pub fn api_key_required(&self) -> bool {
        self.api_key
            .as_deref()
            .is_some_and(|keys| keys.split(',').any(|k| !k.trim().is_empty()))
            || self.api_key_file().is_some()
    }

    /// The key file, if any (clap reads an empty `API_KEY_FILE=` as unset).
    pub fn api_key_file(&self) -> Option<&std::path::Path> {
        self.api_key_file.as_deref()
    }

    /// Whether SIGHUP has a file to re-read: `API_KEY_FILE`,
    /// `JWT_SECRET_FILE` or `JWT_PUBLIC_KEY_FILE`.
    pub fn reloads_on_sighup(&self) -> bool {
        [
            &self.api_key_file,
            &self.jwt_secret_file,
            &self.jwt_public_key_file,
        ]
        .into_iter()
        .any(|file| file.as_ref().is_some_and(|f| !f.as_os_str().is_empty()))
    }

    /// Where to listen, for `TcpListener::bind` (which resolves host names).
    pub fn listen_on(&self) -> (&str, u16) {
        (self.host.as_str(), self.port)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub fn write_linger(&self) -> Duration {
        Duration::from_millis(self.write_linger_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_ttl_secs)
    }
}

/// The keys of a key file (`API_KEY_FILE`, `JWT_SECRET_FILE`): one a line,
/// trimmed; blank lines and lines starting with `#` are skipped.
pub fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `.env.example` lists every variable with its default, and nothing else.
    #[test]
    fn env_example_matches_the_flags() {
        let example: Vec<(String, String)> = include_str!("../.env.example")
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let command = Config::command();
        let args: Vec<(String, String)> = command
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_str()?.to_string();
                let default = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                Some((env, default))
            })
            .collect();
        assert_eq!(example, args);
    }

    #[test]
    fn empty_api_keys_mean_none() {
        let c = Config::parse_from(["herald", "--api-key", " , "]);
        assert!(!c.api_key_required());
        let c = Config::parse_from(["herald", "--api-key", " , k"]);
        assert!(c.api_key_required());
    }

    #[test]
    fn flags_parse() {
        let c = Config::parse_from([
            "herald",
            "--port",
            "4000",
            "--cors-origins",
            "http://a.test,http://b.test",
            "--api-key",
            "k",
            "--host",
            "localhost",
        ]);
        assert_eq!(c.listen_on(), ("localhost", 4000));
        assert_eq!(c.cors_origins, ["http://a.test", "http://b.test"]);
        assert_eq!(c.api_key.as_deref(), Some("k"));
    }
}
