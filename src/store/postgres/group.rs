//! How a group of ops becomes SQL: at most one statement per table, all sent in ONE round trip.
//!
//! # Invariants
//!
//! - **Last write wins, deletes first.** [`Group::of`] folds the ops in queue order into one
//!   row per key (the last write of a key wins, as if applied one by one). A
//!   `DeleteConversation` drops that conversation's rows collected so far (the delete would
//!   remove them) and joins one delete set, applied BEFORE the upserts: the upserts left are
//!   either of other conversations (unaffected by the delete) or came after the delete in the
//!   queue (and must survive it). So a group is at most: one delete statement (every table, by
//!   `= ANY`), then one multi-row upsert (`unnest` of column arrays) per table, whatever the
//!   number and interleaving of its ops. A conversation's consecutive events in the group are
//!   one row of `event_chunks` (`store/chunk.rs`). Idempotency keys are never deleted with a
//!   conversation (as in redb). The sweep of expired keys (`DeleteExpiredKeys`) is one more
//!   delete, also before the upserts, with the latest `now` of the group: a key written in the
//!   same group was written after it expired nothing of its own (it expires in the future).
//! - **One round trip.** [`pipeline`] sends `BEGIN`, the statements and `COMMIT` back to back
//!   (tokio-postgres sends a request when its future is first polled, and the server answers
//!   in order), then reads the answers in order. Before this, a group took one round trip per
//!   statement (`BEGIN`, up to five upserts, four per deleted conversation, `COMMIT`).
//! - **Never a partial commit.** If a statement fails on the server, the transaction is
//!   aborted, the statements after it fail, and the pipelined `COMMIT` only rolls back; the
//!   group gets that statement's error. If a request fails before it was sent (encoding), the
//!   requests after it — `COMMIT` among them — are never sent, and the writer drops the
//!   connection, which rolls the transaction back.
//! - The statements are prepared once per connection ([`Statements::prepare`]), so a group only
//!   binds and executes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::{maybe_done, MaybeDone};
use futures_util::TryFutureExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::Op;
use crate::store::chunk::{Chunk, Chunker};

const DELETE: &str = "WITH m AS (DELETE FROM messages WHERE conversation = ANY($1)),
       e AS (DELETE FROM event_chunks WHERE conversation = ANY($1)),
       c AS (DELETE FROM checkpoints WHERE conversation = ANY($1))
     DELETE FROM conversations WHERE id = ANY($1)";
const CONVERSATIONS: &str =
    "INSERT INTO conversations (id, owner, assistant, updated_at, status, record)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
     ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
       assistant = excluded.assistant, updated_at = excluded.updated_at,
       status = excluded.status, record = excluded.record";
const MESSAGES: &str = "INSERT INTO messages (conversation, no, record)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
     ON CONFLICT (conversation, no) DO UPDATE SET record = excluded.record";
const EVENTS: &str = "INSERT INTO event_chunks (conversation, last_seq, data)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])
     ON CONFLICT (conversation, last_seq) DO UPDATE SET data = excluded.data";
const CHECKPOINTS: &str = "INSERT INTO checkpoints (conversation, data)
     SELECT * FROM unnest($1::text[], $2::bytea[])
     ON CONFLICT (conversation) DO UPDATE SET data = excluded.data";
const EXPIRED_KEYS: &str = "DELETE FROM idempotency_keys WHERE expires_at <= $1";
const KEYS: &str = "INSERT INTO idempotency_keys (key, expires_at, record)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
     ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, record = excluded.record";

/// The writer's statements, prepared once per connection.
pub(super) struct Statements {
    delete: Statement,
    expired_keys: Statement,
    conversations: Statement,
    messages: Statement,
    events: Statement,
    checkpoints: Statement,
    keys: Statement,
}

