//! `parley export` / `parley import`: every conversation, message, event and checkpoint of a
//! store as JSON lines, through the [`Store`] trait alone, so a file written from one backend
//! imports into the other (the backup, and the way from a redb node to PostgreSQL).
//!
//! # Format (version 1)
//!
//! One JSON object per line, the first being `{"kind":"parley-export","version":1}`; then per
//! conversation, in id order: its record, its messages (oldest first), its events in chunks of
//! consecutive seqs (each event's JSON kept byte for byte, as a string), and its checkpoint
//! (hex of the opaque bytes). Import refuses a store that already holds a conversation, and a
//! file with an unknown kind or version; it writes each conversation in one batch of
//! [`IMPORT_OPS`]-sized writes and flushes at the end.
//!
//! # Consistency
//!
//! An export reads a [`Source`]: a whole store ([`StoreSource`]), or one snapshot of it.
//! `parley export` from PostgreSQL reads a [`PgSnapshot`](super::postgres::PgSnapshot): one
//! `REPEATABLE READ, READ ONLY` transaction for the whole export, so the file is the database
//! at one instant even while nodes keep writing (no record newer than its events, no
//! checkpoint newer than its record). A redb file is locked by its server, so a redb export
//! runs with the server stopped and is consistent anyway.

use std::io::{BufRead, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    ConversationRecord, MessageRecord, RunStatus, Store, StoreError, StoreFuture, WriteOp,
};

/// What an export reads: every conversation, and each one's messages, events and checkpoint,
/// with the same meaning as the [`Store`] methods of the same names.
pub trait Source: Send + Sync {
    /// Every conversation, in id order.
    fn conversations(&self) -> StoreFuture<'_, Vec<ConversationRecord>>;
    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>>;
    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>>;
    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64>;
    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>>;
}

/// A whole store as an export [`Source`] (each read sees what is committed when it runs).
pub struct StoreSource<'s>(pub &'s dyn Store);

impl Source for StoreSource<'_> {
    fn conversations(&self) -> StoreFuture<'_, Vec<ConversationRecord>> {
        Box::pin(all_conversations(self.0))
    }
    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>> {
        self.0.messages(conversation, before, limit)
    }
    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>> {
        self.0.events_since(conversation, since, limit)
    }
    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64> {
        self.0.last_seq(conversation)
    }
    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.0.checkpoint(conversation)
    }
}

/// Events per `events` line, and ops per write on import.
pub const CHUNK: usize = 500;
pub const IMPORT_OPS: usize = 1000;
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    #[serde(rename = "parley-export")]
    Header {
        version: u32,
    },
    Conversation {
        record: ConversationRecord,
    },
    Message {
        conversation: String,
        record: MessageRecord,
    },
    Events {
        conversation: String,
        #[serde(rename = "firstSeq")]
        first_seq: u64,
        events: Vec<String>,
    },
    Checkpoint {
        conversation: String,
        data: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Format { line: usize, message: String },
    #[error(
        "the target store is not empty (it holds conversation {0}); import needs an empty store"
    )]
    NotEmpty(String),
}

/// What an export or import moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub conversations: u64,
    pub messages: u64,
    pub events: u64,
    pub checkpoints: u64,
}

const STATUSES: [RunStatus; 6] = [
    RunStatus::Idle,
    RunStatus::Running,
    RunStatus::Paused,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
];

