//! herald's Prometheus metrics: the counters every part updates (each an
//! atomic, cheap from any task) and their text rendering for `/metrics`.
//! A module of its own, below everything that counts, so counting never
//! depends on the endpoints that report.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// Herald's counters. Cheap to update from any task: each is an atomic.
pub struct Metrics {
    pub connections: Gauge,
    pub events_published: Family<EventLabel, Counter>,
    pub events_delivered: Counter,
    pub dropped_deliveries: Counter,
    pub publish_rejections: Family<StatusLabel, Counter>,
    pub client_errors: Counter,
    /// 1 while herald's runtime has no idle time left.
    pub saturated: Gauge,
    /// How long WebSockets may hold events now, in seconds (see `saturation`).
    pub write_linger: Gauge<f64, AtomicU64>,
    subscriptions: Gauge,
    sessions_watched: Gauge,
    sessions_known: Gauge,
    pub published_total: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            connections: Gauge::default(),
            events_published: Family::default(),
            events_delivered: Counter::default(),
            dropped_deliveries: Counter::default(),
            publish_rejections: Family::default(),
            client_errors: Counter::default(),
            saturated: Gauge::default(),
            write_linger: Gauge::default(),
            subscriptions: Gauge::default(),
            sessions_watched: Gauge::default(),
            sessions_known: Gauge::default(),
            published_total: Counter::default(),
            registry: Registry::with_prefix("herald"),
        };
        m.register();
        m
    }
}

impl Metrics {
    /// Counts one event published through this instance.
    pub fn published(&self, event: &'static str) {
        self.events_published
            .get_or_create(&EventLabel { event })
            .inc();
        self.published_total.inc();
    }

    /// Metric handles share their value with their clones, so the registry
    /// holds clones of the fields above.
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Open Socket.IO connections",
            self.connections.clone(),
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
        r.register(
            "sessions_known",
            "Sessions whose seq and state this instance keeps",
            self.sessions_known.clone(),
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
            "Deliveries dropped because a socket's buffer was full",
            self.dropped_deliveries.clone(),
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
            "client_errors",
            "Invalid subscribe/unsubscribe requests from clients",
            self.client_errors.clone(),
        );
    }
}

/// Figures read at scrape time rather than counted as they change.
pub struct Levels {
    pub subscriptions: u64,
    pub sessions_watched: u64,
    /// Sessions whose state this instance keeps (in-memory adapter only).
    pub sessions_known: Option<u64>,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self, levels: Levels) -> Result<String, std::fmt::Error> {
        self.subscriptions.set(levels.subscriptions as i64);
        self.sessions_watched.set(levels.sessions_watched as i64);
        if let Some(known) = levels.sessions_known {
            self.sessions_known.set(known as i64);
        }
        let mut body = String::new();
        encode(&mut body, &self.registry)?;
        Ok(body)
    }
}
