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
    pub fn deliver(&mut self, conversation: &Arc<str>, seq: u64, event: &Bytes) -> u64 {
        let mut slow = 0;
        self.subscribers.retain(|_, s| {
            let out = Outbound {
                conversation: conversation.clone(),
                seq,
                event: event.clone(),
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
