//! [`Handle`]: what the registry answers for a conversation, and what the gateway sends its
//! messages to.
//!
//! On a single node a handle is the actor's address and `send` is `Addr::send`. In cluster
//! mode it names the owner (this node's actor, or another node) and routes each message:
//!
//! - `subscribe` / `unsubscribe` (and the subscriber of a `send`) go to this node's relay
//!   (`relay.rs`), whoever owns the conversation, so a subscription outlives a change of owner;
//! - every other command goes to the owner: the local actor, or the owner node over NATS
//!   (`remote.rs`). When the owner does not answer (dead, or it gave the conversation up), the
//!   handle asks the registry again, which claims the conversation once its lease has expired,
//!   for up to `lease_seconds` + 2 s; then the caller gets `conversation_busy`.
//! - a synchronous call (a `send` with a report channel) runs only on a local actor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::remote::{self, Command, Reply};
use super::{msg, Accepted, Conversation, ConversationError, Registry, Subscribed};

#[derive(Clone)]
enum Target {
    Local(Addr<Conversation>),
    /// Another node's id.
    Remote(String),
}

/// A conversation's owner, as the registry found it.
#[derive(Clone)]
pub struct Handle {
    id: Arc<str>,
    target: Target,
    /// Cluster mode: the registry to ask again, its relays and cluster.
    registry: Option<Registry>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Local(_) => "local".to_owned(),
            Target::Remote(n) => format!("node {n}"),
        };
        f.debug_struct("Handle")
            .field("id", &self.id)
            .field("target", &target)
            .finish()
    }
}

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && match (&self.target, &other.target) {
                (Target::Local(a), Target::Local(b)) => a == b,
                (Target::Remote(a), Target::Remote(b)) => a == b,
                _ => false,
            }
    }
}

impl Handle {
    pub(super) fn local(id: &str, addr: Addr<Conversation>, registry: Option<Registry>) -> Handle {
        Handle {
            id: Arc::from(id),
            target: Target::Local(addr),
            registry,
        }
    }

    pub(super) fn remote(id: &str, node: String, registry: Registry) -> Handle {
        Handle {
            id: Arc::from(id),
            target: Target::Remote(node),
            registry: Some(registry),
        }
    }

    /// The local actor, if this node owns the conversation.
    pub fn local_addr(&self) -> Option<&Addr<Conversation>> {
        match &self.target {
            Target::Local(a) => Some(a),
            Target::Remote(_) => None,
        }
    }

    /// The owner node's id, if another node owns the conversation.
    pub fn remote_node(&self) -> Option<&str> {
        match &self.target {
            Target::Local(_) => None,
            Target::Remote(n) => Some(n),
        }
    }

    /// Whether messages can still reach the owner (a stopped local actor cannot; a remote owner
    /// is asked).
    pub fn connected(&self) -> bool {
        match &self.target {
            Target::Local(a) => a.connected(),
            Target::Remote(_) => true,
        }
    }

    /// Sends a message to where it belongs (see the module docs); like `Addr::send`.
    pub async fn send<M: Routed>(&self, m: M) -> Result<M::Result, MailboxError> {
        m.route(self.clone()).await
    }

    /// Sends without waiting for the answer (a socket or stream going away).
    pub fn do_send<M>(&self, m: M)
    where
        M: Routed,
        M::Result: Send,
        Conversation: Handler<M>,
    {
        match (&self.registry, &self.target) {
            (None, Target::Local(a)) => a.do_send(m),
            _ => {
                let f = m.route(self.clone());
                actix::spawn(async move {
                    let _ = f.await;
                });
            }
        }
    }

    /// Cluster mode: runs `command` on the owner, looking for a new owner while the current one
    /// does not answer.
    async fn command(&self, command: Command) -> Result<Reply, ConversationError> {
        let Some(registry) = &self.registry else {
            return Err(ConversationError::Stopped);
        };
        let Some(cluster) = registry.cluster() else {
            return Err(ConversationError::Stopped);
        };
        let deadline = Instant::now() + cluster.lease() + Duration::from_secs(2);
        let mut target = self.target.clone();
        loop {
            let why = match &target {
                Target::Local(addr) => match remote::execute(addr, command.clone()).await {
                    Ok(Reply::NotOwner) => "this node lost the lease".to_owned(),
                    Ok(reply) => return Ok(reply),
                    Err(_) => "the local actor stopped".to_owned(),
                },
                Target::Remote(node) => {
                    match remote::forward(&cluster, node, &self.id, &command).await {
                        Ok(Reply::NotOwner) => format!("node {node} no longer owns it"),
                        Ok(reply) => return Ok(reply),
                        // It may have run there: not sent again (the client may retry, with
                        // an idempotency key if it must not run twice).
                        Err(e @ crate::cluster::ClusterError::TimedOut { .. }) => {
                            return Err(ConversationError::Unreachable(e.to_string()))
                        }
                        // Not delivered (no responders, no connection): safe to look again.
                        Err(e) => e.to_string(),
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(ConversationError::Unreachable(why));
            }
            tracing::debug!(conversation = %self.id, %why, "looking for the conversation's owner again");
            tokio::time::sleep(Duration::from_millis(100)).await;
            target = match registry.get_uncached(&self.id).await {
                Ok(h) => h.target,
                Err(e) => return Err(e),
            };
        }
    }
}

/// How long a synchronous call waits for another node to give its conversation up.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// A message a [`Handle`] can route.
pub trait Routed: Message + Send + Sized + 'static {
    fn route(self, handle: Handle) -> BoxFuture<'static, Result<Self::Result, MailboxError>>;
}

/// Single node, or a local actor with no cluster concern: the actor's mailbox.
fn direct<M>(addr: &Addr<Conversation>, m: M) -> BoxFuture<'static, Result<M::Result, MailboxError>>
where
    M: Message + Send + 'static,
    M::Result: Send,
    Conversation: Handler<M>,
{
    addr.send(m).boxed()
}

macro_rules! forwarded {
    ($msg:ty, |$m:ident| $command:expr, $answer:ident) => {
        impl Routed for $msg {
            fn route(self, h: Handle) -> BoxFuture<'static, Result<Self::Result, MailboxError>> {
                match (&h.registry, &h.target) {
                    (None, Target::Local(a)) => direct(a, self),
                    _ => {
                        let $m = self;
                        let command = $command;
                        async move { Ok(h.command(command).await.and_then(Reply::$answer)) }.boxed()
                    }
                }
            }
        }
    };
}