impl Statements {
    /// Prepares every statement (pipelined: one round trip).
    pub(super) async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let (delete, expired_keys, conversations, messages, events, checkpoints, keys) = tokio::try_join!(
            client.prepare(DELETE),
            client.prepare(EXPIRED_KEYS),
            client.prepare(CONVERSATIONS),
            client.prepare(MESSAGES),
            client.prepare(EVENTS),
            client.prepare(CHECKPOINTS),
            client.prepare(KEYS),
        )?;
        Ok(Statements {
            delete,
            expired_keys,
            conversations,
            messages,
            events,
            checkpoints,
            keys,
        })
    }
}

/// One request of a pipelined transaction.
pub(super) type Step<'a> =
    Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// A request as a [`Step`] (its answer's value is not needed).
pub(super) fn step<'a, T: 'a>(
    request: impl Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a,
) -> Step<'a> {
    Box::pin(request.map_ok(|_| ()))
}

/// Rows per table, one per key (the last write wins), and the conversations deleted first.
#[derive(Default)]
pub(super) struct Group<'a> {
    deletes: Vec<&'a str>,
    /// The sweep of idempotency keys that expired at or before this time (ms), if asked.
    expire_keys: Option<i64>,
    conversations: HashMap<&'a str, &'a Op>,
    messages: HashMap<(&'a str, i64), &'a str>,
    /// Ordered by conversation, then seq: consecutive events become one chunk.
    events: BTreeMap<(&'a str, i64), &'a Bytes>,
    checkpoints: HashMap<&'a str, &'a Bytes>,
    keys: HashMap<&'a str, (i64, &'a str)>,
}

