//! The `Idempotency-Key` header of every `POST` of the conversation commands (CONTRACT §6),
//! over the gateway's key memory ([`Idempotency`](crate::gateway::dedup::Idempotency)).
//!
//! The key is checked before anything else: a retry of an accepted request is answered with
//! the first answer (its status and body, byte for byte) without being applied again, even
//! while the run it started is still going. The request is the route (method and path) and
//! the fingerprint of its query string and body.
//!
//! Keys survive a restart for every command: `send`, `resume`, `cancel` and create (with or
//! without a first message). The key goes to the actor with the command and is stored in the
//! same commit as the message, answer, cancellation or record it guards ([`IdempotencyKey`];
//! a cancel that changes nothing stores its key alone, and answers once it is durable); a key
//! not in memory is looked up in the store before anything is applied, and answered from its
//! record (a `?wait=true` command retried after a restart gets the `202` accepted view, not
//! the run's outcome). Stored keys expire after 24 hours: reads ignore them from then on and
//! the retention sweeper deletes them (`WriteOp::DeleteExpiredIdempotencyKeys`).

use std::future::Future;

use actix_web::http::header::HeaderValue;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::ApiResult;
use crate::conversation::IdempotencyKey;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::dedup::{fingerprint_bytes, hex, scoped_key, Claim, Fingerprint};
use crate::gateway::GatewayState;
use crate::services::Services;
use crate::store::{IdempotencyRecord, StoreError};

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

fn reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        format!("this {HEADER} was used before with a different request; use a new key"),
    )
}

/// How a command answers a key found in the store (after a restart): its answer rebuilt from
/// the stored record; `None` for a command whose keys are kept in memory only (none of the
/// §6 commands now).
pub type Rebuild = Option<fn(&IdempotencyRecord) -> Result<Answer, ApiError>>;

/// The header's value: 1 to [`MAX_KEY_CHARS`] visible ASCII characters.
fn valid_key(value: &HeaderValue) -> Result<&str, ApiError> {
    value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{HEADER} must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            ))
        })
}

/// What makes two requests the same: the query and the body.
fn request_fingerprint(req: &HttpRequest, body: &[u8]) -> Fingerprint {
    let mut request = Vec::with_capacity(body.len() + req.query_string().len() + 1);
    request.extend_from_slice(req.query_string().as_bytes());
    request.push(b'\n');
    request.extend_from_slice(body);
    fingerprint_bytes(&request)
}

/// The answer of a request the store has under `key` (accepted before a restart), or `None`
/// to apply it now. The in-memory claim ([`Claim::New`]) is given up unless the request is
/// applied.
fn answer_stored(
    gw: &GatewayState,
    user: &str,
    route: &str,
    key: &str,
    fp: Fingerprint,
    stored: Result<Option<IdempotencyRecord>, StoreError>,
    rebuild: fn(&IdempotencyRecord) -> Result<Answer, ApiError>,
) -> Result<Option<Answer>, ApiError> {
    let rec = match stored {
        Ok(None) => return Ok(None),
        Ok(Some(rec)) => rec,
        Err(e) => {
            gw.idempotency.release(user, route, key);
            return Err(ApiError::from(e));
        }
    };
    gw.idempotency.release(user, route, key);
    if rec.fingerprint != hex(&fp) {
        return Err(reused());
    }
    let a = rebuild(&rec)?;
    if gw.idempotency.claim(user, route, key, fp) == Claim::New {
        gw.idempotency
            .finish(user, route, key, fp, a.status.as_u16(), &a.body);
    }
    Ok(Some(a))
}

/// Run `apply` at most once per (user, route, key): see the module doc. Without the header,
/// `apply` runs every time. `apply` gets the key to store with what it writes.
pub async fn idempotent<F, Fut>(
    svc: &Services,
    gw: &GatewayState,
    req: &HttpRequest,
    user: &str,
    body: &[u8],
    rebuild: Rebuild,
    apply: F,
) -> ApiResult
where
    F: FnOnce(Option<IdempotencyKey>) -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
{
    let Some(key) = req.headers().get(HEADER) else {
        let a = apply(None).await?;
        return Ok(Answer::response(a.status, a.body));
    };
    let key = valid_key(key)?;
    let route = format!("{} {}", req.method(), req.path());
    let fp = request_fingerprint(req, body);
    match gw.idempotency.claim(user, &route, key, fp) {
        Claim::New => {}
        Claim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok(Answer::response(status, body));
        }
        Claim::Reused => return Err(reused()),
        Claim::InProgress => {
            return Err(ApiError::new(
                ErrorCode::ConversationBusy,
                format!("a request with this {HEADER} is being applied; retry it later"),
            ))
        }
    }
    let scoped = scoped_key(user, &route, key);
    if let Some(rebuild) = rebuild {
        // Not in memory: perhaps accepted before a restart.
        let stored = svc.store.idempotency_key(&scoped).await;
        if let Some(a) = answer_stored(gw, user, &route, key, fp, stored, rebuild)? {
            return Ok(Answer::response(a.status, a.body));
        }
    }
    let stored_key = rebuild.map(|_| IdempotencyKey {
        key: scoped,
        fingerprint: hex(&fp),
    });
    match apply(stored_key).await {
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
