//! The OpenAI-compatible front (CONTRACT §8): `GET /v1/models` and `POST /v1/chat/completions`,
//! so any OpenAI client library can call Parley assistants as models.
//!
//! A translation, not an engine (DESIGN "Fronts are translations"): a request becomes a `send`
//! or a `resume` of a conversation's actor, and the answer is the run's stored events — read
//! through [`EventStream`](super::stream::EventStream) after the durable mark taken before the
//! command — translated into chunks. This module keeps no state of its own: a pause is answered
//! as tool calls whose ids are the interrupt ids, and the next request's `tool` message is a
//! `resume` of the conversation it names.
//!
//! | file | what it is |
//! |---|---|
//! | `mod.rs` | the two handlers |
//! | `wire.rs` | OpenAI's request, answer, chunk, model list and error body as typed structs |
//! | `request.rs` | a request's messages → [`request::Command`] (`send` or `resume`); pure |
//! | `translate.rs` | stored events → chunks and the completion they add up to; pure |
//! | `run.rs` | one request against the conversation: checks, subscribe, command, events |
//! | `error.rs` | errors in OpenAI's shape (`x-should-retry: false` on 409) |
//!
//! Auth: the bearer key is the Parley token ([`User`]); a bad one is `401` in OpenAI's shape.
//! Every answer (and every error once a conversation is known) carries
//! `X-Parley-Conversation-Id`. `usage` is the run's token counts from `RUN_FINISHED` (for a run
//! resumed after a pause, the whole run's so far).

pub mod error;
pub mod request;
pub mod run;
pub mod translate;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use self::error::{OpenAiError, CONVERSATION_HEADER};
use self::translate::Translator;
use self::wire::*;
use super::auth::User;
use super::GatewayState;
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;

type Svc = web::Data<Arc<Services>>;

/// Every usable assistant as a model.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The assistants as models", body = ModelList),
        (status = 401, description = "`unauthorized`", body = OpenAiErrorBody),
    )
)]
pub(in crate::gateway) async fn list_models(
    svc: Svc,
    user: Result<User, ApiError>,
) -> Result<HttpResponse, OpenAiError> {
    let user = user?;
    let mut data: Vec<Model> = svc
        .catalog
        .iter()
        .filter(|a| user.may_use(&svc.config.auth, &a.id))
        .map(|a| Model {
            id: a.id.clone(),
            object: ModelObject::Model,
            created: 0,
            owned_by: "parley".into(),
        })
        .collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(HttpResponse::Ok().json(ModelList {
        object: ListObject::List,
        data,
    }))
}

/// A chat completion: the newest user message is sent to the assistant named by `model` (or
/// the `tool` message ending the messages answers its pending interrupt), and the run's text
/// comes back, streamed or whole. A pause is `finish_reason: "tool_calls"`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    security((), ("bearer" = [])),
    params(("X-Parley-Conversation-Id" = Option<String>, Header, description = "Continue this conversation")),
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer (`text/event-stream` of `chat.completion.chunk` with `stream: true`)", body = ChatCompletion,
            headers(("X-Parley-Conversation-Id" = String, description = "The conversation"))),
        (status = 400, description = "`bad_request`: a bad body or messages, a conversation of another model", body = OpenAiErrorBody),
        (status = 401, description = "`unauthorized`", body = OpenAiErrorBody),
        (status = 404, description = "`unknown_assistant` (the model) or `conversation_not_found`", body = OpenAiErrorBody),
        (status = 409, description = "`conversation_busy`, `interrupt_not_pending`, or the run was `cancelled` (with `x-should-retry: false`)", body = OpenAiErrorBody,
            headers(("x-should-retry" = String, description = "`false`"))),
        (status = 413, description = "`payload_too_large`", body = OpenAiErrorBody),
        (status = 422, description = "`invalid_args`, or the run failed: `step_failed`, `step_limit`", body = OpenAiErrorBody),
        (status = 429, description = "`rate_limited`", body = OpenAiErrorBody),
        (status = 500, description = "`internal`", body = OpenAiErrorBody),
        (status = 502, description = "The run failed: `llm_error`, `tool_error`", body = OpenAiErrorBody),
        (status = 503, description = "`interrupted`", body = OpenAiErrorBody),
        (status = 504, description = "`run_timeout` (non-streamed answers; the run is cancelled)", body = OpenAiErrorBody),
    )
)]
pub(in crate::gateway) async fn chat_completions(
    svc: Svc,
    gw: web::Data<GatewayState>,
    req: HttpRequest,
    body: web::Bytes,
    user: Result<User, ApiError>,
) -> Result<HttpResponse, OpenAiError> {
    let user = user?;
    let body: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("bad body: {e}")))?;
    let a = super::auth::assistant_for(&svc, &user, &body.model).ok_or_else(|| {
        OpenAiError::from(ApiError::new(
            ErrorCode::UnknownAssistant,
            format!("there is no model (assistant) '{}'", body.model),
        ))
        .param("model")
    })?;
    let command = request::command(&body.messages)?;
    let parley = body.parley.unwrap_or_default();
    let header = req
        .headers()
        .get(CONVERSATION_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("X-Parley-Conversation-Id is not text"))
        })
        .transpose()?;
    let named = header.or(parley.conversation_id);
    let started = run::start(&svc, &gw, &user, &a, named, command, parley.args).await?;
    let conversation = started.conversation.clone();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let mut tr = Translator::new(id, a.id.clone(), created, include_usage);
    if body.stream {
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header((CONVERSATION_HEADER, conversation))
            .streaming(started.into_sse(tr)));
    }
    let timeout = Duration::from_secs(svc.config.server.invoke_timeout_seconds.max(1));
    started.finish(&svc, &user, &mut tr, timeout).await?;
    let completion = tr.completion().ok_or_else(|| {
        OpenAiError::from(ApiError::internal("the run ended without an answer"))
            .in_conversation(&conversation)
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((CONVERSATION_HEADER, conversation))
        .json(completion))
}
