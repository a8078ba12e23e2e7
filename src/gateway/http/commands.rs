//! The conversation commands over HTTP (CONTRACT §6): create (optionally with the first
//! message), send a message, resume an interrupt, cancel. They are the WebSocket's `send`,
//! `resume` and `cancel` with HTTP answers: the same actor messages, acknowledged after the
//! durable commit (invariant 2), the same error codes.
//!
//! Every one takes an `Idempotency-Key` ([`super::idempotent`]). `?wait=true` on `messages`
//! and `resume` answers when the run pauses or ends, with the invoke view ([`wait`]): the
//! handler follows the conversation's [`EventStream`] from before the command, so the run's
//! end cannot be missed.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::idempotent::{idempotent, Answer};
use super::views::MessageView;
use super::{owned_record, parse_body, query, unknown_assistant, ApiResult, Svc};
use crate::assistant::model::OnBusy;
use crate::conversation::{msg, Accepted};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::auth::User;
use crate::gateway::stream::{EventStream, Item, Next};
use crate::gateway::{ErrorBody, GatewayState};
use crate::services::Services;
use crate::store::IdempotencyRecord;

type Gw = web::Data<GatewayState>;

/// The body of `POST /api/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    /// The assistant of the new conversation.
    pub assistant: String,
    /// The first message; it starts the first run.
    #[serde(default)]
    pub content: Option<String>,
    /// The first message's input args.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// The title (default: the first 20 characters of the first message).
    #[serde(default)]
    pub title: Option<String>,
}

/// A command was accepted (and durably stored).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedView {
    pub conversation_id: String,
    /// The run the command started; absent when none was (a conversation created without a
    /// message, or a message queued behind the active run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl From<Accepted> for AcceptedView {
    fn from(a: Accepted) -> Self {
        AcceptedView {
            conversation_id: a.conversation_id,
            run_id: Some(a.run_id).filter(|r| !r.is_empty()),
        }
    }
}

/// The body of `POST /api/conversations/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageBody {
    pub content: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub args: Option<Value>,
    /// What to do while a run is active (default: the assistant's `onBusy`, else `reject`).
    #[serde(default)]
    pub on_busy: Option<OnBusy>,
}

/// The body of `POST /api/conversations/{id}/resume`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResumeBody {
    pub interrupt_id: String,
    /// The button pressed (conversation actions, tool confirmations).
    #[serde(default)]
    pub action: Option<String>,
    /// The answer's value (a page action's result, an edited card).
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer when the run pauses or ends, with the run's outcome.
    #[serde(default)]
    wait: bool,
}

/// How a run that was waited for stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaitStatus {
    Completed,
    Paused,
    Failed,
    Cancelled,
}

/// The answer of `?wait=true`: the invoke view of the run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitView {
    pub conversation_id: String,
    pub run_id: String,
    pub status: WaitStatus,
    /// The run's output args (completed runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The pending interrupts (paused runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupts: Option<Value>,
    /// The error (failed and cancelled runs): `{"code", "message"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// The messages stored since the command, oldest first.
    pub messages: Vec<MessageView>,
}

/// Create a conversation; with `content`, its first message starts the first run.
#[utoipa::path(
    post,
    path = "/api/conversations",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first answer")),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created (and the first message stored)", body = AcceptedView),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_args` or `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn create_conversation(
    svc: Svc,
    gw: Gw,
    req: HttpRequest,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    idempotent(
        &svc,
        &gw,
        &req,
        &user.0,
        &body,
        Some(created),
        |key| async {
            let b: CreateBody = parse_body(&body)?;
            let a = crate::gateway::auth::assistant_for(&svc, &user, &b.assistant)
                .ok_or_else(|| unknown_assistant(&b.assistant))?;
            if let Some(c) = &b.content {
                check_sizes(&svc, c, &b.args)?;
                a.check_args(b.args.as_ref())?;
            }
            let title = b.title.map(|t| t.trim().to_string());
            if title
                .as_ref()
                .is_some_and(|t| t.is_empty() || t.chars().count() > 200)
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgs,
                    "title must have 1 to 200 characters",
                ));
            }
            gw.limits.new_conversation(&user.0)?;
            if b.content.is_some() {
                gw.limits.message(&user.0)?;
            }
            let (id, addr) = svc.registry.create(&user.0, &a.id)?;
            let stopped = |_| ApiError::internal("the conversation stopped; try again");
            if title.is_some() || b.content.is_none() {
                addr.send(msg::Store {
                    owner: user.0.clone(),
                    title,
                    // Without a first message, the key goes with the record.
                    idempotency: if b.content.is_none() {
                        key.clone()
                    } else {
                        None
                    },
                })
                .await
                .map_err(stopped)??;
            }
            let view = match b.content {
                Some(content) => {
                    let m = msg::Send {
                        owner: user.0.clone(),
                        content,
                        args: b.args,
                        subscriber: None,
                        report: None,
                        on_busy: None,
                        idempotency: key,
                    };
                    AcceptedView::from(addr.send(m).await.map_err(stopped)??)
                }
                None => AcceptedView {
                    conversation_id: id,
                    run_id: None,
                },
            };
            Answer::json(StatusCode::CREATED, &view)
        },
    )
    .await
}

