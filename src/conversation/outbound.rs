//! A socket's bounded queue of outbound frames: many senders (the actors it follows), one
//! receiver (its session task).
//!
//! It behaves like a bounded `tokio::sync::mpsc` channel for this use (`try_send` refuses with
//! `Full` at `capacity` queued frames and with `Closed` once the receiver is gone; `recv` answers
//! `None` once every sender is gone and the queue is empty), but it holds no memory while
//! empty: tokio's channel allocates its slots 32 at a time up front (~2.3 KiB per socket with
//! its padded state), this one grows a `VecDeque` on demand and gives its buffer back when a
//! burst has been drained. An idle socket costs one small allocation.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Notify;

use super::Outbound;

/// Capacity kept when the queue runs empty; a larger buffer (a burst) is given back.
const KEEP: usize = 4;

struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver: a push, or the last sender leaving.
    notify: Notify,
    capacity: usize,
}

struct State {
    items: VecDeque<Outbound>,
    senders: usize,
    receiver: bool,
}

/// The sending half; cloned for each conversation the socket follows.
pub struct OutboundTx {
    shared: Arc<Shared>,
}

/// The receiving half, owned by the socket's session task.
pub struct OutboundRx {
    shared: Arc<Shared>,
}

/// A queue holding at most `capacity` frames (at least 1).
pub fn queue(capacity: usize) -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        notify: Notify::new(),
        capacity: capacity.max(1),
    });
    (
        OutboundTx {
            shared: shared.clone(),
        },
        OutboundRx { shared },
    )
}

impl OutboundTx {
    /// Queue a frame without waiting: `Full` if `capacity` frames are waiting, `Closed` if the
    /// receiver is gone.
    pub fn try_send(&self, out: Outbound) -> Result<(), TrySendError<Outbound>> {
        {
            let mut s = self.shared.state.lock();
            if !s.receiver {
                return Err(TrySendError::Closed(out));
            }
            if s.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(out));
            }
            s.items.push_back(out);
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl Clone for OutboundTx {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        OutboundTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        let last = {
            let mut s = self.shared.state.lock();
            s.senders -= 1;
            s.senders == 0
        };
        if last {
            self.shared.notify.notify_one();
        }
    }
}

impl std::fmt::Debug for OutboundTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundTx")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl OutboundRx {
    /// The next frame if one is queued now; never waits (a reader draining a burst into one
    /// write uses it after [`OutboundRx::recv`]).
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut s = self.shared.state.lock();
        let out = s.items.pop_front();
        if out.is_some() && s.items.is_empty() && s.items.capacity() > KEEP {
            s.items = VecDeque::new();
        }
        out
    }

    /// The next frame, waiting for one; `None` once every sender is gone and nothing is left.
    /// Cancel-safe: a frame is only taken out when it is returned.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut s = self.shared.state.lock();
                if let Some(out) = s.items.pop_front() {
                    if s.items.is_empty() && s.items.capacity() > KEEP {
                        // A burst is over: give its buffer back.
                        s.items = VecDeque::new();
                    }
                    return Some(out);
                }
                if s.senders == 0 {
                    return None;
                }
            }
            // A push between the check above and this wait leaves a permit: no lost wake-up.
            self.shared.notify.notified().await;
        }
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock();
        s.receiver = false;
        s.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn out(seq: u64) -> Outbound {
        Outbound {
            conversation: Arc::from("c"),
            seq,
            event: Bytes::from_static(b"{}"),
            typed: None,
        }
    }

    #[tokio::test]
    async fn bounded_in_order_and_closes() {
        let (tx, mut rx) = queue(10);
        for i in 1..=10 {
            tx.try_send(out(i)).unwrap();
        }
        assert!(matches!(tx.try_send(out(11)), Err(TrySendError::Full(o)) if o.seq == 11));
        for i in 1..=10 {
            assert_eq!(rx.recv().await.unwrap().seq, i);
        }
        // Drained: the burst's buffer is given back, and there is room again.
        assert_eq!(rx.shared.state.lock().items.capacity(), 0);
        tx.try_send(out(12)).unwrap();
        assert_eq!(rx.recv().await.unwrap().seq, 12);
        // A small buffer is kept.
        assert_eq!(rx.shared.state.lock().items.capacity(), KEEP);
        let tx2 = tx.clone();
        drop(tx);
        tx2.try_send(out(13)).unwrap();
        drop(tx2);
        // Every sender gone: what is queued is still delivered, then `None`.
        assert_eq!(rx.recv().await.unwrap().seq, 13);
        assert!(rx.recv().await.is_none());

        let (tx, rx) = queue(2);
        drop(rx);
        assert!(matches!(tx.try_send(out(1)), Err(TrySendError::Closed(_))));
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver_across_threads() {
        let (tx, mut rx) = queue(1024);
        let n = 2000u64;
        let sender = std::thread::spawn(move || {
            let mut i = 1;
            while i <= n {
                match tx.try_send(out(i)) {
                    Ok(()) => i += 1,
                    Err(TrySendError::Full(_)) => std::thread::yield_now(),
                    Err(TrySendError::Closed(_)) => panic!("closed"),
                }
            }
        });
        for i in 1..=n {
            let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("woken")
                .expect("a frame");
            assert_eq!(o.seq, i);
        }
        sender.join().unwrap();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn cancelled_recv_loses_nothing() {
        let (tx, mut rx) = queue(8);
        // A recv that is dropped while waiting (as in a `select!` whose other branch won).
        let waiting = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(waiting.is_err());
        tx.try_send(out(1)).unwrap();
        assert_eq!(rx.recv().await.unwrap().seq, 1);
    }
}
