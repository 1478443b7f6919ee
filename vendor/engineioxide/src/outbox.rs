//! A socket's outgoing packets, waiting for its transport to write them.
//!
//! Upstream kept them in a tokio `mpsc` channel, and the volatile ones in a
//! `watch` channel. Both allocate when the socket is created, whether or
//! not anything is ever sent: 1.3 KiB per idle socket (the mpsc channel's
//! cache-padded state and its first block, the watch channel's eight
//! `Notify`s). The outbox lives inline in the socket and allocates only
//! while packets wait. One transport reads it at a time (the socket's
//! `reader` lock), so one waker slot is enough.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use engineioxide_core::{Packet, PacketBuf};
use tokio::sync::{Notify, mpsc::error::TrySendError};

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// How many packet buffers may wait, counting reserved places.
    capacity: usize,
    /// Once this many bytes of packets wait, no more are taken (see
    /// [`EngineIoConfig::max_buffer_bytes`](crate::config::EngineIoConfig::max_buffer_bytes)).
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<PacketBuf>,
    /// The latest volatile packets: written after the queue, replaced by the
    /// next ones if not written by then.
    volatile: Option<Box<PacketBuf>>,
    reader: Option<Waker>,
    /// Made by the first [`Outbox::closed`] call: few sockets are ever
    /// waited on, and every byte here is held by every socket.
    on_close: Option<Arc<Notify>>,
    /// Bytes of the packets in `queue`.
    bytes: usize,
    /// Places promised to permits not used yet.
    reserved: u32,
    closed: bool,
}

/// What a writer takes at once: the queued packets, then the volatile ones.
pub(crate) struct Batch {
    pub queued: VecDeque<PacketBuf>,
    pub volatile: Option<Box<PacketBuf>>,
}

