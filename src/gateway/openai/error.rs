//! Errors of the `/v1` routes in OpenAI's shape: the status of the Parley code (CONTRACT §3),
//! `{"error": {"message", "type", "param", "code"}}`, `x-should-retry: false` on every 409 (the
//! official clients retry 409 twice otherwise), and `X-Parley-Conversation-Id` once a
//! conversation is known.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::wire::{ErrorType, OpenAiErrorBody, OpenAiErrorDetail};
use crate::error::{ApiError, ErrorCode};

/// The header that names the conversation on every answer.
pub const CONVERSATION_HEADER: &str = "X-Parley-Conversation-Id";

/// An [`ApiError`] answered in OpenAI's shape.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{api}")]
pub struct OpenAiError {
    pub api: Box<ApiError>,
    /// The request field at fault (`model`, `messages`, `parley.args`, ...).
    pub param: Option<&'static str>,
    /// The conversation the request worked on, if one was known.
    pub conversation: Option<String>,
}

impl OpenAiError {
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn in_conversation(mut self, id: &str) -> Self {
        self.conversation = Some(id.to_owned());
        self
    }

    /// The body, also used for an error in the middle of a stream (`data: {"error": ...}`).
    pub fn body(&self) -> OpenAiErrorBody {
        body_of(&self.api, self.param)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(api: ApiError) -> Self {
        OpenAiError {
            api: Box::new(api),
            param: None,
            conversation: None,
        }
    }
}

/// OpenAI's error body for a Parley error.
pub fn body_of(api: &ApiError, param: Option<&str>) -> OpenAiErrorBody {
    let kind = if api.code.http_status() >= 500 {
        ErrorType::ServerError
    } else {
        ErrorType::InvalidRequestError
    };
    let message = match &api.details {
        Some(d) if api.code == ErrorCode::InvalidArgs => format!("{} ({d})", api.message),
        _ => api.message.clone(),
    };
    OpenAiErrorBody {
        error: OpenAiErrorDetail {
            message,
            kind,
            param: param.map(str::to_owned),
            code: api.code.as_str().to_owned(),
        },
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.api.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut resp = HttpResponse::build(status);
        if status == StatusCode::CONFLICT {
            resp.insert_header(("x-should-retry", "false"));
        }
        if self.api.code == ErrorCode::RateLimited {
            resp.insert_header(("Retry-After", "1"));
        }
        if let Some(c) = &self.conversation {
            resp.insert_header((CONVERSATION_HEADER, c.as_str()));
        }
        resp.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn answer(e: OpenAiError) -> (u16, Option<String>, serde_json::Value) {
        let r = e.error_response();
        let retry = r
            .headers()
            .get("x-should-retry")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let status = r.status().as_u16();
        let bytes = r.into_body().try_into_bytes().unwrap_or_default();
        (
            status,
            retry,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[test]
    fn busy_is_409_and_not_retried() {
        let e = OpenAiError::from(ApiError::new(ErrorCode::ConversationBusy, "busy"));
        let (status, retry, body) = answer(e);
        assert_eq!(status, 409);
        assert_eq!(retry.as_deref(), Some("false"));
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "busy", "type": "invalid_request_error",
                "param": null, "code": "conversation_busy"}})
        );
    }

    #[test]
    fn server_errors_are_server_errors_and_params_are_named() {
        let (status, retry, body) =
            answer(OpenAiError::from(ApiError::new(ErrorCode::LlmError, "down")).param("model"));
        assert_eq!((status, retry), (502, None));
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["param"], "model");
        let (status, _, body) = answer(OpenAiError::from(ApiError::new(
            ErrorCode::UnknownAssistant,
            "nope",
        )));
        assert_eq!(status, 404);
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
