//! Server frames built from what the conversation layer hands out.
//!
//! Actors deliver events as stored (`conversation::Outbound`: conversation, seq, event JSON);
//! the wire frame is built here, at the socket, and the same function frames replayed events,
//! so replay and live are byte for byte the same (invariant 3).

use bytes::Bytes;

/// Build the wire frame of an event: `{"type":"event","conversationId":…,"seq":N,"event":{…}}`.
/// `event_json` is the event object as stored.
///
/// Built once per event and socket on the socket's task, so it is kept cheap: one allocation,
/// and ids that need no escaping (the server's UUIDs) are copied as they are.
pub fn event_frame(conversation: &str, seq: u64, event_json: &[u8]) -> Bytes {
    const HEAD: &[u8] = b"{\"type\":\"event\",\"conversationId\":";
    let mut out = Vec::with_capacity(HEAD.len() + conversation.len() + event_json.len() + 40);
    out.extend_from_slice(HEAD);
    let plain = conversation
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        out.push(b'"');
        out.extend_from_slice(conversation.as_bytes());
        out.push(b'"');
    } else {
        let id = serde_json::to_string(conversation).unwrap_or_else(|_| "\"\"".into());
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b",\"seq\":");
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
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

    #[test]
    fn bytes_are_those_of_the_plain_construction() {
        let event = br#"{"type":"RUN_STARTED","runId":"r"}"#;
        for (id, seq) in [("0190c-ab_1", 0), ("c\"1", 7), ("é", u64::MAX), ("", 10)] {
            let want = format!(
                r#"{{"type":"event","conversationId":{},"seq":{seq},"event":{}}}"#,
                serde_json::to_string(id).unwrap(),
                std::str::from_utf8(event).unwrap()
            );
            assert_eq!(
                &event_frame(id, seq, event)[..],
                want.as_bytes(),
                "{id} {seq}"
            );
        }
    }
}
