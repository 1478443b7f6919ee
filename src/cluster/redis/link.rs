//! herald's connection to Redis: one connection manager that reconnects by
//! itself, the pub/sub messages it receives routed to whoever subscribed, a
//! liveness probe, and the [`Driver`] socketioxide-redis runs on.
//!
//! Why not socketioxide-redis's own driver: it holds one multiplexed
//! connection that never reconnects or resubscribes once Redis restarts, and
//! drops messages when a consumer lags. Here the connection manager
//! reconnects and resubscribes; the probe publishes to a channel of this
//! instance every second and counts the link live only while the message
//! comes back, which is the only proof that the subscription, not just the
//! connection, works.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncCommands, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{Command, queue::EventQueue};

/// How often the probe runs, and how long its message may take to return.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Where the messages of a subscribed channel go.
enum Route {
    /// socketioxide-redis's request and response channels: bounded, as its
    /// driver interface requires.
    Adapter(mpsc::Sender<ChanItem>),
    /// herald's shared event channel: into the event queue, in order,
    /// bounded (see `queue`).
    Events,
    /// One stream's own event channel (see `interest`), into the same
    /// queue; sharded pub/sub on a Redis Cluster, like the publish that
    /// feeds it.
    Stream,
    /// This instance's probe channel.
    Probe,
}

struct Shared {
    routes: RwLock<HashMap<String, Route>>,
    events: EventQueue<Command>,
    probe_channel: String,
    probe_seen: AtomicU64,
    probe_arrived: Notify,
    /// `None` while live; the reason otherwise.
    problem: watch::Sender<Option<LinkProblem>>,
    /// The connection; a cluster's is made once Redis first answers.
    conn: RwLock<Option<Conn>>,
}

/// A connection to one Redis, or to a Redis Cluster. Both reconnect and
/// resubscribe by themselves.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Classic pub/sub subscription: on a Redis Cluster, one channel per
    /// command, since the client routes a subscription by its channel.
    async fn subscribe(&mut self, channels: &[String]) -> Result<(), RedisError> {
        match self {
            Self::Single(c) => c.subscribe(channels).await,
            Self::Cluster(c) => {
                for channel in channels {
                    c.subscribe(channel).await?;
                }
                Ok(())
            }
        }
    }
}

/// Why the link cannot carry the cluster's events right now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkProblem {
    #[error("not connected to Redis yet")]
    NotConnectedYet,
    #[error("lost the connection to Redis")]
    ConnectionLost,
    #[error("Redis is unreachable: {0}")]
    Unreachable(Arc<RedisError>),
    #[error("the Redis subscription is not delivering messages")]
    NotDelivering,
    /// The link works, but this instance dropped events it could not keep
    /// up with (see `queue`).
    #[error("this instance fell behind the cluster's events ({dropped} dropped so far)")]
    FellBehind { dropped: u64 },
}

impl LinkProblem {
    fn unreachable(e: RedisError) -> Self {
        Self::Unreachable(Arc::new(e))
    }
}

/// How the link (re)connects.
enum Target {
    Single,
    Cluster(Box<ClusterClient>),
}

/// A cheap handle on the link.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
    target: Arc<Target>,
}

