//! Which sessions the sockets of this instance watch, kept beside
//! socketioxide's rooms so that counting never walks them.

use std::sync::Arc;

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
/// and a socket's first session is kept in the entry itself.
///
/// The gauges `herald_subscriptions` and `herald_sessions_watched` follow
/// every change, so that nothing has to count them when asked.
pub(super) struct Subscriptions {
    per_session: DashMap<SessionId, u32>,
    per_socket: DashMap<Sid, SmallVec<[SessionId; 1]>>,
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
        let mut sessions = self.per_socket.entry(socket).or_default();
        if sessions.contains(id) {
            return false;
        }
        sessions.push(id.clone());
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
            if let Some(i) = sessions.iter().position(|s| s == id) {
                sessions.swap_remove(i);
                removed = true;
            }
            sessions.is_empty()
        });
        if removed {
            self.uncount(id);
        }
        removed
    }

    /// Ends all of a socket's subscriptions; returns the sessions they were to.
    pub(super) fn remove_socket(&self, socket: Sid) -> SmallVec<[SessionId; 1]> {
        let sessions = self
            .per_socket
            .remove(&socket)
            .map(|(_, sessions)| sessions)
            .unwrap_or_default();
        for id in &sessions {
            self.uncount(id);
        }
        sessions
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
}
