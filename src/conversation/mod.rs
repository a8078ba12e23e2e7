//! Conversation actors and the registry that finds or starts them.
//!
//! A [`Conversation`] actor is the only owner of one conversation: its process checkpoint, its
//! active run, its subscribers, its pending interrupt and its `seq` counter (DESIGN invariant 1).
//! Every mutation of a conversation (send, resume, cancel, rename, delete) is a message to its
//! actor. The [`Registry`] maps ids to live actors under one lock, so two sockets opening the
//! same conversation get the same actor, and an actor leaving memory unregisters itself first.
//!
//! Events are numbered by the actor, written through the store, and delivered to subscribers
//! only once the commit that holds them is durable (the high-water mark, invariant 2).

mod actor;
mod outbound;
mod registry;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use actor::Conversation;
pub use outbound::{queue as outbound_queue, OutboundRx, OutboundTx};
pub use registry::{recover_interrupted, Registry};

use crate::error::ApiError;
use crate::store::MessageRecord;

/// A frame for one socket: the conversation and seq it belongs to, and the bytes to send.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub conversation: Arc<str>,
    pub seq: u64,
    pub frame: Bytes,
}

/// A socket's subscription handle: a bounded queue of frames, and a token the actor cancels
/// when the socket falls too far behind (the session then closes it; the client comes back
/// with `since`).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: u64,
    pub tx: OutboundTx,
    pub slow: CancellationToken,
}

/// A `send` or `resume` was accepted and durably stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub conversation_id: String,
    pub run_id: String,
}

/// The end of a run, for a synchronous caller.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub conversation_id: String,
    pub run_id: String,
    pub result: Result<Value, ApiError>,
    pub messages: Vec<MessageRecord>,
}

/// Build the wire frame of an event: `{"type":"event","conversationId":…,"seq":N,"event":{…}}`.
/// `event_json` is the event object as stored.
pub fn event_frame(conversation: &str, seq: u64, event_json: &[u8]) -> Bytes {
    let id = serde_json::to_string(conversation).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(event_json.len() + id.len() + 64);
    out.extend_from_slice(b"{\"type\":\"event\",\"conversationId\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event_json);
    out.push(b'}');
    Bytes::from(out)
}

pub(crate) type Waiter = oneshot::Sender<Result<(), ApiError>>;

pub mod msg {
    //! The messages a conversation actor answers.
    use super::*;
    use actix::Message;

    /// A user message: starts a run, or answers a paused `page_action` / `conversation_action`.
    #[derive(Message)]
    #[rtype(result = "Result<Accepted, ApiError>")]
    pub struct Send {
        pub owner: String,
        pub content: String,
        pub args: Option<Value>,
        /// Subscribe this socket before anything is emitted (new conversations).
        pub subscriber: Option<Subscriber>,
        /// Told when the run ends (synchronous invocation).
        pub report: Option<oneshot::Sender<RunReport>>,
    }

    /// An answer to a pending interrupt.
    #[derive(Message)]
    #[rtype(result = "Result<Accepted, ApiError>")]
    pub struct Resume {
        pub owner: String,
        pub interrupt_id: String,
        pub action: Option<String>,
        pub value: Value,
    }

    /// Register a subscriber; answers the durable high-water mark at that moment: every event up
    /// to it is in the store, every later one will be delivered live.
    #[derive(Message)]
    #[rtype(result = "Result<u64, ApiError>")]
    pub struct Subscribe {
        pub owner: String,
        pub subscriber: Subscriber,
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    pub struct Unsubscribe {
        pub subscriber_id: u64,
    }

    /// Stop the active run. Answers whether a run was active.
    #[derive(Message)]
    #[rtype(result = "Result<bool, ApiError>")]
    pub struct Cancel {
        pub owner: String,
    }

    #[derive(Message)]
    #[rtype(result = "Result<(), ApiError>")]
    pub struct Rename {
        pub owner: String,
        pub title: String,
    }

    /// Delete everything of the conversation and stop the actor.
    #[derive(Message)]
    #[rtype(result = "Result<(), ApiError>")]
    pub struct Delete {
        pub owner: String,
    }
}

/// Title of a conversation: the first 20 characters of its first message.
pub fn title_of(content: &str) -> String {
    content.trim().chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let f = event_frame("c1", 7, br#"{"type":"RUN_STARTED","runId":"r"}"#);
        let v: Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["conversationId"], "c1");
        assert_eq!(v["event"]["type"], "RUN_STARTED");
    }

    #[test]
    fn titles() {
        assert_eq!(
            title_of("  I took a taxi to the airport"),
            "I took a taxi to the"
        );
        assert_eq!(title_of("héllo"), "héllo");
    }
}
