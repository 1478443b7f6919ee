//! Many herald instances sharing Redis: one seq per session for the whole
//! cluster, and every event delivered in seq order on every instance.
//!
//! Ordering is the design constraint. socketioxide's adapter broadcasts to an
//! instance's own sockets before Redis relays the event to the others, so a
//! backend alternating between instances A and B could see B's subscribers
//! get seq 2 (published on B, delivered at once) before seq 1 (published on
//! A, still on its way through Redis). herald therefore does not broadcast
//! events through the adapter. A publish runs one Lua script that takes the
//! session's next seq, records its state and PUBLISHes the finished payload
//! on one channel, atomically; Redis runs scripts one at a time, so the
//! channel carries every session's events in seq order. Every instance, the
//! publishing one included, delivers what arrives on that channel to its own
//! sockets, from one task, in arrival order. Concurrent publishers to one
//! session are thereby ordered too: the order Redis ran their scripts is
//! both their seq order and everyone's delivery order.
//!
//! The socketioxide-redis adapter is still installed: it answers the
//! cluster-wide questions (how many sockets watch a session, which rooms
//! exist), over the same reconnecting link.

mod link;
mod queue;

use std::{sync::Arc, time::Duration};

use futures_util::future::{BoxFuture, FutureExt};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::adapter::Emitter;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tracing::{debug, warn};

pub(crate) use link::Link;
pub use link::LinkProblem;

use super::{
    Action, ClusterFigures, FanOut, Outbound, Sequenced, Sequencer, SequencerError, SessionState,
};
use crate::{metrics::Metrics, protocol::SessionId};

/// The Socket.IO adapter of a Redis-backed herald.
pub(crate) type RedisAdapter = CustomRedisAdapter<Emitter, Link>;

/// How long a cluster-wide question may wait for the other instances: a dead
/// instance must not stall anyone for longer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

/// How long an instance's figures count in the cluster totals after it last
/// reported them: a killed instance drops out within this.
const INSTANCE_TTL_SECS: u64 = 5;

/// Takes the session's next seq, records its state and publishes the payload,
/// as one step. KEYS[1]: the session's hash (its only key, so the script runs
/// on a Redis Cluster too). ARGV: payload head, payload tail, event channel,
/// message header, flags (progress, completed, failed as "0"/"1"), TTL in ms.
/// The message is the header, the seq on a line of its own, then the payload.
const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local payload = ARGV[1] .. seq .. ARGV[2]
if string.sub(ARGV[5], 1, 1) == '1' then redis.call('HSET', KEYS[1], 'progress', payload) end
if string.sub(ARGV[5], 2, 2) == '1' then redis.call('HSET', KEYS[1], 'completed', 1) end
if string.sub(ARGV[5], 3, 3) == '1' then redis.call('HSET', KEYS[1], 'failed', 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. seq .. '\n' .. payload)
return seq
"#;

/// Names of everything herald keeps in Redis, under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, id: &SessionId) -> String {
        // The braces keep a session's keys in one Redis Cluster slot.
        format!("{}:session:{{{id}}}", self.prefix)
    }
    fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    // The instance registry shares one slot (the braces), so it can be read
    // with one MGET on a Redis Cluster.
    fn instances(&self) -> String {
        format!("{{{}}}:instances", self.prefix)
    }
    fn instance(&self, uid: &str) -> String {
        format!("{{{}}}:instance:{uid}", self.prefix)
    }
    fn probe(&self, uid: &str) -> String {
        format!("{}:probe:{uid}", self.prefix)
    }
}

/// One instance's figures, as it reports them to the others.
#[derive(Debug, Default, Serialize, Deserialize)]
struct InstanceFigures {
    connections: u64,
    subscriptions: u64,
    published: u64,
    delivered: u64,
}

/// Where herald's Redis is and how to use it.
pub(crate) struct Settings<'a> {
    pub urls: &'a [&'a str],
    /// `urls` are the seed nodes of a Redis Cluster.
    pub cluster: bool,
    pub prefix: &'a str,
    pub session_ttl: Duration,
    /// Events that may wait for this instance's delivery task.
    pub queue_events: usize,
}

/// The link to Redis, made before the Socket.IO server (whose adapter runs
/// over it) and the sequencer (which needs that server's fan-out).
pub(crate) struct Setup {
    link: Link,
    events: queue::EventReceiver,
    behind: Arc<queue::Behind>,
    keys: Keys,
    uid: String,
    ttl_ms: u64,
    metrics: Arc<Metrics>,
}

