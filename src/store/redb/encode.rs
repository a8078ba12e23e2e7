//! Turning [`WriteOp`]s into the bytes the writer inserts, on the caller's thread.
//!
//! The writer thread is the store's bottleneck (one thread applies and commits every write), so
//! everything that does not need the write transaction happens before a batch enters the
//! queue: JSON encoding of records and messages, and packing of events into chunks.
//!
//! Events are packed into chunks (`store/chunk.rs`, the layout both backends share): one
//! [`Encoded::AppendEvents`] per run of consecutive events of one conversation in the batch.

use bytes::Bytes;

use super::tables::IndexFields;
use crate::store::chunk::{Chunk, Chunker};
use crate::store::{StoreError, WriteOp};

/// A write, ready to insert.
#[derive(Debug)]
pub(super) enum Encoded {
    PutConversation {
        id: String,
        index: IndexFields,
        json: Vec<u8>,
    },
    AppendMessage {
        conversation: String,
        no: u64,
        json: Vec<u8>,
    },
    /// Events `last - count + 1 ..= last` (`chunk`'s layout: `store/chunk.rs`).
    AppendEvents {
        conversation: String,
        last: u64,
        chunk: Vec<u8>,
    },
    PutCheckpoint {
        conversation: String,
        data: Bytes,
    },
    DeleteConversation {
        conversation: String,
    },
    PutIdempotencyKey {
        key: String,
        json: Vec<u8>,
    },
    DeleteExpiredIdempotencyKeys {
        now_ms: i64,
    },
}

/// Encodes a batch. Events of one conversation with consecutive seqs are packed into chunks;
/// other ops of the batch between them do not interrupt a chunk (the batch is committed
/// atomically, so the order of inserts into different tables is invisible). A delete of the
/// conversation closes its open chunk, so that the delete removes what came before it and
/// nothing after it.
pub(super) fn encode(ops: Vec<WriteOp>) -> Result<Vec<Encoded>, StoreError> {
    let mut out = Vec::with_capacity(ops.len().min(16));
    let mut chunker = Chunker::default();
    for op in ops {
        match op {
            WriteOp::AppendEvent {
                conversation,
                seq,
                json,
            } => out.extend(chunker.add(&conversation, seq, &json).map(Encoded::from)),
            WriteOp::AppendEvents {
                conversation,
                first_seq,
                events,
            } => {
                for (seq, json) in (first_seq..).zip(&events) {
                    out.extend(chunker.add(&conversation, seq, json).map(Encoded::from));
                }
            }
            WriteOp::PutConversation(record) => {
                let json = serde_json::to_vec(&record)
                    .map_err(|e| StoreError::encode(format!("conversation {:?}", record.id), e))?;
                out.push(Encoded::PutConversation {
                    index: IndexFields::of(&record),
                    id: record.id,
                    json,
                });
            }
            WriteOp::AppendMessage {
                conversation,
                message,
            } => {
                let json = serde_json::to_vec(&message)
                    .map_err(|e| StoreError::encode(format!("message {:?}", message.id), e))?;
                out.push(Encoded::AppendMessage {
                    conversation,
                    no: message.no,
                    json,
                });
            }
            WriteOp::PutCheckpoint { conversation, data } => {
                out.push(Encoded::PutCheckpoint { conversation, data });
            }
            WriteOp::PutIdempotencyKey { key, record } => {
                let json = serde_json::to_vec(&record)
                    .map_err(|e| StoreError::encode(format!("idempotency key {key:?}"), e))?;
                out.push(Encoded::PutIdempotencyKey { key, json });
            }
            WriteOp::DeleteExpiredIdempotencyKeys { now_ms } => {
                out.push(Encoded::DeleteExpiredIdempotencyKeys { now_ms });
            }
            WriteOp::DeleteConversation { conversation } => {
                out.extend(chunker.close_for(&conversation).map(Encoded::from));
                out.push(Encoded::DeleteConversation { conversation });
            }
        }
    }
    out.extend(chunker.close().map(Encoded::from));
    Ok(out)
}

impl From<Chunk> for Encoded {
    fn from(c: Chunk) -> Encoded {
        Encoded::AppendEvents {
            conversation: c.conversation,
            last: c.last,
            chunk: c.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk::decode as decode_chunk;

    fn event(conversation: &str, seq: u64) -> WriteOp {
        WriteOp::AppendEvent {
            conversation: conversation.into(),
            seq,
            json: Bytes::from(format!("{{\"n\":{seq}}}")),
        }
    }

    fn chunks(encoded: &[Encoded]) -> Vec<(String, u64, Vec<u64>)> {
        encoded
            .iter()
            .filter_map(|e| match e {
                Encoded::AppendEvents {
                    conversation,
                    last,
                    chunk,
                } => {
                    let seqs = decode_chunk(conversation, *last, chunk)
                        .unwrap()
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect();
                    Some((conversation.clone(), *last, seqs))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn consecutive_events_of_one_conversation_share_a_chunk() {
        let message = WriteOp::AppendMessage {
            conversation: "a".into(),
            message: crate::store::MessageRecord {
                no: 1,
                id: "m".into(),
                role: crate::llm::Role::User,
                content: "hi".into(),
                run_id: None,
                created_at: 0,
                data: None,
            },
        };
        let ops = vec![event("a", 1), event("a", 2), message, event("a", 3)];
        let encoded = encode(ops).unwrap();
        assert_eq!(encoded.len(), 2, "one message, one chunk");
        assert_eq!(chunks(&encoded), vec![("a".into(), 3, vec![1, 2, 3])]);
    }

    #[test]
    fn a_gap_another_conversation_or_a_delete_starts_a_new_chunk() {
        let ops = vec![
            event("a", 1),
            event("a", 3),
            event("b", 4),
            event("a", 4),
            WriteOp::DeleteConversation {
                conversation: "a".into(),
            },
            event("a", 5),
        ];
        let encoded = encode(ops).unwrap();
        assert_eq!(
            chunks(&encoded),
            vec![
                ("a".into(), 1, vec![1]),
                ("a".into(), 3, vec![3]),
                ("b".into(), 4, vec![4]),
                ("a".into(), 4, vec![4]),
                ("a".into(), 5, vec![5]),
            ]
        );
        // The delete stays between what it deletes and what follows it.
        assert!(matches!(encoded[4], Encoded::DeleteConversation { .. }));
    }

    #[test]
    fn a_run_of_events_and_single_events_chunk_alike() {
        let run = WriteOp::AppendEvents {
            conversation: "a".into(),
            first_seq: 2,
            events: (2..=4)
                .map(|s| Bytes::from(format!("{{\"n\":{s}}}")))
                .collect(),
        };
        let encoded = encode(vec![event("a", 1), run, event("a", 5)]).unwrap();
        assert_eq!(chunks(&encoded), vec![("a".into(), 5, vec![1, 2, 3, 4, 5])]);
        let Encoded::AppendEvents { chunk, .. } = &encoded[0] else {
            panic!("not a chunk")
        };
        assert_eq!(
            decode_chunk("a", 5, chunk).unwrap()[2].1.as_ref(),
            b"{\"n\":3}"
        );
    }
}
