//! Many herald instances sharing Redis: one seq per session for the whole
//! cluster, and every event delivered in seq order on every instance that
//! watches its session.
//!
//! Ordering is the design constraint. socketioxide's adapter broadcasts to an
//! instance's own sockets before Redis relays the event to the others, so a
//! backend alternating between instances A and B could see B's subscribers
//! get seq 2 (published on B, delivered at once) before seq 1 (published on
//! A, still on its way through Redis). herald therefore does not broadcast
//! events through the adapter. A publish runs one Lua script that takes the
//! session's next seq, records its state and PUBLISHes the finished payload
//! on the session's channel, atomically; Redis runs scripts one at a time,
//! so the channel carries the session's events in seq order. Every instance
//! watching the session (see `interest`), the publishing one included,
//! delivers what arrives on its channels to its own sockets, from one task,
//! in arrival order. Concurrent publishers to one session are thereby
//! ordered too: the order Redis ran their scripts is both their seq order
//! and everyone's delivery order.
//!
//! The socketioxide-redis adapter is still installed: it answers the
//! cluster-wide questions (how many sockets watch a session, which rooms
//! exist), over the same reconnecting link.

mod interest;
mod link;
mod queue;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt};
use redis::{AsyncCommands, Script};
use serde_json::value::RawValue;
use socketioxide::adapter::Emitter;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, info, warn};

pub(crate) use link::Link;
pub use link::LinkProblem;

use super::{
    Action, FanOut, InstanceReport, Join, Outbound, Published, Sequenced, Sequencer,
    SequencerError, SessionState,
    history::{Attached, Epoch, Held, Page, Start, ends_session, recover},
};
use crate::{
    metrics::Metrics,
    protocol::{Family, Scope, SessionId, Topic, random_u64},
};

/// The Socket.IO adapter of a Redis-backed herald.
pub(crate) type RedisAdapter = CustomRedisAdapter<Emitter, Link>;

/// How long a cluster-wide question may wait for the other instances: a dead
/// instance must not stall anyone for longer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

/// How long a subscription waits for a Redis link that is down before it is
/// refused.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

/// Publishes this instance may have sent to Redis and not had answered yet.
/// The rest wait, unsent, so that a Redis stall leaves at most this many
/// publishes whose outcome is unknown; a publish still waiting after
/// [`SEND_WAIT`] is withdrawn, certainly unpublished. The wait is shorter
/// than Redis's response timeout (2 s, `link`), so that publishes queued
/// behind a stall are withdrawn before the stalled ones free their places.
const PUBLISHES_IN_FLIGHT: usize = 256;
const SEND_WAIT: Duration = Duration::from_secs(1);

/// How long an instance's figures count in the cluster totals after it last
/// reported them: a killed instance drops out within this.
const INSTANCE_TTL_SECS: u64 = 5;

/// Takes the session's next seq, records its state and history, and
/// publishes the payload, as one step, so that seq, state and history can
/// never disagree. KEYS: the session's hash, its history stream (one slot:
/// the braces). ARGV: payload head, payload tail, event channel, message
/// header, flags (progress, completed, failed, ended as "0"/"1"), TTL in ms,
/// an epoch for a new sequence, history length, event name, idempotency
/// window in ms, the request's fingerprint, the publish command (`PUBLISH`,
/// or `SPUBLISH` for a stream's channel on a Redis Cluster: that channel
/// is in the session's slot). Returns the seq, the epoch and
/// what happened (below). A new sequence (seq 1) starts
/// with an empty history. With a third key (the publish's idempotency key,
/// in the session's slot), a key already recorded answers its seq and
/// publishes nothing: the check and the record are in the same atomic step
/// as the publish, so a retry racing its original publishes once. The key
/// records `seq:fingerprint`: a different fingerprint under it is a
/// different event, answered `reused` (a bare seq, recorded by a herald
/// before fingerprints, counts as a repeat); otherwise `repeat`, or `sent`
/// for a publish.
const PUBLISH_SCRIPT: &str = r#"
if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then
    local seq, print = string.match(first, '^(%d+):?(%x*)$')
    local verdict = 'repeat'
    if print ~= '' and print ~= ARGV[11] then verdict = 'reused' end
    return {tonumber(seq), redis.call('HGET', KEYS[1], 'epoch') or '', verdict}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
