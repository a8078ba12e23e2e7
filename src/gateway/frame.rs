//! The frames the server writes on a WebSocket (CONTRACT §2), as one typed enum.
//!
//! Every frame a session writes is a [`ServerFrame`]: the one `ack` or `error` that answers each
//! client frame, and the `event` frames of the conversations it follows. Only the gateway knows
//! this wire form; the layers below hand it typed values ([`Ack`]'s fields, an [`ApiError`]) or
//! an event's stored JSON.
//!
//! Wire form (the key order is part of it: clients and tests compare frames byte for byte):
//!
//! - `ack`: the ack's own fields first, then `"type":"ack"`, then `"id"` (the client frame's
//!   `id` as the client wrote it, `null` when it had none). E.g.
//!   `{"conversationId":"c","runId":"r","type":"ack","id":7}`.
//! - `error`: `{"type":"error","id":…,"code":…,"message":…}`, then `"details"` when there are
//!   any.
//! - `event`: `{"type":"event","conversationId":…,"seq":N,"event":{…}}`, where the event is the
//!   stored JSON copied as is. Events are the hot path (every live and replayed event of every
//!   socket): the frame is assembled from bytes, never by parsing the event again.
//!
//! An ack's text is also what [`super::dedup::FrameAcks`] keeps for a retried frame, so a retry
//! is answered with exactly the bytes of the original.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// A frame the server sends on a WebSocket.
#[derive(Debug, Clone, Copy)]
pub enum ServerFrame<'a> {
    /// A client frame was applied.
    Ack {
        id: Option<&'a RawValue>,
        ack: &'a Ack,
    },
    /// A client frame was refused (or could not be read: then `id` may be `None`).
    Error {
        id: Option<&'a RawValue>,
        error: &'a ApiError,
    },
    /// An event of a conversation: `event` is its JSON object as stored.
    Event {
        conversation_id: &'a str,
        seq: u64,
        event: &'a [u8],
    },
}

/// What an `ack` says, per client frame type (its fields, in wire order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// `send` or `resume`: `{"conversationId","runId"}`.
    Accepted {
        conversation_id: String,
        run_id: String,
    },
    /// `auth`: `{"user"}`.
    Auth { user: String },
    /// `subscribe`: `{"conversationId","lastSeq"}`, the durable mark the replay went up to.
    Subscribed {
        conversation_id: String,
        last_seq: u64,
    },
    /// `unsubscribe`: `{"conversationId"}`.
    Unsubscribed { conversation_id: String },
    /// `cancel`: `{"conversationId","cancelled"}`, whether a run was active.
    Cancelled {
        conversation_id: String,
        cancelled: bool,
    },
}

impl ServerFrame<'_> {
    /// The frame's text, as sent.
    pub fn to_bytes(&self) -> Bytes {
        match *self {
            ServerFrame::Event {
                conversation_id,
                seq,
                event,
            } => event_bytes(conversation_id, seq, event),
            // Serializing plain strings, numbers and `Value`s into a Vec cannot fail.
            _ => Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
        }
    }
}

/// The `event` frame of a stored event (see [`ServerFrame::Event`]).
pub fn event_frame(conversation_id: &str, seq: u64, event_json: &[u8]) -> Bytes {
    ServerFrame::Event {
        conversation_id,
        seq,
        event: event_json,
    }
    .to_bytes()
}

/// Built once per event and socket on the socket's task, so it is kept cheap: one allocation,
/// and ids that need no escaping (the server's UUIDs) are copied as they are.
fn event_bytes(conversation: &str, seq: u64, event_json: &[u8]) -> Bytes {
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

/// Acks and errors. An event cannot be serialized through serde without parsing its stored
/// JSON again: [`ServerFrame::to_bytes`] writes it by hand, and this refuses it.
impl Serialize for ServerFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match *self {
            ServerFrame::Ack { id, ack } => {
                ack.fields(&mut m)?;
                m.serialize_entry("type", "ack")?;
                m.serialize_entry("id", &id)?;
            }
            ServerFrame::Error { id, error } => {
                m.serialize_entry("type", "error")?;
                m.serialize_entry("id", &id)?;
                m.serialize_entry("code", &error.code)?;
                m.serialize_entry("message", &error.message)?;
                if let Some(d) = &error.details {
                    m.serialize_entry("details", d)?;
                }
            }
            ServerFrame::Event { .. } => {
                return Err(serde::ser::Error::custom(
                    "event frames are written with ServerFrame::to_bytes",
                ))
            }
        }
        m.end()
    }
}

