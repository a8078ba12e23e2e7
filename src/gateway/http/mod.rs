//! The HTTP API (CONTRACT §3), the demo page's files, health and metrics: one file per resource.
//!
//! | file | routes |
//! |---|---|
//! | `static_files.rs` | `GET /`, `GET /static/{file}` (the demo page, embedded) |
//! | `server.rs` | `GET /healthz`, `GET /metrics`, `GET /api/info` |
//! | `assistants.rs` | `GET /api/assistants`, `GET /api/assistants/{id}` |
//! | `invoke.rs` | `POST /api/assistants/{id}/invoke` (synchronous call) |
//! | `invoke_stream.rs` | the same with `Accept: text/event-stream`: the run's events as SSE |
//! | `conversations.rs` | `/api/conversations[/{id}[/messages\|/events]]` (reads, rename, delete) |
//! | `commands.rs` | `POST /api/conversations`, `POST /api/conversations/{id}/{messages,resume,cancel}` (CONTRACT §6; `?wait=true`) |
//! | `idempotent.rs` | the `Idempotency-Key` header of those `POST`s |
//! | `sse.rs` | `GET /api/conversations/{id}/stream` (Server-Sent Events) |
//! | `views.rs` | the JSON views of stored conversations and messages |
//! | `connection.rs` | noticing that a client went away (for `invoke`) |
//! | `methods.rs` | what every route keeps: `405` with `Allow` for other methods, `415` for a body that is not JSON |
//!
//! The routes are registered from the table in [`super`]; each handler describes itself for the
//! OpenAPI document with `#[utoipa::path]`, and every JSON body it sends or reads is a typed
//! struct deriving `ToSchema`, so the document is generated from what is on the wire.
//!
//! Conventions every handler keeps:
//! - A handler that serves a user takes [`User`](super::auth::User) as a parameter, so it
//!   cannot run unauthenticated (`401 unauthorized` otherwise). It is listed after the body, so
//!   an oversized body is still refused with `413` first.
//! - Errors are [`ApiError`]s returned with `?`; the gateway turns them into the status and body
//!   of their code ([`super::ErrorBody`]).
//! - Bodies and query strings are read by `parse_body` and `query`, so a bad one is a
//!   `bad_request` that names the problem; a conversation is read through `owned_record`, so
//!   another user's is `conversation_not_found`.

pub mod assistants;
pub mod commands;
pub mod connection;
pub mod conversations;
pub mod idempotent;
pub mod invoke;
pub mod invoke_stream;
pub mod methods;
pub mod server;
pub mod sse;
pub mod static_files;
pub mod views;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

pub use connection::on_connect;

use crate::error::{ApiError, ErrorCode};
use crate::services::Services;
use crate::store::ConversationRecord;

type Svc = web::Data<Arc<Services>>;
type ApiResult = Result<HttpResponse, ApiError>;

fn unknown_assistant(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownAssistant,
        format!("there is no assistant '{id}'"),
    )
}

/// Parse a JSON body, with errors that name the problem.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("bad body: {e}")))
}

/// The record, if it is this user's (`conversation_not_found` otherwise: others' do not exist).
async fn owned_record(
    svc: &Services,
    user: &str,
    id: &str,
) -> Result<ConversationRecord, ApiError> {
    match svc.store.get_conversation(id).await {
        Ok(Some(r)) if r.owner == user => Ok(r),
        Ok(_) => Err(ApiError::conversation_not_found(id)),
        Err(e) => Err(ApiError::from(e)),
    }
}

/// Parse the query string, with errors that name the problem.
fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

/// A page size: `default` when absent, else 1 to 100.
fn limit(l: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match l {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("limit must be between 1 and 100")),
    }
}