if seq == 1 then redis.call('DEL', KEYS[2]) end
local payload = ARGV[1] .. seq .. ARGV[2]
local stored = seq .. '\n' .. ARGV[9] .. '\n' .. payload
if string.sub(ARGV[5], 1, 1) == '1' then redis.call('HSET', KEYS[1], 'progress', stored) end
if string.sub(ARGV[5], 2, 2) == '1' then redis.call('HSET', KEYS[1], 'completed', 1) end
if string.sub(ARGV[5], 3, 3) == '1' then redis.call('HSET', KEYS[1], 'failed', 1) end
if string.sub(ARGV[5], 4, 4) == '1' then redis.call('HSET', KEYS[1], 'ended', stored) end
if tonumber(ARGV[8]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[8], seq .. '-0', 'n', ARGV[9], 'p', payload)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if KEYS[3] then redis.call('SET', KEYS[3], seq .. ':' .. ARGV[11], 'PX', ARGV[10]) end
redis.call(ARGV[12], ARGV[3], ARGV[4] .. seq .. '\n' .. payload)
return {seq, epoch, 'sent'}
"#;

/// Reads what a subscription or the history endpoint needs, at one moment.
/// KEYS: the session's hash, its history stream. ARGV: an epoch for a
/// session with no state, TTL in ms, "1" to create the state if missing,
/// since, the epoch the client gave ("" for none), how many events at most
/// ("0": all held). Returns seq, epoch (false: none), the first held seq,
/// the stored progress and final events, and the held events after since,
/// or after 0 when the client's sequence is gone (its epoch differs, or
/// since is past seq: the rule of `history::recover`).
const READ_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch and ARGV[3] == '1' then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local first_held = seq + 1
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then first_held = tonumber(string.match(first[1][1], '^(%d+)')) end
local since = tonumber(ARGV[4])
if (ARGV[5] ~= '' and ARGV[5] ~= epoch) or since > seq then since = 0 end
local events
if tonumber(ARGV[6]) > 0 then
  events = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[6])
else
  events = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+')
end
local state = redis.call('HMGET', KEYS[1], 'progress', 'ended')
return {seq, epoch or false, first_held, state[1] or false, state[2] or false, events}
"#;

/// Names of everything herald keeps in Redis, under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, topic: &Topic) -> String {
        // The braces keep a stream's keys in one Redis Cluster slot.
        let names = topic.family.storage_names();
        format!("{}:{}:{{{}}}", self.prefix, names.state, topic.id)
    }
    fn history(&self, topic: &Topic) -> String {
        let names = topic.family.storage_names();
        format!("{}:{}:{{{}}}", self.prefix, names.history, topic.id)
    }
    fn idempotency(&self, topic: &Topic, key: &str) -> String {
        let names = topic.family.storage_names();
        format!(
            "{}:{}:{{{}}}:{key}",
            self.prefix, names.idempotency, topic.id
        )
    }
    /// The channel every instance reads: events of families without
    /// per-stream channels, events addressed beyond their stream, and all
    /// events while an instance of an older release is live.
    fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// A stream's own channel, in its keys' slot (the braces), read by the
    /// instances that watch it (see `interest`).
    fn stream_channel(&self, topic: &Topic) -> String {
        let names = topic.family.storage_names();
        format!("{}:{}-events:{{{}}}", self.prefix, names.state, topic.id)
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

/// Where herald's Redis is and how to use it.
pub(crate) struct Settings<'a> {
    pub urls: &'a [&'a str],
    /// `urls` are the seed nodes of a Redis Cluster.
    pub cluster: bool,
    pub prefix: &'a str,
    pub session_ttl: Duration,
    /// Events kept per session (a Redis Stream capped at this length).
    pub history_events: usize,
    /// Events that may wait for this instance's delivery task.
    pub queue_events: usize,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_ttl: Duration,
}

