//! The server-wide bound on bytes written to WebSockets and not yet read by their clients
//! (`[server] max_unread_bytes_total`, #18 defect 8).
//!
//! Each socket caps its own queue of events (`socket_outbound_buffer`), but a thousand sockets
//! that do not read each hold what was written to them in kernel send buffers and the
//! connection's write buffer. This module counts those bytes across the server and, when the
//! total passes the bound, closes the socket with the most unread bytes (close code 4008, as
//! any socket too slow: it comes back with `since` and loses nothing).
//!
//! What counts as read: a session sends pings whose payload is the number of bytes it had
//! written when it sent them (every heartbeat, and after every [`MARK_EVERY`] bytes); a client
//! answers a ping only after reading everything before it, so the pong's payload is how much
//! it has read. Unread = written − the newest offset a pong confirmed. A client that reads
//! keeps its unread bytes near zero; one that does not is charged everything written to it.
//!
//! Invariants: `total` is the sum of the registered sockets' `unread` at all times (every
//! change to a socket's `unread` is made to `total` too, and a socket taken out of the
//! account — shed or ended — gives back exactly what it held); a shed socket is charged no
//! more, so one overload closes one socket at a time, never a cascade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// A session sends a marker ping after this many bytes written since the last one.
pub const MARK_EVERY: u64 = 64 * 1024;

/// The account of every socket (one per server, in `GatewayState`).
pub struct SocketBudget {
    /// The bound (0: none).
    limit: u64,
    total: AtomicU64,
    sockets: Mutex<HashMap<u64, Arc<Entry>>>,
    shed: AtomicU64,
}

struct Entry {
    unread: AtomicU64,
    /// Cancelled to close the socket (its subscriber's `slow` token).
    slow: CancellationToken,
    gone: AtomicBool,
}

/// One socket's place in the account; gives back what it holds when dropped.
pub struct SocketAccount {
    budget: Arc<SocketBudget>,
    id: u64,
    entry: Arc<Entry>,
    written: u64,
    confirmed: u64,
    marked: u64,
}

impl SocketBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(SocketBudget {
            limit,
            total: AtomicU64::new(0),
            sockets: Mutex::new(HashMap::new()),
            shed: AtomicU64::new(0),
        })
    }

    /// Bytes written and not yet read, across the server.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Sockets closed because the total passed the bound.
    pub fn shed_count(&self) -> u64 {
        self.shed.load(Relaxed)
    }

    /// Open an account for socket `id`; `slow` closes it when it has to go.
    pub fn open(self: &Arc<Self>, id: u64, slow: CancellationToken) -> SocketAccount {
        let entry = Arc::new(Entry {
            unread: AtomicU64::new(0),
            slow,
            gone: AtomicBool::new(false),
        });
        self.sockets.lock().insert(id, entry.clone());
        SocketAccount {
            budget: self.clone(),
            id,
            entry,
            written: 0,
            confirmed: 0,
            marked: 0,
        }
    }

    /// Take a socket out of the account, giving back what it holds.
    fn release(&self, e: &Entry) {
        e.gone.store(true, Relaxed);
        let u = e.unread.swap(0, Relaxed);
        self.total.fetch_sub(u, Relaxed);
    }

    /// Over the bound: close the socket with the most unread bytes.
    fn shed_slowest(&self) {
        let mut g = self.sockets.lock();
        if self.total() <= self.limit {
            return;
        }
        let victim = g
            .iter()
            .filter(|(_, e)| !e.gone.load(Relaxed))
            .max_by_key(|(_, e)| e.unread.load(Relaxed))
            .map(|(id, _)| *id);
        if let Some(e) = victim.and_then(|id| g.remove(&id)) {
            let unread = e.unread.load(Relaxed);
            self.release(&e);
            e.slow.cancel();
            self.shed.fetch_add(1, Relaxed);
            tracing::warn!(
                unread,
                limit = self.limit,
                "closing the WebSocket with the most unread bytes: the server-wide bound is reached"
            );
        }
    }
}

