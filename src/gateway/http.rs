//! The HTTP API (CONTRACT §3), the demo page's files, health and metrics.
//!
//! The routes are registered from the table in [`super`]; each handler describes itself for the
//! OpenAPI document with `#[utoipa::path]`, and every JSON body it sends or reads is a typed
//! struct deriving `ToSchema`, so the document is generated from what is on the wire.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use super::{auth, ErrorBody};
use crate::assistant::model::ArgSpec;
use crate::config::AuthMode;
use crate::conversation::{msg, Conversation, RunReport};
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;
use crate::store::{ConversationRecord, MessageRecord, RunStatus};

type Svc = web::Data<Arc<Services>>;
type ApiResult = Result<HttpResponse, ApiError>;

// ---- the demo page ---------------------------------------------------------------------------

/// The demo page's files, compiled into the binary.
const STATIC: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../static/index.html"),
    ),
    (
        "parley.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/parley.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/style.css"),
    ),
];

fn serve(name: &str) -> HttpResponse {
    match STATIC.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, body)) => HttpResponse::Ok()
            .content_type(*ty)
            .insert_header(("Cache-Control", "no-cache"))
            .body(*body),
        None => HttpResponse::NotFound().json(ErrorBody {
            error: ApiError::bad_request(format!("there is no file '{name}'")),
        }),
    }
}

/// The demo page.
#[utoipa::path(
    get,
    path = "/",
    tag = "demo page",
    responses((status = 200, description = "The demo page", body = String, content_type = "text/html"))
)]
pub(super) async fn index() -> HttpResponse {
    serve("index.html")
}

/// One of the demo page's files (`parley.js`, `app.js`, `style.css`, `index.html`).
#[utoipa::path(
    get,
    path = "/static/{file}",
    tag = "demo page",
    params(("file" = String, Path, description = "The file name, e.g. `parley.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/html"),
        )),
        (status = 404, description = "No such file (code `bad_request`)", body = ErrorBody),
    )
)]
pub(super) async fn static_file(path: web::Path<String>) -> HttpResponse {
    serve(&path.into_inner())
}

// ---- health, metrics, info -------------------------------------------------------------------

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses((status = 200, description = "The server is up", body = Health))
)]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: HealthStatus::Ok,
    })
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses((
        status = 200,
        description = "Metrics in the Prometheus text format 0.0.4",
        body = String,
        content_type = "text/plain; version=0.0.4"
    ))
)]
pub(super) async fn metrics(svc: Svc) -> HttpResponse {
    let text = svc.metrics.render(&svc.store.stats());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// `GET /api/info`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Always `parley`.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// True when the default LLM is the built-in offline model.
    pub builtin_model: bool,
    pub auth: AuthMode,
}

/// What this server is: version, whether it runs the built-in model, its auth mode.
#[utoipa::path(
    get,
    path = "/api/info",
    tag = "server",
    responses((status = 200, description = "About this server", body = ServerInfo))
)]
pub(super) async fn info(svc: Svc) -> HttpResponse {
    HttpResponse::Ok().json(ServerInfo {
        name: "parley".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        builtin_model: svc.builtin_model(),
        auth: svc.config.auth.mode,
    })
}

// ---- assistants ------------------------------------------------------------------------------

/// An assistant as listed by `GET /api/assistants`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistantSummary {
    pub id: String,
    pub title: String,
    pub description: String,
    pub welcome_message: Option<String>,
    /// Suggested first messages.
    pub prologues: Vec<String>,
    pub input_args: Vec<ArgSpec>,
    pub output_args: Vec<ArgSpec>,
    /// True when no node and no tool can pause a run: it can be called with `invoke`.
    pub automated: bool,
    /// True when its LLM is the built-in offline model.
    pub builtin_model: bool,
}