/// The link to Redis, made before the Socket.IO server (whose adapter runs
/// over it) and the sequencer (which needs that server's fan-out).
pub(crate) struct Setup {
    link: Link,
    queue: queue::EventQueue<Command>,
    events: queue::EventReceiver<Command>,
    behind: Arc<queue::Behind>,
    keys: Keys,
    ttl_ms: u64,
    history_events: usize,
    idempotency_ms: u64,
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
        let uid = format!("{:016x}", random_u64());
        let (queue, events, behind) = queue::bounded(settings.queue_events, metrics.clone());
        let link = Link::new(
            settings.urls,
            settings.cluster,
            &keys.events(),
            queue.clone(),
            keys.probe(&uid),
        )?;
        let config = RedisAdapterConfig::new()
            .with_prefix(format!("{}-socket.io", settings.prefix))
            .with_request_timeout(REQUEST_TIMEOUT);
        let adapter = RedisAdapterCtr::new_with_driver(link.clone(), config);
        let setup = Self {
            link,
            queue,
            events,
            behind,
            keys,
            ttl_ms: settings.session_ttl.as_millis().max(1) as u64,
            history_events: settings.history_events,
            idempotency_ms: settings.idempotency_ttl.as_millis().max(1) as u64,
            metrics,
        };
        Ok((setup, adapter))
    }
}

/// What the delivery task is asked besides delivering: subscriptions in the
/// making. Delivery and these run in one task, so a subscription's replay
/// and the live events after it cannot interleave; and they wait in the same
/// queue as the events, so that one is served only after every event that
/// arrived before it. That matters for `Join`: Redis pushes an event to this
/// instance before it answers a read made after the event was published
/// (one connection carries both), so every event the read counted is
/// delivered before the subscriber joins, and none reaches it twice.
pub(crate) enum Command {
    /// Start keeping the session's events for a subscription about to read
    /// its history; answered once the task has taken note.
    Register {
        session: Topic,
        id: u64,
        noted: oneshot::Sender<()>,
    },
    /// The history is read: add what was kept since, and join.
    Join {
        session: Topic,
        id: u64,
        attached: Attached,
        join: Join,
    },
    /// The history could not be read: stop keeping.
    Cancel { session: Topic, id: u64 },
}

pub(crate) struct RedisSequencer {
    link: Link,
    behind: Arc<queue::Behind>,
    keys: Keys,
    publish_script: Script,
    read_script: Script,
    ttl_ms: u64,
    history_events: usize,
    idempotency_ms: u64,
    in_flight: Semaphore,
    commands: queue::EventQueue<Command>,
    next_joiner: AtomicU64,
    interest: interest::Interest,
    /// Where topic events go: [`PER_STREAM`] unless an instance of an older
    /// release is live ([`SHARED`]); [`UNKNOWN`] until the registry was read.
    channels: AtomicU8,
    metrics: Arc<Metrics>,
}

impl RedisSequencer {
    /// The sequencer, and its background work (delivering the cluster's
    /// events to `fanout`, watching the link), which runs as long as it is
    /// polled.
    pub(crate) fn new(
        setup: Setup,
        fanout: Arc<dyn FanOut>,
    ) -> (Arc<Self>, BoxFuture<'static, ()>) {
        let Setup {
            link,
            queue,
            events,
            behind,
            keys,
            ttl_ms,
            history_events,
            idempotency_ms,
            metrics,
        } = setup;
        let interest = interest::Interest::new(link.clone(), metrics.clone());
        let sequencer = Arc::new(Self {
            link,
            behind,
            keys,
            publish_script: Script::new(PUBLISH_SCRIPT),
            read_script: Script::new(READ_SCRIPT),
            ttl_ms,
            history_events,
            idempotency_ms,
            in_flight: Semaphore::new(PUBLISHES_IN_FLIGHT),
            commands: queue,
            next_joiner: AtomicU64::new(0),
            interest,
            channels: AtomicU8::new(UNKNOWN),
            metrics,
        });
        let run = {
            let sequencer = sequencer.clone();
            async move {
                tokio::join!(
                    deliver_all(events, fanout.clone()),
                    sequencer.link.watch(),
                    sequencer.interest.sweep(fanout.as_ref()),
                );
            }
        };
        (sequencer, run.boxed())
    }

    /// Keeps this instance's report for [`INSTANCE_TTL_SECS`]: the
    /// registry lists only instances that reported lately.
    async fn write_report(&self, report: &InstanceReport) {
        let Ok(mut conn) = self.link.connection() else {
            return;
        };
        let text = serde_json::to_string(report).unwrap_or_default();
        let written: Result<(), _> = redis::pipe()
            .set_ex(self.keys.instance(&report.id), text, INSTANCE_TTL_SECS)
            .ignore()
            .sadd(self.keys.instances(), &report.id)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = written {
            debug!("could not report this instance's figures: {e}");
        }
    }

