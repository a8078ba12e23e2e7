//! A conversation's subscribers and the delivery of durable events to them.
//!
//! Delivery never waits: each subscriber has a bounded queue (`outbound.rs`); one that is full
//! has fallen too far behind and is dropped with its `slow` token cancelled (its session closes
//! the socket, the client comes back with `since`), one that is closed is dropped quietly.
//! Events go out in seq order, each to every subscriber; the frame is built by the gateway.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;

use super::{Outbound, Subscriber};
use crate::engine::Event;

#[derive(Debug, Default)]
pub struct Fanout {
    subscribers: HashMap<u64, Subscriber>,
}

impl Fanout {
    /// Add (or replace) a subscriber by its id.
    pub fn insert(&mut self, s: Subscriber) {
        self.subscribers.insert(s.id, s);
    }

    pub fn remove(&mut self, id: u64) {
        self.subscribers.remove(&id);
    }

    pub fn clear(&mut self) {
        self.subscribers.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Queue one durable event for every subscriber. Returns how many were dropped for being
    /// too slow.
    /// `typed` is the event itself when this process made it (not when it was relayed from
    /// another node): a front that translates events reads it instead of the JSON.
    pub fn deliver(
        &mut self,
        conversation: &Arc<str>,
        seq: u64,
        event: &Bytes,
        typed: Option<&Arc<Event>>,
    ) -> u64 {
        let mut slow = 0;
        self.subscribers.retain(|_, s| {
            let out = Outbound {
                conversation: conversation.clone(),
                seq,
                event: event.clone(),
                typed: if s.typed { typed.cloned() } else { None },
            };
            match s.tx.try_send(out) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    slow += 1;
                    s.slow.cancel();
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::outbound_queue;
    use tokio_util::sync::CancellationToken;

    fn subscriber(typed: bool) -> (Subscriber, crate::conversation::OutboundRx) {
        let (tx, rx) = outbound_queue(4);
        let s = Subscriber {
            id: Subscriber::next_id(),
            tx,
            slow: CancellationToken::new(),
            typed,
        };
        (s, rx)
    }

    #[test]
    fn the_event_itself_goes_only_to_subscribers_that_translate() {
        let mut f = Fanout::default();
        let (front, mut front_rx) = subscriber(true);
        let (socket, mut socket_rx) = subscriber(false);
        f.insert(front);
        f.insert(socket);
        let event = Arc::new(Event::TextMessageEnd {
            message_id: "m".into(),
        });
        let json = Bytes::from_static(br#"{"type":"TEXT_MESSAGE_END","messageId":"m"}"#);
        assert_eq!(f.deliver(&Arc::from("c"), 7, &json, Some(&event)), 0);
        let a = front_rx.try_recv().expect("the front got the event");
        let b = socket_rx.try_recv().expect("the socket got the event");
        assert_eq!((a.seq, &a.event), (7, &json));
        assert_eq!((b.seq, &b.event), (7, &json));
        assert_eq!(a.typed.as_deref(), Some(&*event));
        assert!(b.typed.is_none(), "a socket's queue holds the JSON only");
        // A relayed event has no typed form for anyone.
        f.deliver(&Arc::from("c"), 8, &json, None);
        assert!(front_rx.try_recv().expect("relayed").typed.is_none());
    }
}
