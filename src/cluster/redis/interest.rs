//! Which streams this instance receives from Redis: each stream's events
//! have a channel of their own, and an instance subscribes to it only while
//! one of its clients watches the stream. A cluster's instances then carry
//! the events their clients watch, not every event of the cluster.
//!
//! A subscription to a stream starts by subscribing to its channel, and
//! reads the stream's history only once Redis has confirmed it: from then
//! on every event published to the stream reaches this instance, and those
//! before are in the history, so nothing falls between the two. The channel
//! is left a while ([`LINGER`]) after its last watcher, so that a page
//! reload or a reconnecting client does not pay a subscription round trip
//! each time, and an UNSUBSCRIBE can never overtake the SUBSCRIBE of a
//! watcher arriving meanwhile: both take the stream's own lock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::RedisError;
use tracing::debug;

use super::link::Link;
use crate::{cluster::FanOut, metrics::Metrics, protocol::Topic};

/// How long a stream's channel stays subscribed after its last watcher left.
const LINGER: Duration = Duration::from_secs(10);

/// How often channels without watchers are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

pub(super) struct Interest {
    link: Link,
    streams: Mutex<HashMap<Topic, Watched>>,
    metrics: Arc<Metrics>,
}

/// A stream this instance receives, or is about to.
struct Watched {
    channel: Arc<Channel>,
    /// Subscriptions in the making: the channel stays while there are any.
    attaching: usize,
    /// When the last of them ended.
    since: Instant,
}

struct Channel {
    name: String,
    /// Whether Redis has confirmed the subscription. Held across SUBSCRIBE
    /// and UNSUBSCRIBE, so that the two run one after the other.
    subscribed: tokio::sync::Mutex<bool>,
}

/// Keeps a stream's channel subscribed while a subscription is being made;
/// the linger starts when it is dropped.
pub(super) struct Attaching<'a> {
    interest: &'a Interest,
    topic: Topic,
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        let mut streams = self.interest.streams.lock().unwrap();
        if let Some(watched) = streams.get_mut(&self.topic) {
            watched.attaching -= 1;
            watched.since = Instant::now();
        }
    }
}

impl Interest {
    pub(super) fn new(link: Link, metrics: Arc<Metrics>) -> Self {
        Self {
            link,
            streams: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Makes sure this instance receives the stream's events, from the
    /// moment this resolves until the returned guard is dropped and, after
    /// that, for as long as a local client watches the stream. `channel`
    /// names the stream's channel.
    pub(super) async fn attach(
        &self,
        topic: &Topic,
        channel: impl FnOnce() -> String,
    ) -> Result<Attaching<'_>, RedisError> {
        let channel = {
            let mut streams = self.streams.lock().unwrap();
            let watched = streams.entry(topic.clone()).or_insert_with(|| {
                self.metrics.cluster_streams.inc();
                Watched {
                    channel: Arc::new(Channel {
                        name: channel(),
                        subscribed: tokio::sync::Mutex::new(false),
                    }),
                    attaching: 0,
                    since: Instant::now(),
                }
            });
            watched.attaching += 1;
            watched.channel.clone()
        };
        let attaching = Attaching {
            interest: self,
            topic: topic.clone(),
        };
        let mut subscribed = channel.subscribed.lock().await;
        if !*subscribed {
            self.link.route_stream(&channel.name);
            self.link.subscribe_sharded(&channel.name).await?;
            *subscribed = true;
        }
        Ok(attaching)
    }

    /// Leaves the channels of streams no local client has watched for
    /// [`LINGER`], every [`SWEEP_EVERY`], for as long as it runs.
    pub(super) async fn sweep(&self, fanout: &dyn FanOut) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let idle: Vec<(Topic, Arc<Channel>)> = {
                let streams = self.streams.lock().unwrap();
                streams
                    .iter()
                    .filter(|(topic, w)| unwatched(topic, w, fanout))
                    .map(|(topic, w)| (topic.clone(), w.channel.clone()))
                    .collect()
            };
            for (topic, channel) in idle {
                self.leave(&topic, &channel, fanout).await;
            }
        }
    }

    async fn leave(&self, topic: &Topic, channel: &Arc<Channel>, fanout: &dyn FanOut) {
        let mut subscribed = channel.subscribed.lock().await;
        // A watcher may have come while this waited for the lock.
        let still_idle = {
            let streams = self.streams.lock().unwrap();
            streams
                .get(topic)
                .is_some_and(|w| unwatched(topic, w, fanout))
        };
        if !still_idle {
            return;
        }
        if *subscribed {
            // Unrouted first, so that the link does not take Redis's
            // confirmation for a moved slot (see `Link`).
            self.link.unroute(&channel.name);
            if let Err(e) = self.link.unsubscribe_sharded(&channel.name).await {
                // Kept, and tried again at the next sweep.
                debug!(%topic, "could not leave the stream's channel yet: {e}");
                self.link.route_stream(&channel.name);
                return;
            }
            *subscribed = false;
        }
        let mut streams = self.streams.lock().unwrap();
        // A subscription that started during the UNSUBSCRIBE keeps the
        // entry, and subscribes again once it has the lock.
        let gone = streams
            .get(topic)
            .is_some_and(|w| w.attaching == 0 && Arc::ptr_eq(&w.channel, channel));
        if gone {
            streams.remove(topic);
            self.link.unroute(&channel.name);
            self.metrics.cluster_streams.dec();
        }
    }
}

fn unwatched(topic: &Topic, watched: &Watched, fanout: &dyn FanOut) -> bool {
    watched.attaching == 0 && watched.since.elapsed() >= LINGER && !fanout.watches(topic)
}
