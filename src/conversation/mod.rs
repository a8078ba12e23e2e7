//! Conversation actors and the registry that finds or starts them.
//!
//! A [`Conversation`] actor is the only owner of one conversation: its process checkpoint, its
//! active run, its subscribers, its pending interrupt and its `seq` counter (DESIGN invariant 1).
//! Every mutation of a conversation (send, resume, cancel, rename, delete) is a message to its
//! actor. The [`Registry`] maps ids to live actors, so two sockets opening the same
//! conversation get the same actor, and an actor leaving memory unregisters itself first.
//!
//! Events are numbered by the actor's [`journal`], written through the store, and delivered to
//! subscribers only once the commit that holds them is durable (the high-water mark,
//! invariant 2).
//!
//! # Layout
//!
//! - `actor.rs`: the actor (state machine, runs, the glue between journal, store and fan-out);
//!   `actor/handlers.rs`: its public messages ([`msg`]); `actor/sink.rs`: the engine's side
//!   of a run.
//! - `journal.rs`: the durability bookkeeping, a plain struct unit-tested without actix.
//! - `fanout.rs`: the subscribers and delivery to their queues.
//! - `outbound.rs`: a socket's bounded queue of [`Outbound`] events.
//! - `deps.rs`: what an actor uses of the server ([`Deps`]).
//! - `error.rs`: [`ConversationError`], mapped to the wire's `ApiError` at the gateway.
//! - `registry.rs`: find-or-start, start-up recovery; in cluster mode claim-or-forward.
//! - `handle.rs`: [`Handle`], what the registry answers: the local actor's address, or (cluster
//!   mode) the owner node's; `send` routes each message to the actor, the owner or the relay.
//! - `remote.rs`: cluster mode's forwarded commands: their wire form and the server that
//!   answers them on the owner.
//! - `relay.rs`: cluster mode's subscribers: every node relays a conversation's published
//!   events to its local subscribers in seq order, filling gaps from the store.
//!
//! # Dependencies
//!
//! This layer depends on the engine, the store, the assistants and the metrics, never on the
//! gateway: it hands out events as stored (JSON bytes with their seq); frames, frame-id dedup
//! and per-user limits are the gateway's.

mod actor;
mod deps;
mod error;
mod fanout;
mod handle;
pub mod journal;
mod outbound;
mod registry;
mod relay;
pub mod remote;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use actor::Conversation;
pub use deps::Deps;
pub use error::ConversationError;
pub use handle::{Handle, Routed};
pub use outbound::{queue as outbound_queue, OutboundRx, OutboundTx};
pub use registry::{recover_interrupted, LiveMap, Registry};
pub use relay::Relays;

use crate::store::MessageRecord;

/// A durable event for one socket: the conversation and seq it belongs to, and the event JSON
/// as stored (the gateway builds the wire frame).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub conversation: Arc<str>,
    pub seq: u64,
    pub event: Bytes,
    /// The event itself, when this process made it (`None`: relayed from another node).
    pub typed: Option<Arc<crate::engine::Event>>,
}

/// A socket's subscription handle: a bounded queue of frames, and a token the actor cancels
/// when the socket falls too far behind (the session then closes it; the client comes back
/// with `since`).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: u64,
    pub tx: OutboundTx,
    pub slow: CancellationToken,
    /// Whether its queue also gets each event itself ([`Outbound::typed`]): a front that
    /// translates events wants it; a socket, which writes the JSON, does not (its queue would
    /// hold both while it is behind).
    pub typed: bool,
}

impl Subscriber {
    /// A subscriber id no other socket or stream of this process has.
    pub fn next_id() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Relaxed)
    }
}

/// The answer to a subscribe: where the store ends and live delivery begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Every event up to this seq is durable (replay it from the store); every later one is
    /// delivered live.
    pub high: u64,
    /// A run was active when the subscriber was registered.
    pub running: bool,
}

/// A `send` or `resume` was accepted and durably stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub conversation_id: String,
    pub run_id: String,
}

/// An idempotency key that guards a `send`, `resume`, `cancel` or a create without a message
/// (CONTRACT §6): the actor stores it in the same commit as the message, answer, cancellation
/// or record it accepts, with the conversation and run ids (and a cancel's answer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyKey {
    /// The scoped key (user, route and key in one string).
    pub key: String,
    /// The request's fingerprint (hex).
    pub fingerprint: String,
}