/// Send a message: starts a run, or answers a paused conversation as a WebSocket `send` does.
#[utoipa::path(
    post,
    path = "/api/conversations/{id}/messages",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first answer"),
        WaitQuery,
    ),
    request_body = MessageBody,
    responses(
        (status = 202, description = "Accepted and stored", body = AcceptedView),
        (status = 200, description = "`?wait=true`: the run paused or ended", body = WaitView),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 409, description = "`conversation_busy` (with `x-should-retry: false`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_args` or `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "`rate_limited`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn send_message(
    svc: Svc,
    gw: Gw,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    idempotent(
        &svc,
        &gw,
        &req,
        &user.0,
        &body,
        Some(accepted),
        |key| async {
            let q: WaitQuery = query(&req)?;
            let b: MessageBody = parse_body(&body)?;
            check_sizes(&svc, &b.content, &b.args)?;
            owned_record(&svc, &user.0, &id).await?;
            gw.limits.message(&user.0)?;
            let waiter = Waiter::open(&svc, &user.0, &id, q.wait).await?;
            let addr = svc.registry.get_as(&id, &user.0).await?;
            let m = msg::Send {
                owner: user.0.clone(),
                content: b.content,
                args: b.args,
                subscriber: None,
                report: None,
                on_busy: b.on_busy,
                idempotency: key,
            };
            let accepted = addr
                .send(m)
                .await
                .map_err(|_| ApiError::internal("the conversation stopped; send again"))??;
            waiter.answer(&svc, accepted).await
        },
    )
    .await
}

/// Answer a pending interrupt.
#[utoipa::path(
    post,
    path = "/api/conversations/{id}/resume",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first answer"),
        WaitQuery,
    ),
    request_body = ResumeBody,
    responses(
        (status = 202, description = "Accepted and stored", body = AcceptedView),
        (status = 200, description = "`?wait=true`: the run paused or ended", body = WaitView),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 409, description = "`interrupt_not_pending` (with `x-should-retry: false`)", body = ErrorBody),
        (status = 422, description = "`invalid_args` or `idempotency_key_reused`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn resume(
    svc: Svc,
    gw: Gw,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    idempotent(
        &svc,
        &gw,
        &req,
        &user.0,
        &body,
        Some(accepted),
        |key| async {
            let q: WaitQuery = query(&req)?;
            let b: ResumeBody = parse_body(&body)?;
            owned_record(&svc, &user.0, &id).await?;
            let waiter = Waiter::open(&svc, &user.0, &id, q.wait).await?;
            let addr = svc.registry.get_as(&id, &user.0).await?;
            let accepted = addr
                .send(msg::Resume {
                    owner: user.0.clone(),
                    interrupt_id: b.interrupt_id,
                    action: b.action,
                    value: b.value,
                    idempotency: key,
                })
                .await
                .map_err(|_| ApiError::internal("the conversation stopped; resume again"))??;
            waiter.answer(&svc, accepted).await
        },
    )
    .await
}

/// The answer of `POST /api/conversations/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelView {
    /// Whether a run (active or paused) was cancelled.
    pub cancelled: bool,
}