    async fn publish(&self, out: Outbound<'_>) -> Result<Published, SequencerError> {
        // A publish this instance could not receive back would reach the
        // other instances' subscribers but not its own: refuse it instead.
        if let Some(problem) = self.link.problem() {
            return Err(SequencerError::LinkDown(problem));
        }
        let o = out.outcome;
        let flags: String = [o.is_progress, o.completed, o.failed, ends_session(&o)]
            .iter()
            .map(|f| if *f { '1' } else { '0' })
            .collect();
        let header = Message::header(out.topic, out.name, out.scope);
        let failed = redis_failed(Action::Publish);
        let withdrawn = || {
            let problem = self.link.problem().unwrap_or(LinkProblem::NotDelivering);
            SequencerError::LinkDown(problem)
        };
        let Ok(Ok(_sending)) = tokio::time::timeout(SEND_WAIT, self.in_flight.acquire()).await
        else {
            return Err(withdrawn());
        };
        // The link may have gone down while this one waited.
        if self.link.problem().is_some() {
            return Err(withdrawn());
        }
        let mut script = self.publish_script.key(self.keys.session(out.topic));
        script.key(self.keys.history(out.topic));
        if let Some(keyed) = out.idempotency {
            script.key(self.keys.idempotency(out.topic, keyed.key));
        }
        let fingerprint = out.idempotency.map(|k| k.fingerprint.to_string());
        let per_stream = out.scope == Scope::Topic
            && out.topic.family.per_stream_channels()
            && self.channels().await == PER_STREAM;
        let (channel, command) = match per_stream {
            true if self.link.sharded() => (self.keys.stream_channel(out.topic), "SPUBLISH"),
            true => (self.keys.stream_channel(out.topic), "PUBLISH"),
            false => (self.keys.events(), "PUBLISH"),
        };
        let mut conn = self.link.connection().map_err(&failed)?;
        let (seq, _epoch, verdict): (u64, String, String) = script
            .arg(&out.encoded.head)
            .arg(&out.encoded.tail)
            .arg(channel)
            .arg(header)
            .arg(flags)
            .arg(self.ttl_ms)
            .arg(Epoch::fresh().to_string())
            .arg(self.history_events)
            .arg(out.name)
            .arg(self.idempotency_ms)
            .arg(fingerprint.as_deref().unwrap_or(""))
            .arg(command)
            .invoke_async(&mut conn)
            .await
            .map_err(sent_failed)?;
        Ok(match verdict.as_str() {
            "repeat" => Published::Repeat(seq),
            "reused" => Published::KeyReused(seq),
            _ => Published::Sent(seq),
        })
    }

    async fn state(&self, id: &Topic) -> Result<SessionState, SequencerError> {
        let failed = redis_failed(Action::ReadSession);
        let (seq, epoch, progress, completed, failed_flag): StateReply = redis::cmd("HMGET")
            .arg(self.keys.session(id))
            .arg(&["seq", "epoch", "progress", "completed", "failed"])
            .query_async(&mut self.link.connection().map_err(&failed)?)
            .await
            .map_err(&failed)?;
        Ok(SessionState {
            seq: seq.unwrap_or(0),
            epoch: epoch.as_deref().and_then(Epoch::parse),
            progress: progress
                .and_then(|p| stored_event(id.family, &p))
                .map(|e| e.payload),
            completed: completed == Some(1),
            failed: failed_flag == Some(1),
        })
    }

    /// Runs the read script: see [`READ_SCRIPT`].
    async fn read(&self, id: &Topic, ask: ReadAsk<'_>) -> Result<Read, SequencerError> {
        let failed = redis_failed(ask.action);
        let (seq, epoch, first_held, progress, ended, entries): ReadReply = self
            .read_script
            .key(self.keys.session(id))
            .key(self.keys.history(id))
            .arg(Epoch::fresh().to_string())
            .arg(self.ttl_ms)
            .arg(if ask.create { "1" } else { "0" })
            .arg(ask.since)
            .arg(ask.given.unwrap_or(""))
            .arg(ask.limit)
            .invoke_async(&mut self.link.connection().map_err(&failed)?)
            .await
            .map_err(&failed)?;
        let events = entries
            .into_iter()
            .filter_map(|(entry, fields)| history_entry(id.family, &entry, fields))
            .collect();
        let snapshot = [progress, ended]
            .iter()
            .flatten()
            .filter_map(|text| stored_event(id.family, text))
            .collect();
        Ok(Read {
            seq,
            epoch: epoch.as_deref().and_then(Epoch::parse),
            first_held,
            snapshot,
            events,
        })
    }

