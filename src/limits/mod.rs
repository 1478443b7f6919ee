//! What one client may take of herald, so that no client can take what the
//! others need: connections (per client address and in all, below the
//! process's open-file limit, so the operations and publish endpoints keep
//! answering under a flood), requests and subscriptions per socket, and the
//! rate-limited log line that names the client over a limit.
//!
//! Each limit is checked where it is cheapest to refuse: connections at the
//! Engine.IO handshake, before any socket exists ([`admission`]); requests
//! and subscriptions as the socket's packet is read ([`requests`]). The
//! realtime handlers only ask. Every refusal is counted in
//! `herald_limit_refusals_total{limit}`.

pub(crate) mod admission;
pub(crate) mod nofile;
pub(crate) mod requests;
mod throttle;

pub(crate) use admission::{Admission, Admitted, TrustedProxies};
pub(crate) use requests::{RequestLimits, Verdict};
pub(crate) use throttle::Throttle;

/// The `limit` label of `herald_limit_refusals_total`: which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Limit {
    /// MAX_SUBSCRIPTIONS_PER_SOCKET.
    Subscriptions,
    /// CLIENT_REQUESTS_PER_SEC: one refused request.
    Requests,
    /// CLIENT_REQUESTS_PER_SEC: a socket disconnected for flooding.
    RequestFlood,
    /// MAX_CONNECTIONS_PER_ADDRESS.
    ConnectionsPerAddress,
    /// MAX_CONNECTIONS.
    Connections,
}

impl Limit {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Subscriptions => "subscriptions",
            Self::Requests => "requests",
            Self::RequestFlood => "request_flood",
            Self::ConnectionsPerAddress => "connections_per_address",
            Self::Connections => "connections",
        }
    }
}