/// Cancel the active run (or withdraw a paused run's interrupt).
#[utoipa::path(
    post,
    path = "/api/conversations/{id}/cancel",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key get the first answer"),
    ),
    responses(
        (status = 200, description = "Whether a run was cancelled", body = CancelView),
        (status = 400, description = "`bad_request`: a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn cancel(
    svc: Svc,
    gw: Gw,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    idempotent(
        &svc,
        &gw,
        &req,
        &user.0,
        &body,
        Some(cancelled),
        |key| async {
            owned_record(&svc, &user.0, &id).await?;
            let addr = svc.registry.get_as(&id, &user.0).await?;
            let owner = user.0.clone();
            let sent = match key {
                Some(idempotency) => addr.send(msg::KeyedCancel { owner, idempotency }).await,
                None => addr.send(msg::Cancel { owner }).await,
            };
            let cancelled = sent.map_err(|_| ApiError::internal("the conversation stopped"))??;
            Answer::json(StatusCode::OK, &CancelView { cancelled })
        },
    )
    .await
}

/// The answer of a `cancel`, rebuilt from its stored key.
fn cancelled(rec: &IdempotencyRecord) -> Result<Answer, ApiError> {
    let cancelled = rec.cancelled.unwrap_or(false);
    Answer::json(StatusCode::OK, &CancelView { cancelled })
}

/// The answer of an accepted `messages` or `resume`, rebuilt from its stored key.
fn accepted(rec: &IdempotencyRecord) -> Result<Answer, ApiError> {
    Answer::json(StatusCode::ACCEPTED, &view_of(rec))
}

/// The answer of a `POST /api/conversations` with a first message, rebuilt from its key.
fn created(rec: &IdempotencyRecord) -> Result<Answer, ApiError> {
    Answer::json(StatusCode::CREATED, &view_of(rec))
}

fn view_of(rec: &IdempotencyRecord) -> AcceptedView {
    AcceptedView::from(Accepted {
        conversation_id: rec.conversation_id.clone(),
        run_id: rec.run_id.clone(),
    })
}

fn check_sizes(svc: &Services, content: &str, args: &Option<Value>) -> Result<(), ApiError> {
    let s = &svc.config.server;
    if content.chars().count() > s.max_message_chars {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("content is longer than {} characters", s.max_message_chars),
        ));
    }
    if args
        .as_ref()
        .is_some_and(|a| a.to_string().len() > s.max_args_bytes)
    {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("args are larger than {} bytes", s.max_args_bytes),
        ));
    }
    Ok(())
}

/// `?wait=true`: the conversation's stream, opened before the command so that the run's end
/// cannot be missed, and the last message before it.
struct Waiter {
    stream: Option<(EventStream, Option<u64>)>,
}

impl Waiter {
    async fn open(
        svc: &Arc<Services>,
        owner: &str,
        id: &str,
        wait: bool,
    ) -> Result<Self, ApiError> {
        if !wait {
            return Ok(Waiter { stream: None });
        }
        // Live from the durable mark on: the first opening tells the mark, the second follows
        // from there (what is stored in between is replayed: it precedes the command).
        let high = EventStream::open(svc, owner, id, 0).await?.high_at_open();
        let stream = EventStream::open(svc, owner, id, high).await?;
        let last = svc
            .store
            .messages(id, None, 1)
            .await
            .map_err(ApiError::from)?
            .first()
            .map(|m| m.no);
        Ok(Waiter {
            stream: Some((stream, last)),
        })
    }

    /// `202` with the accepted view, or (waiting) `200` with the run's outcome.
    async fn answer(self, svc: &Services, accepted: Accepted) -> Result<Answer, ApiError> {
        let Some((mut stream, last)) = self.stream.filter(|_| !accepted.run_id.is_empty()) else {
            return Answer::json(StatusCode::ACCEPTED, &AcceptedView::from(accepted));
        };
        let end = loop {
            match stream.next().await? {
                Next::Event(Item { json, .. }) => {
                    let ev: Value = match serde_json::from_slice(&json) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    let ours = ev.get("runId").and_then(Value::as_str) == Some(&accepted.run_id);
                    if ours && crate::gateway::stream::ends_run(&json) {
                        break ev;
                    }
                }
                Next::Lagged => {
                    return Err(ApiError::internal(
                        "the run produced events faster than they could be followed; read the conversation",
                    ))
                }
                Next::Closed => return Err(ApiError::internal("the conversation stopped")),
            }
        };
        let mut view = WaitView {
            conversation_id: accepted.conversation_id.clone(),
            run_id: accepted.run_id,
            status: WaitStatus::Completed,
            output: None,
            interrupts: None,
            error: None,
            messages: Vec::new(),
        };
        if end.get("type").and_then(Value::as_str) == Some("RUN_ERROR") {
            let code = end.get("code").cloned().unwrap_or(Value::Null);
            view.status = if code == "cancelled" {
                WaitStatus::Cancelled
            } else {
                WaitStatus::Failed
            };
            view.error = Some(serde_json::json!({"code": code, "message": end.get("message")}));
        } else {
            let outcome = end.get("outcome").cloned().unwrap_or(Value::Null);
            if outcome.get("type").and_then(Value::as_str) == Some("interrupt") {
                view.status = WaitStatus::Paused;
                view.interrupts = outcome.get("interrupts").cloned();
            } else {
                view.output = outcome.get("result").cloned();
            }
        }
        let mut msgs = svc
            .store
            .messages(&accepted.conversation_id, None, 100)
            .await
            .map_err(ApiError::from)?;
        msgs.retain(|m| last.is_none_or(|l| m.no > l));
        msgs.reverse();
        view.messages = msgs.iter().map(MessageView::from).collect();
        Answer::json(StatusCode::OK, &view)
    }
}