    /// Makes sure this instance receives the stream's events from the
    /// moment this resolves: waits for the link, then for the stream's
    /// channel. Nothing is published while the link is down, so a client
    /// that waits for it misses nothing.
    async fn receive(&self, id: &Topic) -> Result<Option<interest::Attaching<'_>>, SequencerError> {
        if tokio::time::timeout(SUBSCRIBE_WAIT, self.link.live())
            .await
            .is_err()
        {
            let problem = self.link.problem().unwrap_or(LinkProblem::NotDelivering);
            return Err(SequencerError::LinkDown(problem));
        }
        if !id.family.per_stream_channels() {
            return Ok(None);
        }
        let channel = || self.keys.stream_channel(id);
        let attaching = self.interest.attach(id, channel).await;
        attaching.map(Some).map_err(redis_failed(Action::Subscribe))
    }

    /// See [`Sequencer::attach`]: the delivery task keeps the session's
    /// events from before the history is read until the subscriber has
    /// joined, and runs the join itself, between two deliveries.
    async fn attach(&self, id: &Topic, start: Start, join: Join) {
        let (ran, done) = oneshot::channel();
        let join: Join = Box::new(move |result| {
            join(result);
            let _ = ran.send(());
        });
        // Held until the subscriber has joined: then it counts as a watcher.
        let _receiving = match self.receive(id).await {
            Ok(receiving) => receiving,
            Err(e) => return join(Err(e)),
        };
        let joiner = self.next_joiner.fetch_add(1, Ordering::Relaxed);
        let (noted, taken) = oneshot::channel();
        let registered = self
            .commands
            .request(Command::Register {
                session: id.clone(),
                id: joiner,
                noted,
            })
            .await;
        if registered.is_err() || taken.await.is_err() {
            return join(Err(SequencerError::Stopped(Action::Subscribe)));
        }
        let (since, given) = match &start {
            Start::Snapshot => (0, None),
            Start::Resume { since, epoch } => (*since, epoch.as_deref()),
        };
        let ask = ReadAsk {
            create: true,
            since,
            given,
            limit: 0,
            action: Action::Subscribe,
        };
        let read = match self.read(id, ask).await {
            Ok(read) => read,
            Err(e) => {
                let _ = self
                    .commands
                    .request(Command::Cancel {
                        session: id.clone(),
                        id: joiner,
                    })
                    .await;
                return join(Err(e));
            }
        };
        let epoch = read.epoch.unwrap_or_else(Epoch::fresh);
        let (mut events, recovery) = match start {
            Start::Snapshot => (read.snapshot, None),
            Start::Resume {
                since,
                epoch: given,
            } => {
                let r = recover(since, given.as_deref(), epoch, read.seq, read.first_held);
                (read.events, Some(r))
            }
        };
        events.sort_by_key(|e| e.seq);
        let attached = Attached {
            seq: read.seq,
            epoch,
            events,
            recovery,
            caught_up: Vec::new(),
            settled: false,
        };
        let sent = self
            .commands
            .request(Command::Join {
                session: id.clone(),
                id: joiner,
                attached,
                join,
            })
            .await;
        match sent {
            Ok(()) => {
                let _ = done.await;
            }
            Err(Command::Join { join, .. }) => {
                join(Err(SequencerError::Stopped(Action::Subscribe)))
            }
            Err(_) => {}
        }
    }

    async fn history(&self, id: &Topic, since: u64, limit: usize) -> Result<Page, SequencerError> {
        let ask = ReadAsk {
            create: false,
            since,
            given: None,
            limit,
            action: Action::ReadSession,
        };
        let read = self.read(id, ask).await?;
        Ok(Page {
            seq: read.seq,
            epoch: read.epoch,
            recovered: read.first_held <= since + 1 && since <= read.seq,
            events: read.events,
        })
    }

    /// The reports of the live instances; `None` when Redis cannot say.
    async fn reports(&self) -> Option<Vec<InstanceReport>> {
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
        let mut live = Vec::with_capacity(reports.len());
        for (uid, report) in uids.iter().zip(reports) {
            match report.and_then(|r| serde_json::from_str::<InstanceReport>(&r).ok()) {
                Some(mut report) => {
                    // Reports of older versions carry no id.
                    report.id.clone_from(uid);
                    live.push(report);
                }
                // Its report expired: the instance is gone.
                None => {
                    let _: Result<(), _> = conn.srem(self.keys.instances(), uid).await;
                }
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        self.choose_channels(&live);
        Some(live)
    }
}

impl RedisSequencer {
    /// Where topic events go. The first publishes read the registry before
    /// they are sent, so that an instance never switches channels at its
    /// start (which, on a Redis Cluster, could let the first events on one
    /// overtake the last on the other); while Redis cannot say, the shared
    /// channel, which every release reads.
    async fn channels(&self) -> u8 {
        if self.channels.load(Ordering::Relaxed) == UNKNOWN {
            self.reports().await;
        }
        match self.channels.load(Ordering::Relaxed) {
            UNKNOWN => SHARED,
            known => known,
        }
    }

    /// Publishes on the streams' own channels unless an instance of an
    /// older release, which reads only the shared channel, is live: a
    /// rolling upgrade from one loses nothing. Every instance switches
    /// within a second of the registry changing; meanwhile they may publish
    /// either way, and this release reads both. On a Redis Cluster, events
    /// published around a switch can reach a client out of order (the
    /// shared channel crosses the cluster bus, a stream's does not); a
    /// single Redis carries both on one connection, in order.
    fn choose_channels(&self, live: &[InstanceReport]) {
        let older = live.iter().find(|r| !r.stream_channels);
        let channels = if older.is_none() { PER_STREAM } else { SHARED };
        if self.channels.swap(channels, Ordering::Relaxed) == channels {
            return;
        }
        self.metrics
            .cluster_per_stream
            .set(i64::from(channels == PER_STREAM));
        match older {
            None => info!(
                "publishing each stream's events on its own channel: only the instances watching it receive them"
            ),
            Some(r) => warn!(
                instance = %r.id,
                version = %r.version,
                "publishing every event on the shared channel: an instance of an older release reads only that one"
            ),
        }
    }
}

/// Values of `RedisSequencer::channels`.
const UNKNOWN: u8 = 0;
const PER_STREAM: u8 = 1;
const SHARED: u8 = 2;

/// What to ask the read script.
struct ReadAsk<'a> {
    /// Create the session's state (and epoch) if it has none.
    create: bool,
    since: u64,
    /// The epoch the client gave, if any.
    given: Option<&'a str>,
    /// At most this many events; 0 for all held.
    limit: usize,
    action: Action,
}