impl Link {
    /// Sets up the link without waiting for Redis: herald starts and serves
    /// its local sockets even when Redis is down. `urls` is one Redis, or
    /// the seed nodes of a Redis Cluster when `cluster` is set. `events`
    /// receives every message of `events_channel`, in the order Redis
    /// published them.
    pub(crate) fn new(
        urls: &[&str],
        cluster: bool,
        events_channel: &str,
        events: EventQueue<Command>,
        probe_channel: String,
    ) -> Result<Self, RedisError> {
        let mut routes = HashMap::new();
        routes.insert(events_channel.to_string(), Route::Events);
        routes.insert(probe_channel.clone(), Route::Probe);
        let shared = Arc::new(Shared {
            routes: RwLock::new(routes),
            events,
            probe_channel,
            probe_seen: AtomicU64::new(0),
            probe_arrived: Notify::new(),
            problem: watch::Sender::new(Some(LinkProblem::NotConnectedYet)),
            conn: RwLock::new(None),
        });
        let router = shared.clone();
        let push = move |push: PushInfo| {
            Shared::route(&router, push);
            Ok::<(), std::convert::Infallible>(())
        };
        let target = if cluster {
            let client = ClusterClientBuilder::new(urls.to_vec())
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(2))
                .build()?;
            Target::Cluster(Box::new(client))
        } else {
            let [url] = urls else {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "several Redis URLs are the seed nodes of a cluster: set REDIS_CLUSTER",
                )));
            };
            // Pub/sub over a multiplexed connection needs RESP3.
            let info = url.into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = Client::open(info.set_redis_settings(settings))?;
            let config = ConnectionManagerConfig::new()
                .set_push_sender(push)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, config)?;
            *shared.conn.write().unwrap() = Some(Conn::Single(manager));
            Target::Single
        };
        Ok(Self {
            shared,
            target: Arc::new(target),
        })
    }

    /// A connection for commands; it reconnects by itself.
    pub fn connection(&self) -> Result<Conn, RedisError> {
        self.shared.conn.read().unwrap().clone().ok_or_else(|| {
            RedisError::from((ErrorKind::Io, "not connected to the Redis Cluster yet"))
        })
    }

    pub(super) fn sharded(&self) -> bool {
        matches!(*self.target, Target::Cluster(_))
    }

    /// `None` while Redis is reachable and this instance's subscription
    /// delivers; otherwise why not.
    pub fn problem(&self) -> Option<LinkProblem> {
        self.shared.problem.borrow().clone()
    }

    /// Resolves once the link is live (at once when it is).
    pub async fn live(&self) {
        let mut problem = self.shared.problem.subscribe();
        let _ = problem.wait_for(Option::is_none).await;
    }

    /// Probes the link every second for as long as it runs, logging one
    /// error when it goes down and one line when it is back.
    pub async fn watch(&self) {
        let mut nonce = 0u64;
        let mut outage_logged = false;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            nonce += 1;
            let now = self.check(nonce).await.err();
            match (&now, outage_logged) {
                (Some(problem), false) => {
                    error!(%problem, "cluster link down: serving local sockets, publishes answer 503, retrying every second");
                    outage_logged = true;
                }
                (None, true) => {
                    info!("cluster link up: Redis reachable and subscribed");
                    outage_logged = false;
                }
                (None, false) if self.problem().is_some() => {
                    info!("cluster link up: Redis reachable and subscribed")
                }
                _ => {}
            }
            self.shared.problem.send_replace(now);
        }
    }

    async fn check(&self, nonce: u64) -> Result<(), LinkProblem> {
        if let Target::Cluster(client) = &*self.target
            && self.shared.conn.read().unwrap().is_none()
        {
            let conn = client
                .get_async_connection()
                .await
                .map_err(LinkProblem::unreachable)?;
            *self.shared.conn.write().unwrap() = Some(Conn::Cluster(conn));
        }
        if self.problem().is_some() {
            // Whatever was subscribed before an outage (or before Redis first
            // answered) is subscribed again; SUBSCRIBE is idempotent.
            self.subscribe_all()
                .await
                .map_err(LinkProblem::unreachable)?;
        }
        self.probe(nonce).await
    }

    async fn subscribe_all(&self) -> Result<(), RedisError> {
        let (mut plain, mut sharded) = (Vec::new(), Vec::new());
        for (channel, route) in self.shared.routes.read().unwrap().iter() {
            match route {
                Route::Adapter(_) | Route::Stream if self.sharded() => {
                    sharded.push(channel.clone())
                }
                _ => plain.push(channel.clone()),
            }
        }
        let mut conn = self.connection()?;
        conn.subscribe(&plain).await?;
        if let Conn::Cluster(c) = &mut conn {
            for channel in &sharded {
                c.ssubscribe(channel).await?;
            }
        }
        Ok(())
    }

    async fn probe(&self, nonce: u64) -> Result<(), LinkProblem> {
        let arrived = self.shared.probe_arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let published: Result<(), RedisError> = match self.connection() {
            Ok(mut conn) => conn.publish(&self.shared.probe_channel, nonce).await,
            Err(e) => Err(e),
        };
        published.map_err(LinkProblem::unreachable)?;
        let seen = tokio::time::timeout(PROBE_WAIT, async {
            while self.shared.probe_seen.load(Ordering::Acquire) < nonce {
                arrived.as_mut().await;
                arrived.set(self.shared.probe_arrived.notified());
                arrived.as_mut().enable();
            }
        })
        .await;
        seen.map_err(|_| LinkProblem::NotDelivering)
    }
}