async fn all_conversations(store: &dyn Store) -> Result<Vec<ConversationRecord>, StoreError> {
    let mut all = Vec::new();
    for status in STATUSES {
        all.extend(store.conversations_with_status(status).await?);
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

fn write_line(out: &mut dyn Write, line: &Line) -> Result<(), TransferError> {
    let json = serde_json::to_string(line).map_err(|e| TransferError::Format {
        line: 0,
        message: e.to_string(),
    })?;
    writeln!(out, "{json}").map_err(|source| TransferError::Io {
        what: "write the export",
        source,
    })
}

/// Writes every conversation of `store` to `out`.
pub async fn export(store: &dyn Store, out: &mut dyn Write) -> Result<Counts, TransferError> {
    export_from(&StoreSource(store), out).await
}

/// Writes every conversation of `store` (a store, or a snapshot of one) to `out`.
pub async fn export_from(store: &dyn Source, out: &mut dyn Write) -> Result<Counts, TransferError> {
    let mut counts = Counts::default();
    write_line(out, &Line::Header { version: VERSION })?;
    for record in store.conversations().await? {
        let id = record.id.clone();
        let last_seq = record.last_seq.max(store.last_seq(&id).await?);
        write_line(out, &Line::Conversation { record })?;
        counts.conversations += 1;

        let mut messages = Vec::new();
        let mut before = None;
        loop {
            let page = store.messages(&id, before, CHUNK).await?;
            let Some(last) = page.last() else { break };
            before = Some(last.no);
            messages.extend(page);
        }
        for record in messages.into_iter().rev() {
            write_line(
                out,
                &Line::Message {
                    conversation: id.clone(),
                    record,
                },
            )?;
            counts.messages += 1;
        }

        let mut since = 0;
        while since < last_seq {
            let page = store.events_since(&id, since, CHUNK).await?;
            if page.is_empty() {
                break;
            }
            // Split into runs of consecutive seqs.
            let mut run: Vec<String> = Vec::new();
            let mut first = page[0].0;
            for (seq, json) in page {
                if seq != first + run.len() as u64 {
                    flush_events(out, &id, first, &mut run, &mut counts)?;
                    first = seq;
                }
                run.push(String::from_utf8_lossy(&json).into_owned());
                since = seq;
            }
            flush_events(out, &id, first, &mut run, &mut counts)?;
        }

        if let Some(data) = store.checkpoint(&id).await? {
            write_line(
                out,
                &Line::Checkpoint {
                    conversation: id.clone(),
                    data: hex::encode(&data),
                },
            )?;
            counts.checkpoints += 1;
        }
    }
    out.flush().map_err(|source| TransferError::Io {
        what: "write the export",
        source,
    })?;
    Ok(counts)
}

fn flush_events(
    out: &mut dyn Write,
    id: &str,
    first_seq: u64,
    run: &mut Vec<String>,
    counts: &mut Counts,
) -> Result<(), TransferError> {
    if run.is_empty() {
        return Ok(());
    }
    counts.events += run.len() as u64;
    write_line(
        out,
        &Line::Events {
            conversation: id.to_owned(),
            first_seq,
            events: std::mem::take(run),
        },
    )
}

/// Reads an export into `store`, which must hold no conversation.
pub async fn import(store: &dyn Store, input: &mut dyn BufRead) -> Result<Counts, TransferError> {
    if let Some(existing) = all_conversations(store).await?.into_iter().next() {
        return Err(TransferError::NotEmpty(existing.id));
    }
    let mut counts = Counts::default();
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut header = false;
    for (index, text) in input.lines().enumerate() {
        let n = index + 1;
        let text = text.map_err(|source| TransferError::Io {
            what: "read the export",
            source,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| TransferError::Format {
            line: n,
            message: e.to_string(),
        })?;
        let bad = |message: String| TransferError::Format { line: n, message };
        match line {
            Line::Header { version } if !header && version == VERSION => header = true,
            Line::Header { version } => {
                return Err(bad(format!("unexpected header (version {version})")))
            }
            _ if !header => return Err(bad("not a parley export (no header line)".into())),
            Line::Conversation { record } => {
                counts.conversations += 1;
                ops.push(WriteOp::PutConversation(record));
            }
            Line::Message {
                conversation,
                record,
            } => {
                counts.messages += 1;
                ops.push(WriteOp::AppendMessage {
                    conversation,
                    message: record,
                });
            }
            Line::Events {
                conversation,
                first_seq,
                events,
            } => {
                if first_seq == 0 {
                    return Err(bad("events start at seq 1".into()));
                }
                counts.events += events.len() as u64;
                ops.push(WriteOp::AppendEvents {
                    conversation,
                    first_seq,
                    events: events.into_iter().map(Bytes::from).collect(),
                });
            }
            Line::Checkpoint { conversation, data } => {
                let data = hex::decode(&data).map_err(|e| bad(format!("checkpoint: {e}")))?;
                counts.checkpoints += 1;
                ops.push(WriteOp::PutCheckpoint {
                    conversation,
                    data: Bytes::from(data),
                });
            }
        }
        if ops.len() >= IMPORT_OPS {
            store.write(std::mem::take(&mut ops)).await?;
        }
    }
    if !header {
        return Err(TransferError::Format {
            line: 0,
            message: "empty file: not a parley export".into(),
        });
    }
    store.write(ops).await?;
    store.flush().await?;
    Ok(counts)
}
