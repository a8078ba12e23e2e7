//! The frames a client sends (CONTRACT §2), and how one text frame is read.
//!
//! [`decode`] reads the frame's `id` before anything else, so that even a frame that cannot be
//! understood is answered by an `error` that echoes its `id`. Every problem is `bad_request`
//! with a message that names it (serde's, which names the field); nothing a client sends can
//! make the decoder panic (the property tests below).
//!
//! A frame id is kept as the JSON text the client wrote ([`FrameId`]): it is echoed byte for
//! byte, and as an idempotency key two ids differ whenever their text does. An integer above
//! 2^53 never goes through an `f64` (it would come back as `1.2345678901234568e+22`, and two
//! such ids would be one key).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::ApiError;
use crate::gateway::dedup::{fingerprint_frame, Fingerprint};

/// A client frame's `id`, exactly as written (any JSON value; `null` is no id).
#[derive(Debug, Clone)]
pub(super) struct FrameId(Box<RawValue>);

impl FrameId {
    /// The id's JSON text, to echo.
    pub(super) fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The id as an idempotency key: a non-empty string (`s:` and the string) or a number (`n:`
    /// and its text as written); any other id is no key.
    pub(super) fn key(&self) -> Option<String> {
        let text = self.0.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| format!("s:{s}")),
            Some(b'-' | b'0'..=b'9') => Some(format!("n:{text}")),
            _ => None,
        }
    }
}

/// A decoded frame: its id, the typed frame, and (for `send` and `resume`, whose ids are
/// idempotency keys) the fingerprint of the frame without its id.
#[derive(Debug)]
pub(super) struct Decoded {
    pub id: Option<FrameId>,
    pub frame: ClientFrame,
    pub fingerprint: Option<Fingerprint>,
}

/// Only the `id` of a frame, borrowed as written.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The `id` of a frame already known to be a JSON object (`value`): its text as written, or,
/// when the text cannot say (a duplicated `id` key), the id `value` holds.
fn frame_id(text: &str, value: &Value) -> Option<FrameId> {
    match serde_json::from_str::<IdOnly<'_>>(text) {
        Ok(IdOnly { id }) => id.map(|r| FrameId(r.to_owned())),
        Err(_) => value
            .get("id")
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::value::to_raw_value(v).ok())
            .map(FrameId),
    }
}

/// A client frame (CONTRACT §2). `id` is read separately so errors can echo it.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub(super) enum ClientFrame {
    Send {
        content: String,
        #[serde(default)]
        assistant: Option<String>,
        #[serde(default)]
        conversation_id: Option<String>,
        #[serde(default)]
        new_conversation: bool,
        #[serde(default)]
        args: Option<Value>,
        /// What to do while a run is active (default: the assistant's `onBusy`).
        #[serde(default)]
        on_busy: Option<crate::assistant::model::OnBusy>,
    },
    Resume {
        conversation_id: String,
        interrupt_id: String,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        value: Value,
    },
    Subscribe {
        conversation_id: String,
        #[serde(default)]
        since: u64,
    },
    Unsubscribe {
        conversation_id: String,
    },
    Cancel {
        conversation_id: String,
    },
    Auth {
        token: String,
    },
}

impl ClientFrame {
    /// The conversation the frame is about (`None`: `auth`, or a `send` that may create one).
    pub(super) fn conversation_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send {
                conversation_id,
                new_conversation,
                ..
            } => conversation_id.as_deref().filter(|_| !new_conversation),
            ClientFrame::Resume {
                conversation_id, ..
            }
            | ClientFrame::Subscribe {
                conversation_id, ..
            }
            | ClientFrame::Unsubscribe { conversation_id }
            | ClientFrame::Cancel { conversation_id } => Some(conversation_id),
            ClientFrame::Auth { .. } => None,
        }
    }
}

