//! herald's Prometheus metrics: the counters every part updates (each an
//! atomic, cheap from any task) and their text rendering for `/metrics`.
//! A module of its own, below everything that counts, so counting never
//! depends on the endpoints that report.

pub(crate) mod recent;

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabel {
    pub family: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabel {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: u16,
}

/// Herald's counters and gauges. Cheap to update from any task: each is an
/// atomic, and the levels (subscriptions, sessions) are kept up to date by
/// whoever changes them, so a scrape only reads.
pub(crate) struct Metrics {
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub sessions_watched: Gauge,
    /// Sessions whose seq and state this process keeps (in memory only: with
    /// Redis they live in Redis, and this is not registered).
    pub sessions_known: Gauge,
    /// Accounted bytes of the history this process holds (memory only).
    pub history_bytes: Gauge,
    /// Sessions whose history was dropped to keep within HISTORY_MAX_BYTES.
    pub history_truncated: Counter,
    /// Subscriptions with `since`, by how they went.
    pub resumes: Family<ResultLabel, Counter>,
    /// Held events sent to resuming subscribers.
    pub replayed: Counter,
    pub events_published: Family<EventLabel, Counter>,
    pub published_total: Counter,
    pub events_delivered: Counter,
    pub dropped_deliveries: Counter,
    /// Cluster events this instance could not keep up with (Redis only).
    pub cluster_events_dropped: Counter,
    /// Events this instance read from Redis, and the streams whose channel
    /// it is subscribed to (Redis only: see `cluster::redis::interest`).
    pub cluster_events_received: Counter,
    pub cluster_streams: Gauge,
    /// 1 while publishes go to each stream's own channel, 0 while they go
    /// to the channel every instance reads (Redis only).
    pub cluster_per_stream: Gauge,
    pub publish_rejections: Family<StatusLabel, Counter>,
    pub client_errors: Counter,
    /// Tokens refused (connect, subscribe, history reads) and sockets ended
    /// because their token expired, by reason.
    pub auth_refusals: Family<ReasonLabel, Counter>,
    /// Clients refused by a limit, by limit (see `limits`).
    pub limit_refusals: Family<LimitLabel, Counter>,
    /// Sessions forgotten to keep within MAX_SESSIONS (memory only).
    pub sessions_evicted: Counter,
    /// 1 while herald's runtime has no idle time left.
    pub saturated: Gauge,
    /// How long WebSockets may hold events now, in seconds (see `saturation`).
    pub write_linger: Gauge<f64, AtomicU64>,
    /// Packets per Socket.IO WebSocket write over the last sample: what the
    /// hold buys (see `saturation`).
    pub packets_per_write: Gauge<f64, AtomicU64>,
    /// Open plain WebSocket connections, by endpoint (`ws`, `workflows`).
    pub stream_connections: Family<EndpointLabel, Gauge>,
    /// Seconds spent in publishes that succeeded, from the call to the seq
    /// (in memory: handed to this instance's sockets; with Redis: sequenced
    /// by Redis, which then sends it to every instance). Divided by
    /// `published_total`, the mean publish latency.
    pub publish_seconds: Counter<f64, AtomicU64>,
    /// The last refusals, for the dashboard.
    pub recent_refusals: recent::Refusals,
    /// Publishes per session, while a dashboard is open.
    pub activity: recent::Activity,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// Every metric, registered for `/metrics`; `sessions_known` only where
    /// this process keeps the sessions.
    pub(crate) fn new(keeps_sessions: bool) -> Self {
        let mut m = Self {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            sessions_watched: Gauge::default(),
            sessions_known: Gauge::default(),
            history_bytes: Gauge::default(),
            history_truncated: Counter::default(),
            resumes: Family::default(),
            replayed: Counter::default(),
            events_published: Family::default(),
            published_total: Counter::default(),
            events_delivered: Counter::default(),
            dropped_deliveries: Counter::default(),
            cluster_events_dropped: Counter::default(),
            cluster_events_received: Counter::default(),
            cluster_streams: Gauge::default(),
            cluster_per_stream: Gauge::default(),
            publish_rejections: Family::default(),
            client_errors: Counter::default(),
            auth_refusals: Family::default(),
            limit_refusals: Family::default(),
            sessions_evicted: Counter::default(),
            saturated: Gauge::default(),
            write_linger: Gauge::default(),
            packets_per_write: Gauge::default(),
            stream_connections: Family::default(),
            publish_seconds: Counter::default(),
            recent_refusals: Default::default(),
            activity: Default::default(),
            registry: Registry::with_prefix("herald"),
        };
        m.register(keeps_sessions);
        m
    }

    /// Counts one resume and what it replayed.
    pub(crate) fn resumed(&self, lost: Option<crate::protocol::Lost>, replayed: usize) {
        let result = lost.map_or("recovered", crate::protocol::Lost::reason);
        self.resumes.get_or_create(&ResultLabel { result }).inc();
        self.replayed.inc_by(replayed as u64);
    }

    /// Counts one token refused, or one socket ended by its token's expiry.
    pub(crate) fn auth_refused(&self, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one client refused by `limit`.
    pub(crate) fn limit_refused(&self, limit: crate::limits::Limit) {
        self.limit_refusals
            .get_or_create(&LimitLabel {
                limit: limit.label(),
            })
            .inc();
    }

    pub(crate) fn published(&self, family: crate::protocol::Family, event: &'static str) {
        self.events_published
            .get_or_create(&EventLabel {
                family: family.as_str(),
                event,
            })
            .inc();
        self.published_total.inc();
    }

    /// The gauge of one plain WebSocket endpoint's open connections.
    pub(crate) fn stream_connections(&self, endpoint: &'static str) -> Gauge {
        self.stream_connections
            .get_or_create(&EndpointLabel { endpoint })
            .clone()
    }

    /// Metric handles share their value with their clones, so the registry
    /// holds clones of the fields above.
    fn register(&mut self, keeps_sessions: bool) {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Open Socket.IO connections",
            self.connections.clone(),
        );
        r.register(
            "stream_connections",
            "Open plain WebSocket connections, by endpoint (ws, workflows)",
            self.stream_connections.clone(),
        );
        r.register(
            "subscriptions",
            "Socket-session subscriptions",
            self.subscriptions.clone(),
        );
        r.register(
            "sessions_watched",
            "Sessions with at least one subscriber",
            self.sessions_watched.clone(),
        );
        if !keeps_sessions {
            r.register(
                "cluster_events_received",
                "Events this instance read from Redis: those of the streams its clients watch, workflow runs, and events addressed beyond their stream",
                self.cluster_events_received.clone(),
            );
            r.register(
                "cluster_streams",
                "Streams whose Redis channel this instance is subscribed to (watched now or in the last 10 s)",
                self.cluster_streams.clone(),
            );
            r.register(
                "cluster_per_stream",
                "1 while this instance publishes each stream's events on the stream's own channel; 0 while on the channel every instance reads (an instance of an older release is live, or the registry was not read yet)",
                self.cluster_per_stream.clone(),
            );
        }
        if keeps_sessions {
            r.register(
                "sessions_known",
                "Sessions whose seq and state this instance keeps",
                self.sessions_known.clone(),
            );
            r.register(
                "history_bytes",
                "Bytes of event history this instance holds (payloads and their entries)",
                self.history_bytes.clone(),
            );
            r.register(
                "sessions_evicted",
                "Sessions forgotten before their TTL to keep within MAX_SESSIONS",
                self.sessions_evicted.clone(),
            );
            r.register(
                "history_truncated_sessions",
                "Sessions whose history was dropped to keep within HISTORY_MAX_BYTES",
                self.history_truncated.clone(),
            );
        }
        r.register(
            "resumes",
            "Subscriptions with since, by result: recovered, history_truncated, epoch_changed",
            self.resumes.clone(),
        );
        r.register(
            "replayed_events",
            "Held events replayed to resuming subscribers",
            self.replayed.clone(),
        );
        r.register(
            "events_published",
            "Events published, by event name",
            self.events_published.clone(),
        );
        r.register(
            "events_delivered",
            "Event deliveries handed to sockets",
            self.events_delivered.clone(),
        );
        r.register(
            "dropped_deliveries",
            "Deliveries refused because a socket's buffer was full; such a socket is disconnected and resumes on reconnect",
            self.dropped_deliveries.clone(),
        );
        r.register(
            "cluster_events_dropped",
            "Cluster events this instance dropped because it fell behind (Redis only)",
            self.cluster_events_dropped.clone(),
        );
        r.register(
            "publish_duration_seconds",
            "Seconds spent in successful publishes, from the call to the seq (divided by the sum of herald_events_published_total: the mean)",
            self.publish_seconds.clone(),
        );
        r.register(
            "publish_rejections",
            "Publish requests refused, by HTTP status",
            self.publish_rejections.clone(),
        );
        r.register(
            "saturated",
            "1 while herald's runtime has no idle time left",
            self.saturated.clone(),
        );
        r.register(
            "write_linger_seconds",
            "How long a WebSocket may hold events to write them together; grows while herald is saturated",
            self.write_linger.clone(),
        );
        r.register(
            "ws_packets_per_write",
            "Packets per Socket.IO WebSocket write in the last 10 ms: what holding writes gathers",
            self.packets_per_write.clone(),
        );
        r.register(
            "limit_refusals",
            "Clients refused by a limit, by limit: subscriptions, requests, request_flood (disconnected), connections_per_address, connections",
            self.limit_refusals.clone(),
        );
        r.register(
            "client_errors",
            "Invalid subscribe/unsubscribe requests from clients",
            self.client_errors.clone(),
        );
        r.register(
            "auth_refusals",
            "Tokens refused (connect, subscribe, history reads; by reason, forbidden: a session the token does not grant) and sockets closed because their token expired (reason token_expired)",
            self.auth_refusals.clone(),
        );
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        encode(&mut body, &self.registry)?;
        Ok(body)
    }
}