/// A session hash's seq, epoch, progress, completed and failed fields.
type StateReply = (
    Option<u64>,
    Option<String>,
    Option<String>,
    Option<u8>,
    Option<u8>,
);

/// What the read script answers: seq, epoch, first held seq, stored
/// progress, stored final event, history entries.
type ReadReply = (
    u64,
    Option<String>,
    u64,
    Option<String>,
    Option<String>,
    Vec<(String, Vec<String>)>,
);

/// The read script's answer, parsed.
struct Read {
    seq: u64,
    epoch: Option<Epoch>,
    first_held: u64,
    snapshot: Vec<Held>,
    events: Vec<Held>,
}

/// An event the publish script stored in the session's hash: `seq \n name
/// \n payload`.
fn stored_event(family: Family, text: &str) -> Option<Held> {
    let (seq, rest) = text.split_once('\n')?;
    let (name, payload) = rest.split_once('\n')?;
    Some(Held {
        seq: seq.parse().ok()?,
        name: family.event_name(name)?,
        payload: Arc::from(RawValue::from_string(payload.to_string()).ok()?),
    })
}

/// A history stream entry: id `seq-0`, fields `n` (name) and `p` (payload).
fn history_entry(family: Family, id: &str, fields: Vec<String>) -> Option<Held> {
    let seq = id.split_once('-')?.0.parse().ok()?;
    let (mut name, mut payload) = (None, None);
    let mut fields = fields.into_iter();
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        match key.as_str() {
            "n" => name = family.event_name(&value),
            "p" => payload = RawValue::from_string(value).ok().map(Arc::from),
            _ => {}
        }
    }
    Some(Held {
        seq,
        name: name?,
        payload: payload?,
    })
}

