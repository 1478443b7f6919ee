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

use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::{SocketIo, adapter::Emitter};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use link::Link;

use super::{ClusterError, Outbound, SessionSnapshot, Totals};
use crate::{
    protocol::SessionId,
    realtime::{self, Realtime},
};

/// The Socket.IO adapter of a Redis-backed herald.
pub type RedisAdapter = CustomRedisAdapter<Emitter, Link>;

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
const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local payload = ARGV[1] .. seq .. ARGV[2]
if string.sub(ARGV[5], 1, 1) == '1' then redis.call('HSET', KEYS[1], 'progress', payload) end
if string.sub(ARGV[5], 2, 2) == '1' then redis.call('HSET', KEYS[1], 'completed', 1) end
if string.sub(ARGV[5], 3, 3) == '1' then redis.call('HSET', KEYS[1], 'failed', 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. payload)
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

/// What [`RedisCluster`] is built from, besides the Socket.IO server.
pub struct Setup {
    link: Link,
    events: mpsc::UnboundedReceiver<Vec<u8>>,
    keys: Keys,
    uid: String,
}

impl Setup {
    /// Prepares the link (without waiting for Redis) and the Socket.IO
    /// adapter that runs over it.
    pub fn new(
        urls: &[&str],
        cluster: bool,
        prefix: &str,
    ) -> Result<(Self, RedisAdapterCtr<Link>), redis::RedisError> {
        let keys = Keys {
            prefix: prefix.to_string(),
        };
        let uid = format!("{:016x}", rand_u64());
        let (link, events) = Link::new(urls, cluster, &keys.events(), keys.probe(&uid))?;
        let config = RedisAdapterConfig::new()
            .with_prefix(format!("{prefix}-socket.io"))
            .with_request_timeout(REQUEST_TIMEOUT);
        let adapter = RedisAdapterCtr::new_with_driver(link.clone(), config);
        let setup = Self {
            link,
            events,
            keys,
            uid,
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

pub struct RedisCluster {
    io: SocketIo<RedisAdapter>,
    local: Realtime,
    link: Link,
    keys: Keys,
    uid: String,
    script: Script,
    ttl_ms: u64,
    events: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Vec<u8>>>>,
}

impl RedisCluster {
    pub fn new(io: SocketIo<RedisAdapter>, local: Realtime, setup: Setup, ttl: Duration) -> Self {
        Self {
            io,
            local,
            link: setup.link,
            keys: setup.keys,
            uid: setup.uid,
            script: Script::new(PUBLISH_SCRIPT),
            ttl_ms: ttl.as_millis().max(1) as u64,
            events: tokio::sync::Mutex::new(Some(setup.events)),
        }
    }

    pub fn problem(&self) -> Option<String> {
        self.link.problem()
    }

    pub fn io(&self) -> &SocketIo<RedisAdapter> {
        &self.io
    }

    pub async fn publish(&self, out: Outbound<'_>) -> Result<u64, ClusterError> {
        // A publish this instance could not receive back would reach the
        // other instances' subscribers but not its own: refuse it instead.
        if let Some(problem) = self.link.problem() {
            return Err(ClusterError::Unavailable(format!(
                "cannot publish cluster-wide: {problem}"
            )));
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
        let seq: u64 = self
            .script
            .key(self.keys.session(out.session_id))
            .arg(&out.encoded.head)
            .arg(&out.encoded.tail)
            .arg(self.keys.events())
            .arg(header)
            .arg(flags)
            .arg(self.ttl_ms)
            .invoke_async(
                &mut self
                    .link
                    .connection()
                    .map_err(unavailable("cannot publish cluster-wide"))?,
            )
            .await
            .map_err(unavailable("cannot publish cluster-wide"))?;
        Ok(seq)
    }

    pub async fn snapshot(&self, id: &SessionId) -> Result<SessionSnapshot, ClusterError> {
        let unavailable = unavailable("cannot read the session from Redis");
        let (seq, progress, completed, failed): (
            Option<u64>,
            Option<String>,
            Option<u8>,
            Option<u8>,
        ) = redis::cmd("HMGET")
            .arg(self.keys.session(id))
            .arg(&["seq", "progress", "completed", "failed"])
            .query_async(&mut self.link.connection().map_err(&unavailable)?)
            .await
            .map_err(&unavailable)?;
        let subscribers = match self.io.to(id.room()).fetch_sockets().await {
            Ok(sockets) => sockets.len(),
            Err(e) => {
                debug!("cluster-wide subscriber count unavailable, counting local ones: {e}");
                self.local.subscriptions.count(id) as usize
            }
        };
        Ok(SessionSnapshot {
            seq: seq.unwrap_or(0),
            progress: progress.and_then(|p| RawValue::from_string(p).ok()),
            completed: completed == Some(1),
            failed: failed == Some(1),
            subscribers,
        })
    }

    /// Sums the figures the live instances reported; `None` when Redis cannot say.
    pub async fn totals(&self) -> Option<Totals> {
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
        let mut totals = Totals::default();
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
        let rooms = self.io.rooms().await.ok()?;
        totals.sessions = rooms.iter().filter(|r| SessionId::is_room(r)).count() as u64;
        Some(totals)
    }

    /// Delivers the cluster's events to this instance's sockets, watches the
    /// link and reports this instance's figures, for as long as it runs.
    pub async fn run(&self) {
        let Some(events) = self.events.lock().await.take() else {
            return;
        };
        tokio::join!(self.deliver_all(events), self.link.watch(), self.report());
    }

    /// One task, in arrival order: the order Redis published, which is seq
    /// order for every session.
    async fn deliver_all(&self, mut events: mpsc::UnboundedReceiver<Vec<u8>>) {
        while let Some(message) = events.recv().await {
            let Some((name, session, payload)) = split_message(&message) else {
                warn!("ignoring a malformed event message on the cluster channel");
                continue;
            };
            let Ok(session) = SessionId::parse(session) else {
                warn!("ignoring a cluster event for an invalid session id");
                continue;
            };
            if self.local.subscriptions.count(&session) == 0 {
                continue;
            }
            let Ok(payload) = RawValue::from_string(payload.to_string()) else {
                warn!(%session, "ignoring a cluster event whose payload is not JSON");
                continue;
            };
            if let Err(e) = realtime::deliver(&self.io, &self.local, &session, name, &payload).await
            {
                warn!(%session, "local delivery failed: {e}");
            }
        }
    }

    async fn report(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let figures = InstanceFigures {
                connections: self.local.metrics.connections.get().max(0) as u64,
                subscriptions: self.local.subscriptions.total(),
                published: self.local.metrics.published_total.get(),
                delivered: self.local.metrics.events_delivered.get(),
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
}

/// Maps a Redis error to a refusal saying what could not be done.
fn unavailable(what: &'static str) -> impl Fn(redis::RedisError) -> ClusterError {
    move |e| ClusterError::Unavailable(format!("{what}: Redis: {e}"))
}

/// Splits `name \n session \n payload`.
fn split_message(message: &[u8]) -> Option<(&str, &str, &str)> {
    let text = std::str::from_utf8(message).ok()?;
    let (name, rest) = text.split_once('\n')?;
    let (session, payload) = rest.split_once('\n')?;
    Some((name, session, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_into_their_three_parts() {
        assert_eq!(
            split_message(b"progress\ndoc-1\n{\"a\":\"x\\ny\"}"),
            Some(("progress", "doc-1", "{\"a\":\"x\\ny\"}"))
        );
        assert_eq!(split_message(b"progress\ndoc-1"), None);
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