impl Ack {
    fn fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        match self {
            Ack::Accepted {
                conversation_id,
                run_id,
            } => {
                m.serialize_entry("conversationId", conversation_id)?;
                m.serialize_entry("runId", run_id)
            }
            Ack::Auth { user } => m.serialize_entry("user", user),
            Ack::Subscribed {
                conversation_id,
                last_seq,
            } => {
                m.serialize_entry("conversationId", conversation_id)?;
                m.serialize_entry("lastSeq", last_seq)
            }
            Ack::Unsubscribed { conversation_id } => {
                m.serialize_entry("conversationId", conversation_id)
            }
            Ack::Cancelled {
                conversation_id,
                cancelled,
            } => {
                m.serialize_entry("conversationId", conversation_id)?;
                m.serialize_entry("cancelled", cancelled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each frame against the text the gateway wrote before the frames were typed: acks were a
    //! `json!` object with `type` and `id` set afterwards (serde_json keeps insertion order),
    //! errors a `json!` object with `details` added, events bytes assembled by hand.
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::{json, Value};

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn text(f: ServerFrame<'_>) -> String {
        String::from_utf8(f.to_bytes().to_vec()).unwrap()
    }

    /// How an ack was built before `ServerFrame`.
    fn old_ack(mut body: Value, id: Option<&Value>) -> String {
        body["type"] = json!("ack");
        body["id"] = id.cloned().unwrap_or(Value::Null);
        body.to_string()
    }

    /// How an error frame was built before `ServerFrame`.
    fn old_error(id: Option<Value>, e: &ApiError) -> String {
        let mut f = json!({"type": "error", "id": id, "code": e.code, "message": e.message});
        if let Some(d) = &e.details {
            f["details"] = d.clone();
        }
        f.to_string()
    }

    #[test]
    fn acks_are_byte_identical_to_the_old_frames() {
        let cases = [
            (
                Ack::Accepted {
                    conversation_id: "c\"1".into(),
                    run_id: "r1".into(),
                },
                json!({"conversationId": "c\"1", "runId": "r1"}),
            ),
            (
                Ack::Auth {
                    user: "alice".into(),
                },
                json!({"user": "alice"}),
            ),
            (
                Ack::Subscribed {
                    conversation_id: "c".into(),
                    last_seq: 42,
                },
                json!({"conversationId": "c", "lastSeq": 42}),
            ),
            (
                Ack::Unsubscribed {
                    conversation_id: "c".into(),
                },
                json!({"conversationId": "c"}),
            ),
            (
                Ack::Cancelled {
                    conversation_id: "c".into(),
                    cancelled: true,
                },
                json!({"conversationId": "c", "cancelled": true}),
            ),
        ];
        for id in [None, Some(json!(7)), Some(json!("x-1")), Some(json!(null))] {
            for (ack, body) in &cases {
                let r = id.as_ref().map(raw);
                let new = text(ServerFrame::Ack {
                    id: r.as_deref(),
                    ack,
                });
                assert_eq!(new, old_ack(body.clone(), id.as_ref()));
            }
        }
        assert_eq!(
            text(ServerFrame::Ack {
                id: Some(&raw(&json!(3))),
                ack: &Ack::Accepted {
                    conversation_id: "c".into(),
                    run_id: "r".into()
                }
            }),
            r#"{"conversationId":"c","runId":"r","type":"ack","id":3}"#
        );
    }

    #[test]
    fn errors_are_byte_identical_to_the_old_frames() {
        let plain = ApiError::new(ErrorCode::ConversationBusy, "a run is active");
        let detailed = ApiError::new(ErrorCode::InvalidArgs, "bad \"args\"")
            .with_details(json!([{"field": "city", "message": "required"}]));
        for e in [&plain, &detailed] {
            for id in [None, Some(json!("f1")), Some(json!(9))] {
                let r = id.as_ref().map(raw);
                let new = text(ServerFrame::Error {
                    id: r.as_deref(),
                    error: e,
                });
                assert_eq!(new, old_error(id, e));
            }
        }
        assert_eq!(
            text(ServerFrame::Error {
                id: None,
                error: &plain
            }),
            r#"{"type":"error","id":null,"code":"conversation_busy","message":"a run is active"}"#
        );
    }

    #[test]
    fn events_are_byte_identical_to_the_old_frames() {
        let event = br#"{"type":"RUN_STARTED","runId":"r"}"#;
        assert_eq!(
            text(ServerFrame::Event {
                conversation_id: "c1",
                seq: 7,
                event
            }),
            r#"{"type":"event","conversationId":"c1","seq":7,"event":{"type":"RUN_STARTED","runId":"r"}}"#
        );
        // The id is escaped; the event is copied as stored.
        let f = event_frame("a\"b\\", 18_446_744_073_709_551_615, b"{}");
        assert_eq!(
            &f[..],
            br#"{"type":"event","conversationId":"a\"b\\","seq":18446744073709551615,"event":{}}"#
        );
        let v: Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["conversationId"], "a\"b\\");
    }

    #[test]
    fn events_do_not_serialize_through_serde() {
        let f = ServerFrame::Event {
            conversation_id: "c",
            seq: 1,
            event: b"{}",
        };
        assert!(serde_json::to_string(&f).is_err());
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
