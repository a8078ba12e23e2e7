//! Event chunks: how both backends store a conversation's events.
//!
//! Events are stored as chunks, not one row per event: consecutive events of one conversation
//! written in one commit (a commit of one actor: typically one run step, or a whole synchronous
//! call) become one value under the key `(conversation, last seq of the chunk)`. One B-tree
//! insert (redb) or one row and one index entry (PostgreSQL) instead of dozens, and the
//! conversation id is stored once per chunk instead of once per event.
//!
//! # Invariants
//!
//! - **Keyed by the last seq.** "Events after `since`" is a plain range scan from
//!   `(conversation, since + 1)`: the first chunk returned holds `since + 1` (its last seq is
//!   ≥ `since + 1`, and the chunk before it ended at or before `since`), so only that first
//!   chunk needs events skipped.
//! - **Contiguous.** A chunk holds seqs `last - count + 1 ..= last`, no gaps; a gap, another
//!   conversation or a delete between two events starts a new chunk ([`Chunker`]).
//! - **Bounded.** A chunk never exceeds [`CHUNK_MAX_EVENTS`] events or (unless a single event is
//!   larger) [`CHUNK_MAX_BYTES`] bytes, which bounds what a replay reads beyond what it returns.
//! - **Overlap is harmless.** Two chunks may hold the same seq (a group written again after a
//!   lost answer to its commit, cut differently the second time): [`events_after`] returns each
//!   seq once, in order. Each chunk holds its own last seq, and no two chunks share a last seq,
//!   so every chunk read adds at least one new event.
//! - **Damage is an error, never a panic**: [`decode`] checks the count, every length and that
//!   nothing trails.
//!
//! # Layout
//!
//! Little-endian: `count: u32`, then `count` times `len: u32, bytes[len]` (each event's JSON
//! exactly as sent to clients).

use bytes::Bytes;

use super::StoreError;

/// At most this many events per chunk.
pub const CHUNK_MAX_EVENTS: usize = 256;
/// A chunk is closed once it holds this many bytes of events.
pub const CHUNK_MAX_BYTES: usize = 64 * 1024;

/// A closed chunk, ready to store under `(conversation, last)`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub conversation: String,
    pub last: u64,
    pub bytes: Vec<u8>,
}

/// Packs events, given in write order, into chunks.
#[derive(Default)]
pub(crate) struct Chunker {
    open: Option<Builder>,
}

impl Chunker {
    /// Adds an event to the open chunk; if it cannot join it (another conversation, a gap, the
    /// chunk is full), closes that chunk and returns it, and opens a new one.
    pub(crate) fn add(&mut self, conversation: &str, seq: u64, json: &[u8]) -> Option<Chunk> {
        if let Some(open) = &mut self.open {
            if open.accepts(conversation, seq, json.len()) {
                open.push(seq, json);
                return None;
            }
        }
        let closed = self.close();
        let mut open = Builder::new(conversation.to_owned());
        open.push(seq, json);
        self.open = Some(open);
        closed
    }

    /// Closes the open chunk, if it is `conversation`'s (before a delete of it).
    pub(crate) fn close_for(&mut self, conversation: &str) -> Option<Chunk> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.conversation == conversation)
        {
            return self.close();
        }
        None
    }

    /// Closes the open chunk, if any.
    pub(crate) fn close(&mut self) -> Option<Chunk> {
        self.open.take().map(Builder::finish)
    }
}

struct Builder {
    conversation: String,
    last: u64,
    count: u32,
    bytes: Vec<u8>,
}