impl Shared {
    /// Called by the connection for every push message, in order; must not block.
    fn route(self: &Arc<Self>, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {}
            PushKind::Disconnection => {
                // Not live until the probe says so again.
                self.problem.send_replace(Some(LinkProblem::ConnectionLost));
                return;
            }
            PushKind::SUnsubscribe => return self.follow_moved_slot(push),
            _ => return,
        }
        let mut data = push.data.into_iter();
        let (Some(channel), Some(message)) = (data.next(), data.next()) else {
            return;
        };
        let (Ok(channel), Ok(message)) = (
            redis::from_redis_value::<String>(channel),
            redis::from_redis_value::<Vec<u8>>(message),
        ) else {
            warn!("ignoring a malformed pub/sub message");
            return;
        };
        match self.routes.read().unwrap().get(&channel) {
            Some(Route::Events | Route::Stream) => self.events.push(message),
            Some(Route::Adapter(tx)) => {
                let sent = tx.try_send((channel, message));
                if sent.is_err() {
                    warn!("socket.io adapter channel full: a cluster request message was dropped");
                }
            }
            Some(Route::Probe) => {
                let nonce = std::str::from_utf8(&message)
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                self.probe_seen.fetch_max(nonce, Ordering::AcqRel);
                self.probe_arrived.notify_waiters();
            }
            None => {}
        }
    }
}

impl Shared {
    /// A Redis Cluster node ends the sharded subscriptions of a slot it no
    /// longer owns (a reshard, a failover). A channel still routed here was
    /// not left on purpose (leaving unroutes it first): subscribe to it
    /// again, which the cluster client sends to the slot's new owner. Events
    /// published to the stream in between do not reach this instance; its
    /// clients see the gap in `seq`.
    fn follow_moved_slot(self: &Arc<Self>, push: PushInfo) {
        let Some(Ok(channel)) = push
            .data
            .into_iter()
            .next()
            .map(redis::from_redis_value::<String>)
        else {
            return;
        };
        let routed = matches!(
            self.routes.read().unwrap().get(&channel),
            Some(Route::Stream | Route::Adapter(_))
        );
        let Some(Conn::Cluster(mut conn)) = self.conn.read().unwrap().clone() else {
            return;
        };
        if !routed {
            return;
        }
        warn!(%channel, "Redis moved the channel's slot to another node: subscribing there");
        tokio::spawn(async move {
            for _ in 0..10 {
                match conn.ssubscribe(&channel).await {
                    Ok(()) => return,
                    Err(e) => debug!(%channel, "subscribing on the slot's new node: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            error!(%channel, "could not subscribe to the channel on its slot's new node");
        });
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LinkError(#[from] RedisError);

/// socketioxide-redis runs its requests (cluster-wide rooms and sockets) over
/// this link, so they survive Redis restarts too. On a Redis Cluster they use
/// sharded pub/sub, as socketioxide-redis's own cluster driver does, so that
/// counting subscribers (`SHARDNUMSUB`) sees every instance.
impl Driver for Link {
    type Error = LinkError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), LinkError> {
        let mut conn = self.connection()?;
        if self.sharded() {
            conn.spublish::<_, _, ()>(chan, val).await?;
        } else {
            conn.publish::<_, _, ()>(chan, val).await?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, LinkError> {
        let (tx, rx) = mpsc::channel(size);
        self.shared
            .routes
            .write()
            .unwrap()
            .insert(chan.clone(), Route::Adapter(tx));
        // Not awaited: the namespace must work at once even while Redis is
        // down, and `watch` subscribes every route again once it is back.
        let link = self.clone();
        tokio::spawn(async move {
            if let Err(e) = link.subscribe_sharded(&chan).await {
                debug!(%chan, "subscription deferred until Redis answers: {e}");
            }
        });
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), LinkError> {
        self.unroute(&chan);
        Ok(self.unsubscribe_sharded(&chan).await?)
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, LinkError> {
        let command = if self.sharded() {
            "SHARDNUMSUB"
        } else {
            "NUMSUB"
        };
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg(command)
            .arg(chan)
            .query_async(&mut self.connection()?)
            .await?;
        Ok(count)
    }
}

impl Link {
    /// Subscribes to a channel that is sharded on a Redis Cluster (its
    /// messages go only through the node that owns its slot): the adapter's
    /// and the streams'. Resolves once Redis confirmed it, so that every
    /// message published from then on reaches this instance.
    pub(super) async fn subscribe_sharded(&self, chan: &str) -> Result<(), RedisError> {
        match self.connection()? {
            Conn::Single(mut c) => c.subscribe(chan).await,
            Conn::Cluster(mut c) => c.ssubscribe(chan).await,
        }
    }

    /// Routes a stream's channel to the event queue, from now on.
    pub(super) fn route_stream(&self, channel: &str) {
        let mut routes = self.shared.routes.write().unwrap();
        routes.insert(channel.to_string(), Route::Stream);
    }

    pub(super) fn unroute(&self, channel: &str) {
        self.shared.routes.write().unwrap().remove(channel);
    }

    pub(super) async fn unsubscribe_sharded(&self, channel: &str) -> Result<(), RedisError> {
        match self.connection()? {
            Conn::Single(mut c) => c.unsubscribe(channel).await,
            Conn::Cluster(mut c) => c.sunsubscribe(channel).await,
        }
    }
}
