//! Write coalescing under load (herald patch 11).
//!
//! A WebSocket writes each packet as soon as it is queued: the lowest latency,
//! and one `send` per packet. Each `send` has a fixed kernel cost (on
//! loopback it also pays for the reader's wake-up) that, when a process
//! delivers many small packets to many sockets, is most of its CPU. While the
//! process has CPU to spare that cost buys latency; once it is saturated it
//! only makes every queue longer. So the application, which can tell how busy
//! the process is (its CPU time, its runtime), sets a linger: a WebSocket with
//! packets to write holds them for up to that long and writes all that
//! arrived meanwhile at once. The default, zero, holds nothing.
//!
//! Answers are never held: a WebSocket whose client sent a frame within the
//! linger period may be in an exchange with it (a connect, an ack and what
//! the application sends with them), and writes at once, so the exchange
//! does not wait behind the linger however loaded the process is.
//!
//! The linger is a [`Linger`] handle in the engine's config: the application
//! keeps a clone and sets it as its load changes, and each engine reads its
//! own, so two engines in one process (two servers, or tests) do not share
//! one setting.
//!
//! The handle also counts what the engine's WebSockets wrote: packets, and
//! the writes (flushes) that carried them. Packets per write is what a hold
//! buys, so an application steering the linger can tell a hold that gathers
//! from one that only waits (herald patch 16).

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use tokio::time::Instant;

/// How long the WebSockets of an engine may hold the packets they are given,
/// and what they wrote. Cheap to clone; clones share the setting and the
/// counts. Zero, the default, holds nothing.
#[derive(Debug, Clone, Default)]
pub struct Linger(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    micros: AtomicU64,
    packets: AtomicU64,
    writes: AtomicU64,
}

/// What the WebSockets reading one [`Linger`] have written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Packets written.
    pub packets: u64,
    /// Flushes that carried them: one `send` each, or a few for a large one.
    pub writes: u64,
}

impl Linger {
    /// Holds packets queued from now on for up to `linger`; zero writes each
    /// at once.
    pub fn set(&self, linger: Duration) {
        let micros = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
        self.0.micros.store(micros, Ordering::Relaxed);
    }

    /// How long packets queued now may be held, if at all.
    pub fn get(&self) -> Option<Duration> {
        match self.0.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Counts `packets` handed to a writer. Once per batch, not per packet:
    /// every socket of the engine shares these counters.
    pub fn wrote(&self, packets: u64) {
        self.0.packets.fetch_add(packets, Ordering::Relaxed);
    }

    /// Counts one flush of what was handed to a writer.
    pub fn flushed(&self) {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far; the difference of two readings is what was written
    /// between them.
    pub fn written(&self) -> Written {
        Written {
            packets: self.0.packets.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
        }
    }
}

/// When a client last sent a frame: milliseconds on a process-wide clock,
/// four bytes, as every connection keeps one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heard(u32);

impl Heard {
    pub(crate) fn now() -> Self {
        Self(millis_now())
    }

    /// Whether the client spoke within the last `period`.
    pub(crate) fn is_within(self, period: Duration) -> bool {
        Duration::from_millis(millis_now().wrapping_sub(self.0).into()) < period
    }
}

/// Milliseconds since the clock's first reading, wrapping after 49 days;
/// only differences shorter than a linger are ever taken.
fn millis_now() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().duration_since(epoch).as_millis() as u32
}
