//! The send queue of one connection: what the node has for the peer
//! (responses, and requests of the proxy for a phone reached on the
//! connection), written by the task serving the connection.
//!
//! A bounded queue of byte strings with many senders and one receiver,
//! as `tokio::sync::mpsc` but sized for many idle connections: an empty
//! queue holds no buffer (tokio's bounded channel allocates its first
//! block of 32 slots, and cache-line padding, up front: about 1.6 KiB per
//! connection), and the queue gives back its buffer when it empties after
//! a burst. The items are short-lived and the queue is rarely long, so
//! a mutex around a `VecDeque` is all it needs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Above this many slots an emptied queue gives its buffer back.
const KEPT_SLOTS: usize = 8;

/// A new queue that holds at most `capacity` items.
pub(super) fn send_queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (
        QueueSender {
            shared: shared.clone(),
        },
        QueueReceiver { shared },
    )
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the receiver: an item was queued, or the last sender went.
    readable: Notify,
    /// Wakes senders waiting for room: an item was taken, or the receiver
    /// went.
    writable: Notify,
}

struct State {
    items: VecDeque<Bytes>,
    senders: usize,
    receiver_gone: bool,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves it usable
    /// (every change to it is a single step).
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why [`QueueSender::try_send`] did not queue its bytes (given back).
#[derive(Debug)]
pub(super) enum TrySendError {
    Full(Bytes),
    Closed(Bytes),
}

/// Queues bytes for the connection; cloned for each producer.
pub(super) struct QueueSender {
    shared: Arc<Shared>,
}

impl Clone for QueueSender {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        QueueSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.state();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.readable.notify_one();
        }
    }
}

impl QueueSender {
    /// Queues `bytes` if there is room now.
    pub(super) fn try_send(&self, bytes: Bytes) -> Result<(), TrySendError> {
        {
            let mut state = self.shared.state();
            if state.receiver_gone {
                return Err(TrySendError::Closed(bytes));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(bytes));
            }
            state.items.push_back(bytes);
        }
        self.shared.readable.notify_one();
        Ok(())
    }

    /// Queues `bytes`, waiting for room; `Err` gives them back when the
    /// connection is no longer served.
    pub(super) async fn send(&self, mut bytes: Bytes) -> Result<(), Bytes> {
        let room = self.shared.writable.notified();
        tokio::pin!(room);
        loop {
            // Registered before looking, so that room made in between is
            // not missed.
            room.as_mut().enable();
            match self.try_send(bytes) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(b)) => return Err(b),
                Err(TrySendError::Full(b)) => bytes = b,
            }
            room.as_mut().await;
            room.set(self.shared.writable.notified());
        }
    }
}

/// What [`QueueReceiver::take`] found.
enum Taken {
    Item(Bytes),
    Empty,
    /// Empty, and every sender is gone.
    Ended,
}

/// Takes the queued bytes, in order; held by the task serving the
/// connection.
pub(super) struct QueueReceiver {
    shared: Arc<Shared>,
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.receiver_gone = true;
            state.items = VecDeque::new();
        }
        self.shared.writable.notify_waiters();
    }
}

impl QueueReceiver {
    /// The next queued bytes; `None` once the queue is empty and every
    /// sender is gone. Cancel-safe: nothing is taken until it returns.
    pub(super) async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.take() {
                Taken::Item(bytes) => return Some(bytes),
                Taken::Ended => return None,
                Taken::Empty => {}
            }
            // `notify_one` keeps a wake-up for a receiver not waiting yet:
            // an item queued after the look above is not missed.
            self.shared.readable.notified().await;
        }
    }

    /// The next queued bytes if there are any now.
    pub(super) fn try_recv(&mut self) -> Option<Bytes> {
        match self.take() {
            Taken::Item(bytes) => Some(bytes),
            Taken::Empty | Taken::Ended => None,
        }
    }

    fn take(&mut self) -> Taken {
        let mut state = self.shared.state();
        let Some(bytes) = state.items.pop_front() else {
            return if state.senders == 0 {
                Taken::Ended
            } else {
                Taken::Empty
            };
        };
        let was_full = state.items.len() + 1 >= self.shared.capacity;
        if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
            state.items = VecDeque::new();
        }
        drop(state);
        if was_full {
            self.shared.writable.notify_waiters();
        }
        Taken::Item(bytes)
    }

    /// Whether nothing is queued now.
    pub(super) fn is_empty(&self) -> bool {
        self.shared.state().items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_and_ends_when_the_senders_are_gone() {
        let (tx, mut rx) = send_queue(4);
        let tx2 = tx.clone();
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tx2.send(Bytes::from_static(b"b")).await.unwrap();
        drop(tx);
        assert!(!rx.is_empty());
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(rx.try_recv().as_deref(), Some(&b"b"[..]));
        assert!(rx.is_empty());
        assert_eq!(rx.try_recv(), None);
        drop(tx2);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_send_and_send_waits_for_room() {
        let (tx, mut rx) = send_queue(2);
        tx.try_send(Bytes::from_static(b"1")).unwrap();
        tx.try_send(Bytes::from_static(b"2")).unwrap();
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"3")),
            Err(TrySendError::Full(_))
        ));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(Bytes::from_static(b"3")).await });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await.as_deref(), Some(&b"1"[..]));
        assert!(waiting.await.unwrap().is_ok());
        assert_eq!(rx.recv().await.as_deref(), Some(&b"2"[..]));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"3"[..]));
    }

    #[tokio::test]
    async fn a_receiver_waits_for_the_next_item() {
        let (tx, mut rx) = send_queue(2);
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(reader.await.unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[tokio::test]
    async fn senders_learn_that_the_receiver_is_gone() {
        let (tx, rx) = send_queue(1);
        tx.try_send(Bytes::from_static(b"1")).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(Bytes::from_static(b"2")).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiting.await.unwrap().is_err());
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"3")),
            Err(TrySendError::Closed(_))
        ));
    }
}
