//! Cluster mode (CONTRACT §9): several `parley serve` nodes share one PostgreSQL (the system of
//! record, and the judge of who owns what) and one NATS server (messages between nodes).
//!
//! # Invariants
//!
//! - **One owner per conversation, decided by PostgreSQL.** A node runs a conversation's actor
//!   only after it claimed the conversation's lease (`store::postgres::lease`: an atomic upsert
//!   that bumps a fencing epoch). Leases are renewed in one statement per node every third of
//!   `lease_seconds` ([`lease`]); an actor leaving memory, and a node shutting down cleanly,
//!   release theirs at once, so another node claims without waiting for expiry.
//! - **Fencing.** Every write of an owned conversation goes through the store's writer, which
//!   locks the lease row in the commit's transaction and refuses the batch
//!   ([`StoreError::Fenced`](crate::store::StoreError)) when this node's epoch is no longer the
//!   row's. A node that finds at renewal that it lost a lease stops that actor; one that was
//!   paused (SIGSTOP) past its lease cannot write when it wakes.
//! - **Commands are forwarded, answered as if local.** A command reaching a node that does not
//!   own the conversation is sent with NATS request/reply to the owner's subject
//!   (`parley.node.<id>.cmd`), which answers with the same result or `ApiError` a local actor
//!   gives (`conversation::remote`). No owner alive: the receiving node claims the conversation
//!   and restores its actor from the checkpoint (a run that was active ends with `RUN_ERROR`
//!   `interrupted`, as after a single-node crash). A forward is never sent twice unless it
//!   provably was not delivered (NATS "no responders") or it carries an idempotency key and
//!   another node holds the lease since (the fence then makes the stored key the final word);
//!   see `conversation::handle` for the timing of a takeover.
//! - **Events: the log is the truth, NATS the doorbell.** The owner publishes each committed
//!   batch after its commit on `parley.conv.<id>.events`; every node with local subscribers
//!   relays them in seq order (`conversation::relay`), reading any gap (a lost message, a NATS
//!   reconnect, a new owner) from PostgreSQL, so each subscriber gets every event once, in order.
//!
//! # Layout
//!
//! - `mod.rs`: [`Cluster`] (the node's identity, its NATS connection, publish / request / serve).
//! - `lease.rs`: claims, release and the renewal loop over `store::postgres::lease`.
//! - `subjects.rs`: subject names and the event-batch encoding.
//! - `metrics.rs`: what `/metrics` and `/healthz` say about the node.
//!
//! # Dependencies
//!
//! `gateway → conversation → cluster → store`. This module knows bytes, ids and leases; the
//! conversation layer (`handle.rs`, `remote.rs`, `relay.rs`) turns them into actors' messages.
//! The engine knows nothing of it.

mod lease;
mod metrics;
pub mod subjects;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use metrics::ClusterMetrics;

use crate::config::ClusterConfig;
use crate::store::postgres::lease::{Fences, Leases};

/// What can go wrong between nodes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS subscribe failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Nobody answers on the owner's subject (the node is gone).
    #[error("node '{0}' does not answer")]
    NoResponders(String),
    #[error("node '{node}' did not answer in time")]
    TimedOut { node: String },
    #[error("forwarding to node '{node}' failed: {message}")]
    Request { node: String, message: String },
}

