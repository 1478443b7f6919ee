//! Which sessions the sockets of this instance watch, kept beside
//! socketioxide's rooms so that counting never walks them.

use std::{collections::HashSet, sync::Arc};

use dashmap::DashMap;
use smallvec::SmallVec;
use socketioxide::socket::Sid;

use crate::{metrics::Metrics, protocol::SessionId};

/// Which sessions the sockets of this instance watch: counted per session,
/// so that publishing and the stats never have to walk the rooms, and listed
/// per socket, so that a socket's subscriptions end with it.
///
/// The lists live here rather than in each socket's extensions: a map entry
/// is a fraction of what an extension map and a set cost on every socket,
/// and a socket's first session is kept in the entry itself. A socket that
/// holds more than a few keeps them in a set (see [`Held`]).
///
/// The gauges `herald_subscriptions` and `herald_sessions_watched` follow
/// every change, so that nothing has to count them when asked.
pub(super) struct Subscriptions {
    per_session: DashMap<SessionId, u32>,
    per_socket: DashMap<Sid, Held>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            per_session: DashMap::new(),
            per_socket: DashMap::new(),
            metrics,
        }
    }

    /// Returns whether the socket was not subscribed yet.
    pub(super) fn add(&self, socket: Sid, id: &SessionId) -> bool {
        if !self.per_socket.entry(socket).or_default().insert(id) {
            return false;
        }
        let mut watchers = self.per_session.entry(id.clone()).or_default();
        if *watchers == 0 {
            self.metrics.sessions_watched.inc();
        }
        *watchers += 1;
        self.metrics.subscriptions.inc();
        true
    }

    /// Returns whether the socket was subscribed.
    pub(super) fn remove(&self, socket: Sid, id: &SessionId) -> bool {
        let mut removed = false;
        self.per_socket.remove_if_mut(&socket, |_, sessions| {
            removed = sessions.remove(id);
            sessions.is_empty()
        });
        if removed {
            self.uncount(id);
        }
        removed
    }

    /// Ends all of a socket's subscriptions; returns the sessions they were to.
    pub(super) fn remove_socket(&self, socket: Sid) -> Vec<SessionId> {
        let sessions: Vec<SessionId> = match self.per_socket.remove(&socket) {
            Some((_, Held::Few(few))) => few.into_vec(),
            Some((_, Held::Many(many))) => many.into_iter().collect(),
            None => Vec::new(),
        };
        for id in &sessions {
            self.uncount(id);
        }
        sessions
    }

    /// How many sessions the socket is subscribed to.
    pub(super) fn held(&self, socket: Sid) -> usize {
        self.per_socket.get(&socket).map_or(0, |s| s.len())
    }

    /// Whether the socket is subscribed to the session.
    pub(super) fn holds(&self, socket: Sid, id: &SessionId) -> bool {
        self.per_socket.get(&socket).is_some_and(|s| s.contains(id))
    }

    fn uncount(&self, id: &SessionId) {
        let emptied = self
            .per_session
            .remove_if_mut(id, |_, n| {
                *n -= 1;
                *n == 0
            })
            .is_some();
        if emptied {
            self.metrics.sessions_watched.dec();
        }
        self.metrics.subscriptions.dec();
    }

    /// Local sockets subscribed to the session.
    pub(super) fn count(&self, id: &SessionId) -> u32 {
        self.per_session.get(id).map_or(0, |n| *n)
    }

    /// The `n` sessions with the most local subscribers, most first. Walks
    /// every watched session (for the report, once a second while a
    /// dashboard is open), keeping only the `n` best so far.
    pub(super) fn most_watched(&self, n: usize) -> Vec<(String, u64)> {
        use std::{cmp::Reverse, collections::BinaryHeap};
        let mut best = BinaryHeap::with_capacity(n + 1);
        for entry in &self.per_session {
            best.push(Reverse((*entry.value(), entry.key().clone())));
            if best.len() > n {
                best.pop();
            }
        }
        let best = best
            .into_iter()
            .map(|Reverse((count, id))| (id.to_string(), u64::from(count)));
        crate::metrics::recent::top(best, n)
    }
}

