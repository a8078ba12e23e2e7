//! The conversation layer's errors.
//!
//! The actor and the registry answer with a [`ConversationError`]; the gateway turns it into the
//! wire's [`ApiError`](crate::error::ApiError) with `?` (`From` in `src/error.rs`), with the same
//! code and message as a client always got. Each variant's message is for a person: what went
//! wrong and what to do about it.

use std::sync::Arc;

use crate::error::{ApiError, ErrorCode, STORAGE_UNAVAILABLE_MESSAGE};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    /// No such conversation, or not the caller's (the two are not told apart).
    #[error("conversation '{0}' does not exist")]
    NotFound(String),
    /// A new conversation names an assistant that is not installed.
    #[error("there is no assistant '{0}'")]
    UnknownAssistant(String),
    /// A stored conversation's assistant is no longer installed.
    #[error("assistant '{0}' of this conversation is no longer installed")]
    AssistantGone(String),
    #[error("a run is active in this conversation; wait for it to finish or cancel it")]
    Busy,
    /// Another request is bringing this conversation into memory right now.
    #[error("conversation '{0}' is being started; try again")]
    Starting(String),
    /// A `send` while a tool call waits for approval (it needs a `resume`).
    #[error("the assistant is waiting for approval of a tool call; answer it with resume (approve or reject)")]
    AwaitingApproval,
    /// An answer while a run is active: nothing is pending.
    #[error("interrupt '{0}' is not pending (a run is active)")]
    RunActive(String),
    /// The assistant refused the arguments (its check answers in the wire type, with the list
    /// of bad fields as details).
    #[error("{0}")]
    InvalidArgs(Box<ApiError>),
    /// The engine refused an input, or a run ended with this code.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// A synchronous call's run paused for a person or the page.
    #[error("the run paused for a person or the page")]
    Paused,
    #[error("the run was cancelled")]
    Cancelled,
    /// Every run permit is taken (`server.max_concurrent_runs`).
    #[error("the server is running as many processes as it allows; try again shortly")]
    NoRunPermit,
    /// A commit of this conversation failed earlier; it takes no more messages.
    #[error("this conversation could not be stored; try again in a moment")]
    Broken,
    #[error("lost the pending interrupt")]
    LostInterrupt,
    /// The actor stopped before it answered.
    #[error("the conversation stopped")]
    Stopped,
    #[error("the conversation stopped before storing the message")]
    StoppedBeforeStored,
    /// The commit holding what a waiter waited for failed (shared by all its waiters).
    #[error("storage failed: {0}")]
    CommitFailed(Arc<StoreError>),
    #[error("could not delete: {0}")]
    DeleteFailed(#[source] StoreError),
    #[error("the stored checkpoint of '{id}' is unreadable: {source}")]
    CorruptCheckpoint {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The failure of a start that several callers awaited together (the registry's).
    #[error(transparent)]
    Shared(Arc<ConversationError>),
    /// Cluster mode: the owner node's answer to a forwarded command, as it would have said it.
    #[error("{}", .0.message)]
    Remote(Box<ApiError>),
    /// Cluster mode: this node lost the conversation's lease before storing the change (nothing
    /// was stored; the command is retried on the new owner).
    #[error("the conversation moved to another node before this was stored; try again")]
    LeaseLost,
    /// Cluster mode: no node could take the command (the owner does not answer and its lease
    /// has not expired in time, or NATS is down).
    #[error("the conversation's node does not answer; try again shortly ({0})")]
    Unreachable(String),
}

impl ConversationError {
    /// The error code a client sees.
    pub fn code(&self) -> ErrorCode {
        use ConversationError as E;
        match self {
            E::NotFound(_) => ErrorCode::ConversationNotFound,
            E::UnknownAssistant(_) | E::AssistantGone(_) => ErrorCode::UnknownAssistant,
            E::Busy | E::Starting(_) | E::AwaitingApproval => ErrorCode::ConversationBusy,
            E::RunActive(_) => ErrorCode::InterruptNotPending,
            E::InvalidArgs(e) => e.code,
            E::Refused { code, .. } => *code,
            E::Paused => ErrorCode::AssistantNotAutomated,
            E::Cancelled => ErrorCode::Cancelled,
            E::NoRunPermit => ErrorCode::RateLimited,
            E::Broken => ErrorCode::StorageUnavailable,
            E::CommitFailed(e) if e.is_unavailable() => ErrorCode::StorageUnavailable,
            E::DeleteFailed(e) | E::Store(e) if e.is_unavailable() => ErrorCode::StorageUnavailable,
            E::LostInterrupt
            | E::Stopped
            | E::StoppedBeforeStored
            | E::CommitFailed(_)
            | E::DeleteFailed(_)
            | E::CorruptCheckpoint { .. }
            | E::Store(_) => ErrorCode::Internal,
            E::Shared(e) => e.code(),
            E::Remote(e) => e.code,
            E::LeaseLost => ErrorCode::StorageUnavailable,
            E::Unreachable(_) => ErrorCode::ConversationBusy,
        }
    }
}

impl ConversationError {
    /// Whether this node lost the conversation's lease before storing anything (the fence
    /// refused the commit, or the actor was stopped for it): the command may go to the new
    /// owner.
    pub fn is_lease_lost(&self) -> bool {
        use ConversationError as E;
        match self {
            E::LeaseLost => true,
            E::CommitFailed(e) => matches!(**e, StoreError::Fenced { .. }),
            E::Store(e) | E::DeleteFailed(e) => matches!(e, StoreError::Fenced { .. }),
            E::Shared(e) => e.is_lease_lost(),
            _ => false,
        }
    }
}

impl From<crate::engine::Refused> for ConversationError {
    fn from(r: crate::engine::Refused) -> Self {
        ConversationError::Refused {
            code: r.code,
            message: r.message,
        }
    }
}

/// The conversation layer's errors at the edge: the same code and message a client always got.
impl From<ConversationError> for ApiError {
    fn from(e: ConversationError) -> Self {
        use ConversationError as E;
        if e.code() == ErrorCode::StorageUnavailable {
            tracing::warn!(error = %e, "storage unavailable");
            return ApiError::new(ErrorCode::StorageUnavailable, STORAGE_UNAVAILABLE_MESSAGE);
        }
        match e {
            E::InvalidArgs(api) | E::Remote(api) => *api,
            E::NotFound(id) => ApiError::conversation_not_found(&id),
            E::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(e) => e.into(),
                Err(shared) => ApiError::new(shared.code(), shared.to_string()),
            },
            E::Refused { code, message } => ApiError::new(code, message),
            e => ApiError::new(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_errors_keep_their_codes_and_messages_at_the_edge() {
        use ConversationError as E;
        let cases: Vec<(E, ErrorCode, &str)> = vec![
            (
                E::NotFound("c1".into()),
                ErrorCode::ConversationNotFound,
                "conversation 'c1' does not exist",
            ),
            (
                E::UnknownAssistant("x".into()),
                ErrorCode::UnknownAssistant,
                "there is no assistant 'x'",
            ),
            (
                E::AssistantGone("x".into()),
                ErrorCode::UnknownAssistant,
                "assistant 'x' of this conversation is no longer installed",
            ),
            (
                E::Busy,
                ErrorCode::ConversationBusy,
                "a run is active in this conversation; wait for it to finish or cancel it",
            ),
            (
                E::RunActive("i1".into()),
                ErrorCode::InterruptNotPending,
                "interrupt 'i1' is not pending (a run is active)",
            ),
            (
                E::Paused,
                ErrorCode::AssistantNotAutomated,
                "the run paused for a person or the page",
            ),
            (E::Cancelled, ErrorCode::Cancelled, "the run was cancelled"),
            (
                E::NoRunPermit,
                ErrorCode::RateLimited,
                "the server is running as many processes as it allows; try again shortly",
            ),
            (
                E::Broken,
                ErrorCode::StorageUnavailable,
                STORAGE_UNAVAILABLE_MESSAGE,
            ),
            (E::Stopped, ErrorCode::Internal, "the conversation stopped"),
            (
                E::StoppedBeforeStored,
                ErrorCode::Internal,
                "the conversation stopped before storing the message",
            ),
            (
                E::CommitFailed(std::sync::Arc::new(crate::store::StoreError::Closed)),
                ErrorCode::StorageUnavailable,
                STORAGE_UNAVAILABLE_MESSAGE,
            ),
            (
                E::DeleteFailed(crate::store::StoreError::Closed),
                ErrorCode::StorageUnavailable,
                STORAGE_UNAVAILABLE_MESSAGE,
            ),
            (
                E::Store(crate::store::StoreError::Closed),
                ErrorCode::StorageUnavailable,
                STORAGE_UNAVAILABLE_MESSAGE,
            ),
            (
                E::Refused {
                    code: ErrorCode::LlmError,
                    message: "down".into(),
                },
                ErrorCode::LlmError,
                "down",
            ),
        ];
        for (e, code, message) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.code, api.message.as_str()), (code, message));
            assert_eq!(api.details, None);
        }
        let args = ApiError::new(ErrorCode::InvalidArgs, "bad").with_details(serde_json::json!([]));
        assert_eq!(ApiError::from(E::InvalidArgs(Box::new(args.clone()))), args);
    }
}
