//! Who may open a connection: at most MAX_CONNECTIONS in all (below the
//! open-file limit) and MAX_CONNECTIONS_PER_ADDRESS from one client address,
//! checked at the Engine.IO handshake before any socket exists, and answered
//! with a JSON refusal a stock client reports as a connect error.
//!
//! An admitted connection holds an [`Admitted`] slot; the slot travels in the
//! handshake request's extensions, and the engine keeps it with the socket
//! (apart from the request head, with the patched engine), so the counts go
//! down when the socket is dropped, however it ends. The
//! same [`Admission`] is the handle any other transport (plain WebSockets)
//! takes its slots from, so one cap covers every kind of connection.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use dashmap::DashMap;
use ipnet::IpNet;
use tracing::warn;

use super::{Limit, Throttle};
use crate::metrics::Metrics;

/// Peers whose `X-Forwarded-For` herald believes: reverse proxies and load
/// balancers in front of it (TRUSTED_PROXIES).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

#[derive(Debug, thiserror::Error)]
#[error("invalid TRUSTED_PROXIES entry {0:?}: expected an address or a CIDR such as 10.0.0.0/8")]
pub struct InvalidProxy(String);

impl TrustedProxies {
    /// Reads addresses and CIDRs; empty entries are skipped.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, InvalidProxy> {
        entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidProxy(e.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Where a request comes from: the peer, or when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not one (proxies append,
/// so anything left of the first untrusted hop is the client's own word).
pub(crate) struct ClientAddress;

impl ClientAddress {
    pub(crate) fn of(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
        if !trusted.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !trusted.trusts(**ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// How often a refused connection is logged at most (with a count).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection counts and their caps; shared by every transport.
pub(crate) struct Admission {
    max: usize,
    /// 0: no per-address cap.
    max_per_address: u32,
    open: AtomicUsize,
    per_address: DashMap<IpAddr, u32>,
    trusted: TrustedProxies,
    metrics: Arc<Metrics>,
    log: Throttle,
}

/// A connection's place in the counts, given back when the last clone drops.
#[derive(Clone)]
pub(crate) struct Admitted(
    #[cfg_attr(not(feature = "patched-engine"), allow(dead_code))] Arc<Slot>,
);

struct Slot {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
}

impl Admitted {
    /// The slot as the engine keeps it with a session, apart from the
    /// request head (see `realtime::endpoint`).
    #[cfg(feature = "patched-engine")]
    pub(crate) fn into_guard(self) -> engineioxide::socket::SessionGuard {
        engineioxide::socket::SessionGuard(self.0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.admission;
        a.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.address {
            a.per_address.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// MAX_CONNECTIONS: herald is full.
    Full,
    /// MAX_CONNECTIONS_PER_ADDRESS.
    TooManyFromAddress,
}

impl Refused {
    fn limit(self) -> Limit {
        match self {
            Self::Full => Limit::Connections,
            Self::TooManyFromAddress => Limit::ConnectionsPerAddress,
        }
    }

    /// The JSON answer to a refused handshake, with a `Retry-After`.
    pub(crate) fn response(self) -> Response {
        let (status, code, error) = match self {
            Self::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_FULL",
                "herald is at its connection limit (MAX_CONNECTIONS); try again later",
            ),
            Self::TooManyFromAddress => (
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_CONNECTIONS",
                "too many connections from this address (MAX_CONNECTIONS_PER_ADDRESS)",
            ),
        };
        let body = serde_json::json!({ "error": error, "code": code });
        let mut res = (status, Json(body)).into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        res
    }
}

impl Admission {
    pub(crate) fn new(
        max: usize,
        max_per_address: u32,
        trusted: TrustedProxies,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_address,
            open: AtomicUsize::new(0),
            per_address: DashMap::new(),
            trusted,
            metrics,
            log: Throttle::new(LOG_EVERY),
        })
    }

    /// The cap on connections in all.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot for a connection from `address` (unknown when herald is
    /// served without peer addresses), or says why not; counted and logged.
    pub(crate) fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Admitted, Refused> {
        let refused = self.take(address).err();
        if let Some(why) = refused {
            self.metrics.limit_refused(why.limit());
            if let Some(held) = self.log.pass() {
                let address = address.map(|a| a.to_string()).unwrap_or_default();
                warn!(%address, limit = why.limit().label(), open = self.open.load(Ordering::Relaxed), refused_since_last_line = held, "connection refused at the handshake");
            }
            return Err(why);
        }
        Ok(Admitted(Arc::new(Slot {
            admission: self.clone(),
            address,
        })))
    }

    fn take(&self, address: Option<IpAddr>) -> Result<(), Refused> {
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refused::Full);
        }
        let Some(ip) = address else { return Ok(()) };
        let mut n = self.per_address.entry(ip).or_insert(0);
        if self.max_per_address > 0 && *n >= self.max_per_address {
            drop(n);
            self.per_address.remove_if(&ip, |_, n| *n == 0);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::TooManyFromAddress);
        }
        *n += 1;
        Ok(())
    }

    /// The client address of a request, from its peer (see [`ClientAddress`]).
    pub(crate) fn client_address(&self, req: &Request) -> Option<IpAddr> {
        let ConnectInfo(peer) = req.extensions().get::<ConnectInfo<SocketAddr>>()?;
        Some(ClientAddress::of(peer.ip(), req.headers(), &self.trusted))
    }
}

/// Whether a Socket.IO request opens a new Engine.IO session (it has no `sid`).
fn is_handshake(req: &Request) -> bool {
    !req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|param| param.starts_with("sid="))
}

/// The middleware in front of the Socket.IO endpoint: a handshake takes a
/// slot or is refused; requests of an existing session pass.
pub(crate) async fn admit_handshakes(
    State(admission): State<Arc<Admission>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !is_handshake(&req) {
        return next.run(req).await;
    }
    match admission.admit(admission.client_address(&req)) {
        Ok(slot) => {
            req.extensions_mut().insert(slot);
            next.run(req).await
        }
        Err(why) => why.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), " 192.0.2.1 ".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.1.2.3".parse().unwrap(),
        );
        // Rightmost untrusted hop: 203.0.113.9; 6.6.6.6 is what the client claimed.
        assert_eq!(
            ClientAddress::of(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            ClientAddress::of(ip("198.51.100.7"), &headers, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            ClientAddress::of(ip("192.0.2.1"), &HeaderMap::new(), &trusted),
            ip("192.0.2.1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn slots_are_capped_per_address_and_in_all_and_given_back() {
        let a = Admission::new(
            3,
            2,
            TrustedProxies::default(),
            Arc::new(Metrics::default()),
        );
        let one = a.admit(Some(ip("192.0.2.1"))).unwrap();
        let two = a.admit(Some(ip("192.0.2.1"))).unwrap();
        assert_eq!(
            a.admit(Some(ip("192.0.2.1"))).err(),
            Some(Refused::TooManyFromAddress)
        );
        let other = a.admit(Some(ip("192.0.2.2"))).unwrap();
        assert_eq!(a.admit(Some(ip("192.0.2.3"))).err(), Some(Refused::Full));
        drop((one, other));
        assert!(a.admit(Some(ip("192.0.2.1"))).is_ok());
        drop(two);
        assert_eq!(a.open.load(Ordering::Relaxed), 0);
        assert!(a.per_address.is_empty());
    }
}