impl Builder {
    fn new(conversation: String) -> Builder {
        Builder {
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

    fn finish(mut self) -> Chunk {
        self.bytes[..4].copy_from_slice(&self.count.to_le_bytes());
        Chunk {
            conversation: self.conversation,
            last: self.last,
            bytes: self.bytes,
        }
    }
}

/// The events of a stored chunk whose last seq is `last`: `(seq, event JSON)`, ascending.
pub(crate) fn decode(
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

/// Events with `seq > since`, ascending, each seq once, at most `limit`, from `chunks`: the
/// stored `(last seq, chunk)` pairs of one conversation with a last seq above `since`, in
/// ascending order of last seq (a range scan). Reads no chunk beyond the one that fills
/// `limit`.
pub(crate) fn events_after<B: AsRef<[u8]>>(
    conversation: &str,
    since: u64,
    limit: usize,
    chunks: impl IntoIterator<Item = Result<(u64, B), StoreError>>,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut after = since;
    for chunk in chunks {
        if out.len() >= limit {
            break;
        }
        let (last, bytes) = chunk?;
        let fresh = decode(conversation, last, bytes.as_ref())?
            .into_iter()
            .filter(|(seq, _)| *seq > after);
        out.extend(fresh.take(limit - out.len()));
        after = out.last().map_or(after, |(seq, _)| *seq);
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

    fn json(seq: u64) -> Vec<u8> {
        format!("{{\"n\":{seq}}}").into_bytes()
    }

    /// Chunks `(conversation, seq)` events in order; each chunk as `(conversation, last, seqs)`.
    fn pack(events: &[(&str, u64)]) -> Vec<Chunk> {
        let mut chunker = Chunker::default();
        let mut out: Vec<Chunk> = events
            .iter()
            .filter_map(|&(c, seq)| chunker.add(c, seq, &json(seq)))
            .collect();
        out.extend(chunker.close());
        out
    }

    fn seqs(chunk: &Chunk) -> Vec<u64> {
        decode(&chunk.conversation, chunk.last, &chunk.bytes)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    #[test]
    fn a_gap_or_another_conversation_starts_a_new_chunk() {
        let chunks = pack(&[("a", 1), ("a", 2), ("a", 4), ("b", 5), ("a", 5)]);
        let got: Vec<_> = chunks
            .iter()
            .map(|c| (c.conversation.as_str(), c.last, seqs(c)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 2, vec![1, 2]),
                ("a", 4, vec![4]),
                ("b", 5, vec![5]),
                ("a", 5, vec![5])
            ]
        );
    }

    #[test]
    fn closing_for_a_conversation_closes_only_its_chunk() {
        let mut chunker = Chunker::default();
        assert!(chunker.add("a", 1, b"{}").is_none());
        assert!(chunker.close_for("b").is_none());
        assert_eq!(chunker.close_for("a").map(|c| c.last), Some(1));
        assert!(chunker.close().is_none());
    }

    #[test]
    fn chunks_are_bounded() {
        let many: Vec<(&str, u64)> = (1..=CHUNK_MAX_EVENTS as u64 + 1)
            .map(|s| ("a", s))
            .collect();
        let chunks = pack(&many);
        assert_eq!(chunks.len(), 2);
        assert_eq!(seqs(&chunks[0]).len(), CHUNK_MAX_EVENTS);

        let big = vec![b'x'; CHUNK_MAX_BYTES / 2];
        let mut chunker = Chunker::default();
        let closed = (1..=3)
            .filter_map(|seq| chunker.add("a", seq, &big))
            .count();
        assert_eq!(closed + usize::from(chunker.close().is_some()), 3);
    }

    #[test]
    fn decoding_refuses_damaged_chunks() {
        let chunk = &pack(&[("a", 1), ("a", 2)])[0];
        let bytes = &chunk.bytes;
        assert_eq!(decode("a", 2, bytes).unwrap()[1].1.as_ref(), b"{\"n\":2}");
        assert!(decode("a", 1, bytes).is_err(), "count above last seq");
        assert!(decode("a", 2, &bytes[..bytes.len() - 1]).is_err());
        assert!(decode("a", 2, &[bytes.as_slice(), b"x"].concat()).is_err());
        assert!(decode("a", 2, &[0, 0, 0, 0]).is_err());
        assert!(decode("a", 2, &[1, 0]).is_err());
    }

    fn stored(chunks: &[Chunk]) -> Vec<Result<(u64, Vec<u8>), StoreError>> {
        chunks
            .iter()
            .map(|c| Ok((c.last, c.bytes.clone())))
            .collect()
    }

    fn after(since: u64, limit: usize, chunks: &[Chunk]) -> Vec<u64> {
        events_after("a", since, limit, stored(chunks))
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    #[test]
    fn events_after_skips_into_the_first_chunk_and_stops_at_the_limit() {
        let mut chunks = pack(&[("a", 1), ("a", 2), ("a", 3)]);
        chunks.extend(pack(&[("a", 4), ("a", 5)]));
        assert_eq!(after(0, 100, &chunks), vec![1, 2, 3, 4, 5]);
        assert_eq!(after(2, 100, &chunks[..]), vec![3, 4, 5]);
        assert_eq!(after(0, 4, &chunks), vec![1, 2, 3, 4]);
        assert_eq!(after(1, 1, &chunks), vec![2]);
        assert!(after(0, 0, &chunks).is_empty());
    }

    #[test]
    fn overlapping_chunks_give_each_seq_once() {
        // 1..=3 committed, then written again with 4 and 5 in one chunk.
        let mut chunks = pack(&[("a", 1), ("a", 2), ("a", 3)]);
        chunks.extend(pack(&[("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5)]));
        assert_eq!(after(0, 100, &chunks), vec![1, 2, 3, 4, 5]);
        assert_eq!(after(2, 2, &chunks), vec![3, 4]);
    }

    #[test]
    fn a_damaged_chunk_fails_the_read() {
        let mut bad = stored(&pack(&[("a", 1)]));
        bad.push(Ok((2, vec![9, 9])));
        assert!(events_after("a", 0, 10, bad).is_err());
    }
}
