//! Cluster mode: commands forwarded to a conversation's owner node, and the server that
//! answers them there (`parley.node.<id>.cmd`, NATS request/reply).
//!
//! A [`Command`] is a conversation message in wire form (JSON): everything a `send`,
//! `resume`, `cancel`, `store`, `rename`, `delete` or `hand_over` carries, except what cannot
//! cross a process (a subscriber, which the receiving node's relay keeps, and a synchronous
//! call's report channel: synchronous calls run where they arrive, after a `hand_over`). The owner runs it against its actor
//! exactly as a local caller would and answers a [`Reply`]: the result, or the error as the
//! wire's `ApiError`, so the receiving node answers its client with the same ack or error.
//! An owner that no longer holds the conversation answers [`Reply::NotOwner`]; the sender then
//! looks again (`handle.rs`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{msg, Accepted, Conversation, ConversationError, IdempotencyKey, Registry};
use crate::assistant::model::OnBusy;
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::store::IdempotencyRecord;

/// A conversation command in wire form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Send {
        owner: String,
        content: String,
        args: Option<Value>,
        on_busy: Option<OnBusy>,
        idempotency: Option<IdempotencyKey>,
    },
    Resume {
        owner: String,
        interrupt_id: String,
        action: Option<String>,
        value: Value,
        idempotency: Option<IdempotencyKey>,
    },
    Cancel {
        owner: String,
    },
    /// A cancel whose idempotency key is stored with it (`Idempotency-Key` over HTTP).
    KeyedCancel {
        owner: String,
        idempotency: IdempotencyKey,
    },
    Store {
        owner: String,
        title: Option<String>,
        #[serde(default)]
        idempotency: Option<IdempotencyKey>,
    },
    Rename {
        owner: String,
        title: String,
    },
    Delete {
        owner: String,
    },
    /// Give the conversation up to the asking node (`msg::HandOver`).
    HandOver {
        owner: String,
        on_busy: Option<OnBusy>,
    },
}

impl Command {
    fn owner(&self) -> &str {
        match self {
            Command::Send { owner, .. }
            | Command::Resume { owner, .. }
            | Command::Cancel { owner }
            | Command::KeyedCancel { owner, .. }
            | Command::Store { owner, .. }
            | Command::Rename { owner, .. }
            | Command::Delete { owner }
            | Command::HandOver { owner, .. } => owner,
        }
    }
}

impl Command {
    /// The idempotency key stored with what the command changes, if it has one.
    pub fn idempotency(&self) -> Option<&IdempotencyKey> {
        match self {
            Command::Send { idempotency, .. }
            | Command::Resume { idempotency, .. }
            | Command::Store { idempotency, .. } => idempotency.as_ref(),
            Command::KeyedCancel { idempotency, .. } => Some(idempotency),
            Command::Cancel { .. }
            | Command::Rename { .. }
            | Command::Delete { .. }
            | Command::HandOver { .. } => None,
        }
    }

    /// The answer the command got when it was applied, rebuilt from its stored key.
    pub fn answer_from(&self, rec: &IdempotencyRecord) -> Reply {
        match self {
            Command::Send { .. } | Command::Resume { .. } => Reply::Accepted(Accepted {
                conversation_id: rec.conversation_id.clone(),
                run_id: rec.run_id.clone(),
            }),
            Command::KeyedCancel { .. } | Command::Cancel { .. } => Reply::Cancelled {
                active: rec.cancelled.unwrap_or(false),
            },
            Command::Store { .. } | Command::Rename { .. } | Command::Delete { .. } => Reply::Done,
            Command::HandOver { .. } => Reply::HandedOver { done: false },
        }
    }
}

/// What crosses the wire: the conversation and its command.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub conversation: String,
    pub command: Command,
}

/// The owner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Accepted(Accepted),
    /// `cancel`: whether a run was active.
    Cancelled {
        active: bool,
    },
    Done,
    /// `hand_over`: whether the conversation was given up (else a run is still active).
    HandedOver {
        done: bool,
    },
    Error(ApiError),
    /// This node does not hold the conversation (any more): ask again.
    NotOwner,
}

impl Reply {
    fn from_result<T>(r: Result<T, ConversationError>, ok: impl FnOnce(T) -> Reply) -> Reply {
        match r {
            Ok(v) => ok(v),
            // Nothing was stored here: the sender asks the new owner.
            Err(e) if e.is_lease_lost() => Reply::NotOwner,
            Err(e) => Reply::Error(ApiError::from(e)),
        }
    }

    fn unexpected(self) -> ConversationError {
        match self {
            Reply::Error(e) => ConversationError::Remote(Box::new(e)),
            other => ConversationError::Unreachable(format!("unexpected answer {other:?}")),
        }
    }