impl Setup {
    /// Prepares the link (without waiting for Redis) and the Socket.IO
    /// adapter that runs over it.
    pub(crate) fn new(
        settings: &Settings<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, RedisAdapterCtr<Link>), redis::RedisError> {
        let keys = Keys {
            prefix: settings.prefix.to_string(),
        };
        let uid = format!("{:016x}", rand_u64());
        let (queue, events, behind) = queue::bounded(settings.queue_events, metrics.clone());
        let link = Link::new(
            settings.urls,
            settings.cluster,
            &keys.events(),
            queue,
            keys.probe(&uid),
        )?;
        let config = RedisAdapterConfig::new()
            .with_prefix(format!("{}-socket.io", settings.prefix))
            .with_request_timeout(REQUEST_TIMEOUT);
        let adapter = RedisAdapterCtr::new_with_driver(link.clone(), config);
        let setup = Self {
            link,
            events,
            behind,
            keys,
            uid,
            ttl_ms: settings.session_ttl.as_millis().max(1) as u64,
            metrics,
        };
        Ok((setup, adapter))
    }
}

/// A process-unique id, without a dependency for it.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

pub(crate) struct RedisSequencer {
    link: Link,
    behind: Arc<queue::Behind>,
    keys: Keys,
    uid: String,
    script: Script,
    ttl_ms: u64,
    metrics: Arc<Metrics>,
}

impl RedisSequencer {
    /// The sequencer, and its background work (delivering the cluster's
    /// events to `fanout`, watching the link, reporting this instance's
    /// figures), which runs as long as it is polled.
    pub(crate) fn new(
        setup: Setup,
        fanout: Arc<dyn FanOut>,
    ) -> (Arc<Self>, BoxFuture<'static, ()>) {
        let Setup {
            link,
            events,
            behind,
            keys,
            uid,
            ttl_ms,
            metrics,
        } = setup;
        let sequencer = Arc::new(Self {
            link,
            behind,
            keys,
            uid,
            script: Script::new(PUBLISH_SCRIPT),
            ttl_ms,
            metrics,
        });
        let run = {
            let sequencer = sequencer.clone();
            async move {
                tokio::join!(
                    deliver_all(events, fanout),
                    sequencer.link.watch(),
                    sequencer.report()
                );
            }
        };
        (sequencer, run.boxed())
    }

    async fn report(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let figures = InstanceFigures {
                connections: self.metrics.connections.get().max(0) as u64,
                subscriptions: self.metrics.subscriptions.get().max(0) as u64,
                published: self.metrics.published_total.get(),
                delivered: self.metrics.events_delivered.get(),
            };
            let Ok(mut conn) = self.link.connection() else {
                continue;
            };
            let report = serde_json::to_string(&figures).unwrap_or_default();
            let written: Result<(), _> = redis::pipe()
                .set_ex(self.keys.instance(&self.uid), report, INSTANCE_TTL_SECS)
                .ignore()
                .sadd(self.keys.instances(), &self.uid)
                .ignore()
                .query_async(&mut conn)
                .await;
            if let Err(e) = written {
                debug!("could not report this instance's figures: {e}");
            }
        }
    }

    async fn publish(&self, out: Outbound<'_>) -> Result<u64, SequencerError> {
        // A publish this instance could not receive back would reach the
        // other instances' subscribers but not its own: refuse it instead.
        if let Some(problem) = self.link.problem() {
            return Err(SequencerError::LinkDown(problem));
        }
        let flags: String = [
            out.outcome.is_progress,
            out.outcome.completed,
            out.outcome.failed,
        ]
        .iter()
        .map(|f| if *f { '1' } else { '0' })
        .collect();
        let header = format!("{}\n{}\n", out.name, out.session_id);
        let failed = redis_failed(Action::Publish);
        let seq: u64 = self
            .script
            .key(self.keys.session(out.session_id))
            .arg(&out.encoded.head)
            .arg(&out.encoded.tail)
            .arg(self.keys.events())
            .arg(header)
            .arg(flags)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.link.connection().map_err(&failed)?)
            .await
            .map_err(&failed)?;
        Ok(seq)
    }

    async fn state(&self, id: &SessionId) -> Result<SessionState, SequencerError> {
        let failed = redis_failed(Action::ReadSession);
        let (seq, progress, completed, failed_flag): (
            Option<u64>,
            Option<String>,
            Option<u8>,
            Option<u8>,
        ) = redis::cmd("HMGET")
            .arg(self.keys.session(id))
            .arg(&["seq", "progress", "completed", "failed"])
            .query_async(&mut self.link.connection().map_err(&failed)?)
            .await
            .map_err(&failed)?;
        Ok(SessionState {
            seq: seq.unwrap_or(0),
            progress: progress.and_then(|p| RawValue::from_string(p).ok()),
            completed: completed == Some(1),
            failed: failed_flag == Some(1),
        })
    }

    /// Sums the figures the live instances reported; `None` when Redis cannot say.
    async fn figures(&self) -> Option<ClusterFigures> {
        let mut conn = self.link.connection().ok()?;
        let uids: Vec<String> = conn.smembers(self.keys.instances()).await.ok()?;
        let keys: Vec<String> = uids.iter().map(|uid| self.keys.instance(uid)).collect();
        let reports: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .ok()?
        };
        let mut totals = ClusterFigures::default();
        for (uid, report) in uids.iter().zip(reports) {
            match report.and_then(|r| serde_json::from_str::<InstanceFigures>(&r).ok()) {
                Some(f) => {
                    totals.connections += f.connections;
                    totals.subscriptions += f.subscriptions;
                    totals.events_published += f.published;
                    totals.events_delivered += f.delivered;
                }
                // Its report expired: the instance is gone.
                None => {
                    let _: Result<(), _> = conn.srem(self.keys.instances(), uid).await;
                }
            }
        }
        Some(totals)
    }
}

