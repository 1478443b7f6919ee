//! Sequencing: where an event gets its `seq`, where a stream's state is
//! kept, and how sequenced events reach this instance's fan-out. One process
//! ([`memory`]) or many sharing Redis ([`redis`]), behind one [`Sequencer`]
//! interface, so that the publish path, the HTTP API and the ops endpoints
//! never know which backend runs.
//!
//! Both keep the same promise: a session's events reach the [`FanOut`] in seq
//! order, and a seq is consumed only by an event that was handed to it. A
//! sequencer never touches sockets: it reports to the fan-out registered when
//! it was built ([`FanOuts`]: the Socket.IO side, [`crate::realtime`], and
//! the plain WebSockets, [`crate::streams`]).
//!
//! Everything here is keyed by [`Topic`], a family-qualified stream (a
//! session, a run, a workflow run): seq, epoch, state, history, TTL and the
//! Redis path are the same code for every family. "Session" below means any
//! such stream.

pub(crate) mod history;
pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use self::history::{Attached, Epoch, Page, Start};
pub use self::redis::LinkProblem;
use crate::protocol::{Encoded, Outcome, Scope, Topic};

/// A validated, serialized event waiting for its seq.
pub(crate) struct Outbound<'a> {
    pub topic: &'a Topic,
    pub name: &'static str,
    /// Who the live event is for beyond the stream's own subscribers.
    pub scope: Scope,
    pub encoded: Encoded,
    pub outcome: Outcome,
    /// The publisher's idempotency key, if any: see [`Keyed`].
    pub idempotency: Option<Keyed<'a>>,
}

/// A publish's idempotency key and the fingerprint of the request that
/// carries it. A publish to the same session with a key already used
/// (within the sequencer's window) publishes nothing: with the same
/// fingerprint it is a retry, answered with the first one's seq; with
/// another it is a different event under a used key, which would otherwise
/// vanish without a word.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keyed<'a> {
    pub key: &'a str,
    pub fingerprint: Fingerprint,
}

/// 64 bits of the SHA-256 of what a publisher sent: the same on every
/// instance and every build, as a cluster's shared idempotency records need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    pub(crate) fn of(sent: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(sent);
        Self(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a sequencer did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// Sequenced with this seq and handed to the fan-out.
    Sent(u64),
    /// A retry of the publish that got this seq: nothing sent again.
    Repeat(u64),
    /// The key already published a different event, with this seq: nothing
    /// sent.
    KeyReused(u64),
}

/// An event with its seq, as the fan-out receives it.
pub(crate) struct Sequenced<'a> {
    pub topic: &'a Topic,
    pub name: &'a str,
    pub scope: Scope,
    pub seq: u64,
    /// The whole payload subscribers receive, `seq` included.
    pub payload: &'a RawValue,
}

/// Where a sequencer hands its events: this instance's subscribers.
pub(crate) trait FanOut: Send + Sync + 'static {
    /// Whether anyone on this instance watches the session; a sequencer may
    /// skip preparing events nobody here will receive.
    fn watches(&self, topic: &Topic) -> bool;

    /// Hands an event to this instance's subscribers of its session. Called
    /// in seq order for each session, never concurrently for one session.
    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()>;
}

/// Every fan-out of this instance, one per transport: each event goes to
/// those that watch its stream. Families a transport does not serve are
/// never watched by it, so adding a family adds no branch here.
pub(crate) struct FanOuts(pub Vec<Arc<dyn FanOut>>);

impl FanOut for FanOuts {
    fn watches(&self, topic: &Topic) -> bool {
        self.0.iter().any(|f| f.watches(topic))
    }

    fn deliver<'a>(&'a self, event: Sequenced<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for fanout in &self.0 {
                // A `Scope` beyond the stream reaches clients that do not
                // watch it: only the fan-out can tell.
                if event.scope != Scope::Topic || fanout.watches(event.topic) {
                    fanout
                        .deliver(Sequenced {
                            topic: event.topic,
                            name: event.name,
                            scope: event.scope,
                            seq: event.seq,
                            payload: event.payload,
                        })
                        .await;
                }
            }
        })
    }
}

/// Makes a subscription take effect: given what the subscriber must be sent
/// first (snapshot or replay), it sends that and joins the session's
/// subscribers, without waiting; given an error, it tells the subscriber
/// why not. A sequencer calls it exactly once, and with an `Attached` at a
/// moment when no event of the session is being delivered, so that what it
/// hands over and the live events that follow meet with no gap and no
/// duplicate.
pub(crate) type Join = Box<dyn FnOnce(Result<Attached, SequencerError>) + Send>;

/// What a sequencer knows of one session.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// The last seq handed out; 0 before the first publish.
    pub seq: u64,
    /// `None` for a session with no state yet.
    pub epoch: Option<Epoch>,
    /// The latest `progress` payload, as subscribers received it.
    pub progress: Option<Arc<RawValue>>,
    pub completed: bool,
    pub failed: bool,
}

