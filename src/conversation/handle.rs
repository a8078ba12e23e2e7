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
//! - **Takeover timing.** "No responders" (nobody listens on the owner's subject) proves the
//!   command was not delivered: the handle sleeps until the owner's lease expires (the failed
//!   claim said when), then claims, and the registry takes over everything else this node saw
//!   the silent node hold (`Registry::owner_silent`). A forward that was delivered but is not
//!   answered (the owner died just after, or is stalled) is abandoned when the owner's lease
//!   expires. A command with an idempotency key is then sent on, after its key was looked up
//!   in the store — with another node holding the lease the old owner can no longer commit, so
//!   the store's answer is final; one without a key may have run and is never sent twice.
//! - a synchronous call (a `send` with a report channel) runs only on a local actor: a
//!   conversation another node holds is handed over to this node first (`run_here`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::remote::{self, Command, Reply};
use super::{msg, Accepted, Conversation, ConversationError, Registry, Subscribed};
use crate::cluster::{Cluster, ClusterError};
use crate::error::{ApiError, ErrorCode};

#[derive(Clone)]
enum Target {
    Local(Addr<Conversation>),
    /// Another node, and when its lease expires unless it renews it (as last seen).
    Remote {
        node: String,
        until: Instant,
    },
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
            Target::Remote { node, .. } => format!("node {node}"),
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
                (Target::Remote { node: a, .. }, Target::Remote { node: b, .. }) => a == b,
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

    pub(super) fn remote(id: &str, node: String, until: Instant, registry: Registry) -> Handle {
        Handle {
            id: Arc::from(id),
            target: Target::Remote { node, until },
            registry: Some(registry),
        }
    }

    /// The local actor, if this node owns the conversation.
    pub fn local_addr(&self) -> Option<&Addr<Conversation>> {
        match &self.target {
            Target::Local(a) => Some(a),
            Target::Remote { .. } => None,
        }
    }

    /// The owner node's id, if another node owns the conversation.
    pub fn remote_node(&self) -> Option<&str> {
        self.remote_lease().map(|(n, _)| n)
    }

    /// The owner node's id and when its lease expires unless renewed (as last seen).
    pub(super) fn remote_lease(&self) -> Option<(&str, Instant)> {
        match &self.target {
            Target::Local(_) => None,
            Target::Remote { node, until } => Some((node, *until)),
        }
    }

