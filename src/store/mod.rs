//! Storage: conversations, messages, the event log, checkpoints — behind one trait.
//!
//! [`Store`] is what the rest of the server uses, as `Arc<dyn Store>`; [`redb::RedbStore`] is
//! the implementation (one file, one writer thread, group commit). Only `store::redb` knows
//! redb. A second backend implements [`Store`], keeps every promise below, and runs the shared
//! suite (`suite.rs`) by adding one line; nothing above the store changes.
//!
//! # Promises every backend keeps
//!
//! - **Ack after durable commit.** A batch's [`Ack`] resolves `Ok(())` only once every op of the
//!   batch is durable (it survives a crash of the process and of the machine). An error means
//!   "not known to be durable". A batch is atomic: all of its ops are committed, or none.
//! - **FIFO.** Batches are committed in the order they entered the backend's queue, so a
//!   successful ack implies that every batch queued before it has been resolved too: committed,
//!   or answered with an error. A batch the backend cannot store (disk full, I/O errors) is
//!   answered with [`StoreError::Unavailable`] (clients see `storage_unavailable`); the backend
//!   recovers by itself once the cause is gone (redb: reopen the database, retry the failed
//!   group). A caller whose batch failed must not commit later batches that depend on it (the
//!   conversation actor stops writing and leaves memory; its successor loads what was stored).
//! - **Group commit is allowed, never required for correctness.** A backend may commit many
//!   callers' batches together (redb does: one fsync for every conversation with pending
//!   records, DESIGN invariant 2), as long as each batch stays whole and in order.
//! - **Reads never block an async worker for long.** Every read is `async`; a read that may
//!   touch many pages (ranges: history, replay, listings) does its blocking work elsewhere
//!   (redb: tokio's blocking pool). A point read of one record may run on the caller (redb:
//!   [`Store::get_conversation`], see its module docs). A read sees only committed data and
//!   holds no snapshot after it answers.
//!
//! # Ordering of the hand-off (read this before calling the write API)
//!
//! The order that counts is the order in which batches *enter the queue*:
//!
//! - [`Store::submit`] is a plain `fn`: the batch enters the queue before `submit` returns, so
//!   successive `submit` calls from one caller (an actor handler, say) are committed in call
//!   order, whether or not, and in whatever order, the returned [`Ack`]s are awaited. It never
//!   waits: above the queue's hard bound (only reached when the disk stalls) the batch is
//!   refused and its `Ack` resolves to [`StoreError::QueueFull`]. A caller that pipelines
//!   dependent batches (events with consecutive seqs) must treat such a refusal as fatal for that
//!   conversation's run, since a later batch could otherwise commit after a refused one.
//! - [`Store::enqueue`] is the back-pressured variant: it waits (asynchronously) while the queue
//!   is at its soft bound, then hands the batch off and returns its [`Ack`]. Successive
//!   `enqueue(..).await` calls from one caller are committed in that order. Two `enqueue` futures
//!   alive at the same time have no order between them, and a `submit` made while an earlier
//!   `enqueue` of the same caller is still waiting for room goes first.
//! - [`Store::write`] is `enqueue` followed by awaiting the `Ack`.
//! - [`Store::flush`] waits until everything queued before it is durable.
//!
//! # What reads return
//!
//! - Messages page newest first by `no` ([`Store::messages`], `before` exclusive);
//!   [`Store::recent_messages`] is the last `n`, oldest first.
//! - Events replay by seq: [`Store::events_since`] returns seqs `> since`, ascending, at most
//!   `limit`; [`Store::last_seq`] is the highest stored seq (0 when none).
//! - Listings ([`Store::list_conversations`]) are newest `updated_at` first, ties broken by id,
//!   a total order: a cursor names an exact position, so paging under equal timestamps never
//!   skips or repeats a conversation that was not updated in between. A conversation appears
//!   once in a listing, however often its record was replaced. Cursors are opaque; one the
//!   backend did not produce is [`StoreError::InvalidCursor`].
//! - Point reads turn an undecodable record into [`StoreError::Corrupt`]; the scans over many
//!   conversations (listings, [`Store::conversations_with_status`]) log and skip it instead, so
//!   one bad record cannot hide all the others or block recovery.
//! - `DeleteConversation` removes what exists when it is applied (record, listing entries,
//!   messages, events, checkpoint) of that conversation only. Ops for the same conversation
//!   queued after it would recreate data, so its owner (the actor) stops first.