/// What one instance says of itself every second: what `/api/v1/stats`
/// sums and the dashboard lists. Built by `ops::feed` from the metrics;
/// with Redis, every instance's is kept there for a few seconds, so a
/// killed instance drops out by itself. Every field defaults, so that
/// instances of different versions read each other's reports.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct InstanceReport {
    /// The instance's id: its Socket.IO server's id.
    pub id: String,
    pub version: String,
    /// Open Socket.IO connections.
    pub connections: u64,
    /// Open plain WebSocket connections (`/ws`, `/ws/workflows`).
    pub streams: u64,
    pub subscriptions: u64,
    /// Events published through this instance, since it started.
    pub published: u64,
    /// Deliveries handed to this instance's sockets, since it started.
    pub delivered: u64,
    /// Events this instance read from Redis, since it started: only those
    /// of the streams its clients watch, and the shared channel's.
    pub received: u64,
    /// Deliveries dropped (full socket buffers) and cluster events this
    /// instance fell behind on, since it started.
    pub dropped: u64,
    /// Seconds spent in publishes, since it started (see
    /// `Metrics::publish_seconds`).
    pub publish_seconds: f64,
    /// Refusals since it started, by reason (`publish_422`, `limit_requests`...).
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub saturated: bool,
    pub write_linger_ms: f64,
    /// Why this instance is not ready, if it is not.
    pub not_ready: Option<String>,
    /// Its busiest sessions: most subscribers here, most publishes here in
    /// the last second (counted only while a dashboard watches).
    pub most_watched: Vec<(String, u64)>,
    pub most_active: Vec<(String, u64)>,
    /// A dashboard is open on this instance: every instance counts its
    /// publishes per session while one is, anywhere.
    pub dashboard_open: bool,
    /// The instance reads each stream's own Redis channel; releases before
    /// those channels report nothing here (see `redis::interest`).
    pub stream_channels: bool,
}

/// What a Redis request was for, so that its failure says what did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    ReadSession,
    Subscribe,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Publish => "cannot publish cluster-wide",
            Self::ReadSession => "cannot read the session from Redis",
            Self::Subscribe => "cannot start the subscription",
        })
    }
}

/// Why a sequencer could not do what it was asked. Nothing was delivered and
/// no seq consumed, except after [`SequencerError::OutcomeUnknown`].
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// This instance cannot currently reach every instance.
    #[error("cannot publish cluster-wide: {0}")]
    LinkDown(LinkProblem),
    /// herald is shutting down: its delivery task has stopped.
    #[error("{0}: herald is shutting down")]
    Stopped(Action),
    /// The request went to Redis and no answer came back (it timed out, the
    /// connection broke): Redis may or may not have run it.
    #[error("{action}: no answer from Redis, so it may or may not have happened: {source}")]
    OutcomeUnknown {
        action: Action,
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis failed the request.
    #[error("{action}: Redis: {source}")]
    Redis {
        action: Action,
        #[source]
        source: ::redis::RedisError,
    },
}

/// Seq, state and (next) history of every session, for one backend.
pub(crate) trait Sequencer: Send + Sync + 'static {
    /// `"memory"` or `"redis"`, for `/ready` and the logs.
    fn adapter(&self) -> &'static str;

    /// Gives the event the session's next seq and hands it to the fan-out:
    /// at once in memory, through Redis to every instance otherwise. Returns
    /// the seq.
    fn publish<'a>(&'a self, out: Outbound<'a>)
    -> BoxFuture<'a, Result<Published, SequencerError>>;

    /// The session's seq and last state (defaults for a session never
    /// published to).
    fn state<'a>(&'a self, id: &'a Topic) -> BoxFuture<'a, Result<SessionState, SequencerError>>;

    /// Starts a subscription to the session: computes the snapshot or the
    /// replay `start` asks for and calls `join` with it at a moment when none
    /// of the session's events is being delivered (see [`Join`]), or with
    /// the reason it could not. Creates the session's state (and epoch) if
    /// it has none yet. Resolves once `join` has run.
    fn attach<'a>(&'a self, id: &'a Topic, start: Start, join: Join) -> BoxFuture<'a, ()>;

    /// Makes sure this instance receives the session's live events from
    /// the moment this resolves, for a client about to watch it without a
    /// snapshot or replay (ResearchFlow's `auth { runId }`); the client must
    /// count as watching ([`FanOut::watches`]) right after.
    fn watch<'a>(&'a self, id: &'a Topic) -> BoxFuture<'a, Result<(), SequencerError>>;

    /// Up to `limit` held events after `since`, in seq order.
    fn history<'a>(
        &'a self,
        id: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, SequencerError>>;

    /// Why this instance cannot publish cluster-wide right now, if it cannot.
    fn problem(&self) -> Option<LinkProblem>;

    /// Tells the other instances how this one is doing (see
    /// [`InstanceReport`]); nothing without a cluster.
    fn report<'a>(&'a self, report: &'a InstanceReport) -> BoxFuture<'a, ()>;

    /// The reports of every live instance; `None` when this backend has no
    /// cluster or cannot say now.
    fn instances(&self) -> BoxFuture<'_, Option<Vec<InstanceReport>>>;
}
