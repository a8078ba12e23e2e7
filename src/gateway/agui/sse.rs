//! The SSE writing of this front: AG-UI events serialised straight into one buffer, which
//! becomes one chunk of the response (one allocation per chunk, not one `Value`, `String` and
//! `Bytes` per event).
//!
//! A message is `id: <seq>\n` (when the event came from a stored one: a client resumes from
//! it) then `data: <json>\n\n`.

use bytes::Bytes;
use serde::Serialize;

use super::wire::AgEvent;

/// Messages written since the last [`SseWriter::take`], and whether a run ended among them.
#[derive(Debug, Default)]
pub struct SseWriter {
    buf: Vec<u8>,
    ended: bool,
}

impl SseWriter {
    /// Append one AG-UI event.
    pub fn event(&mut self, seq: Option<u64>, e: &AgEvent<'_>) {
        self.message(seq, e);
        if e.ends_run() {
            self.ended = true;
        }
    }

    /// Append one message whose data is any serialisable value (the handler's own events:
    /// refusals, a lost stream).
    pub fn message(&mut self, seq: Option<u64>, data: &impl Serialize) {
        let start = self.buf.len();
        self.head(seq);
        if let Err(e) = serde_json::to_writer(&mut self.buf, data) {
            // Only a map with non-string keys fails, and these types have none: drop the
            // message rather than write half of it.
            tracing::warn!(error = %e, "agui: an event could not be written");
            self.buf.truncate(start);
            return;
        }
        self.buf.extend_from_slice(b"\n\n");
    }

    /// Append one message whose data is `json` as it is: JSON already written by serde (one
    /// line). `false`, writing nothing, when it is not one line.
    pub fn raw(&mut self, seq: Option<u64>, json: &[u8]) -> bool {
        if json.iter().any(|&b| b == b'\n' || b == b'\r') {
            return false;
        }
        self.head(seq);
        self.buf.extend_from_slice(json);
        self.buf.extend_from_slice(b"\n\n");
        true
    }

    /// `id: <seq>` (when there is one) and `data: `.
    fn head(&mut self, seq: Option<u64>) {
        if let Some(s) = seq {
            self.buf.extend_from_slice(b"id: ");
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(b"data: ");
    }

    /// Whether a `RUN_FINISHED` or `RUN_ERROR` was written since the last
    /// [`SseWriter::take_ended`].
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// [`SseWriter::ended`], and forget it.
    pub fn take_ended(&mut self) -> bool {
        std::mem::take(&mut self.ended)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was written so far, as one chunk; the writer starts empty again.
    pub fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_seq_and_a_run_end_is_noticed() {
        let mut w = SseWriter::default();
        w.event(
            Some(7),
            &AgEvent::TextMessageContent {
                message_id: "m",
                delta: "a \"b\"\n",
            },
        );
        assert!(!w.ended());
        w.event(
            None,
            &AgEvent::RunError {
                message: "x",
                code: "llm_error",
            },
        );
        assert!(w.ended());
        assert!(w.take_ended());
        assert!(!w.ended());
        let b = w.take();
        assert_eq!(
            &b[..],
            &b"id: 7\ndata: {\"type\":\"TEXT_MESSAGE_CONTENT\",\"messageId\":\"m\",\"delta\":\"a \\\"b\\\"\\n\"}\n\ndata: {\"type\":\"RUN_ERROR\",\"message\":\"x\",\"code\":\"llm_error\"}\n\n"[..]
        );
        assert!(w.is_empty());
    }

    #[test]
    fn raw_json_is_copied_as_one_message_and_more_than_one_line_is_refused() {
        let mut w = SseWriter::default();
        assert!(w.raw(
            Some(12),
            br#"{"type":"TEXT_MESSAGE_CONTENT","messageId":"m","delta":"x"}"#
        ));
        assert!(!w.raw(Some(13), b"{\n\"type\": \"RUN_STARTED\"}"));
        assert!(!w.raw(None, b"{}\r"));
        assert_eq!(
            &w.take()[..],
            &b"id: 12\ndata: {\"type\":\"TEXT_MESSAGE_CONTENT\",\"messageId\":\"m\",\"delta\":\"x\"}\n\n"[..]
        );
    }
}
