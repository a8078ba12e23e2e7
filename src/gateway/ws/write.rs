//! Writing frames, and forwarding queued events while a frame is being handled.
//!
//! - Every write goes through [`SocketSession::send_text`]: it waits for the client to take
//!   the frame (a client that does not read makes it wait until the actors flag the socket as
//!   too slow), charges the bytes to the server-wide account (`budget.rs`) and sends a marker
//!   ping when one is due.
//! - [`SocketSession::pump`] runs a frame's long wait (an actor's answer, a store read) while
//!   forwarding the outbound queue. An event that may not be written yet (of the conversation
//!   the frame is about, or of one not followed yet: the frame may be about to follow it) is
//!   held, and [`SocketSession::release_held`] writes (or drops) the held events, oldest first,
//!   once the frame is answered; the per conversation `last sent seq` drops duplicates.

use std::future::Future;

use actix_ws::AggregatedMessage;
use bytestring::ByteString;
use futures_util::StreamExt;

use super::{ServerFrame, SocketSession};
use crate::conversation::Outbound;

/// The text of a frame: its bytes are UTF-8 by construction (JSON written by serde, or an
/// event frame around stored JSON); a frame that is not is dropped with an error log.
fn utf8(b: bytes::Bytes) -> Option<ByteString> {
    match ByteString::try_from(b) {
        Ok(s) => Some(s),
        Err(_) => {
            tracing::error!("dropping a frame that is not UTF-8");
            None
        }
    }
}

impl SocketSession {
    /// Await `fut` (which must not borrow the session) while forwarding queued events and
    /// answering the client's pings and pongs (the next frame is read, not handled).
    pub(super) async fn pump<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return r,
                Some(out) = self.rx.recv(), if !self.closed => self.forward_or_hold(out).await,
                m = self.stream.next(), if self.inbox.is_none() && !self.closed => {
                    self.read_ahead(m).await
                }
            }
        }
    }

    /// A message read while a frame is handled: pings and pongs at once (a pong says how much
    /// the client has read), anything else waits in the inbox.
    async fn read_ahead(&mut self, m: super::Inbound) {
        self.last_seen = std::time::Instant::now();
        match m {
            Some(Ok(AggregatedMessage::Pong(p))) => self.account.pong(&p),
            Some(Ok(AggregatedMessage::Ping(p))) => {
                if self.session.pong(&p).await.is_err() {
                    self.closed = true;
                }
            }
            other => self.inbox = Some(other),
        }
    }

    /// During a frame: forward an event of another followed conversation, hold the rest.
    async fn forward_or_hold(&mut self, out: Outbound) {
        let settling = self.settling.as_deref() == Some(&*out.conversation);
        if settling || !self.subs.contains_key(&out.conversation) {
            self.held.push_back(out);
            if self.held.len() > self.svc.config.server.socket_outbound_buffer.max(16) {
                // As if the queue were full: the socket is too slow (close 4008).
                self.subscriber.slow.cancel();
                self.closed = true;
            }
            return;
        }
        self.forward(out).await;
    }

    /// After a frame's answer: the events held meanwhile, oldest first.
    pub(super) async fn release_held(&mut self) {
        self.settling = None;
        while let Some(out) = self.held.pop_front() {
            if self.closed {
                self.held.clear();
                return;
            }
            self.forward(out).await;
        }
        if self.held.capacity() > 64 {
            self.held.shrink_to(16);
        }
    }

    /// Write a queued event of a followed conversation, unless it was written already.
    pub(super) async fn forward(&mut self, out: Outbound) {
        // Nothing of `out` but the text is kept across the write (this future is part of every
        // socket's task).
        let Outbound {
            conversation,
            seq,
            event,
            typed,
        } = out;
        // A socket writes the JSON as stored; the typed event is not kept across the write.
        drop(typed);
        let Some(sub) = self.subs.get_mut(&conversation) else {
            return;
        };
        if seq <= sub.last_sent {
            return;
        }
        sub.last_sent = seq;
        let frame = super::super::frame::event_frame(&conversation, seq, &event);
        drop((conversation, event));
        if let Some(text) = utf8(frame) {
            self.send_text(text).await;
        }
    }

    pub(super) async fn send_bytes(&mut self, b: bytes::Bytes) {
        if let Some(text) = utf8(b) {
            self.send_text(text).await;
        }
    }

    /// Write one frame.
    pub(super) async fn send_frame(&mut self, f: ServerFrame<'_>) {
        self.send_bytes(f.to_bytes()).await;
    }

    /// Write one frame. A client that does not read makes this wait; if the actors (or the
    /// server-wide bound) meanwhile flag the socket as too slow, give up on it.
    pub(super) async fn send_text(&mut self, s: ByteString) {
        if self.closed {
            return;
        }
        let n = s.len() as u64;
        let slow = self.subscriber.slow.clone();
        tokio::select! {
            r = self.session.text(s) => {
                if r.is_err() {
                    self.closed = true;
                    return;
                }
            }
            _ = slow.cancelled() => {
                self.closed = true;
                return;
            }
        }
        self.account.wrote(n);
        if let Some(mark) = self.account.marker_due() {
            tokio::select! {
                r = self.session.ping(&mark) => self.closed |= r.is_err(),
                _ = slow.cancelled() => self.closed = true,
            }
        }
    }
}