impl Batch {
    pub fn into_packets(self) -> impl Iterator<Item = PacketBuf> {
        self.queued.into_iter().chain(self.volatile.map(|v| *v))
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
            max_bytes: usize::MAX,
        }
    }

    /// Bounds the bytes waiting too: once `max_bytes` wait, the outbox is
    /// full (the packet that crosses the bound is still taken, as its place
    /// may have been reserved before its size was known).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves the queue consistent: every
        // change to it is a single push or take.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one more packet buffer may be queued.
    fn room(&self, state: &State) -> Result<(), TrySendError<()>> {
        if state.closed {
            Err(TrySendError::Closed(()))
        } else if state.queue.len() + state.reserved as usize >= self.capacity
            || state.bytes >= self.max_bytes
        {
            Err(TrySendError::Full(()))
        } else {
            Ok(())
        }
    }

    fn push(mut state: MutexGuard<'_, State>, packets: PacketBuf) {
        state.bytes += size(&packets);
        state.queue.push_back(packets);
        wake_reader(state);
    }

    // The error type of the channel this replaces, which callers match on.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, packets: PacketBuf) -> Result<(), TrySendError<PacketBuf>> {
        let state = self.state();
        match self.room(&state) {
            Ok(()) => {
                Self::push(state, packets);
                Ok(())
            }
            Err(TrySendError::Full(())) => Err(TrySendError::Full(packets)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(packets)),
        }
    }

    /// Promises a place to a [`Permit`](crate::socket::Permit).
    pub fn try_reserve(&self) -> Result<(), TrySendError<()>> {
        let mut state = self.state();
        self.room(&state)?;
        state.reserved += 1;
        Ok(())
    }

    /// Uses a reserved place. Packets sent once the outbox is closed are
    /// dropped, as they would be in a closed channel.
    pub fn send_reserved(&self, packets: PacketBuf) {
        let mut state = self.state();
        state.reserved -= 1;
        if !state.closed {
            Self::push(state, packets);
        }
    }

    /// Gives back a reserved place that was not used.
    pub fn release(&self) {
        self.state().reserved -= 1;
    }

    pub fn send_volatile(&self, packets: PacketBuf) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.volatile = Some(Box::new(packets));
        wake_reader(state);
        true
    }

    /// No more packets are taken; those waiting can still be read.
    pub fn close(&self) {
        let (reader, on_close) = {
            let mut state = self.state();
            state.closed = true;
            (state.reader.take(), state.on_close.take())
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        if let Some(on_close) = on_close {
            on_close.notify_waiters();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    pub async fn closed(&self) {
        let on_close = {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.on_close.get_or_insert_default().clone()
        };
        // Registered before the check, so a close in between is not missed.
        let notified = on_close.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// Everything waiting, for a transport that writes it all at once; `None`
    /// once the outbox is closed and empty.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let mut state = self.state();
        if !state.queue.is_empty() || state.volatile.is_some() {
            // Taking the queue frees its buffer: an idle socket holds none.
            state.bytes = 0;
            return Poll::Ready(Some(Batch {
                queued: std::mem::take(&mut state.queue),
                volatile: state.volatile.take(),
            }));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        register(&mut state.reader, cx);
        Poll::Pending
    }

    /// The next packets, for a transport that writes them one by one;
    /// `None` once the outbox is closed and empty.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<PacketBuf>> {
        let mut state = self.state();
        if let Some(packets) = state.queue.pop_front() {
            state.bytes -= size(&packets);
            if state.queue.is_empty() {
                state.queue = VecDeque::new();
            }
            return Poll::Ready(Some(packets));
        }
        if let Some(packets) = state.volatile.take() {
            return Poll::Ready(Some(*packets));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        register(&mut state.reader, cx);
        Poll::Pending
    }

    /// Puts back packets taken but not written, to be read first.
    pub fn put_back(&self, packets: PacketBuf) {
        let mut state = self.state();
        state.bytes += size(&packets);
        state.queue.push_front(packets);
    }

    /// The queued packets, without waiting (volatile ones are dropped).
    pub fn take_queued(&self) -> VecDeque<PacketBuf> {
        let mut state = self.state();
        state.bytes = 0;
        std::mem::take(&mut state.queue)
    }
}

/// The bytes a packet buffer holds: its messages' text and binary payloads
/// (the rest are a byte or two on the wire).
fn size(packets: &PacketBuf) -> usize {
    packets
        .iter()
        .map(|p| match p {
            Packet::Message(msg) => msg.len(),
            Packet::Binary(bin) | Packet::BinaryV3(bin) => bin.len(),
            _ => 1,
        })
        .sum()
}

/// Wakes the reader, once the lock is released.
fn wake_reader(mut state: MutexGuard<'_, State>) {
    let reader = state.reader.take();
    drop(state);
    if let Some(reader) = reader {
        reader.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Outbox")
            .field("queued", &state.queue.len())
            .field("bytes", &state.bytes)
            .field("reserved", &state.reserved)
            .field("volatile", &state.volatile.is_some())
            .field("closed", &state.closed)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use engineioxide_core::Packet;
    use smallvec::smallvec;

    use super::*;

    fn packets(msg: &str) -> PacketBuf {
        smallvec![Packet::Message(msg.to_string().into())]
    }

    fn take(outbox: &Outbox) -> Poll<Option<Batch>> {
        outbox.poll_batch(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn queued_packets_come_out_in_order_then_the_latest_volatile() {
        let outbox = Outbox::new(8);
        outbox.try_send(packets("1")).unwrap();
        assert!(outbox.send_volatile(packets("v1")));
        assert!(outbox.send_volatile(packets("v2")));
        outbox.try_send(packets("2")).unwrap();
        let Poll::Ready(Some(batch)) = take(&outbox) else {
            panic!("expected a batch");
        };
        let got: Vec<_> = batch.into_packets().collect();
        assert_eq!(got, vec![packets("1"), packets("2"), packets("v2")]);
        assert!(take(&outbox).is_pending());
    }

    #[test]
    fn a_full_outbox_refuses_and_reserved_places_count() {
        let outbox = Outbox::new(2);
        outbox.try_reserve().unwrap();
        outbox.try_send(packets("1")).unwrap();
        assert!(matches!(
            outbox.try_send(packets("2")),
            Err(TrySendError::Full(_))
        ));
        outbox.release();
        outbox.try_send(packets("2")).unwrap();
        assert!(matches!(outbox.try_reserve(), Err(TrySendError::Full(()))));
    }

    #[test]
    fn an_outbox_holding_max_bytes_is_full_until_read() {
        let outbox = Outbox::new(8).with_max_bytes(10);
        outbox.try_send(packets("123456")).unwrap();
        // Crosses the bound: taken, and from then on the outbox is full.
        outbox.try_send(packets("123456")).unwrap();
        assert!(matches!(
            outbox.try_send(packets("1")),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(outbox.try_reserve(), Err(TrySendError::Full(()))));
        let next = |o: &Outbox| o.poll_next(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(next(&outbox), Poll::Ready(Some(_))));
        outbox.try_send(packets("1")).unwrap();
        assert!(matches!(take(&outbox), Poll::Ready(Some(_))));
        outbox.try_send(packets("1234567890")).unwrap();
    }

    #[test]
    fn a_closed_outbox_refuses_but_is_still_read_to_the_end() {
        let outbox = Outbox::new(8);
        outbox.try_send(packets("1")).unwrap();
        outbox.close();
        assert!(matches!(
            outbox.try_send(packets("2")),
            Err(TrySendError::Closed(_))
        ));
        assert!(!outbox.send_volatile(packets("v")));
        assert!(matches!(take(&outbox), Poll::Ready(Some(_))));
        assert!(matches!(take(&outbox), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn the_reader_is_woken_by_a_send_and_by_the_close() {
        let outbox = std::sync::Arc::new(Outbox::new(8));
        let reader = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut got = vec![];
                while let Some(packets) = std::future::poll_fn(|cx| outbox.poll_next(cx)).await {
                    got.push(packets);
                }
                got
            }
        });
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        outbox.try_send(packets("1")).unwrap();
        tokio::task::yield_now().await;
        outbox.try_send(packets("2")).unwrap();
        outbox.close();
        waiter.await.unwrap();
        outbox.closed().await;
        assert_eq!(reader.await.unwrap(), vec![packets("1"), packets("2")]);
    }
}