    pub fn accepted(self) -> Result<Accepted, ConversationError> {
        match self {
            Reply::Accepted(a) => Ok(a),
            other => Err(other.unexpected()),
        }
    }

    pub fn cancelled(self) -> Result<bool, ConversationError> {
        match self {
            Reply::Cancelled { active } => Ok(active),
            other => Err(other.unexpected()),
        }
    }

    pub fn handed_over(self) -> Result<bool, ConversationError> {
        match self {
            Reply::HandedOver { done } => Ok(done),
            other => Err(other.unexpected()),
        }
    }

    pub fn done(self) -> Result<(), ConversationError> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.unexpected()),
        }
    }
}

/// Runs a command against a local actor, as a local caller would.
pub async fn execute(addr: &Addr<Conversation>, command: Command) -> Result<Reply, MailboxError> {
    Ok(match command {
        Command::Send {
            owner,
            content,
            args,
            on_busy,
            idempotency,
        } => {
            let m = msg::Send {
                owner,
                content,
                args,
                subscriber: None,
                report: None,
                on_busy,
                idempotency,
            };
            Reply::from_result(addr.send(m).await?, Reply::Accepted)
        }
        Command::Resume {
            owner,
            interrupt_id,
            action,
            value,
            idempotency,
        } => {
            let m = msg::Resume {
                owner,
                interrupt_id,
                action,
                value,
                idempotency,
            };
            Reply::from_result(addr.send(m).await?, Reply::Accepted)
        }
        Command::Cancel { owner } => {
            Reply::from_result(addr.send(msg::Cancel { owner }).await?, |active| {
                Reply::Cancelled { active }
            })
        }
        Command::KeyedCancel { owner, idempotency } => {
            let m = msg::KeyedCancel { owner, idempotency };
            Reply::from_result(addr.send(m).await?, |active| Reply::Cancelled { active })
        }
        Command::Store {
            owner,
            title,
            idempotency,
        } => {
            let m = msg::Store {
                owner,
                title,
                idempotency,
            };
            Reply::from_result(addr.send(m).await?, |()| Reply::Done)
        }
        Command::Rename { owner, title } => {
            Reply::from_result(addr.send(msg::Rename { owner, title }).await?, |()| {
                Reply::Done
            })
        }
        Command::Delete { owner } => {
            Reply::from_result(addr.send(msg::Delete { owner }).await?, |()| Reply::Done)
        }
        Command::HandOver { owner, on_busy } => {
            let m = msg::HandOver { owner, on_busy };
            Reply::from_result(addr.send(m).await?, |done| Reply::HandedOver { done })
        }
    })
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Plain data (strings, JSON values): serializing cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Sends `command` to `node`; the owner's reply.
pub async fn forward(
    cluster: &Cluster,
    node: &str,
    conversation: &str,
    command: &Command,
) -> Result<Reply, crate::cluster::ClusterError> {
    let request = encode(&serde_json::json!({
        "conversation": conversation,
        "command": command,
    }));
    let answer = cluster.request(node, request).await?;
    serde_json::from_slice(&answer).map_err(|e| crate::cluster::ClusterError::Request {
        node: node.to_owned(),
        message: format!("unreadable answer: {e}"),
    })
}

/// Answers the commands other nodes forward to this one, until the process ends. Runs on the
/// current actix arbiter (a command may start an actor).
pub fn spawn_server(cluster: Arc<Cluster>, registry: Registry) {
    actix::spawn(async move {
        let mut requests = match cluster.serve_commands().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve forwarded commands");
                return;
            }
        };
        while let Some(m) = requests.next().await {
            let Some(reply_to) = m.reply else {
                continue;
            };
            let cluster = cluster.clone();
            let registry = registry.clone();
            actix::spawn(async move {
                let reply = match serde_json::from_slice::<Request>(&m.payload) {
                    Ok(r) => serve(&registry, r).await,
                    Err(e) => Reply::Error(ApiError::bad_request(format!(
                        "unreadable forwarded command: {e}"
                    ))),
                };
                cluster.metrics.served.fetch_add(1, Relaxed);
                cluster.reply(reply_to, encode(&reply)).await;
            });
        }
    });
}

/// Runs a forwarded command here if this node owns (or can claim) the conversation.
async fn serve(registry: &Registry, r: Request) -> Reply {
    let handle = match registry.get_as(&r.conversation, r.command.owner()).await {
        Ok(h) => h,
        Err(e) => return Reply::Error(ApiError::from(e)),
    };
    let Some(addr) = handle.local_addr() else {
        return Reply::NotOwner;
    };
    match execute(addr, r.command).await {
        Ok(reply) => reply,
        // The actor stopped meanwhile (idle, lease lost): the sender asks again.
        Err(_) => Reply::NotOwner,
    }
}