impl Sequencer for RedisSequencer {
    fn adapter(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(
        &'a self,
        out: Outbound<'a>,
    ) -> BoxFuture<'a, Result<Published, SequencerError>> {
        RedisSequencer::publish(self, out).boxed()
    }

    fn state<'a>(&'a self, id: &'a Topic) -> BoxFuture<'a, Result<SessionState, SequencerError>> {
        RedisSequencer::state(self, id).boxed()
    }

    fn attach<'a>(&'a self, id: &'a Topic, start: Start, join: Join) -> BoxFuture<'a, ()> {
        RedisSequencer::attach(self, id, start, join).boxed()
    }

    fn watch<'a>(&'a self, id: &'a Topic) -> BoxFuture<'a, Result<(), SequencerError>> {
        // The channel lingers after the guard: the client counts as a
        // watcher long before the sweep looks.
        async move { self.receive(id).await.map(drop) }.boxed()
    }

    fn history<'a>(
        &'a self,
        id: &'a Topic,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, SequencerError>> {
        RedisSequencer::history(self, id, since, limit).boxed()
    }

    fn problem(&self) -> Option<LinkProblem> {
        self.link.problem().or_else(|| {
            self.behind
                .dropped()
                .map(|dropped| LinkProblem::FellBehind { dropped })
        })
    }

    fn report<'a>(&'a self, report: &'a InstanceReport) -> BoxFuture<'a, ()> {
        self.write_report(report).boxed()
    }

    fn instances(&self) -> BoxFuture<'_, Option<Vec<InstanceReport>>> {
        self.reports().boxed()
    }
}

/// Subscriptions in the making, with the events kept for each meanwhile.
type Joining = HashMap<Topic, Vec<(u64, Vec<Held>)>>;

/// One task, in arrival order: the order Redis published, which is seq
/// order for every session. Subscriptions in the making are served here too,
/// in their place in the queue (see [`Command`]).
async fn deliver_all(mut events: queue::EventReceiver<Command>, fanout: Arc<dyn FanOut>) {
    let mut joining = Joining::new();
    while let Some(item) = events.next().await {
        match item {
            queue::Item::Event(message) => {
                deliver_one(&message, &mut joining, fanout.as_ref()).await
            }
            queue::Item::Command(command) => serve(command, &mut joining),
        }
    }
}

fn serve(command: Command, joining: &mut Joining) {
    match command {
        Command::Register { session, id, noted } => {
            joining.entry(session).or_default().push((id, Vec::new()));
            let _ = noted.send(());
        }
        Command::Join {
            session,
            id,
            mut attached,
            join,
        } => {
            if let Some(kept) = take_joiner(joining, &session, id) {
                attached.catch_up(kept);
            }
            join(Ok(attached));
        }
        Command::Cancel { session, id } => {
            take_joiner(joining, &session, id);
        }
    }
}

fn take_joiner(joining: &mut Joining, session: &Topic, id: u64) -> Option<Vec<Held>> {
    let waiting = joining.get_mut(session)?;
    let at = waiting.iter().position(|(joiner, _)| *joiner == id)?;
    let (_, kept) = waiting.swap_remove(at);
    if waiting.is_empty() {
        joining.remove(session);
    }
    Some(kept)
}

async fn deliver_one(message: &[u8], joining: &mut Joining, fanout: &dyn FanOut) {
    let Some(message) = Message::split(message) else {
        warn!("ignoring a malformed event message on the cluster channel");
        return;
    };
    let Ok(id) = SessionId::parse(message.session) else {
        warn!("ignoring a cluster event for an invalid session id");
        return;
    };
    let session = Topic {
        family: message.family,
        id,
    };
    let waiting = joining.get_mut(&session);
    if waiting.is_none() && message.scope == Scope::Topic && !fanout.watches(&session) {
        return;
    }
    let Ok(payload) = RawValue::from_string(message.payload.to_string()) else {
        warn!(%session, "ignoring a cluster event whose payload is not JSON");
        return;
    };
    if let Some(waiting) = waiting {
        match session.family.event_name(message.name) {
            Some(name) => {
                let shared: Arc<RawValue> = Arc::from(payload.clone());
                for (_, kept) in waiting.iter_mut() {
                    kept.push(Held {
                        seq: message.seq,
                        name,
                        payload: shared.clone(),
                    });
                }
            }
            None => {
                warn!(%session, name = message.name, "not keeping a cluster event of an unknown name")
            }
        }
    }
    fanout
        .deliver(Sequenced {
            topic: &session,
            name: message.name,
            scope: message.scope,
            seq: message.seq,
            payload: &payload,
        })
        .await;
}