/// This node of the cluster.
pub struct Cluster {
    node: String,
    nats: async_nats::Client,
    leases: Leases,
    lease: Duration,
    /// Bumped on every NATS (re)connect.
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// Committed batches to publish, in commit order (one publisher task).
    outbox: tokio::sync::mpsc::Sender<(String, Bytes)>,
    /// Lease releases of stopped actors, sent in batches (`lease.rs`).
    releases: tokio::sync::mpsc::Sender<lease::Release>,
    pub metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Batches waiting to be published (beyond it they are dropped: relays read the store).
const OUTBOX: usize = 4096;

/// How long a forwarded command may take at least (acks wait for a commit); at most
/// `lease_seconds` if longer. A command that timed out may have run: it is not retried.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Connects to NATS (retrying in the background if it is not up yet).
    pub async fn connect(
        config: &ClusterConfig,
        leases: Leases,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node = leases.fences().node().to_owned();
        let (bump, reconnects) = tokio::sync::watch::channel(0u64);
        let bump = Arc::new(bump);
        let nats = async_nats::ConnectOptions::new()
            .name(format!("parley-{node}"))
            .request_timeout(Some(FORWARD_TIMEOUT))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let bump = bump.clone();
                async move {
                    tracing::info!(%event, "nats connection");
                    if matches!(event, async_nats::Event::Connected) {
                        bump.send_modify(|n| *n += 1);
                    }
                }
            })
            .connect(config.nats_url.as_str())
            .await
            .map_err(|source| ClusterError::Connect {
                url: config.nats_url.clone(),
                source,
            })?;
        tracing::info!(%node, url = %config.nats_url, "cluster node joined");
        let (outbox, mut queued) = tokio::sync::mpsc::channel::<(String, Bytes)>(OUTBOX);
        let publisher = nats.clone();
        tokio::spawn(async move {
            while let Some((subject, payload)) = queued.recv().await {
                if let Err(e) = publisher.publish(subject, payload).await {
                    tracing::debug!(error = %e, "event publish failed (relays read the gap from the store)");
                }
            }
        });
        let (releases, queue) = tokio::sync::mpsc::channel(lease::RELEASE_QUEUE);
        tokio::spawn(lease::release_in_batches(leases.clone(), queue));
        Ok(Arc::new(Cluster {
            outbox,
            releases,
            node,
            nats,
            lease: config.lease(),
            leases,
            reconnects,
            metrics: ClusterMetrics::default(),
        }))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn fences(&self) -> &Arc<Fences> {
        self.leases.fences()
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Changes on every NATS (re)connect (relays then read the store for what they missed).
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.clone()
    }

    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes a committed batch of a conversation's events (after its commit), in the
    /// order of the calls. A lost publish is not an error: relays fill gaps from the store.
    pub fn publish(&self, conversation: &str, events: &[(u64, Bytes)]) {
        if events.is_empty() {
            return;
        }
        let payload = subjects::encode_batch(events);
        let subject = subjects::events(conversation);
        if self.outbox.try_send((subject, payload)).is_err() {
            tracing::debug!("event outbox full; relays read the gap from the store");
        }
    }

    /// The live feed of one conversation's published batches.
    pub async fn subscribe_events(
        &self,
        conversation: &str,
    ) -> Result<async_nats::Subscriber, ClusterError> {
        Ok(self.nats.subscribe(subjects::events(conversation)).await?)
    }

    /// This node's command subject, for the command server.
    pub async fn serve_commands(&self) -> Result<async_nats::Subscriber, ClusterError> {
        Ok(self.nats.subscribe(subjects::commands(&self.node)).await?)
    }

    /// Answers a forwarded command.
    pub async fn reply(&self, to: async_nats::Subject, payload: Bytes) {
        if let Err(e) = self.nats.publish(to, payload).await {
            tracing::warn!(error = %e, "could not answer a forwarded command");
        }
    }

    /// Sends a command to `node` and waits for its answer.
    pub async fn request(&self, node: &str, payload: Bytes) -> Result<Bytes, ClusterError> {
        use async_nats::RequestErrorKind as K;
        let started = Instant::now();
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(self.lease.max(FORWARD_TIMEOUT)));
        let answer = self
            .nats
            .send_request(subjects::commands(node), request)
            .await;
        self.metrics.forwarded(started.elapsed());
        match answer {
            Ok(m) => Ok(m.payload),
            Err(e) => Err(match e.kind() {
                K::NoResponders => ClusterError::NoResponders(node.to_owned()),
                K::TimedOut => ClusterError::TimedOut {
                    node: node.to_owned(),
                },
                _ => ClusterError::Request {
                    node: node.to_owned(),
                    message: e.to_string(),
                },
            }),
        }
    }

    /// Whether another live process already answers on this node's command subject (two nodes
    /// with one `node_id` would answer each other's commands). Unknown (NATS not reachable
    /// within 2 s) counts as no.
    pub async fn id_taken(&self) -> bool {
        let probe = self.nats.request(
            subjects::commands(&self.node),
            Bytes::from_static(b"{\"probe\":true}"),
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        )
    }

    /// Flushes what was published (graceful shutdown).
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.nats.flush()).await;
    }
}
