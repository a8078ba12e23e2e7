//! `POST /api/assistants/{id}/invoke`: the synchronous call of an automated assistant.
//!
//! The order of the checks is part of the contract (the first failing one answers): the
//! assistant exists and is automated; the body parses; the content's length, the args and the
//! timeout are valid; the per-user rate limits; a free invoke permit
//! (`server.max_concurrent_invokes`, else `rate_limited`); the conversation to continue is the
//! caller's and of this assistant. Then the message goes to the conversation's actor with a
//! report channel, and the handler waits for the report, which the actor sends after the
//! commit that ends the run (one fsync per call; DESIGN invariant 2).
//!
//! While it waits, the run is cancelled if the client goes away (`CancelOnDrop` and
//! `client_gone`) or the timeout passes; a timed-out call answers `run_timeout` once the
//! cancelled run is stored (at most `CANCEL_GRACE` later), so the conversation it names can
//! be read at once.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::connection::{client_gone, CancelOnDrop};
use super::views::MessageView;
use super::{owned_record, parse_body, unknown_assistant, ApiResult, Svc};
use crate::assistant::Assistant;
use crate::conversation::{msg, Accepted, Handle, RunReport};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::auth::User;
use crate::gateway::ErrorBody;
use crate::services::Services;

/// The body of `POST /api/assistants/{id}/invoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeBody {
    /// The user's message.
    pub content: String,
    /// The assistant's input args (see its `inputSchema`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// Continue this conversation (of the same assistant) instead of starting a new one.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// How long to wait for the run before it is cancelled, 0.01 to 86400 seconds (capped by
    /// the server's `invoke_timeout_max_seconds`).
    #[serde(default)]
    #[schema(minimum = 0.01, maximum = 86400)]
    pub timeout_seconds: Option<f64>,
}

/// The smallest `timeoutSeconds` (the spec's `minimum`).
const MIN_TIMEOUT_SECONDS: f64 = 0.01;
/// The largest `timeoutSeconds` (the spec's `maximum`; one day).
const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;

/// The answer of a synchronous call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvokeResponse {
    pub run_id: String,
    pub conversation_id: String,
    pub status: InvokeStatus,
    /// The run's output args.
    pub output: Value,
    /// The messages this run added, the user's first.
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvokeStatus {
    Completed,
}