impl Sequencer for RedisSequencer {
    fn adapter(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, out: Outbound<'a>) -> BoxFuture<'a, Result<u64, SequencerError>> {
        RedisSequencer::publish(self, out).boxed()
    }

    fn state<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<SessionState, SequencerError>> {
        RedisSequencer::state(self, id).boxed()
    }

    fn problem(&self) -> Option<LinkProblem> {
        self.link.problem().or_else(|| {
            self.behind
                .dropped()
                .map(|dropped| LinkProblem::FellBehind { dropped })
        })
    }

    fn cluster_figures(&self) -> BoxFuture<'_, Option<ClusterFigures>> {
        self.figures().boxed()
    }
}

/// One task, in arrival order: the order Redis published, which is seq
/// order for every session.
async fn deliver_all(mut events: queue::EventReceiver, fanout: Arc<dyn FanOut>) {
    while let Some(message) = events.next().await {
        let Some(message) = Message::split(&message) else {
            warn!("ignoring a malformed event message on the cluster channel");
            continue;
        };
        let Ok(session) = SessionId::parse(message.session) else {
            warn!("ignoring a cluster event for an invalid session id");
            continue;
        };
        if !fanout.watches(&session) {
            continue;
        }
        let Ok(payload) = RawValue::from_string(message.payload.to_string()) else {
            warn!(%session, "ignoring a cluster event whose payload is not JSON");
            continue;
        };
        fanout
            .deliver(Sequenced {
                session_id: &session,
                name: message.name,
                seq: message.seq,
                payload: &payload,
            })
            .await;
    }
}

/// Maps a Redis error to a refusal saying what could not be done.
fn redis_failed(action: Action) -> impl Fn(redis::RedisError) -> SequencerError {
    move |source| SequencerError::Redis { action, source }
}

/// An event as it travels on the cluster channel: `name \n session \n seq
/// \n payload`.
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    name: &'a str,
    session: &'a str,
    seq: u64,
    payload: &'a str,
}

impl<'a> Message<'a> {
    fn split(message: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(message).ok()?;
        let (name, rest) = text.split_once('\n')?;
        let (session, rest) = rest.split_once('\n')?;
        let (seq, payload) = rest.split_once('\n')?;
        Some(Self {
            name,
            session,
            seq: seq.parse().ok()?,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_into_their_four_parts() {
        assert_eq!(
            Message::split(b"progress\ndoc-1\n7\n{\"a\":\"x\\ny\"}"),
            Some(Message {
                name: "progress",
                session: "doc-1",
                seq: 7,
                payload: "{\"a\":\"x\\ny\"}"
            })
        );
        assert_eq!(Message::split(b"progress\ndoc-1\n{}"), None);
        assert_eq!(Message::split(b"progress\ndoc-1\nx\n{}"), None);
    }

    #[test]
    fn session_keys_share_a_cluster_slot() {
        let keys = Keys {
            prefix: "herald".into(),
        };
        assert_eq!(
            keys.session(&SessionId::parse("a").unwrap()),
            "herald:session:{a}"
        );
    }
}
