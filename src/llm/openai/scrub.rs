//! The API key never leaves in an error message.

use std::sync::Arc;

use crate::llm::LlmError;

/// Removes the API key from text that came from elsewhere.
#[derive(Debug, Clone, Default)]
pub(super) struct Scrubber(pub(super) Option<Arc<str>>);

impl Scrubber {
    pub(super) fn apply(&self, text: &str) -> String {
        match self.0.as_deref() {
            Some(k) if !k.is_empty() => text.replace(k, "[redacted]"),
            _ => text.to_string(),
        }
    }

    pub(super) fn error(&self, e: LlmError) -> LlmError {
        match e {
            LlmError::Auth(m) => LlmError::Auth(self.apply(&m)),
            LlmError::UnknownModel(m) => LlmError::UnknownModel(self.apply(&m)),
            LlmError::RateLimited(m) => LlmError::RateLimited(self.apply(&m)),
            LlmError::Connection(m) => LlmError::Connection(self.apply(&m)),
            LlmError::Refused(m) => LlmError::Refused(self.apply(&m)),
            LlmError::Protocol(m) => LlmError::Protocol(self.apply(&m)),
            LlmError::NotConfigured(m) => LlmError::NotConfigured(self.apply(&m)),
            LlmError::Status { status, message } => LlmError::Status {
                status,
                message: self.apply(&message),
            },
            LlmError::TooLong(m) => LlmError::TooLong(self.apply(&m)),
            LlmError::Unavailable(m) => LlmError::Unavailable(self.apply(&m)),
            e @ LlmError::Timeout { .. } => e,
        }
    }
}
