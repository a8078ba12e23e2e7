//! NATS subject names and the encoding of an event batch.
//!
//! Conversation ids are uuids, or AG-UI thread ids a client chose: an id made only of
//! `[A-Za-z0-9_-]` is used as it is, any other is hex-encoded behind `x` (subjects split on
//! `.` and treat `*` and `>` as wildcards).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// `parley.node.<node>.cmd`: forwarded commands for a node.
pub fn commands(node: &str) -> String {
    format!("parley.node.{}.cmd", token(node))
}

/// `parley.conv.<id>.events`: a conversation's committed event batches.
pub fn events(conversation: &str) -> String {
    format!("parley.conv.{}.events", token(conversation))
}

fn token(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with('x')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        s.to_owned()
    } else {
        let mut out = String::with_capacity(1 + 2 * s.len());
        out.push('x');
        for b in s.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// `(seq u64, len u32, json)*`, big-endian.
pub fn encode_batch(events: &[(u64, Bytes)]) -> Bytes {
    let size = events.iter().map(|(_, e)| 12 + e.len()).sum();
    let mut out = BytesMut::with_capacity(size);
    for (seq, event) in events {
        out.put_u64(*seq);
        out.put_u32(event.len() as u32);
        out.put_slice(event);
    }
    out.freeze()
}

/// The events of a batch; `None` if it is malformed (then the relay reads the store).
pub fn decode_batch(mut payload: Bytes) -> Option<Vec<(u64, Bytes)>> {
    let mut out = Vec::new();
    while payload.has_remaining() {
        if payload.remaining() < 12 {
            return None;
        }
        let seq = payload.get_u64();
        let len = payload.get_u32() as usize;
        if payload.remaining() < len {
            return None;
        }
        out.push((seq, payload.split_to(len)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_bad_ones_are_refused() {
        let events = vec![(7, Bytes::from_static(b"{\"a\":1}")), (8, Bytes::new())];
        let bytes = encode_batch(&events);
        assert_eq!(decode_batch(bytes.clone()), Some(events));
        assert_eq!(decode_batch(bytes.slice(..bytes.len() - 1)), None);
        assert_eq!(decode_batch(Bytes::from_static(b"short")), None);
    }

    #[test]
    fn ids_become_single_tokens() {
        assert_eq!(events("0190-ab_C"), "parley.conv.0190-ab_C.events");
        assert_eq!(events("a.b"), "parley.conv.x612e62.events");
        assert_eq!(events("x1"), "parley.conv.x7831.events");
        assert_eq!(commands("node-a"), "parley.node.node-a.cmd");
    }
}
