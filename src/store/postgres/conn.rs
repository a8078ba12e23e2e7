//! One of the writer's connections: commits a group in ONE transaction, retrying where safe.
//!
//! # Invariants
//!
//! - **One transaction per group, one round trip.** `BEGIN`, at most one statement per table
//!   (`group.rs`) and `COMMIT`, pipelined; in cluster mode `BEGIN` and the fence check
//!   (`lease::check`) come first, in the same transaction, so `COMMIT` is never sent before
//!   the fence decided.
//! - **Retried where safe.** Every group is idempotent (upserts of whole rows and deletes,
//!   applied in op order), so after a connection loss, a server restart, a serialization failure
//!   or a statement timeout the connection is dropped (which rolls back), reopened, and the same
//!   group applied again, even when the outcome of the lost `COMMIT` is unknown, until the
//!   deadline the writer gives.
//! - **Bounded waits.** A silent database (no answer, no reset) cannot hold a connection: a
//!   probe gives up after 5 s, an attempt at a group after 60 s (then handled as a lost
//!   connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::batch::Batch;
use super::group::{pipeline, step, Group, Statements};
use super::{lease, pg_error, Op};
use crate::store::StoreError;

/// A probe that gets no answer in this long counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt at a group (connect, statements, commit) that takes longer than this is
/// abandoned (its connection dropped, which rolls it back unless COMMIT already ran) and
/// retried like a lost connection: the database went silent. Generous: statements have their
/// own `statement_timeout` on the server.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The batches of a group the cluster fence refused (index in the group → conversation).
pub(super) type Refused = HashMap<usize, String>;

/// A writer connection (opened on first use, reopened after any failure).
pub(super) struct Conn {
    config: tokio_postgres::Config,
    client: Option<(Client, Statements)>,
    /// Cluster mode's fence (`lease.rs`): batches of conversations this node lost are refused.
    fences: Arc<lease::Fences>,
}

impl Conn {
    pub(super) fn new(config: tokio_postgres::Config, fences: Arc<lease::Fences>) -> Conn {
        Conn {
            config,
            client: None,
            fences,
        }
    }

    /// Commits `group`, retrying retryable failures with backoff until `deadline` (a deadline
    /// in the past: one attempt). Answers the batches the cluster fence refused.
    pub(super) async fn commit(
        &mut self,
        group: &[Batch],
        deadline: Instant,
    ) -> Result<Refused, StoreError> {
        let mut pause = Duration::from_millis(20);
        loop {
            let error = match bounded(ATTEMPT_TIMEOUT, self.try_commit(group)).await {
                Ok(refused) => return Ok(refused),
                Err(e) => e,
            };
            // After any failure the connection may still be inside the group's transaction
            // (a request that was never sent, so no COMMIT or ROLLBACK followed), or broken
            // without saying so: drop it (which rolls back) and start over on a fresh one.
            self.client = None;
            if !retryable(&error) || Instant::now() + pause > deadline {
                return Err(error);
            }
            tracing::warn!(error = %error, "postgres commit failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `SELECT 1` (connecting first if needed); a failure drops the connection.
    pub(super) async fn probe(&mut self) -> Result<(), StoreError> {
        let check = async {
            let (client, _) = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(pg_error)
        };
        let result = bounded(PROBE_TIMEOUT, check).await.map(|_| ());
        if result.is_err() {
            self.client = None;
        }
        result
    }

    async fn client(&mut self) -> Result<&mut (Client, Statements), StoreError> {
        if self.client.is_none() {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres writer connection ended");
                }
            });
            let stmts = Statements::prepare(&client).await.map_err(pg_error)?;
            self.client = Some((client, stmts));
        }
        self.client.as_mut().ok_or_else(|| StoreError::Closed)
    }

    /// One transaction for the whole group, in one round trip (see the module docs).
    async fn try_commit(&mut self, group: &[Batch]) -> Result<Refused, StoreError> {
        let fences = self.fences.clone();
        let (client, stmts) = self.client().await?;
        let fenced = !fences.is_empty();
        let mut checked = lease::Checked::default();
        if fenced {
            client.batch_execute("BEGIN").await.map_err(pg_error)?;
            checked = lease::check(client, &fences, group.iter().map(|b| b.ops.as_slice())).await?;
        }
        let refused = checked.refused;
        let ops: Vec<&Op> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .flat_map(|(_, b)| b.ops.iter())
            .collect();
        let columns = Group::of(&ops).columns();
        let mut steps = Vec::new();
        if !fenced {
            steps.push(step(client.batch_execute("BEGIN")));
        }
        columns.steps(client, stmts, &mut steps);
        steps.push(step(client.batch_execute("COMMIT")));
        pipeline(steps).await.map_err(pg_error)?;
        fences.confirm(&checked.won);
        Ok(refused)
    }
}

/// `f`, or a retryable time-out error after `limit`: a silent network (no reset, no answer)
/// must not hold the writer forever.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::db(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from PostgreSQL within {} s", limit.as_secs()),
        ))),
    }
}

/// Whether an error may go away by itself (connection lost, server restarting or shutting
/// down, serialization failure, deadlock, statement timeout): safe to retry, since a group is
/// idempotent.
pub(super) fn retryable(error: &StoreError) -> bool {
    let StoreError::Db { source } = error else {
        return false;
    };
    let pg = match source.downcast_ref::<super::PgError>() {
        Some(e) => &e.source,
        None => match source.downcast_ref::<tokio_postgres::Error>() {
            Some(e) => e,
            // `bounded`'s time-out: the outcome is unknown, and a group may be applied again.
            None => {
                return source
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            }
        },
    };
    match pg.code() {
        // No SQLSTATE: an I/O error, a closed connection, a failed connect.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("57") // operator intervention: shutdown, cannot connect now, canceled
                || c.starts_with("53") // insufficient resources (too many connections)
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock detected
        }
    }
}
