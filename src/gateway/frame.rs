//! Server frames built from what the conversation layer hands out.
//!
//! Actors deliver events as stored (`conversation::Outbound`: conversation, seq, event JSON);
//! the wire frame is built here, at the socket, and the same function frames replayed events,
//! so replay and live are byte for byte the same (invariant 3).

use bytes::Bytes;

/// Build the wire frame of an event: `{"type":"event","conversationId":…,"seq":N,"event":{…}}`.
/// `event_json` is the event object as stored.
pub fn event_frame(conversation: &str, seq: u64, event_json: &[u8]) -> Bytes {
    let id = serde_json::to_string(conversation).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(event_json.len() + id.len() + 64);
    out.extend_from_slice(b"{\"type\":\"event\",\"conversationId\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event_json);
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn frames() {
        let f = event_frame("c1", 7, br#"{"type":"RUN_STARTED","runId":"r"}"#);
        let v: Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["conversationId"], "c1");
        assert_eq!(v["event"]["type"], "RUN_STARTED");
    }
}
