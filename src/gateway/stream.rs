//! One conversation's event log as a stream: the stored events after `since`, then the live
//! ones, each once and in seq order. Every front that streams (the SSE routes, AG-UI, the
//! OpenAI-compatible API) reads a conversation through this type, so each of them can be
//! resumed from a seq: the stream *is* the event log (DESIGN: fronts are translations).
//!
//! # The hand-over from stored to live (invariant 3)
//!
//! 1. [`EventStream::open`] makes a bounded queue and registers its sending half with the
//!    conversation's actor (`msg::Subscribe`). The actor answers its durable mark `H` at that
//!    instant: every event up to `H` is in the store, every later one will be queued live.
//! 2. [`EventStream::next`] first reads the stored events in `(since, H]`, a page at a time.
//! 3. Then it takes live events from the queue. Live events are all `> H`; any at or below the
//!    last seq handed out (a client that asked for `since > H`) is dropped, so nothing is
//!    handed out twice.
//!
//! # Bounds
//!
//! The live queue holds `capacity` events (the same rule as a socket's outbound queue,
//! `server.socket_outbound_buffer`). A reader that falls that far behind is dropped by the
//! actor, which cancels its `slow` token: `next` then answers [`Next::Lagged`] and the caller
//! ends its response; the client resumes from the last seq it received and loses nothing.
//!
//! Dropping an `EventStream` unsubscribes it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::conversation::{msg, outbound_queue, Handle, Outbound, OutboundRx, Subscriber};
use crate::engine::Event;
use crate::error::ApiError;
use crate::services::Services;
use crate::store::Store;

/// Stored events read per store call while replaying.
const REPLAY_PAGE: usize = 512;

/// One event of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: u64,
    /// The event's JSON as stored (what a WebSocket frame carries under `event`).
    pub json: Bytes,
    /// The event itself when it was delivered live by this process's actor (`None` when it
    /// was read from the store or relayed from another node): a front that translates it
    /// reads this instead of parsing `json` again.
    pub typed: Option<Arc<Event>>,
}

impl From<Outbound> for Item {
    /// A live event, as its actor delivered it.
    fn from(out: Outbound) -> Item {
        Item {
            seq: out.seq,
            json: out.event,
            typed: out.typed,
        }
    }
}

impl Item {
    fn stored(seq: u64, json: Bytes) -> Item {
        Item {
            seq,
            json,
            typed: None,
        }
    }
}

/// What [`EventStream::next`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The next event.
    Event(Item),
    /// The reader fell too far behind and was dropped; resume from the last seq received.
    Lagged,
    /// The conversation's actor stopped (the conversation was deleted, or the server is
    /// shutting down).
    Closed,
}

/// A subscription to one conversation's events (see the module doc).
pub struct EventStream {
    conversation: Arc<str>,
    addr: Handle,
    subscriber_id: u64,
    slow: CancellationToken,
    rx: OutboundRx,
    store: Arc<dyn Store>,
    /// The actor's durable mark when the stream opened: replay ends here.
    high: u64,
    /// The last seq handed out (or `since`).
    cursor: u64,
    page: VecDeque<(u64, Bytes)>,
    running: bool,
}

impl EventStream {
    /// Subscribe `owner` to a conversation (its own: anyone else's is `conversation_not_found`),
    /// starting after `since`.
    pub async fn open(
        svc: &Arc<Services>,
        owner: &str,
        conversation: &str,
        since: u64,
    ) -> Result<EventStream, ApiError> {
        let addr = svc.registry.get_as(conversation, owner).await?;
        let (mut stream, subscriber) =
            Self::with_subscriber(svc, addr.clone(), conversation, since);
        let subscribed = addr
            .send(msg::Subscribe {
                owner: owner.to_owned(),
                subscriber,
            })
            .await
            .map_err(|_| ApiError::internal("the conversation stopped; subscribe again"))??;
        stream.high = subscribed.high;
        stream.running = subscribed.running;
        Ok(stream)
    }

    /// A stream of a conversation just created, with nothing stored yet: no `msg::Subscribe`
    /// round trip, the returned [`Subscriber`] goes with the conversation's first `msg::Send`
    /// (`subscriber`), which registers it before the actor emits anything. The mark is 0, so
    /// every event is live. (The same hand-over as [`EventStream::open`]: everything after
    /// the mark, once each.)
    pub fn for_new(
        svc: &Arc<Services>,
        addr: Handle,
        conversation: &str,
    ) -> (EventStream, Subscriber) {
        Self::with_subscriber(svc, addr, conversation, 0)
    }

    /// A subscriber with this server's queue bound, and the stream that reads it after
    /// `since` (mark 0, no run active, until the actor says otherwise).
    fn with_subscriber(
        svc: &Arc<Services>,
        addr: Handle,
        conversation: &str,
        since: u64,
    ) -> (EventStream, Subscriber) {
        let capacity = svc.config.server.socket_outbound_buffer.max(16);
        let (tx, rx) = outbound_queue(capacity);
        let slow = CancellationToken::new();
        let subscriber = Subscriber {
            id: Subscriber::next_id(),
            tx,
            slow: slow.clone(),
            typed: true,
        };
        let stream = EventStream {
            conversation: Arc::from(conversation),
            addr,
            subscriber_id: subscriber.id,
            slow,
            rx,
            store: svc.store.clone(),
            high: 0,
            cursor: since,
            page: VecDeque::new(),
            running: false,
        };
        (stream, subscriber)
    }

