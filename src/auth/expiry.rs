//! One timer for every socket's token: a queue ordered by expiry that a
//! single task sleeps on, rather than a task (and its timer) per socket,
//! which would cost every authenticated socket memory and the runtime a
//! timer wheel entry for hours.

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::Notify;

/// Keys (sockets) to end at given times, in seconds since the Unix epoch.
pub(crate) struct Expiry<K> {
    queue: Mutex<BTreeSet<(u64, K)>>,
    /// Told when an entry is added before the one the task sleeps until.
    sooner: Notify,
}

impl<K: Ord + Copy + Send> Expiry<K> {
    pub(crate) fn new() -> Self {
        Self {
            queue: Mutex::default(),
            sooner: Notify::new(),
        }
    }

    /// Ends `key` at `at`.
    pub(crate) fn insert(&self, at: u64, key: K) {
        let mut queue = self.queue.lock().unwrap();
        let first = queue.first().is_none_or(|&(next, _)| at < next);
        queue.insert((at, key));
        drop(queue);
        if first {
            self.sooner.notify_one();
        }
    }

    /// Forgets `key` (it went away first).
    pub(crate) fn remove(&self, at: u64, key: K) {
        self.queue.lock().unwrap().remove(&(at, key));
    }

    /// How many keys wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Calls `expire` with every key whose time has come, as it comes, for
    /// as long as it is polled.
    pub(crate) async fn run(&self, mut expire: impl FnMut(K)) {
        let mut due = Vec::new();
        loop {
            let now = unix_now();
            let next = {
                let mut queue = self.queue.lock().unwrap();
                loop {
                    match queue.first() {
                        Some(&(at, key)) if at <= now => {
                            queue.pop_first();
                            due.push(key);
                        }
                        other => break other.map(|&(at, _)| at),
                    }
                }
            };
            // Outside the lock: ending a key may remove others (a socket's
            // disconnect handler forgets its entry).
            due.drain(..).for_each(&mut expire);
            let sooner = self.sooner.notified();
            match next {
                Some(at) => {
                    let wait = (UNIX_EPOCH + Duration::from_secs(at))
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = sooner => {}
                    }
                }
                None => sooner.await,
            }
        }
    }
}

/// Seconds since the Unix epoch, the unit of a token's `exp`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn keys_end_in_time_order_and_removed_ones_never() {
        let expiry = Arc::new(Expiry::<u32>::new());
        let now = unix_now();
        expiry.insert(now + 2, 2);
        expiry.insert(now + 1, 1);
        expiry.insert(now + 1, 3);
        expiry.remove(now + 1, 3);
        expiry.insert(now.saturating_sub(5), 0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = expiry.clone();
        let task = tokio::spawn(async move { runner.run(|k| tx.send(k).unwrap()).await });
        let mut ended = Vec::new();
        while ended.len() < 3 {
            let key = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("every key ends within its time")
                .unwrap();
            ended.push(key);
        }
        assert_eq!(ended, [0, 1, 2]);
        assert_eq!(expiry.len(), 0);
        task.abort();
    }
}
