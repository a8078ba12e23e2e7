//! Turning [`WriteOp`]s into the bytes the writer inserts, on the caller's thread.
//!
//! The writer thread is the store's bottleneck (one thread applies and commits every write), so
//! everything that does not need the write transaction happens before a batch enters the
//! queue: JSON encoding of records and messages, and packing of events into chunks.
//!
//! # Event chunks
//!
//! Events are stored as chunks, not one key per event: consecutive `AppendEvent` ops of one
//! conversation in one batch (a commit of one actor: typically one run step, or a whole
//! synchronous call) become one value under the key `(conversation, last seq of the chunk)`.
//! One B-tree insert instead of dozens, and the conversation id is stored once per chunk
//! instead of once per event.
//!
//! Keying a chunk by its *last* seq makes "events after `since`" a plain range scan from
//! `(conversation, since + 1)`: the first chunk returned is the one holding `since + 1` (its last
//! seq is ≥ `since + 1`, and the chunk before it ended at or before `since`), so only that
//! first chunk needs events skipped. "Last seq" is the last key.
//!
//! Value layout (little-endian): `count: u32`, then `count` times `len: u32, bytes[len]`. The
//! chunk holds seqs `last - count + 1 ..= last`, contiguous. A chunk never exceeds
//! [`CHUNK_MAX_EVENTS`] events or (unless a single event is larger) [`CHUNK_MAX_BYTES`] bytes,
//! which bounds what a replay reads beyond what it returns.

use bytes::Bytes;

use super::tables::IndexFields;
use crate::store::{StoreError, WriteOp};

/// At most this many events per chunk.
pub const CHUNK_MAX_EVENTS: usize = 256;
/// A chunk is closed once it holds this many bytes of events.
pub const CHUNK_MAX_BYTES: usize = 64 * 1024;

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
    /// Events `last - count + 1 ..= last` (see the module docs for the layout of `chunk`).
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
    let mut open: Option<ChunkBuilder> = None;
    for op in ops {
        match op {
            WriteOp::AppendEvent {
                conversation,
                seq,
                json,
            } => add_event(&mut open, &mut out, &conversation, seq, &json),
            WriteOp::AppendEvents {
                conversation,
                first_seq,
                events,
            } => {
                for (seq, json) in (first_seq..).zip(&events) {
                    add_event(&mut open, &mut out, &conversation, seq, json);
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
                if open
                    .as_ref()
                    .is_some_and(|c| c.conversation == conversation)
                {
                    out.extend(open.take().map(ChunkBuilder::finish));
                }
                out.push(Encoded::DeleteConversation { conversation });
            }
        }
    }
    out.extend(open.map(ChunkBuilder::finish));
    Ok(out)
}

/// Adds an event to the open chunk, or closes it and opens a new one.
fn add_event(
    open: &mut Option<ChunkBuilder>,
    out: &mut Vec<Encoded>,
    conversation: &str,
    seq: u64,
    json: &[u8],
) {
    if let Some(chunk) = open {
        if chunk.accepts(conversation, seq, json.len()) {
            chunk.push(seq, json);
            return;
        }
    }
    out.extend(open.take().map(ChunkBuilder::finish));
    let mut chunk = ChunkBuilder::new(conversation.to_owned());
    chunk.push(seq, json);
    *open = Some(chunk);
}

struct ChunkBuilder {
    conversation: String,
    last: u64,
    count: u32,
    bytes: Vec<u8>,
}

impl ChunkBuilder {
    fn new(conversation: String) -> ChunkBuilder {
        ChunkBuilder {
            conversation,
            last: 0,
            count: 0,
            bytes: vec![0; 4],
        }
    }

    fn accepts(&self, conversation: &str, seq: u64, len: usize) -> bool {
        self.conversation == conversation
            && Some(seq) == self.last.checked_add(1)
            && (self.count as usize) < CHUNK_MAX_EVENTS
            && self.bytes.len() + 4 + len <= CHUNK_MAX_BYTES
    }

    fn push(&mut self, seq: u64, event: &[u8]) {
        // An event over 4 GiB cannot come from a frame or an engine; cut rather than panic.
        let len = u32::try_from(event.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&event[..len as usize]);
        self.count += 1;
        self.last = seq;
    }

    fn finish(mut self) -> Encoded {
        self.bytes[..4].copy_from_slice(&self.count.to_le_bytes());
        Encoded::AppendEvents {
            conversation: self.conversation,
            last: self.last,
            chunk: self.bytes,
        }
    }
}

/// The events of a stored chunk whose last seq is `last`: `(seq, event JSON)`, ascending.
pub(super) fn decode_chunk(
    conversation: &str,
    last: u64,
    chunk: &[u8],
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt {
        what: format!("event chunk ending at seq {last} of conversation {conversation:?}: {what}"),
        source: None,
    };
    let (count, mut rest) = split_u32(chunk).ok_or_else(|| corrupt("no event count"))?;
    let count = u64::from(count);
    if count == 0 || count > last {
        return Err(corrupt("bad event count"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for seq in last - count + 1..=last {
        let (len, tail) = split_u32(rest).ok_or_else(|| corrupt("truncated"))?;
        let len = len as usize;
        if tail.len() < len {
            return Err(corrupt("truncated"));
        }
        out.push((seq, Bytes::copy_from_slice(&tail[..len])));
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn chunks_are_bounded() {
        let ops = (1..=CHUNK_MAX_EVENTS as u64 + 1)
            .map(|s| event("a", s))
            .collect();
        let encoded = encode(ops).unwrap();
        let c = chunks(&encoded);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].2.len(), CHUNK_MAX_EVENTS);

        let big = Bytes::from(vec![b'x'; CHUNK_MAX_BYTES / 2]);
        let ops = (1..=3)
            .map(|seq| WriteOp::AppendEvent {
                conversation: "a".into(),
                seq,
                json: big.clone(),
            })
            .collect();
        assert_eq!(chunks(&encode(ops).unwrap()).len(), 3);
    }

    #[test]
    fn decoding_refuses_damaged_chunks() {
        let encoded = encode(vec![event("a", 1), event("a", 2)]).unwrap();
        let Encoded::AppendEvents { chunk, .. } = &encoded[0] else {
            panic!("not a chunk")
        };
        let events = decode_chunk("a", 2, chunk).unwrap();
        assert_eq!(events[1].1.as_ref(), b"{\"n\":2}");
        assert!(decode_chunk("a", 1, chunk).is_err(), "count above last seq");
        assert!(decode_chunk("a", 2, &chunk[..chunk.len() - 1]).is_err());
        assert!(decode_chunk("a", 2, &[chunk.as_slice(), b"x"].concat()).is_err());
        assert!(decode_chunk("a", 2, &[0, 0, 0, 0]).is_err());
        assert!(decode_chunk("a", 2, &[1, 0]).is_err());
    }
}
