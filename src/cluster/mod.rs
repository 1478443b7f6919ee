//! Where a session's events get their `seq` and how they reach every
//! subscriber: one process ([`memory`]), or many sharing Redis ([`redis`]).
//!
//! Both keep the same promise: a session's events are delivered to every
//! subscriber in seq order, and a seq is consumed only by an event that was
//! handed to the broadcast. The publish path ([`crate::publish`]) sees only
//! [`Cluster`].

pub mod memory;
pub mod redis;

use serde_json::value::RawValue;

use crate::protocol::{Encoded, Outcome, SessionId};

/// A validated, serialized event waiting for its seq.
pub struct Outbound<'a> {
    pub session_id: &'a SessionId,
    pub name: &'static str,
    pub encoded: Encoded,
    pub outcome: Outcome,
}

/// What `GET /api/v1/sessions/{id}` reports.
#[derive(Debug, Default)]
pub struct SessionSnapshot {
    pub seq: u64,
    /// The latest `progress` payload, as subscribers received it.
    pub progress: Option<Box<RawValue>>,
    pub completed: bool,
    pub failed: bool,
    pub subscribers: usize,
}

/// Whether this instance can publish cluster-wide right now.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub adapter: &'static str,
    /// Why not, when not.
    pub problem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The event could not be made to reach every instance; nothing was
    /// delivered and no seq consumed.
    #[error("{0}")]
    Unavailable(String),
}

/// Figures for `/api/v1/stats`, and how far they reach.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub events_published: u64,
    pub events_delivered: u64,
}

pub enum Cluster {
    Memory(memory::MemoryCluster),
    Redis(redis::RedisCluster),
}

impl Cluster {
    pub async fn publish(&self, out: Outbound<'_>) -> Result<u64, ClusterError> {
        match self {
            Self::Memory(c) => c.publish(out).await,
            Self::Redis(c) => c.publish(out).await,
        }
    }

    pub async fn snapshot(&self, id: &SessionId) -> Result<SessionSnapshot, ClusterError> {
        match self {
            Self::Memory(c) => Ok(c.snapshot(id).await),
            Self::Redis(c) => c.snapshot(id).await,
        }
    }

    pub fn readiness(&self) -> Readiness {
        match self {
            Self::Memory(_) => Readiness {
                adapter: "memory",
                problem: None,
            },
            Self::Redis(c) => Readiness {
                adapter: "redis",
                problem: c.problem(),
            },
        }
    }

    /// Cluster-wide totals when they can be had, with `"cluster"`; otherwise
    /// `None`, and the caller reports this instance's own.
    pub async fn cluster_totals(&self) -> Option<Totals> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(c) => c.totals().await,
        }
    }

    pub fn sessions_known(&self) -> Option<usize> {
        match self {
            Self::Memory(c) => Some(c.sessions_known()),
            Self::Redis(_) => None,
        }
    }

    /// Closes every socket's transport: clients see a transport close and
    /// reconnect, rather than `io server disconnect`, which would stop them.
    pub async fn close_sockets(&self) {
        match self {
            Self::Memory(c) => c.io().close().await,
            Self::Redis(c) => c.io().close().await,
        }
    }

    /// Background upkeep, for as long as the server runs.
    pub async fn run(&self) {
        match self {
            Self::Memory(c) => c.housekeeping().await,
            Self::Redis(c) => c.run().await,
        }
    }
}