    /// Whether messages can still reach the owner (a stopped local actor cannot; a remote owner
    /// is asked).
    pub fn connected(&self) -> bool {
        match &self.target {
            Target::Local(a) => a.connected(),
            Target::Remote { .. } => true,
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
    /// does not answer (see [`Takeover`]).
    async fn command(&self, command: Command) -> Result<Reply, ConversationError> {
        let Some(registry) = &self.registry else {
            return Err(ConversationError::Stopped);
        };
        let Some(cluster) = registry.cluster() else {
            return Err(ConversationError::Stopped);
        };
        let began = Instant::now();
        let deadline = began + cluster.lease() + Duration::from_secs(2);
        let mut target = self.target.clone();
        // The node a forward was abandoned to (its lease expired while it did not answer): the
        // command may have run there.
        let mut abandoned: Option<String> = None;
        loop {
            if matches!(target, Target::Remote { .. }) {
                // Taken over here meanwhile (`Registry::owner_silent`): no need to ask.
                if let Some(a) = registry.local(&self.id) {
                    target = Target::Local(a);
                }
            }
            if let Some(old) = &abandoned {
                if let Some(reply) = self.after_abandon(registry, old, &target, &command).await? {
                    return Ok(reply);
                }
            }
            let (why, wake) = match &target {
                // Held here already (claimed meanwhile): nothing to hand over.
                Target::Local(_) if matches!(command, Command::HandOver { .. }) => {
                    return Ok(Reply::HandedOver { done: true })
                }
                Target::Local(addr) => match remote::execute(addr, command.clone()).await {
                    Ok(Reply::NotOwner) => ("this node lost the lease".to_owned(), None),
                    Ok(reply) => {
                        trace_took(&self.id, began, "local");
                        return Ok(reply);
                    }
                    Err(_) => ("the local actor stopped".to_owned(), None),
                },
                Target::Remote { node, until } => {
                    match self
                        .try_remote(registry, &cluster, node, *until, &command)
                        .await?
                    {
                        Try::Answered(reply) => {
                            trace_took(&self.id, began, "forwarded");
                            return Ok(reply);
                        }
                        Try::Abandoned(why) => {
                            abandoned = Some(node.clone());
                            (why, None)
                        }
                        Try::Again(why, wake) => (why, wake),
                    }
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ConversationError::Unreachable(why));
            }
            let wake = match wake {
                // Sleep until the silent owner's lease expires, then claim (once).
                Some(t) if t > now => t + super::registry::PAST_EXPIRY,
                Some(_) => now + Duration::from_millis(10),
                None => now + Duration::from_millis(100),
            };
            tracing::debug!(conversation = %self.id, %why, after_ms = began.elapsed().as_millis() as u64, wait_ms = (wake - now).as_millis() as u64, "looking for the conversation's owner again");
            tokio::time::sleep_until(wake.min(deadline).into()).await;
            target = registry.get_uncached(&self.id).await?.target;
        }
    }
}

/// What one forward of a command gave.
enum Try {
    Answered(Reply),
    /// The owner did not answer and its lease expired: the command may have run there (see
    /// [`Handle::after_abandon`]).
    Abandoned(String),
    /// Not answered: why, and when to look for the owner again (`None`: soon).
    Again(String, Option<Instant>),
}

impl Handle {
    /// Forwards `command` to `node`, the owner as last known, whose lease runs `until`.
    async fn try_remote(
        &self,
        registry: &Registry,
        cluster: &Cluster,
        node: &str,
        until: Instant,
        command: &Command,
    ) -> Result<Try, ConversationError> {
        Ok(match forward_watched(cluster, node, &self.id, command).await {
            Ok(Reply::NotOwner) => Try::Again(format!("node {node} no longer owns it"), None),
            Ok(reply) => Try::Answered(reply),
            Err(Takeover::OwnerGone) if command.idempotency().is_some() => {
                registry.owner_silent(node, Instant::now());
                Try::Abandoned(format!(
                    "node {node} did not answer and its lease expired"
                ))
            }
            // It may have run there, and nothing can tell: not sent again.
            Err(Takeover::OwnerGone) => {
                return Err(ConversationError::Unreachable(format!(
                    "node {node} did not answer and its lease expired; the command may have run there (send it with an idempotency key to have it retried safely)"
                )))
            }
            // The owner is alive but slow: it may still run it; not sent again (the client
            // may retry, with an idempotency key if it must not run twice).
            Err(Takeover::Failed(e @ ClusterError::TimedOut { .. })) => {
                return Err(ConversationError::Unreachable(e.to_string()))
            }
            // Not delivered: nobody listens on the node's subject (it is gone, or cut off from
            // NATS). Its lease cannot be claimed before it expires.
            Err(Takeover::Failed(e @ ClusterError::NoResponders(_))) => {
                registry.owner_silent(node, until);
                Try::Again(e.to_string(), Some(until))
            }
            // Not delivered (no connection): safe to look again.
            Err(Takeover::Failed(e)) => Try::Again(e.to_string(), None),
        })
    }

    /// A forward to `old` was abandoned (its lease expired while it did not answer), and
    /// `target` holds the conversation now: the command's stored answer if it ran on `old`.
    async fn after_abandon(
        &self,
        registry: &Registry,
        old: &str,
        target: &Target,
        command: &Command,
    ) -> Result<Option<Reply>, ConversationError> {
        if let Target::Remote { node, .. } = target {
            if node == old {
                return Err(ConversationError::Unreachable(format!(
                    "node {node} did not answer in time and still holds the conversation"
                )));
            }
        }
        // Another node holds the lease now, so the old owner can no longer commit (fencing):
        // the store says for good whether the command ran there.
        let stored = stored_answer(registry, command).await?;
        if stored.is_some() {
            tracing::info!(conversation = %self.id, "a command abandoned with its silent owner had run there; answered from its stored idempotency key");
        }
        Ok(stored)
    }
}

fn trace_took(id: &str, began: Instant, how: &'static str) {
    let ms = began.elapsed().as_millis() as u64;
    if ms >= 250 {
        tracing::debug!(conversation = %id, took_ms = ms, how, "a command waited for its owner");
    }
}

/// Why a forward gave up.
enum Takeover {
    /// The request failed (see [`ClusterError`]).
    Failed(ClusterError),
    /// The owner's lease expired (or another node claimed it) while it did not answer.
    OwnerGone,
}

/// How long a forward waits for its answer before it starts watching the owner's lease.
const WATCH_AFTER: Duration = Duration::from_millis(250);

/// Forwards `command` to `node`; gives up early when `node`'s lease on the conversation expires
/// while it has not answered (a request NATS delivered to a node that had just died is lost
/// and would otherwise wait out the whole forward timeout).
async fn forward_watched(
    cluster: &Cluster,
    node: &str,
    id: &str,
    command: &Command,
) -> Result<Reply, Takeover> {
    tokio::select! {
        r = remote::forward(cluster, node, id, command) => r.map_err(Takeover::Failed),
        () = owner_gone(cluster, node, id) => Err(Takeover::OwnerGone),
    }
}

/// Returns once `node` no longer holds a live lease on `id` (checked after [`WATCH_AFTER`],
/// then once at each expiry the lease row announces).
async fn owner_gone(cluster: &Cluster, node: &str, id: &str) {
    tokio::time::sleep(WATCH_AFTER).await;
    loop {
        let wait = match cluster.lease_of(id).await {
            Ok(Some((holder, left))) if holder == node => {
                if left.is_zero() {
                    return;
                }
                left + super::registry::PAST_EXPIRY
            }
            // Another node claimed it: `node` can no longer commit anything for it.
            Ok(Some(_)) => return,
            // No row (deleted meanwhile): the forward's own timeout decides.
            Ok(None) => cluster.lease(),
            Err(e) => {
                tracing::debug!(conversation = %id, error = %e, "reading the owner's lease failed");
                cluster.lease() / 3
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A keyed command that may have run on a node that is gone: its stored idempotency key (the
/// same commit as what it guards) says whether it did, and with what answer.
async fn stored_answer(
    registry: &Registry,
    command: &Command,
) -> Result<Option<Reply>, ConversationError> {
    let Some(key) = command.idempotency() else {
        return Ok(None);
    };
    let Some(rec) = registry.store().idempotency_key(&key.key).await? else {
        return Ok(None);
    };
    if rec.fingerprint != key.fingerprint {
        return Ok(Some(Reply::Error(ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this idempotency key was used before for a different request",
        ))));
    }
    Ok(Some(command.answer_from(&rec)))
}

/// How often a synchronous call asks again for a conversation whose run is still active on
/// another node (`onBusy: enqueue` or `interrupt`).
const HAND_OVER_POLL: Duration = Duration::from_millis(20);

impl Handle {
    /// A synchronous call (a `send` with a report channel, which cannot cross a process) to a
    /// conversation another node holds: that node hands it over (`actor/hand_over.rs`), this
    /// node claims it and runs the call on its own actor. Bounded by the caller's timeout.
    async fn run_here(
        &self,
        m: msg::Send,
        registry: &Registry,
    ) -> Result<Result<Accepted, ConversationError>, MailboxError> {
        let mut target = self.target.clone();
        loop {
            if let Some(a) = registry.local(&self.id) {
                target = Target::Local(a);
            }
            let node = match &target {
                Target::Local(a) => return a.send(m).await,
                Target::Remote { node, .. } => node.clone(),
            };
            let owner = Handle {
                target,
                ..self.clone()
            };
            let command = Command::HandOver {
                owner: m.owner.clone(),
                on_busy: m.on_busy,
            };
            match owner.command(command).await.and_then(Reply::handed_over) {
                Ok(true) => {
                    tracing::debug!(conversation = %self.id, %node, "handed over for a synchronous call")
                }
                // A run is active there: ask again once it may have ended.
                Ok(false) => tokio::time::sleep(HAND_OVER_POLL).await,
                Err(e) => return Ok(Err(e)),
            }
            target = match registry.get_uncached(&self.id).await {
                Ok(h) => h.target,
                Err(e) => return Ok(Err(e)),
            };
        }
    }
}

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
                Target::Remote { .. } => async { Err(MailboxError::Closed) }.boxed(),
            };
        };
        if self.report.is_some() {
            return match &h.target {
                Target::Local(a) => direct(a, self),
                Target::Remote { .. } => async move { h.run_here(self, &registry).await }.boxed(),
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
            (None, Target::Remote { .. }) => async { Err(MailboxError::Closed) }.boxed(),
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
            (None, Target::Remote { .. }) => async { Ok(()) }.boxed(),
        }
    }
}
