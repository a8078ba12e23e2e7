//! The `Idempotency-Key` header of every `POST` of the conversation commands (CONTRACT §6),
//! over the gateway's key memory ([`Idempotency`](crate::gateway::dedup::Idempotency)).
//!
//! The key is checked before anything else: a retry of an accepted request is answered with
//! the first answer (its status and body, byte for byte) without being applied again, even
//! while the run it started is still going. The request is the route (method and path) and
//! the fingerprint of its query string and body.

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::ApiResult;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::dedup::{fingerprint_bytes, Claim};
use crate::gateway::GatewayState;

/// The header's name.
pub const HEADER: &str = "Idempotency-Key";
const MAX_KEY_CHARS: usize = 255;

/// An accepted answer: its status and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Result<Answer, ApiError> {
        let body = serde_json::to_string(body).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Answer { status, body })
    }

    fn response(status: StatusCode, body: String) -> HttpResponse {
        HttpResponse::build(status)
            .content_type("application/json")
            .body(body)
    }
}

/// Run `apply` at most once per (user, route, key): see the module doc. Without the header,
/// `apply` runs every time.
pub async fn idempotent<F, Fut>(
    gw: &GatewayState,
    req: &HttpRequest,
    user: &str,
    body: &[u8],
    apply: F,
) -> ApiResult
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
{
    let Some(key) = req.headers().get(HEADER) else {
        let a = apply().await?;
        return Ok(Answer::response(a.status, a.body));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{HEADER} must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            ))
        })?;
    let route = format!("{} {}", req.method(), req.path());
    let mut request = Vec::with_capacity(body.len() + req.query_string().len() + 1);
    request.extend_from_slice(req.query_string().as_bytes());
    request.push(b'\n');
    request.extend_from_slice(body);
    let fp = fingerprint_bytes(&request);
    match gw.idempotency.claim(user, &route, key, fp) {
        Claim::New => {}
        Claim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok(Answer::response(status, body));
        }
        Claim::Reused => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                format!("this {HEADER} was used before with a different request; use a new key"),
            ))
        }
        Claim::InProgress => {
            return Err(ApiError::new(
                ErrorCode::ConversationBusy,
                format!("a request with this {HEADER} is being applied; retry it later"),
            ))
        }
    }
    match apply().await {
        Ok(a) => {
            gw.idempotency
                .finish(user, &route, key, fp, a.status.as_u16(), &a.body);
            Ok(Answer::response(a.status, a.body))
        }
        Err(e) => {
            gw.idempotency.release(user, &route, key);
            Err(e)
        }
    }
}