/// One assistant, `GET /api/assistants/{id}`: the summary plus its args as JSON Schema.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistantDetail {
    #[serde(flatten)]
    pub summary: AssistantSummary,
    /// The input args as a JSON Schema object.
    pub input_schema: Value,
    /// The output args as a JSON Schema object.
    pub output_schema: Value,
    /// Why it is not automated, e.g. `node 'confirm' (conversation_action)`; only for
    /// assistants that are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_points: Option<Vec<String>>,
}

fn assistant_summary(svc: &Services, a: &crate::assistant::Assistant) -> AssistantSummary {
    AssistantSummary {
        id: a.id.clone(),
        title: a.title.clone(),
        description: a.description.clone(),
        welcome_message: a.welcome_message.clone(),
        prologues: a.prologues.clone(),
        input_args: a.input_args.clone(),
        output_args: a.output_args.clone(),
        automated: a.automated,
        builtin_model: svc.engine.llms().is_builtin(&a.llm),
    }
}

/// Every assistant.
#[utoipa::path(
    get,
    path = "/api/assistants",
    tag = "assistants",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The assistants", body = [AssistantSummary]),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    )
)]
pub(super) async fn list_assistants(svc: Svc, req: HttpRequest) -> ApiResult {
    auth::authenticate(&svc.config.auth, &req)?;
    let list: Vec<AssistantSummary> = svc
        .catalog
        .iter()
        .map(|a| assistant_summary(&svc, a))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// One assistant, with its input and output args as JSON Schema.
#[utoipa::path(
    get,
    path = "/api/assistants/{id}",
    tag = "assistants",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The assistant's id")),
    responses(
        (status = 200, description = "The assistant", body = AssistantDetail),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant`", body = ErrorBody),
    )
)]
pub(super) async fn get_assistant(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    auth::authenticate(&svc.config.auth, &req)?;
    let a = svc.catalog.get(&id).ok_or_else(|| unknown_assistant(&id))?;
    Ok(HttpResponse::Ok().json(AssistantDetail {
        summary: assistant_summary(&svc, &a),
        input_schema: a.input_schema(),
        output_schema: crate::assistant::args_schema(&a.output_args),
        pause_points: (!a.automated).then(|| a.pause_points.clone()),
    }))
}

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

/// The body of `POST /api/assistants/{id}/invoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeBody {
    /// The user's message.
    pub content: String,
    /// The assistant's input args (see its `inputSchema`).
    #[serde(default)]
    pub args: Option<Value>,
    /// Continue this conversation (of the same assistant) instead of starting a new one.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// How long to wait for the run before it is cancelled (capped by the server's maximum).
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub timeout_seconds: Option<f64>,
}

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

/// Cancels a synchronous run if its HTTP request goes away before the answer.
/// How long a timed-out synchronous call waits for its cancelled run to be stored.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

struct CancelOnDrop {
    addr: Option<Addr<Conversation>>,
    owner: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.addr.take() {
            a.do_send(msg::Cancel {
                owner: self.owner.clone(),
            });
        }
    }
}

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
        (status = 200, description = "The run completed", body = InvokeResponse),
        (status = 400, description = "`bad_request`: a bad body, or a conversation of another assistant", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant` or `conversation_not_found`", body = ErrorBody),
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
pub(super) async fn invoke(
    svc: Svc,
    gw: web::Data<super::GatewayState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let a = svc.catalog.get(&id).ok_or_else(|| unknown_assistant(&id))?;
    if !a.automated {
        return Err(ApiError::new(
            ErrorCode::AssistantNotAutomated,
            format!(
                "assistant '{}' can pause for a person or the page, so it cannot be called synchronously: {}; use the WebSocket",
                a.id,
                a.pause_points.join(", ")
            ),
        )
        .with_details(json!({"pausePoints": a.pause_points})));
    }
    let b: InvokeBody = parse_body(&body)?;
    let s = &svc.config.server;
    if b.content.chars().count() > s.max_message_chars {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("content is longer than {} characters", s.max_message_chars),
        ));
    }
    a.check_args(b.args.as_ref())?;
    let timeout = match b.timeout_seconds {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgs,
                "timeoutSeconds must be a positive number",
            )
            .with_details(json!([{"field": "timeoutSeconds", "message": "must be > 0"}])))
        }
        Some(t) => t.min(s.invoke_timeout_max_seconds as f64),
        None => s.invoke_timeout_seconds as f64,
    };
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
    let addr = match &b.conversation_id {
        Some(cid) => {
            let rec = owned_record(&svc, &user.0, cid)?;
            if rec.assistant != a.id {
                return Err(ApiError::bad_request(format!(
                    "conversation '{cid}' belongs to assistant '{}', not '{}'",
                    rec.assistant, a.id
                )));
            }
            svc.registry.get(&svc, cid)?
        }
        None => svc.registry.create(&svc, &user.0, &a.id)?.1,
    };
    let (tx, mut rx) = oneshot::channel::<RunReport>();
    let m = msg::Send {
        owner: user.0.clone(),
        content: b.content,
        args: b.args,
        subscriber: None,
        report: Some(tx),
    };
    let accepted = addr
        .send(m)
        .await
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    let mut guard = CancelOnDrop {
        addr: Some(addr.clone()),
        owner: user.0.clone(),
    };
    // actix-web does not drop a handler when its client goes away, so watch the connection.
    let gone = client_gone(&req);
    let waited = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs_f64(timeout), &mut rx) => r,
        _ = gone => {
            // Dropping the guard cancels the run.
            return Err(ApiError::new(ErrorCode::Cancelled, "the client went away"));
        }
    };
    let report = match waited {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Err(ApiError::internal("the run ended without a report")),
        Err(_) => {
            // Cancel, and answer once the cancelled run is stored (its report comes after that
            // commit), so that the conversation the answer names can be read at once.
            guard.addr = None;
            let _ = addr
                .send(msg::Cancel {
                    owner: user.0.clone(),
                })
                .await;
            let _ = tokio::time::timeout(CANCEL_GRACE, rx).await;
            return Err(ApiError::new(
                ErrorCode::RunTimeout,
                format!("the run took longer than {timeout} s and was cancelled"),
            )
            .with_details(
                json!({"runId": accepted.run_id, "conversationId": accepted.conversation_id}),
            ));
        }
    };
    guard.addr = None;
    let output = report.result?;
    Ok(HttpResponse::Ok().json(InvokeResponse {
        run_id: report.run_id,
        conversation_id: report.conversation_id,
        status: InvokeStatus::Completed,
        output,
        messages: report.messages.iter().map(MessageView::from).collect(),
    }))
}

// ---- conversations ---------------------------------------------------------------------------

/// A message of a conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: String,
    /// Position in the conversation, from 1; the `before` cursor of the messages page.
    pub no: u64,
    /// `user`, `assistant`, ...
    pub role: String,
    pub content: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The run that wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Structured data attached to the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl From<&MessageRecord> for MessageView {
    fn from(m: &MessageRecord) -> Self {
        MessageView {
            id: m.id.clone(),
            no: m.no,
            role: m.role.clone(),
            content: m.content.clone(),
            created_at: rfc3339(m.created_at),
            run_id: m.run_id.clone(),
            data: m.data.clone(),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: String,
    /// The assistant's id.
    pub assistant: String,
    /// The first 20 characters of its first message until renamed.
    pub title: String,
    pub status: RunStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The input args it was started with.
    pub args: Value,
    /// Interrupts waiting for an answer (see docs/protocol.md).
    pub pending_interrupts: Vec<Value>,
    /// The seq of its last event.
    pub last_seq: u64,
    pub message_count: u64,
}

fn conversation_view(svc: &Services, r: &ConversationRecord) -> ConversationView {
    ConversationView {
        id: r.id.clone(),
        assistant: r.assistant.clone(),
        title: r.title.clone(),
        status: r.status,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        args: r.args.clone(),
        pending_interrupts: r.pending_interrupts.clone(),
        last_seq: svc.store.last_seq(&r.id).unwrap_or(r.last_seq),
        message_count: r.message_count,
    }
}

/// The record, if it is this user's (`conversation_not_found` otherwise: others' do not exist).
fn owned_record(svc: &Services, user: &str, id: &str) -> Result<ConversationRecord, ApiError> {
    match svc.store.get_conversation(id) {
        Ok(Some(r)) if r.owner == user => Ok(r),
        Ok(_) => Err(ApiError::conversation_not_found(id)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

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

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

fn limit(l: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match l {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("limit must be between 1 and 100")),
    }
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
pub(super) async fn list_conversations(svc: Svc, req: HttpRequest) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let q: ListQuery = query(&req)?;
    let page = svc
        .store
        .list_conversations(
            &user.0,
            q.assistant.as_deref(),
            limit(q.limit, 20)?,
            q.cursor.as_deref(),
        )
        .map_err(|e| match e {
            crate::store::StoreError::InvalidCursor => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        })?;
    let items = page
        .items
        .iter()
        .map(|r| conversation_view(&svc, r))
        .collect();
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
pub(super) async fn get_conversation(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let r = owned_record(&svc, &user.0, &id)?;
    Ok(HttpResponse::Ok().json(conversation_view(&svc, &r)))
}

/// The body of `PATCH /api/conversations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The new title, 1 to 200 characters once trimmed.
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
pub(super) async fn rename_conversation(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let b: RenameBody = parse_body(&body)?;
    let title = b.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgs,
            "title must have 1 to 200 characters",
        )
        .with_details(json!([{"field": "title", "message": "must have 1 to 200 characters"}])));
    }
    owned_record(&svc, &user.0, &id)?;
    let addr = svc.registry.get(&svc, &id)?;
    addr.send(msg::Rename {
        owner: user.0.clone(),
        title,
    })
    .await
    .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    let r = owned_record(&svc, &user.0, &id)?;
    Ok(HttpResponse::Ok().json(conversation_view(&svc, &r)))
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
pub(super) async fn delete_conversation(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    owned_record(&svc, &user.0, &id)?;
    let addr = svc.registry.get(&svc, &id)?;
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
pub(super) async fn messages(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let q: MessagesQuery = query(&req)?;
    owned_record(&svc, &user.0, &id)?;
    let n = limit(q.limit, 20)?;
    let list = svc
        .store
        .messages(&id, q.before, n)
        .map_err(|e| ApiError::internal(e.to_string()))?;
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
pub(super) async fn events(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let q: EventsQuery = query(&req)?;
    owned_record(&svc, &user.0, &id)?;
    let n = match q.limit {
        None => 1000,
        Some(n) if (1..=10_000).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("limit must be between 1 and 10000")),
    };
    let list = svc
        .store
        .events_since(&id, q.since.unwrap_or(0), n)
        .map_err(|e| ApiError::internal(e.to_string()))?;
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

/// The file descriptor of a connection's socket, kept in the connection's data to notice a
/// client that goes away while a synchronous run is pending (see [`on_connect`]). Only the
/// number: a duplicate per connection would double the descriptors of every idle socket.
#[derive(Clone, Copy)]
pub struct ConnFd(std::os::fd::RawFd);

/// `HttpServer::on_connect` hook: remember the TCP socket's descriptor.
pub fn on_connect(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ConnFd(sock.as_raw_fd()));
    }
}

/// Resolves when the request's client has closed its connection (checked every 200 ms by
/// peeking at the socket: end-of-stream means gone). Never resolves if that cannot be known.
async fn client_gone(req: &HttpRequest) {
    let Some(ConnFd(fd)) = req.conn_data::<ConnFd>().copied() else {
        return std::future::pending().await;
    };
    // SAFETY: a handler runs inside the HTTP dispatcher that owns this connection's socket, so
    // while the request is being handled the descriptor is open and is this connection's. The
    // duplicate made here is owned, and lives only as long as this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return std::future::pending().await;
    };
    let socket = std::net::TcpStream::from(owned);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let mut buf = [0u8; 1];
        // The socket is non-blocking (tokio's; the flag is shared by the duplicate).
        match socket.peek(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
