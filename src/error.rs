//! The one error vocabulary of Parley (CONTRACT §2, DESIGN invariant 9).
//!
//! Every refusal that reaches a client, over HTTP or WebSocket, carries one [`ErrorCode`].
//! Internal errors convert into an [`ApiError`] at the edge with a message a person can act on;
//! the conversation layer's [`ConversationError`](crate::conversation::ConversationError) does
//! so with `?` (its `From`, beside it in `conversation/error.rs`), keeping each code and
//! message. This file depends on no layer above the store.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Stable, machine-readable error codes. The wire form is `snake_case`.
///
/// The first group is the contract's list (WebSocket `error` frames and HTTP error bodies). The
/// second group only appears as the `code` of a `RUN_ERROR` event: why a run ended (an HTTP
/// `invoke` whose run ends that way answers with it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    UnknownAssistant,
    ConversationNotFound,
    InvalidArgs,
    ConversationBusy,
    InterruptNotPending,
    AssistantNotAutomated,
    PayloadTooLarge,
    RateLimited,
    RunTimeout,
    LlmError,
    /// The server cannot store anything right now (disk full or failing); nothing was changed.
    /// Reads still work. Retry after the `Retry-After` seconds.
    StorageUnavailable,
    Internal,
    /// An `Idempotency-Key` (or WebSocket frame id) was used before with a different request.
    IdempotencyKeyReused,
    /// A per-socket or per-user limit (such as the subscriptions of one socket) is reached;
    /// nothing was changed.
    LimitExceeded,
    /// The route exists but not with this HTTP method (405, with `Allow`).
    MethodNotAllowed,
    /// A request body that is not `application/json` on a JSON route (415).
    UnsupportedMediaType,
    // ---- run outcomes (RUN_ERROR only) ----
    /// The run was stopped by a `cancel`.
    Cancelled,
    /// The server stopped while the run was active; the run was not continued.
    Interrupted,
    /// A tool call failed (HTTP error, timeout, bad result).
    ToolError,
    /// A step failed: a template could not render, an output did not match its type, ...
    StepFailed,
    /// The run exceeded its step limit (a loop that does not end).
    StepLimit,
}

impl ErrorCode {
    /// The wire name, e.g. `conversation_busy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownAssistant => "unknown_assistant",
            ErrorCode::ConversationNotFound => "conversation_not_found",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::ConversationBusy => "conversation_busy",
            ErrorCode::InterruptNotPending => "interrupt_not_pending",
            ErrorCode::AssistantNotAutomated => "assistant_not_automated",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RunTimeout => "run_timeout",
            ErrorCode::LlmError => "llm_error",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::ToolError => "tool_error",
            ErrorCode::StepFailed => "step_failed",
            ErrorCode::StepLimit => "step_limit",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::UnknownAssistant | ErrorCode::ConversationNotFound => 404,
            ErrorCode::ConversationBusy
            | ErrorCode::InterruptNotPending
            | ErrorCode::AssistantNotAutomated => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidArgs | ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => 429,
            ErrorCode::RunTimeout => 504,
            ErrorCode::LlmError | ErrorCode::ToolError => 502,
            ErrorCode::Cancelled => 409,
            ErrorCode::StepFailed | ErrorCode::StepLimit => 422,
            ErrorCode::Interrupted | ErrorCode::StorageUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as clients see it: a code, a message for a person, optional structured details
/// (for `invalid_args`, the list of bad fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// For a person: what went wrong and what to do about it.
    pub message: String,
    /// Structured details: for `invalid_args` a list of `{"field", "message"}`; for
    /// `run_timeout` the `runId` and `conversationId`; for `assistant_not_automated` its
    /// `pausePoints`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn conversation_not_found(id: &str) -> Self {
        Self::new(
            ErrorCode::ConversationNotFound,
            format!("conversation '{id}' does not exist"),
        )
    }
}

/// What a client is told when the store cannot write (the cause goes to the log, not the wire).
pub const STORAGE_UNAVAILABLE_MESSAGE: &str =
    "the server cannot store anything right now; nothing was changed; try again later";

/// The seconds in `Retry-After` of a `storage_unavailable` answer.
pub const STORAGE_RETRY_AFTER_SECS: u32 = 5;

/// Store errors at the edge: a storage fault is `storage_unavailable` (503), a bad cursor is
/// `bad_request`, anything else (a corrupt record) is `internal`.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if matches!(e, crate::store::StoreError::InvalidCursor) {
            ApiError::bad_request(e.to_string())
        } else if e.is_unavailable() {
            tracing::warn!(error = %e, "storage unavailable");
            ApiError::new(ErrorCode::StorageUnavailable, STORAGE_UNAVAILABLE_MESSAGE)
        } else {
            ApiError::internal(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::ConversationBusy,
            ErrorCode::AssistantNotAutomated,
            ErrorCode::StepLimit,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::LimitExceeded,
            ErrorCode::MethodNotAllowed,
            ErrorCode::UnsupportedMediaType,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, Value::String(code.as_str().to_string()));
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorCode::InvalidArgs.http_status(), 422);
        assert_eq!(ErrorCode::AssistantNotAutomated.http_status(), 409);
        assert_eq!(ErrorCode::RunTimeout.http_status(), 504);
        assert_eq!(ErrorCode::UnknownAssistant.http_status(), 404);
        assert_eq!(ErrorCode::StorageUnavailable.http_status(), 503);
    }

    #[test]
    fn storage_faults_are_storage_unavailable_without_the_raw_cause() {
        use crate::store::StoreError;
        let full = StoreError::Unavailable(std::sync::Arc::new(StoreError::db(
            std::io::Error::other("No space left on device"),
        )));
        let api = ApiError::from(full);
        assert_eq!(api.code, ErrorCode::StorageUnavailable);
        assert!(!api.message.contains("No space"), "{}", api.message);
        assert_eq!(
            ApiError::from(StoreError::InvalidCursor).code,
            ErrorCode::BadRequest
        );
        let corrupt = StoreError::Corrupt {
            what: "x".into(),
            source: None,
        };
        assert_eq!(ApiError::from(corrupt).code, ErrorCode::Internal);
    }
}
