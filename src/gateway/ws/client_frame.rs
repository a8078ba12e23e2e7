//! The frames a client sends (CONTRACT §2), and how one text frame is read.
//!
//! [`decode`] reads the frame's `id` before anything else, so that even a frame that cannot be
//! understood is answered by an `error` that echoes its `id`. Every problem is `bad_request`
//! with a message that names it (serde's, which names the field); nothing a client sends can
//! make the decoder panic (the property tests below).

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

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

/// Decode one text frame: its `id` (if any) and the typed frame, or the error to answer.
#[allow(clippy::result_large_err)]
pub(super) fn decode(
    text: &str,
) -> Result<(Option<Value>, ClientFrame), (Option<Value>, ApiError)> {
    let raw: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ApiError::bad_request(format!("the frame is not valid JSON: {e}")),
        )
    })?;
    let id = raw.get("id").cloned();
    if !raw.is_object() {
        return Err((
            id,
            ApiError::bad_request("a frame must be a JSON object with a 'type'"),
        ));
    }
    match serde_json::from_value(raw) {
        Ok(f) => Ok((id, f)),
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
    use serde_json::json;

    #[test]
    fn decodes_frames_and_names_problems() {
        let (id, f) = decode(r#"{"type":"send","id":7,"content":"hi","assistant":"a"}"#).unwrap();
        assert_eq!(id, Some(json!(7)));
        assert!(matches!(f, ClientFrame::Send { ref content, .. } if content == "hi"));
        let (id, e) = decode(r#"{"type":"resume","id":"x","conversationId":"c"}"#).unwrap_err();
        assert_eq!(id, Some(json!("x")));
        assert!(e.message.contains("interruptId"), "{}", e.message);
        let (_, e) = decode("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (_, e) = decode(r#"{"type":"send","content":5}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let (_, f) = decode(r#"{"type":"subscribe","conversationId":"c","since":3}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                conversation_id: "c".into(),
                since: 3
            }
        );
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
