//! The Engine.IO v4 heartbeat of one session: a ping every interval, and the
//! end of the session when no pong follows within the timeout.
//!
//! A state machine rather than a task, so that whichever task already serves
//! the session can keep it: the task serving a session that began on a
//! WebSocket polls it inline (a task of its own would cost every socket
//! 1.2 KiB), and a session that began on polling gets a task that polls only
//! this, and goes on across an upgrade.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use engineioxide_core::Packet;
use futures_util::FutureExt;
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::Notified,
    time::{Instant, Sleep},
};

use crate::socket::Socket;

pin_project! {
    pub(crate) struct Heartbeat<'a> {
        // When the next ping is due, or while a pong is awaited, when the
        // wait ends.
        #[pin]
        timer: Sleep,
        #[pin]
        pong: Notified<'a>,
        next_ping: Instant,
        awaiting_pong: bool,
    }
}

impl<'a> Heartbeat<'a> {
    /// The first ping goes out one interval after the handshake, as the
    /// protocol and the reference implementation have it, not at once: a
    /// ping right after the handshake costs every new connection one more
    /// write and one more read for nothing.
    pub fn new<D: Default + Send + Sync + 'static>(
        socket: &'a Socket<D>,
        interval: Duration,
    ) -> Self {
        let next_ping = Instant::now() + interval;
        Self {
            timer: tokio::time::sleep_until(next_ping),
            pong: socket.heartbeat.notified(),
            next_ping,
            awaiting_pong: false,
        }
    }

    /// Ready when the session must end: no pong within `timeout` of a ping,
    /// or a ping that could not be queued. Pings are skipped while the
    /// session moves to another transport.
    pub fn poll_expired<D: Default + Send + Sync + 'static>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        socket: &'a Socket<D>,
        interval: Duration,
        timeout: Duration,
    ) -> Poll<()> {
        let mut this = self.project();
        loop {
            if *this.awaiting_pong && this.pong.as_mut().poll(cx).is_ready() {
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?socket.id, "pong received");
                *this.awaiting_pong = false;
                this.timer.as_mut().reset(*this.next_ping);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if *this.awaiting_pong {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "heartbeat timeout");
                return Poll::Ready(());
            }
            *this.next_ping = (*this.next_ping + interval).max(Instant::now());
            if socket.is_upgrading() {
                this.timer.as_mut().reset(*this.next_ping);
                continue;
            }
            // A pong only answers a ping sent before it: forget one that
            // arrived early (some clients send one first).
            socket.heartbeat.notified().now_or_never();
            if socket.send(Packet::Ping).is_err() {
                return Poll::Ready(());
            }
            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?socket.id, "ping queued, waiting for pong");
            this.pong.set(socket.heartbeat.notified());
            *this.awaiting_pong = true;
            this.timer.as_mut().reset(Instant::now() + timeout);
            // Loops once more, to register both for a wake-up.
        }
    }
}