/// Decode one text frame: its `id` (if any) and the typed frame, or the error to answer.
#[allow(clippy::result_large_err)]
pub(super) fn decode(text: &str) -> Result<Decoded, (Option<FrameId>, ApiError)> {
    let raw: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ApiError::bad_request(format!("the frame is not valid JSON: {e}")),
        )
    })?;
    if !raw.is_object() {
        return Err((
            None,
            ApiError::bad_request("a frame must be a JSON object with a 'type'"),
        ));
    }
    let id = frame_id(text, &raw);
    let fingerprint = matches!(
        raw.get("type").and_then(Value::as_str),
        Some("send" | "resume")
    )
    .then(|| fingerprint_frame(&raw));
    match serde_json::from_value(raw) {
        Ok(frame) => Ok(Decoded {
            id,
            frame,
            fingerprint,
        }),
        Err(e) => Err((
            id,
            ApiError::bad_request(format!(
                "bad frame: {e} (types: send, resume, subscribe, unsubscribe, cancel, auth)"
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    fn raw(id: &Option<FrameId>) -> Option<&str> {
        id.as_ref().map(|i| i.raw().get())
    }

    #[test]
    fn decodes_frames_and_names_problems() {
        let d = decode(r#"{"type":"send","id":7,"content":"hi","assistant":"a"}"#).unwrap();
        assert_eq!(raw(&d.id), Some("7"));
        assert!(d.fingerprint.is_some());
        assert!(matches!(d.frame, ClientFrame::Send { ref content, .. } if content == "hi"));
        let (id, e) = decode(r#"{"type":"resume","id":"x","conversationId":"c"}"#).unwrap_err();
        assert_eq!(raw(&id), Some(r#""x""#));
        assert!(e.message.contains("interruptId"), "{}", e.message);
        let (_, e) = decode("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (_, e) = decode(r#"{"type":"send","content":5}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let d = decode(r#"{"type":"subscribe","conversationId":"c","since":3}"#).unwrap();
        assert_eq!(d.fingerprint, None);
        assert_eq!(
            d.frame,
            ClientFrame::Subscribe {
                conversation_id: "c".into(),
                since: 3
            }
        );
    }

    #[test]
    fn ids_are_kept_as_written() {
        let big = r#"{"type":"cancel","conversationId":"c","id":12345678901234567890123}"#;
        let other = r#"{"type":"cancel","conversationId":"c","id":12345678901234567890124}"#;
        let a = decode(big).unwrap().id.unwrap();
        let b = decode(other).unwrap().id.unwrap();
        assert_eq!(a.raw().get(), "12345678901234567890123");
        assert_ne!(a.key(), b.key(), "ids beyond 2^53 do not collide");
        assert_eq!(a.key().as_deref(), Some("n:12345678901234567890123"));
        let s = decode(r#"{"type":"cancel","conversationId":"c","id":"a\u0062"}"#).unwrap();
        assert_eq!(s.id.as_ref().unwrap().key().as_deref(), Some("s:ab"));
        assert_eq!(raw(&s.id), Some(r#""a\u0062""#), "echoed as written");
        for no_key in [r#""""#, "null", "true", "[1]", "{}"] {
            let d = decode(&format!(
                r#"{{"type":"cancel","conversationId":"c","id":{no_key}}}"#
            ));
            assert_eq!(d.unwrap().id.and_then(|i| i.key()), None, "{no_key}");
        }
        // A duplicated key: the value serde keeps (the last).
        let d = decode(r#"{"type":"cancel","conversationId":"c","id":1,"id":2}"#).unwrap();
        assert_eq!(raw(&d.id), Some("2"));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z_]{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("send"),
                Just("resume"),
                Just("subscribe"),
                Just("cancel"),
                Just("auth"),
                Just("unsubscribe")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("id".to_string()),
                        Just("content".to_string()),
                        Just("conversationId".to_string()),
                        Just("interruptId".to_string()),
                        Just("since".to_string()),
                        Just("args".to_string()),
                        Just("value".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// No input makes the decoder panic: arbitrary text, and arbitrary JSON built from the
        /// protocol's own field names.
        #[test]
        fn decoder_never_panics_on_text(s in ".{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn decoder_never_panics_on_json(v in json_value()) {
            match decode(&v.to_string()) {
                Ok(_) => {}
                Err((_, e)) => prop_assert_eq!(e.code, ErrorCode::BadRequest),
            }
        }
    }
}