/// The sessions of one socket: a list while it holds a few, which nearly every
/// socket does and which costs no more than the entry, and a set once it holds
/// more, so that a subscribe or an unsubscribe costs the same however many the
/// socket holds (a list made a flood of 40,000 subscriptions quadratic).
enum Held {
    Few(SmallVec<[SessionId; 1]>),
    // Boxed: the set is rare, and every subscribed socket's entry would
    // otherwise be the size of one.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<SessionId>>),
}

/// Sessions a list holds before it becomes a set.
const FEW: usize = 8;

impl Default for Held {
    fn default() -> Self {
        Self::Few(SmallVec::new())
    }
}

impl Held {
    /// Returns whether the session was not held yet.
    fn insert(&mut self, id: &SessionId) -> bool {
        match self {
            Self::Few(few) if few.contains(id) => false,
            Self::Few(few) if few.len() < FEW => {
                few.push(id.clone());
                true
            }
            Self::Few(few) => {
                let mut many: HashSet<SessionId> = few.drain(..).collect();
                many.insert(id.clone());
                *self = Self::Many(Box::new(many));
                true
            }
            Self::Many(many) => many.insert(id.clone()),
        }
    }

    /// Returns whether the session was held.
    fn remove(&mut self, id: &SessionId) -> bool {
        match self {
            Self::Few(few) => match few.iter().position(|s| s == id) {
                Some(i) => {
                    few.swap_remove(i);
                    true
                }
                None => false,
            },
            Self::Many(many) => many.remove(id),
        }
    }

    fn contains(&self, id: &SessionId) -> bool {
        match self {
            Self::Few(few) => few.contains(id),
            Self::Many(many) => many.contains(id),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Few(few) => few.len(),
            Self::Many(many) => many.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse(id).unwrap()
    }

    #[test]
    fn subscriptions_are_counted_per_session_and_end_with_their_socket() {
        let metrics = Arc::new(Metrics::default());
        let subs = Subscriptions::new(metrics.clone());
        let levels = || (metrics.subscriptions.get(), metrics.sessions_watched.get());
        let (a, b) = (Sid::new(), Sid::new());
        assert!(subs.add(a, &session("s1")));
        assert!(
            !subs.add(a, &session("s1")),
            "subscribing twice counts once"
        );
        assert!(subs.add(a, &session("s2")));
        assert!(subs.add(b, &session("s1")));
        assert_eq!(subs.count(&session("s1")), 2);
        assert_eq!(levels(), (3, 2));

        assert!(subs.remove(b, &session("s1")));
        assert!(!subs.remove(b, &session("s1")));
        assert_eq!(subs.count(&session("s1")), 1);

        assert_eq!(subs.remove_socket(a).len(), 2);
        assert_eq!(subs.remove_socket(a).len(), 0);
        assert_eq!(levels(), (0, 0));
    }

    #[test]
    fn the_most_watched_sessions_come_first() {
        let subs = Subscriptions::new(Arc::new(Metrics::default()));
        for (id, watchers) in [("a", 1), ("b", 3), ("c", 2), ("d", 3)] {
            for _ in 0..watchers {
                subs.add(Sid::new(), &session(id));
            }
        }
        let top: Vec<(String, u64)> = [("b", 3), ("d", 3), ("c", 2)]
            .map(|(id, n)| (id.to_string(), n))
            .into();
        assert_eq!(subs.most_watched(3), top);
    }

    #[test]
    fn many_subscriptions_of_one_socket_are_kept_as_a_set() {
        let subs = Subscriptions::new(Arc::new(Metrics::default()));
        let s = Sid::new();
        for i in 0..100 {
            assert!(subs.add(s, &session(&format!("s{i}"))));
        }
        assert!(!subs.add(s, &session("s3")));
        assert!(subs.holds(s, &session("s99")));
        assert_eq!(subs.held(s), 100);
        assert!(subs.remove(s, &session("s50")));
        assert!(!subs.remove(s, &session("s50")));
        assert_eq!(subs.remove_socket(s).len(), 99);
    }
}
