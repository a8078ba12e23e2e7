//! The caller's conversations: list, read, rename, delete, and their history (messages and the
//! event log). A user is required; a conversation of another user answers
//! `conversation_not_found`, exactly like one that does not exist. Reads go to the store;
//! changes (rename, delete) are messages to the conversation's actor, its only owner.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::views::{conversation_view, ConversationView, MessageView};
use super::{limit, owned_record, parse_body, query, ApiResult, Svc};
use crate::conversation::msg;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::auth::User;
use crate::gateway::ErrorBody;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this assistant's conversations.
    assistant: Option<String>,
    /// Page size, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of conversations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationList {
    pub items: Vec<ConversationView>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// The caller's conversations, newest activity first.
#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of conversations", body = ConversationList),
        (status = 400, description = "`bad_request`: a bad query string, limit or cursor", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn list_conversations(
    svc: Svc,
    req: HttpRequest,
    user: User,
) -> ApiResult {
    let q: ListQuery = query(&req)?;
    let page = svc
        .store
        .list_conversations(
            &user.0,
            q.assistant.as_deref(),
            limit(q.limit, 20)?,
            // An empty `cursor=` is the first page (the spec allows it).
            q.cursor.as_deref().filter(|c| !c.is_empty()),
        )
        .await
        .map_err(ApiError::from)?;
    let mut items = Vec::with_capacity(page.items.len());
    for r in &page.items {
        items.push(conversation_view(&svc, r).await);
    }
    Ok(HttpResponse::Ok().json(ConversationList {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// One of the caller's conversations.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The conversation's id")),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found` (also for other callers' conversations)", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn get_conversation(
    svc: Svc,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    let r = owned_record(&svc, &user.0, &id).await?;
    Ok(HttpResponse::Ok().json(conversation_view(&svc, &r).await))
}

/// The body of `PATCH /api/conversations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The new title, 1 to 200 characters once trimmed (so not only white space).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub title: String,
}

/// Rename a conversation.
#[utoipa::path(
    patch,
    path = "/api/conversations/{id}",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The conversation's id")),
    request_body = RenameBody,
    responses(
        (status = 200, description = "The renamed conversation", body = ConversationView),
        (status = 400, description = "`bad_request`: a bad body", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_args`: the title is empty or too long", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn rename_conversation(
    svc: Svc,
    id: web::Path<String>,
    body: web::Bytes,
    user: User,
) -> ApiResult {
    let b: RenameBody = parse_body(&body)?;
    let title = b.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgs,
            "title must have 1 to 200 characters",
        )
        .with_details(json!([{"field": "title", "message": "must have 1 to 200 characters"}])));
    }
    owned_record(&svc, &user.0, &id).await?;
    let addr = svc.registry.get_as(&id, &user.0).await?;
    addr.send(msg::Rename {
        owner: user.0.clone(),
        title,
    })
    .await
    .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    let r = owned_record(&svc, &user.0, &id).await?;
    Ok(HttpResponse::Ok().json(conversation_view(&svc, &r).await))
}

/// Delete a conversation, its messages, events and checkpoints; stops its actor.
#[utoipa::path(
    delete,
    path = "/api/conversations/{id}",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The conversation's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn delete_conversation(
    svc: Svc,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    owned_record(&svc, &user.0, &id).await?;
    let addr = svc.registry.get_as(&id, &user.0).await?;
    addr.send(msg::Delete { owner: user.0 })
        .await
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only messages before this `no` (the `nextCursor` of the previous page).
    before: Option<u64>,
    /// Page size, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageList {
    pub items: Vec<MessageView>,
    /// The `before` of the next page; `null` on the last.
    pub next_cursor: Option<u64>,
}

/// A conversation's messages, newest page first.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}/messages",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The conversation's id"), MessagesQuery),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 400, description = "`bad_request`: a bad query string or limit", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn messages(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    let q: MessagesQuery = query(&req)?;
    owned_record(&svc, &user.0, &id).await?;
    let n = limit(q.limit, 20)?;
    let list = svc
        .store
        .messages(&id, q.before, n)
        .await
        .map_err(ApiError::from)?;
    let next = if list.len() == n {
        list.last().map(|m| m.no)
    } else {
        None
    };
    let next = next.filter(|&no| no > 1);
    Ok(HttpResponse::Ok().json(MessageList {
        items: list.iter().map(MessageView::from).collect(),
        next_cursor: next,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this seq (default 0: from the start).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    since: Option<u64>,
    /// At most this many events, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// An event of the log, in the same frame as on the WebSocket.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventFrame {
    #[serde(rename = "type")]
    pub kind: EventFrameType,
    pub conversation_id: String,
    pub seq: u64,
    /// The event (`RUN_STARTED`, `TEXT_MESSAGE_CONTENT`, ...; see docs/protocol.md).
    pub event: Value,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventFrameType {
    Event,
}

/// A page of the event log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    pub items: Vec<EventFrame>,
    /// The seq of the last item; `null` when there is none.
    pub last_seq: Option<u64>,
}

/// A conversation's event log after `since` (the same frames as the WebSocket sends).
#[utoipa::path(
    get,
    path = "/api/conversations/{id}/events",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The conversation's id"), EventsQuery),
    responses(
        (status = 200, description = "The events", body = EventList),
        (status = 400, description = "`bad_request`: a bad query string or limit", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn events(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    let q: EventsQuery = query(&req)?;
    owned_record(&svc, &user.0, &id).await?;
    let n = match q.limit {
        None => 1000,
        Some(n) if (1..=10_000).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("limit must be between 1 and 10000")),
    };
    let list = svc
        .store
        .events_since(&id, since_param(q.since)?, n)
        .await
        .map_err(ApiError::from)?;
    let mut items = Vec::with_capacity(list.len());
    for (seq, json) in &list {
        let event: Value = serde_json::from_slice(json)
            .map_err(|e| ApiError::internal(format!("stored event {seq} is unreadable: {e}")))?;
        items.push(EventFrame {
            kind: EventFrameType::Event,
            conversation_id: id.to_string(),
            seq: *seq,
            event,
        });
    }
    Ok(HttpResponse::Ok().json(EventList {
        items,
        last_seq: list.last().map(|(s, _)| *s),
    }))
}

/// `since` as the spec gives it: an int64 of at least 0.
pub(super) fn since_param(since: Option<u64>) -> Result<u64, ApiError> {
    match since {
        Some(s) if s > i64::MAX as u64 => Err(ApiError::bad_request(
            "since must be at most 9223372036854775807",
        )),
        s => Ok(s.unwrap_or(0)),
    }
}