impl SocketAccount {
    /// `n` more bytes were handed to the connection.
    pub fn wrote(&mut self, n: u64) {
        self.written += n;
        if self.entry.gone.load(Relaxed) {
            return;
        }
        self.entry.unread.fetch_add(n, Relaxed);
        self.budget.total.fetch_add(n, Relaxed);
        if self.entry.gone.load(Relaxed) {
            // Shed meanwhile: give back what this call added, if the shed did not.
            self.budget.release(&self.entry);
            return;
        }
        if self.budget.limit > 0 && self.budget.total() > self.budget.limit {
            self.budget.shed_slowest();
        }
    }

    /// The payload of a ping to send now, if one is due (every [`MARK_EVERY`] bytes).
    pub fn marker_due(&mut self) -> Option<[u8; 8]> {
        (self.written - self.marked >= MARK_EVERY).then(|| self.marker())
    }

    /// The payload of a ping sent now: the bytes written so far.
    pub fn marker(&mut self) -> [u8; 8] {
        self.marked = self.written;
        self.written.to_be_bytes()
    }

    /// A pong arrived: the client has read what was written before the ping it answers.
    pub fn pong(&mut self, payload: &[u8]) {
        let Ok(b) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let offset = u64::from_be_bytes(b).min(self.written);
        if offset <= self.confirmed {
            return;
        }
        let d = offset - self.confirmed;
        self.confirmed = offset;
        let before = self
            .entry
            .unread
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(d)))
            .unwrap_or(0);
        self.budget.total.fetch_sub(before.min(d), Relaxed);
    }

    /// Bytes written to this socket and not confirmed read.
    #[cfg(test)]
    fn unread(&self) -> u64 {
        self.entry.unread.load(Relaxed)
    }
}

impl Drop for SocketAccount {
    fn drop(&mut self) {
        self.budget.sockets.lock().remove(&self.id);
        self.budget.release(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pongs_confirm_reads_and_the_total_is_the_sum() {
        let b = SocketBudget::new(0);
        let mut a = b.open(1, CancellationToken::new());
        let mut c = b.open(2, CancellationToken::new());
        a.wrote(100);
        c.wrote(50);
        assert_eq!(b.total(), 150);
        let m = a.marker();
        a.wrote(30);
        a.pong(&m);
        assert_eq!((a.unread(), b.total()), (30, 80));
        a.pong(&m);
        a.pong(b"junk");
        a.pong(&u64::MAX.to_be_bytes());
        assert_eq!((a.unread(), b.total()), (0, 50), "at most what was written");
        drop(c);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn markers_are_due_every_mark_every_bytes() {
        let b = SocketBudget::new(0);
        let mut a = b.open(1, CancellationToken::new());
        a.wrote(MARK_EVERY - 1);
        assert_eq!(a.marker_due(), None);
        a.wrote(1);
        assert_eq!(a.marker_due(), Some(MARK_EVERY.to_be_bytes()));
        assert_eq!(a.marker_due(), None);
    }

    #[test]
    fn over_the_bound_the_socket_with_most_unread_is_closed_once() {
        let b = SocketBudget::new(1000);
        let (t1, t2, t3) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let mut reader = b.open(1, t1.clone());
        let mut hog = b.open(2, t2.clone());
        let mut other = b.open(3, t3.clone());
        hog.wrote(600);
        other.wrote(300);
        reader.wrote(200);
        assert!(t2.is_cancelled(), "the socket with most unread goes");
        assert!(!t1.is_cancelled() && !t3.is_cancelled());
        assert_eq!(b.total(), 500);
        assert_eq!(b.shed_count(), 1);
        hog.wrote(10_000);
        assert_eq!(b.total(), 500, "a shed socket is charged no more");
        assert!(!t3.is_cancelled());
        drop(hog);
        drop(other);
        drop(reader);
        assert_eq!(b.total(), 0);
    }
}