/// Maps the error of a publish handed to the connection: an I/O failure
/// (no answer in time, a broken connection) leaves it unknown whether Redis
/// ran the script, unless the connection was refused (nothing was sent).
fn sent_failed(source: redis::RedisError) -> SequencerError {
    let action = Action::Publish;
    if source.is_io_error() && !source.is_connection_refusal() {
        SequencerError::OutcomeUnknown { action, source }
    } else {
        SequencerError::Redis { action, source }
    }
}

/// Maps a Redis error to a refusal saying what could not be done.
fn redis_failed(action: Action) -> impl Fn(redis::RedisError) -> SequencerError {
    move |source| SequencerError::Redis { action, source }
}

/// An event as it travels on the cluster channel: `label \n id \n seq \n
/// payload`, where the label is the event's name, preceded by `family/`
/// for every family with a channel tag and followed by `/scope` when the
/// event is addressed beyond its stream (`run/run.started/project`).
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    family: Family,
    name: &'a str,
    scope: Scope,
    session: &'a str,
    seq: u64,
    payload: &'a str,
}

impl<'a> Message<'a> {
    /// The first two lines, which the publish script completes.
    fn header(topic: &Topic, name: &str, scope: Scope) -> String {
        let mut header = String::with_capacity(name.len() + topic.id.as_ref().len() + 24);
        if let Some(tag) = topic.family.channel_tag() {
            header.push_str(tag);
            header.push('/');
        }
        header.push_str(name);
        if scope != Scope::Topic {
            header.push('/');
            header.push_str(scope.as_str());
        }
        header.push('\n');
        header.push_str(topic.id.as_ref());
        header.push('\n');
        header
    }

    fn split(message: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(message).ok()?;
        let (label, rest) = text.split_once('\n')?;
        let (session, rest) = rest.split_once('\n')?;
        let (seq, payload) = rest.split_once('\n')?;
        let mut parts = label.split('/');
        let (family, name) = match (parts.next()?, parts.next()) {
            (name, None) => (Family::Session, name),
            (tag, Some(name)) => (Family::parse(tag)?, name),
        };
        let scope = match parts.next() {
            None => Scope::Topic,
            Some(scope) => Scope::parse(scope)?,
        };
        Some(Self {
            family,
            name,
            scope,
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
                family: Family::Session,
                name: "progress",
                scope: Scope::Topic,
                session: "doc-1",
                seq: 7,
                payload: "{\"a\":\"x\\ny\"}"
            })
        );
        assert_eq!(Message::split(b"progress\ndoc-1\n{}"), None);
        let run = Topic::run(SessionId::parse("r:1").unwrap());
        let header = Message::header(&run, "run.started", Scope::Project);
        assert_eq!(header, "run/run.started/project\nr:1\n");
        let text = format!("{header}3\n{{}}");
        let message = Message::split(text.as_bytes()).unwrap();
        assert_eq!(
            (message.family, message.name, message.scope, message.seq),
            (Family::Run, "run.started", Scope::Project, 3)
        );
        assert_eq!(Message::split(b"progress\ndoc-1\nx\n{}"), None);
    }

    #[test]
    fn session_keys_share_a_cluster_slot() {
        let keys = Keys {
            prefix: "herald".into(),
        };
        assert_eq!(
            keys.session(&Topic::session(SessionId::parse("a").unwrap())),
            "herald:session:{a}"
        );
        assert_eq!(
            keys.history(&Topic::run(SessionId::parse("a").unwrap())),
            "herald:run-history:{a}"
        );
        // The script publishes on it: on a Redis Cluster, SPUBLISH from a
        // script must stay in the slot of the script's keys.
        assert_eq!(
            keys.stream_channel(&Topic::session(SessionId::parse("a").unwrap())),
            "herald:session-events:{a}"
        );
    }
}