forwarded!(
    msg::Resume,
    |m| Command::Resume {
        owner: m.owner,
        interrupt_id: m.interrupt_id,
        action: m.action,
        value: m.value,
        idempotency: m.idempotency,
    },
    accepted
);
forwarded!(
    msg::Cancel,
    |m| Command::Cancel { owner: m.owner },
    cancelled
);
forwarded!(
    msg::KeyedCancel,
    |m| Command::KeyedCancel {
        owner: m.owner,
        idempotency: m.idempotency,
    },
    cancelled
);
forwarded!(
    msg::Store,
    |m| Command::Store {
        owner: m.owner,
        title: m.title,
        idempotency: m.idempotency,
    },
    done
);
forwarded!(
    msg::Rename,
    |m| Command::Rename {
        owner: m.owner,
        title: m.title,
    },
    done
);
forwarded!(msg::Delete, |m| Command::Delete { owner: m.owner }, done);

impl Routed for msg::Send {
    fn route(self, h: Handle) -> BoxFuture<'static, Result<Self::Result, MailboxError>> {
        let Some(registry) = h.registry.clone() else {
            return match &h.target {
                Target::Local(a) => direct(a, self),
                Target::Remote(_) => async { Err(MailboxError::Closed) }.boxed(),
            };
        };
        if self.report.is_some() {
            // A synchronous call runs where it arrived: a conversation another node holds is
            // claimed here once that node gives it up (a synchronous call's actor does so as
            // soon as its run ends), or refused after `SYNC_WAIT`.
            return match &h.target {
                Target::Local(a) => direct(a, self),
                Target::Remote(_) => async move {
                    let deadline = Instant::now() + SYNC_WAIT;
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match registry.get_uncached(&h.id).await {
                            Ok(Handle {
                                target: Target::Local(a),
                                ..
                            }) => return a.send(self).await,
                            Ok(Handle {
                                target: Target::Remote(node),
                                ..
                            }) if Instant::now() >= deadline => {
                                return Ok(Err(ConversationError::Unreachable(format!(
                                    "a synchronous call runs on the node that received it, and node {node} holds this conversation; use the asynchronous commands"
                                ))))
                            }
                            Ok(_) => {}
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                }
                .boxed(),
            };
        }
        let mut m = self;
        async move {
            let subscriber = m.subscriber.take();
            let followed = match subscriber {
                Some(s) => {
                    let sid = s.id;
                    registry
                        .relays_follow(&h.id, s, &m.owner, true)
                        .await
                        .ok()
                        .map(|_| sid)
                }
                None => None,
            };
            let command = Command::Send {
                owner: m.owner,
                content: m.content,
                args: m.args,
                on_busy: m.on_busy,
                idempotency: m.idempotency,
            };
            let result: Result<Accepted, ConversationError> =
                h.command(command).await.and_then(Reply::accepted);
            if let (Err(_), Some(sid)) = (&result, followed) {
                registry.relays_unfollow(&h.id, sid);
            }
            Ok(result)
        }
        .boxed()
    }
}

impl Routed for msg::Subscribe {
    fn route(self, h: Handle) -> BoxFuture<'static, Result<Self::Result, MailboxError>> {
        match (&h.registry, &h.target) {
            (None, Target::Local(a)) => direct(a, self),
            (None, Target::Remote(_)) => async { Err(MailboxError::Closed) }.boxed(),
            (Some(r), _) => {
                let r = r.clone();
                async move {
                    let result: Result<Subscribed, ConversationError> = r
                        .relays_follow(&h.id, self.subscriber, &self.owner, false)
                        .await;
                    Ok(result)
                }
                .boxed()
            }
        }
    }
}

impl Routed for msg::Unsubscribe {
    fn route(self, h: Handle) -> BoxFuture<'static, Result<Self::Result, MailboxError>> {
        match (&h.registry, &h.target) {
            (None, Target::Local(a)) => direct(a, self),
            (Some(r), _) => {
                r.relays_unfollow(&h.id, self.subscriber_id);
                async { Ok(()) }.boxed()
            }
            (None, Target::Remote(_)) => async { Ok(()) }.boxed(),
        }
    }
}
