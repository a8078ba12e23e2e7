//! The HTTP API (CONTRACT §3), the demo page's files, health and metrics.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::auth;
use crate::conversation::{msg, Conversation, RunReport};
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;
use crate::store::{ConversationRecord, MessageRecord};

type Svc = web::Data<Arc<Services>>;
type ApiResult = Result<HttpResponse, ApiError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/static/{file}", web::get().to(static_file))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/info", web::get().to(info))
        .route("/api/assistants", web::get().to(list_assistants))
        .route("/api/assistants/{id}", web::get().to(get_assistant))
        .route("/api/assistants/{id}/invoke", web::post().to(invoke))
        .route("/api/conversations", web::get().to(list_conversations))
        .route("/api/conversations/{id}", web::get().to(get_conversation))
        .route(
            "/api/conversations/{id}",
            web::patch().to(rename_conversation),
        )
        .route(
            "/api/conversations/{id}",
            web::delete().to(delete_conversation),
        )
        .route("/api/conversations/{id}/messages", web::get().to(messages))
        .route("/api/conversations/{id}/events", web::get().to(events));
}

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
        None => HttpResponse::NotFound().json(json!({
            "error": {"code": "bad_request", "message": format!("there is no file '{name}'")}
        })),
    }
}

async fn index() -> HttpResponse {
    serve("index.html")
}

async fn static_file(path: web::Path<String>) -> HttpResponse {
    serve(&path.into_inner())
}

// ---- health, metrics, info -------------------------------------------------------------------

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn metrics(svc: Svc) -> HttpResponse {
    let text = svc.metrics.render(&svc.store.stats());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

async fn info(svc: Svc) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "parley",
        "version": env!("CARGO_PKG_VERSION"),
        "builtinModel": svc.builtin_model(),
        "auth": svc.config.auth.mode,
    }))
}

// ---- assistants ------------------------------------------------------------------------------

fn assistant_json(svc: &Services, a: &crate::assistant::Assistant) -> Value {
    let mut v = a.summary();
    v["builtinModel"] = json!(svc.engine.llms().is_builtin(&a.llm));
    v
}

async fn list_assistants(svc: Svc, req: HttpRequest) -> ApiResult {
    auth::authenticate(&svc.config.auth, &req)?;
    let list: Vec<Value> = svc
        .catalog
        .iter()
        .map(|a| assistant_json(&svc, a))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn get_assistant(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    auth::authenticate(&svc.config.auth, &req)?;
    let a = svc.catalog.get(&id).ok_or_else(|| unknown_assistant(&id))?;
    let mut v = assistant_json(&svc, &a);
    v["inputSchema"] = a.input_schema();
    v["outputSchema"] = crate::assistant::args_schema(&a.output_args);
    if !a.automated {
        v["pausePoints"] = json!(a.pause_points);
    }
    Ok(HttpResponse::Ok().json(v))
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InvokeBody {
    content: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
}

/// Cancels a synchronous run if its HTTP request goes away before the answer.
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

async fn invoke(svc: Svc, req: HttpRequest, id: web::Path<String>, body: web::Bytes) -> ApiResult {
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
        svc.limits.new_conversation(&user.0)?;
    }
    svc.limits.message(&user.0)?;
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
    let (tx, rx) = oneshot::channel::<RunReport>();
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
    let report = match tokio::time::timeout(Duration::from_secs_f64(timeout), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Err(ApiError::internal("the run ended without a report")),
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::RunTimeout,
                format!("the run took longer than {timeout} s and was cancelled"),
            )
            .with_details(
                json!({"runId": accepted.run_id, "conversationId": accepted.conversation_id}),
            ))
        }
    };
    guard.addr = None;
    let output = report.result?;
    Ok(HttpResponse::Ok().json(json!({
        "runId": report.run_id,
        "conversationId": report.conversation_id,
        "status": "completed",
        "output": output,
        "messages": report.messages.iter().map(message_json).collect::<Vec<_>>(),
    })))
}

// ---- conversations ---------------------------------------------------------------------------

fn message_json(m: &MessageRecord) -> Value {
    let mut v = json!({
        "id": m.id,
        "no": m.no,
        "role": m.role,
        "content": m.content,
        "createdAt": rfc3339(m.created_at),
    });
    if let Some(r) = &m.run_id {
        v["runId"] = json!(r);
    }
    if let Some(d) = &m.data {
        v["data"] = d.clone();
    }
    v
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

fn conversation_json(svc: &Services, r: &ConversationRecord) -> Value {
    let last_seq = svc.store.last_seq(&r.id).unwrap_or(r.last_seq);
    json!({
        "id": r.id,
        "assistant": r.assistant,
        "title": r.title,
        "status": r.status,
        "createdAt": rfc3339(r.created_at),
        "updatedAt": rfc3339(r.updated_at),
        "args": r.args,
        "pendingInterrupts": r.pending_interrupts,
        "lastSeq": last_seq,
        "messageCount": r.message_count,
    })
}

/// The record, if it is this user's (`conversation_not_found` otherwise: others' do not exist).
fn owned_record(svc: &Services, user: &str, id: &str) -> Result<ConversationRecord, ApiError> {
    match svc.store.get_conversation(id) {
        Ok(Some(r)) if r.owner == user => Ok(r),
        Ok(_) => Err(ApiError::conversation_not_found(id)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    assistant: Option<String>,
    limit: Option<usize>,
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

async fn list_conversations(svc: Svc, req: HttpRequest) -> ApiResult {
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
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|r| conversation_json(&svc, r))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"items": items, "nextCursor": page.next_cursor})))
}

async fn get_conversation(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    let r = owned_record(&svc, &user.0, &id)?;
    Ok(HttpResponse::Ok().json(conversation_json(&svc, &r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    title: String,
}

async fn rename_conversation(
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
    Ok(HttpResponse::Ok().json(conversation_json(&svc, &r)))
}

async fn delete_conversation(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
    let user = auth::authenticate(&svc.config.auth, &req)?;
    owned_record(&svc, &user.0, &id)?;
    let addr = svc.registry.get(&svc, &id)?;
    addr.send(msg::Delete { owner: user.0 })
        .await
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn messages(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
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
    Ok(HttpResponse::Ok().json(json!({
        "items": list.iter().map(message_json).collect::<Vec<_>>(),
        "nextCursor": next,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

async fn events(svc: Svc, req: HttpRequest, id: web::Path<String>) -> ApiResult {
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
        items.push(
            json!({"type": "event", "conversationId": id.as_str(), "seq": seq, "event": event}),
        );
    }
    Ok(HttpResponse::Ok().json(json!({"items": items, "lastSeq": list.last().map(|(s, _)| *s)})))
}