    /// Whether a run was active when the stream opened.
    pub fn running_at_open(&self) -> bool {
        self.running
    }

    /// The conversation's durable mark when the stream opened.
    pub fn high_at_open(&self) -> u64 {
        self.high
    }

    /// The last seq handed out (or the `since` the stream was opened with).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether every stored event up to the mark at opening has been handed out (what follows
    /// is live).
    pub fn replayed(&self) -> bool {
        self.page.is_empty() && self.cursor >= self.high
    }

    /// The next event; waits for a live one once the stored ones are handed out.
    /// Cancel-safe: an event is only taken when it is returned.
    pub async fn next(&mut self) -> Result<Next, ApiError> {
        if let Some(ev) = self.next_stored().await? {
            return Ok(ev);
        }
        loop {
            if self.slow.is_cancelled() {
                return Ok(Next::Lagged);
            }
            let out = tokio::select! {
                biased;
                out = self.rx.recv() => out,
                _ = self.slow.cancelled() => return Ok(Next::Lagged),
            };
            let Some(out) = out else {
                return Ok(Next::Closed);
            };
            if out.seq > self.cursor {
                self.cursor = out.seq;
                return Ok(Next::Event(Item::from(out)));
            }
        }
    }

    /// The next event if one can be handed out without waiting: a stored one already read, or
    /// a live one already queued. `None` says nothing about the stream's end: call
    /// [`EventStream::next`] for that (and for stored events not read yet, a lag or a close).
    pub fn try_next(&mut self) -> Option<Item> {
        if let Some((seq, json)) = self.page.pop_front() {
            self.cursor = seq;
            return Some(Item::stored(seq, json));
        }
        if self.cursor < self.high || self.slow.is_cancelled() {
            return None;
        }
        while let Some(out) = self.rx.try_recv() {
            if out.seq > self.cursor {
                self.cursor = out.seq;
                return Some(Item::from(out));
            }
        }
        None
    }

    /// The next stored event in `(cursor, high]`, reading a page when needed.
    async fn next_stored(&mut self) -> Result<Option<Next>, ApiError> {
        if self.page.is_empty() && self.cursor < self.high {
            let page = self
                .store
                .events_since(&self.conversation, self.cursor, REPLAY_PAGE)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            self.page = page
                .into_iter()
                .take_while(|(seq, _)| *seq <= self.high)
                .collect();
            if self.page.is_empty() {
                // The store has nothing more up to the mark: go live.
                self.high = self.cursor;
            }
        }
        Ok(self.page.pop_front().map(|(seq, json)| {
            self.cursor = seq;
            Next::Event(Item::stored(seq, json))
        }))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.addr.do_send(msg::Unsubscribe {
            subscriber_id: self.subscriber_id,
        });
    }
}

/// Messages queued for a streamed response, as one chunk (a front drains the events already
/// waiting with [`EventStream::try_next`] and writes them together: one chunk, one write).
pub fn concat(queue: &mut VecDeque<Bytes>) -> Bytes {
    if queue.len() == 1 {
        return queue.pop_front().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(queue.iter().map(Bytes::len).sum());
    for b in queue.drain(..) {
        out.extend_from_slice(&b);
    }
    Bytes::from(out)
}

/// The `type` of a stored event. Stored events are written by serde with their `type` tag
/// first (`{"type":"RUN_STARTED",…`), so that prefix is read without parsing the rest (every
/// streamed event passes here); any other shape is parsed.
pub fn event_type(event_json: &[u8]) -> Option<String> {
    if let Some(tag) = crate::engine::events::stored_tag(event_json) {
        return Some(tag.to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Typed>(event_json)
        .ok()
        .map(|t| t.kind)
}

/// Whether an event ends a run segment (`RUN_FINISHED`, which also marks a pause, or
/// `RUN_ERROR`).
pub fn ends_run(event_json: &[u8]) -> bool {
    matches!(
        event_type(event_json).as_deref(),
        Some("RUN_FINISHED" | "RUN_ERROR")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ends_are_recognised_by_type() {
        assert!(ends_run(
            br#"{"type":"RUN_FINISHED","runId":"r","outcome":{}}"#
        ));
        assert!(ends_run(
            br#"{"runId":"r","type":"RUN_ERROR","code":"cancelled"}"#
        ));
        assert!(!ends_run(br#"{"type":"RUN_STARTED","runId":"r"}"#));
        assert!(!ends_run(b"not json"));
        // An escaped tag is parsed, not read off the prefix.
        assert_eq!(
            event_type(br#"{"type":"A\u0042","x":1}"#).as_deref(),
            Some("AB")
        );
        assert_eq!(event_type(br#"{"type":"#), None);
        assert_eq!(
            event_type(br#"{"type":"STEP_STARTED","stepName":"a"}"#).as_deref(),
            Some("STEP_STARTED")
        );
    }
}