/// How long a timed-out synchronous call waits for its cancelled run to be stored.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Synchronous call of an automated assistant.
///
/// The run happens in a transient actor and the conversation is stored like any other. An
/// assistant that can pause (for a person or the page) is refused: use the WebSocket.
#[utoipa::path(
    post,
    path = "/api/assistants/{id}/invoke",
    tag = "assistants",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The assistant's id")),
    request_body = InvokeBody,
    responses(
        (status = 200, description = "The run completed; with `Accept: text/event-stream`, the run's events as SSE (as `GET /api/conversations/{id}/stream`), ending after `RUN_FINISHED` or `RUN_ERROR`", body = InvokeResponse),
        (status = 400, description = "`bad_request`: a bad body (such as `timeoutSeconds` out of range)", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant`, or `conversation_not_found` (also for a conversation of another assistant)", body = ErrorBody),
        (status = 409, description = "`assistant_not_automated`, `conversation_busy`, or the run was `cancelled`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the content is too long", body = ErrorBody),
        (status = 422, description = "`invalid_args`, or the run failed: `step_failed`, `step_limit`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many synchronous calls at once", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 502, description = "The run failed: `llm_error`, `tool_error`", body = ErrorBody),
        (status = 503, description = "`interrupted`: the server stopped during the run", body = ErrorBody),
        (status = 504, description = "`run_timeout`: the run was cancelled (answered once the cancelled run is stored); `details` has its `runId` and `conversationId`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn invoke(
    svc: Svc,
    gw: web::Data<crate::gateway::GatewayState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    let a = crate::gateway::auth::assistant_for(&svc, &user, &id)
        .ok_or_else(|| unknown_assistant(&id))?;
    refuse_paused(&a)?;
    let b: InvokeBody = parse_body(&body)?;
    let timeout = check_body(&svc, &a, &b)?;
    if b.conversation_id.is_none() {
        gw.limits.new_conversation(&user.0)?;
    }
    gw.limits.message(&user.0)?;
    let _permit = svc
        .invoke_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many synchronous calls at once; retry shortly",
            )
        })?;
    let (cid, addr) = conversation(&svc, &user, &a, b.conversation_id.as_deref()).await?;
    if super::invoke_stream::wants_events(&req) {
        return super::invoke_stream::streamed(
            &svc, &user, cid, addr, b.content, b.args, timeout, _permit,
        )
        .await;
    }
    let (tx, rx) = oneshot::channel::<RunReport>();
    let m = msg::Send {
        owner: user.0.clone(),
        content: b.content,
        args: b.args,
        subscriber: None,
        report: Some(tx),
        on_busy: None,
        idempotency: None,
    };
    // In cluster mode the send may first wait for another node to hand the conversation over
    // (its active run to end, with `onBusy: enqueue`): bounded by the call's timeout.
    let accepted = tokio::time::timeout(Duration::from_secs_f64(timeout), addr.send(m))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RunTimeout,
                format!("the conversation's active run did not end within {timeout} s; nothing was sent"),
            )
        })?
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    let report = wait_for_report(&req, addr, user, accepted, rx, timeout).await?;
    let output = report.result?;
    Ok(HttpResponse::Ok().json(InvokeResponse {
        run_id: report.run_id,
        conversation_id: report.conversation_id,
        status: InvokeStatus::Completed,
        output,
        messages: report.messages.iter().map(MessageView::from).collect(),
    }))
}

/// `assistant_not_automated` for an assistant that can pause, with its pause points.
fn refuse_paused(a: &Assistant) -> Result<(), ApiError> {
    if a.automated {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::AssistantNotAutomated,
        format!(
            "assistant '{}' can pause for a person or the page, so it cannot be called synchronously: {}; use the WebSocket",
            a.id,
            a.pause_points.join(", ")
        ),
    )
    .with_details(json!({"pausePoints": a.pause_points})))
}

/// Check the body against the server's limits and the assistant's args; the timeout to wait
/// for the run, in seconds.
fn check_body(svc: &Services, a: &Assistant, b: &InvokeBody) -> Result<f64, ApiError> {
    let s = &svc.config.server;
    if b.content.chars().count() > s.max_message_chars {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("content is longer than {} characters", s.max_message_chars),
        ));
    }
    a.check_args(b.args.as_ref())?;
    match b.timeout_seconds {
        // Below 10 ms a run could only time out (and leave a cancelled conversation behind).
        Some(t) if !(MIN_TIMEOUT_SECONDS..=MAX_TIMEOUT_SECONDS).contains(&t) => Err(
            ApiError::bad_request("timeoutSeconds must be between 0.01 and 86400 seconds"),
        ),
        Some(t) => Ok(t.min(s.invoke_timeout_max_seconds as f64)),
        None => Ok(s.invoke_timeout_seconds as f64),
    }
}

/// The actor of the conversation to continue (the caller's, of this assistant), or of a new one.
async fn conversation(
    svc: &Arc<Services>,
    user: &User,
    a: &Assistant,
    conversation_id: Option<&str>,
) -> Result<(String, Handle), ApiError> {
    match conversation_id {
        Some(cid) => {
            let rec = owned_record(svc, &user.0, cid).await?;
            if rec.assistant != a.id {
                // Not a conversation of this assistant: for this route it does not exist.
                return Err(ApiError::new(
                    ErrorCode::ConversationNotFound,
                    format!(
                        "conversation '{cid}' is not a conversation of assistant '{}' (it belongs to '{}')",
                        a.id, rec.assistant
                    ),
                ));
            }
            Ok((cid.to_owned(), svc.registry.get_as(cid, &user.0).await?))
        }
        None => Ok(svc.registry.create(&user.0, &a.id)?),
    }
}

/// Wait for the run's report; cancel the run if the client goes away or `timeout` passes.
async fn wait_for_report(
    req: &HttpRequest,
    addr: Handle,
    user: User,
    accepted: Accepted,
    mut rx: oneshot::Receiver<RunReport>,
    timeout: f64,
) -> Result<RunReport, ApiError> {
    let mut guard = CancelOnDrop {
        addr: Some(addr.clone()),
        owner: user.0.clone(),
    };
    // actix-web does not drop a handler when its client goes away, so watch the connection.
    let gone = client_gone(req);
    let waited = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs_f64(timeout), &mut rx) => r,
        _ = gone => {
            // Dropping the guard cancels the run.
            return Err(ApiError::new(ErrorCode::Cancelled, "the client went away"));
        }
    };
    match waited {
        Ok(Ok(r)) => {
            guard.addr = None;
            Ok(r)
        }
        // The guard cancels the run.
        Ok(Err(_)) => Err(ApiError::internal("the run ended without a report")),
        Err(_) => {
            // Cancel, and answer once the cancelled run is stored (its report comes after that
            // commit), so that the conversation the answer names can be read at once.
            guard.addr = None;
            let _ = addr.send(msg::Cancel { owner: user.0 }).await;
            let _ = tokio::time::timeout(CANCEL_GRACE, rx).await;
            Err(ApiError::new(
                ErrorCode::RunTimeout,
                format!("the run took longer than {timeout} s and was cancelled"),
            )
            .with_details(
                json!({"runId": accepted.run_id, "conversationId": accepted.conversation_id}),
            ))
        }
    }
}