impl<'a> Group<'a> {
    /// Folds the ops, in queue order (see the module docs).
    pub(super) fn of(ops: &[&'a Op]) -> Group<'a> {
        let mut group = Group::default();
        let mut deleted: HashSet<&str> = HashSet::new();
        for op in ops {
            match op {
                Op::Delete { conversation } => {
                    let c = conversation.as_str();
                    group.conversations.remove(c);
                    group.messages.retain(|(m, _), _| *m != c);
                    group.events.retain(|(e, _), _| *e != c);
                    group.checkpoints.remove(c);
                    if deleted.insert(c) {
                        group.deletes.push(c);
                    }
                }
                Op::Conversation { id, .. } => {
                    group.conversations.insert(id, op);
                }
                Op::Message {
                    conversation,
                    no,
                    record,
                } => {
                    group.messages.insert((conversation, *no), record);
                }
                Op::Events {
                    conversation,
                    first_seq,
                    events,
                } => {
                    for (i, json) in events.iter().enumerate() {
                        group
                            .events
                            .insert((conversation, first_seq + i as i64), json);
                    }
                }
                Op::Checkpoint { conversation, data } => {
                    group.checkpoints.insert(conversation, data);
                }
                Op::IdempotencyKey {
                    key,
                    expires_at,
                    record,
                    ..
                } => {
                    group.keys.insert(key, (*expires_at, record));
                }
                Op::DeleteExpiredKeys { now_ms } => {
                    group.expire_keys = group.expire_keys.max(Some(*now_ms));
                }
            }
        }
        group
    }

    /// The column arrays of every statement the group needs.
    pub(super) fn columns(&self) -> Columns<'a> {
        let mut c = Columns {
            deletes: self.deletes.clone(),
            expire_keys: self.expire_keys,
            ..Columns::default()
        };
        for &op in self.conversations.values() {
            if let Op::Conversation {
                id,
                owner,
                assistant,
                updated_at,
                status,
                record,
            } = op
            {
                c.conversations.0.push(id);
                c.conversations.1.push(owner);
                c.conversations.2.push(assistant);
                c.conversations.3.push(*updated_at);
                c.conversations.4.push(status);
                c.conversations.5.push(record);
            }
        }
        for (&(conversation, no), &record) in &self.messages {
            c.messages.0.push(conversation);
            c.messages.1.push(no);
            c.messages.2.push(record);
        }
        // Consecutive events of a conversation become one chunk (seqs were clamped to
        // `0..=i64::MAX` when encoded, so the casts are exact).
        let mut chunker = Chunker::default();
        let mut chunks: Vec<Chunk> = (self.events.iter())
            .filter_map(|(&(conversation, seq), json)| chunker.add(conversation, seq as u64, json))
            .collect();
        chunks.extend(chunker.close());
        for chunk in chunks {
            c.events.0.push(chunk.conversation);
            c.events.1.push(chunk.last as i64);
            c.events.2.push(chunk.bytes);
        }
        for (&conversation, &data) in &self.checkpoints {
            c.checkpoints.0.push(conversation);
            c.checkpoints.1.push(data.as_ref());
        }
        for (&key, &(expires_at, record)) in &self.keys {
            c.keys.0.push(key);
            c.keys.1.push(expires_at);
            c.keys.2.push(record);
        }
        c
    }
}

type Text<'a> = Vec<&'a str>;

/// The parameters of a group's statements (column arrays for `unnest`).
#[derive(Default)]
pub(super) struct Columns<'a> {
    deletes: Text<'a>,
    expire_keys: Option<i64>,
    conversations: (Text<'a>, Text<'a>, Text<'a>, Vec<i64>, Text<'a>, Text<'a>),
    messages: (Text<'a>, Vec<i64>, Text<'a>),
    /// Chunks: conversation, last seq, the packed events (`store/chunk.rs`).
    events: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    checkpoints: (Text<'a>, Vec<&'a [u8]>),
    keys: (Text<'a>, Vec<i64>, Text<'a>),
}

impl Columns<'_> {
    /// The group's statements, in their order (deletes first), as pipeline steps.
    pub(super) fn steps<'s>(
        &'s self,
        client: &'s Client,
        stmts: &'s Statements,
        steps: &mut Vec<Step<'s>>,
    ) {
        fn run<'s, const N: usize>(
            client: &'s Client,
            stmt: &'s Statement,
            params: [&'s (dyn ToSql + Sync); N],
        ) -> Step<'s> {
            step(client.execute_raw(stmt, params))
        }
        if !self.deletes.is_empty() {
            steps.push(run(client, &stmts.delete, [&self.deletes]));
        }
        if let Some(now_ms) = &self.expire_keys {
            steps.push(run(client, &stmts.expired_keys, [now_ms]));
        }
        let c = &self.conversations;
        if !c.0.is_empty() {
            steps.push(run(
                client,
                &stmts.conversations,
                [&c.0, &c.1, &c.2, &c.3, &c.4, &c.5],
            ));
        }
        let m = &self.messages;
        if !m.0.is_empty() {
            steps.push(run(client, &stmts.messages, [&m.0, &m.1, &m.2]));
        }
        let e = &self.events;
        if !e.0.is_empty() {
            steps.push(run(client, &stmts.events, [&e.0, &e.1, &e.2]));
        }
        let k = &self.checkpoints;
        if !k.0.is_empty() {
            steps.push(run(client, &stmts.checkpoints, [&k.0, &k.1]));
        }
        let i = &self.keys;
        if !i.0.is_empty() {
            steps.push(run(client, &stmts.keys, [&i.0, &i.1, &i.2]));
        }
    }
}

/// Sends every step's request now, in order, then waits for the answers in order; the first
/// error is the result. A step that fails before its request was sent stops the later ones
/// from being sent at all (see the module docs).
pub(super) async fn pipeline(steps: Vec<Step<'_>>) -> Result<(), tokio_postgres::Error> {
    let mut steps: Vec<MaybeDone<Step<'_>>> = steps.into_iter().map(maybe_done).collect();
    // First pass: each future's first poll sends its request (and can only rarely finish).
    std::future::poll_fn(|cx| {
        for step in steps.iter_mut() {
            let _ = Pin::new(&mut *step).poll(cx);
            if matches!(step, MaybeDone::Done(Err(_))) {
                break;
            }
        }
        Poll::Ready(())
    })
    .await;
    for mut step in steps {
        (&mut step).await;
        if let Some(Err(e)) = Pin::new(&mut step).take_output() {
            return Err(e);
        }
    }
    Ok(())
}