mod ack;
mod chunk;
mod error;
pub mod postgres;
mod records;
pub mod redb;
#[cfg(test)]
mod suite;
pub mod transfer;
mod writer_metrics;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use ack::{Ack, AckSender};
pub use error::{Cause, StoreError};
pub use records::{
    ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, StoreStats,
    WriteOp,
};
pub(crate) use writer_metrics::WriterMetrics;

/// The future of a store call: boxed, so that [`Store`] stays object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A storage backend. See the module docs for the promises every implementation keeps.
pub trait Store: Send + Sync + 'static {
    // ---- writes ----

    /// Hands `ops` to the writer now, without waiting, and returns the future of their durable
    /// commit. The batch is queued before this returns (see "Ordering of the hand-off").
    fn submit(&self, ops: Vec<WriteOp>) -> Ack;

    /// Waits for room in the queue (back-pressure), hands `ops` to the writer and returns the
    /// future of their durable commit. Awaiting `enqueue` calls one after another keeps their
    /// order.
    fn enqueue(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Ack>;

    /// Returns after the durable commit holding these ops.
    fn write(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.enqueue(ops).await?.await })
    }

    /// Waits until everything queued before this call is durable. Fails if any of it was not
    /// committed (or the store is shut down).
    fn flush(&self) -> StoreFuture<'_, ()> {
        self.write(Vec::new())
    }

    /// Stops taking writes, commits everything already queued, and releases the writer.
    /// Later writes fail with [`StoreError::Closed`]; reads keep working. Idempotent. It may
    /// block the calling thread for the last commits: from async code `flush().await` first.
    fn shutdown(&self);

    /// A snapshot of the writer's counters (for `/metrics`).
    fn stats(&self) -> StoreStats;

    // ---- reads ----

    /// Up to `limit` conversations whose last activity (`updated_at`) is before `updated_before`
    /// (Unix ms), in id order, starting after the id `after` (for paging). The retention
    /// sweeper decides which of them to delete. A backend without it returns none (nothing is
    /// swept).
    fn idle_conversations<'a>(
        &'a self,
        updated_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<ConversationRecord>> {
        let _ = (updated_before, after, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Bytes the store takes on disk (0 when unknown).
    fn size_bytes(&self) -> u64 {
        0
    }

    /// Stored conversations (counted by a scan: call it rarely, as the sweeper does).
    fn conversation_count(&self) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }

    /// The conversation record, if it exists.
    fn get_conversation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ConversationRecord>>;

    /// The owner's conversations, newest `updated_at` first (ties: by id), optionally only those
    /// of one assistant. `limit` is at least 1. `cursor` is a `next_cursor` of an earlier page
    /// (of the same owner and filter). A conversation updated between two page reads moves to
    /// the front and may be seen twice or not at all, as with any activity-ordered listing.
    fn list_conversations<'a>(
        &'a self,
        owner: &'a str,
        assistant: Option<&'a str>,
        limit: usize,
        cursor: Option<&'a str>,
    ) -> StoreFuture<'a, ConversationPage>;

    /// Messages with `no < before` (all when `None`), newest first, at most `limit`.
    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>>;

    /// The last `n` messages, oldest first (what an actor needs to come back to life).
    fn recent_messages<'a>(
        &'a self,
        conversation: &'a str,
        n: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>> {
        Box::pin(async move {
            let mut out = self.messages(conversation, None, n).await?;
            out.reverse();
            Ok(out)
        })
    }

    /// Events with `seq > since`, ascending, at most `limit`: `(seq, event JSON)`.
    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>>;

    /// The highest stored seq of the conversation's events (0 when it has none).
    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64>;

    /// The conversation's checkpoint, if any.
    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>>;

    /// Every conversation whose status is `status`. May be a FULL SCAN: meant for start-up
    /// (finding runs that were active when the process died), not for request paths.
    /// The record of an idempotency key written with [`WriteOp::PutIdempotencyKey`], unless it
    /// has expired (`expires_at_ms` in the past: answered as absent).
    fn idempotency_key<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<IdempotencyRecord>>;

    fn conversations_with_status(
        &self,
        status: RunStatus,
    ) -> StoreFuture<'_, Vec<ConversationRecord>>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}