/// The end of a run, for a synchronous caller.
#[derive(Debug)]
pub struct RunReport {
    pub conversation_id: String,
    pub run_id: String,
    pub result: Result<Value, ConversationError>,
    pub messages: Vec<MessageRecord>,
}

pub mod msg {
    //! The messages a conversation actor answers.
    use super::*;
    use actix::Message;

    /// A user message: starts a run, or answers a paused `page_action` / `conversation_action`.
    #[derive(Message)]
    #[rtype(result = "Result<Accepted, ConversationError>")]
    pub struct Send {
        pub owner: String,
        pub content: String,
        pub args: Option<Value>,
        /// Subscribe this socket before anything is emitted (new conversations).
        pub subscriber: Option<Subscriber>,
        /// Told when the run ends (synchronous invocation).
        pub report: Option<oneshot::Sender<RunReport>>,
        /// What to do while a run is active; `None`: the assistant's `onBusy`.
        pub on_busy: Option<crate::assistant::model::OnBusy>,
        /// Stored with the message when it is accepted.
        pub idempotency: Option<IdempotencyKey>,
    }

    /// An answer to a pending interrupt.
    #[derive(Message)]
    #[rtype(result = "Result<Accepted, ConversationError>")]
    pub struct Resume {
        pub owner: String,
        pub interrupt_id: String,
        pub action: Option<String>,
        pub value: Value,
        /// Stored with the answer when it is accepted.
        pub idempotency: Option<IdempotencyKey>,
    }

    /// Register a subscriber; answers the durable high-water mark at that moment (every event up
    /// to it is in the store, every later one will be delivered live) and whether a run is
    /// active.
    #[derive(Message)]
    #[rtype(result = "Result<Subscribed, ConversationError>")]
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
    #[rtype(result = "Result<bool, ConversationError>")]
    pub struct Cancel {
        pub owner: String,
    }

    /// A [`Cancel`] under an idempotency key (HTTP `Idempotency-Key`): the key is stored with
    /// what the cancel changed (or alone, when nothing was), with its answer, and the answer
    /// waits for that commit.
    #[derive(Message)]
    #[rtype(result = "Result<bool, ConversationError>")]
    pub struct KeyedCancel {
        pub owner: String,
        pub idempotency: IdempotencyKey,
    }

    /// Store a new conversation that has no message yet (optionally titled); answered once
    /// the record is durable.
    #[derive(Message)]
    #[rtype(result = "Result<(), ConversationError>")]
    pub struct Store {
        pub owner: String,
        pub title: Option<String>,
        /// Stored with the record (a create without a first message).
        pub idempotency: Option<IdempotencyKey>,
    }

    #[derive(Message)]
    #[rtype(result = "Result<(), ConversationError>")]
    pub struct Rename {
        pub owner: String,
        pub title: String,
    }

    /// Delete everything of the conversation and stop the actor.
    #[derive(Message)]
    #[rtype(result = "Result<(), ConversationError>")]
    pub struct Delete {
        pub owner: String,
    }

    /// Cluster mode: give the conversation up so that a synchronous call another node received
    /// can run it there (`actor/hand_over.rs`). `Ok(true)`: handed over (everything durable,
    /// the actor stopped, the lease released); `Ok(false)`: a run is active and `on_busy` says
    /// to wait for it (with `interrupt` it was cancelled); `Busy` when it says `reject`.
    #[derive(Message)]
    #[rtype(result = "Result<bool, ConversationError>")]
    pub struct HandOver {
        pub owner: String,
        /// What to do while a run is active; `None`: the assistant's `onBusy`.
        pub on_busy: Option<crate::assistant::model::OnBusy>,
    }

    /// Cluster mode: this node lost the conversation's lease. The actor stops at once, storing
    /// nothing more (the fence would refuse it anyway).
    #[derive(Message)]
    #[rtype(result = "()")]
    pub struct LeaseLost;
}

/// Title of a conversation: the first 20 characters of its first message.
pub fn title_of(content: &str) -> String {
    content.trim().chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(
            title_of("  I took a taxi to the airport"),
            "I took a taxi to the"
        );
        assert_eq!(title_of("héllo"), "héllo");
    }
}
