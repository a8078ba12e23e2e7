//! The AG-UI front (CONTRACT §7): `POST /agui/{assistant}` runs an assistant for
//! `@ag-ui/client`'s `HttpAgent` (and CopilotKit), `GET /agui/{assistant}/threads/{threadId}/events`
//! rejoins a thread. A translation, not a new engine: a request becomes one `msg::Send`,
//! `msg::Resume` or `msg::Cancel` to the conversation's actor, and the answer is the
//! conversation's event log read through [`EventStream`], translated by [`translate`].
//!
//! | file | what it is |
//! |---|---|
//! | `mod.rs` | the two handlers and their response streams |
//! | `input.rs` | `RunAgentInput`, the `threadId` rule, [`input::plan`]: what a request asks (pure) |
//! | `translate.rs` | [`translate::Translator`]: stored Parley events → AG-UI events (pure) |
//! | `wire.rs` | [`wire::AgEvent`]: the AG-UI events as types borrowing their strings |
//! | `sse.rs` | [`sse::SseWriter`]: events serialised straight into one chunk |
//!
//! # Ordering
//!
//! The stream is subscribed (the actor answers its durable mark `H`) *before* the message or
//! answer is sent, so every event of the run is `> H` and none is missed; events `<= H` are
//! older runs and are skipped. The response ends after the run's `RUN_FINISHED` or
//! `RUN_ERROR`. Errors before anything is written are HTTP errors (§3); a stale or missing
//! resume is `RUN_STARTED` + `RUN_ERROR interrupt_not_pending` (what AG-UI clients expect).
//!
//! # Rejoining
//!
//! The events route translates the whole log from seq 1 (a translation needs the run's
//! beginning) and writes what is after `since` (`Last-Event-ID` wins); a rejoin in the middle of
//! a run starts with that run's `RUN_STARTED` and the starts of whatever is still open.

pub mod input;
pub mod sse;
pub mod translate;
pub mod wire;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use crate::conversation::msg;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::auth::User;
use crate::gateway::stream::{EventStream, Next};
use crate::gateway::ErrorBody;
use crate::llm::Role;
use crate::services::Services;
use crate::store::ConversationRecord;
use input::{check_thread_id, plan, Held, Plan, RunAgentInput};
use sse::SseWriter;
use translate::Translator;

type Svc = web::Data<Arc<Services>>;

/// Stored messages read to decide whether the client's newest user message is new.
const HISTORY_LOOKBACK: usize = 200;

fn unknown_assistant(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownAssistant,
        format!("there is no assistant '{id}'"),
    )
}

/// The conversation behind a thread: `None` when it does not exist yet; another user's, or one
/// of another assistant, is refused.
async fn thread_record(
    svc: &Services,
    user: &str,
    assistant: &str,
    thread: &str,
) -> Result<Option<ConversationRecord>, ApiError> {
    match svc.store.get_conversation(thread).await {
        Ok(Some(r)) if r.owner != user => Err(ApiError::conversation_not_found(thread)),
        Ok(Some(r)) if r.assistant != assistant => Err(ApiError::bad_request(format!(
            "thread '{thread}' belongs to assistant '{}'",
            r.assistant
        ))),
        Ok(r) => Ok(r),
        Err(e) => Err(ApiError::from(e)),
    }
}

async fn held(svc: &Services, rec: &ConversationRecord) -> Result<Held, ApiError> {
    let pending = rec.pending_interrupts.clone();
    let recent = svc
        .store
        .recent_messages(&rec.id, HISTORY_LOOKBACK)
        .await
        .map_err(ApiError::from)?;
    let user_messages = recent
        .into_iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content)
        .collect();
    Ok(Held {
        pending,
        user_messages,
    })
}

/// Run an assistant for an AG-UI client.
#[utoipa::path(
    post,
    path = "/agui/{assistant}",
    tag = "agui",
    security((), ("bearer" = [])),
    params(("assistant" = String, Path, description = "The assistant id")),
    request_body = RunAgentInput,
    responses(
        (status = 200, description = "`text/event-stream` of AG-UI events (`id:` is the stored seq)", content_type = "text/event-stream", body = crate::gateway::http::sse::SseMessage),
        (status = 400, description = "`bad_request`: not a RunAgentInput, a bad threadId, a thread of another assistant", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant`, or `conversation_not_found` (another user's thread)", body = ErrorBody),
        (status = 409, description = "`conversation_busy`", body = ErrorBody),
        (status = 422, description = "`invalid_args`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the per-user limits of messages and new conversations", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn run(
    svc: Svc,
    gw: web::Data<crate::gateway::GatewayState>,
    user: User,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let assistant = path.into_inner();
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request needs a RunAgentInput body",
        ));
    }
    let input: RunAgentInput = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a RunAgentInput: {e}")))?;
    check_thread_id(&input.thread_id)?;
    if crate::gateway::auth::assistant_for(&svc, &user, &assistant).is_none() {
        return Err(unknown_assistant(&assistant));
    }
    let args = match &input.state {
        Value::Object(m) if !m.is_empty() => Some(input.state.clone()),
        Value::Object(_) | Value::Null => None,
        _ => {
            return Err(ApiError::bad_request(
                "state must be an object (the input args)",
            ))
        }
    };
    let thread = input.thread_id.clone();
    let rec = thread_record(&svc, &user.0, &assistant, &thread).await?;
    let the_plan = match &rec {
        Some(r) => plan(&input, &held(&svc, r).await?),
        None => plan(&input, &Held::default()),
    };
    let refuse = |message: String| {
        sse_response(refusal(
            &thread,
            &input.run_id,
            ErrorCode::InterruptNotPending,
            &message,
        ))
    };
    let content = match the_plan {
        Plan::Refuse(m) => return Ok(refuse(m)),
        Plan::Nothing => {
            let mut w = SseWriter::default();
            w.message(
                None,
                &json!({"type": "RUN_STARTED", "threadId": thread, "runId": input.run_id}),
            );
            w.message(
                None,
                &json!({"type": "RUN_FINISHED", "threadId": thread, "runId": input.run_id,
                    "outcome": {"type": "success"}}),
            );
            return Ok(sse_response(w.take()));
        }
        Plan::Send(c) => Some(c),
        other => {
            // An answer to a pause: the conversation exists.
            gw.limits.message(&user.0)?;
            return answer(&svc, &user.0, &thread, rec.map_or(0, |r| r.last_seq), other)
                .await
                .or_else(|e| match e.code {
                    ErrorCode::InterruptNotPending => Ok(refuse(e.message)),
                    _ => Err(e),
                });
        }
    };
    let content = content.unwrap_or_default();
    if rec.is_none() {
        gw.limits.new_conversation(&user.0)?;
    }
    gw.limits.message(&user.0)?;
    let (stream, subscriber, addr) = match &rec {
        // A new thread: the subscriber goes with the first message (nothing to replay).
        None => {
            let addr = svc.registry.create_with_id(&user.0, &assistant, &thread)?;
            let (stream, subscriber) = EventStream::for_new(&svc, addr.clone(), &thread);
            (stream, Some(subscriber), addr)
        }
        Some(r) => {
            let stream = EventStream::open(&svc, &user.0, &thread, r.last_seq).await?;
            (stream, None, svc.registry.get(&thread).await?)
        }
    };
    addr.send(msg::Send {
        owner: user.0.clone(),
        content,
        args,
        subscriber,
        report: None,
        on_busy: None,
        idempotency: None,
    })
    .await
    .map_err(|_| ApiError::internal("the conversation stopped; send again"))??;
    Ok(run_response(stream, Translator::new(&thread)))
}

/// Resume or cancel a paused conversation, then stream the run that follows.
async fn answer(
    svc: &Arc<Services>,
    owner: &str,
    thread: &str,
    since: u64,
    plan: Plan,
) -> Result<HttpResponse, ApiError> {
    let stream = EventStream::open(svc, owner, thread, since).await?;
    let addr = svc.registry.get(thread).await?;
    let stopped = |_| ApiError::internal("the conversation stopped; answer again");
    match plan {
        Plan::Resume {
            interrupt_id,
            action,
            value,
        } => {
            addr.send(msg::Resume {
                owner: owner.to_owned(),
                interrupt_id,
                action,
                value,
                idempotency: None,
            })
            .await
            .map_err(stopped)??;
        }
        _ => {
            addr.send(msg::Cancel {
                owner: owner.to_owned(),
            })
            .await
            .map_err(stopped)??;
        }
    }
    Ok(run_response(stream, Translator::new(thread)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The last seq received (`Last-Event-ID` wins).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    since: Option<u64>,
    /// `idle`: end the stream once no run is open.
    #[param(pattern = "^idle$")]
    until: Option<String>,
}

/// Rejoin a thread: its stored runs translated to AG-UI after `since`, then live events.
#[utoipa::path(
    get,
    path = "/agui/{assistant}/threads/{threadId}/events",
    tag = "agui",
    security((), ("bearer" = [])),
    params(
        ("assistant" = String, Path, description = "The assistant id"),
        ("threadId" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "The thread (conversation) id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, nullable = false, description = "The last seq received; wins over `since`"),
        EventsQuery
    ),
    responses(
        (status = 200, description = "`text/event-stream` of AG-UI events", content_type = "text/event-stream", body = crate::gateway::http::sse::SseMessage),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`unknown_assistant` or `conversation_not_found`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn events(
    svc: Svc,
    user: User,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (assistant, thread) = path.into_inner();
    check_thread_id(&thread)?;
    if crate::gateway::auth::assistant_for(&svc, &user, &assistant).is_none() {
        return Err(unknown_assistant(&assistant));
    }
    let q = web::Query::<EventsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?
        .into_inner();
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a seq"))
        })
        .transpose()?;
    let since = header.or(q.since).unwrap_or(0);
    let until_idle = match q.until.as_deref() {
        None => false,
        Some("idle") => true,
        Some(_) => return Err(ApiError::bad_request("until must be 'idle'")),
    };
    if thread_record(&svc, &user.0, &assistant, &thread)
        .await?
        .is_none()
    {
        return Err(ApiError::conversation_not_found(&thread));
    }
    let stream = EventStream::open(&svc, &user.0, &thread, 0).await?;
    let state = Rejoin {
        stream,
        t: Translator::new(&thread),
        since,
        until_idle,
        started: false,
        out: SseWriter::default(),
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if !s.out.is_empty() {
                return Some((Ok::<_, actix_web::Error>(s.out.take()), s));
            }
            if s.done {
                return None;
            }
            if s.until_idle && s.stream.replayed() && !s.t.run_open() && !s.stream.running_at_open()
            {
                return None;
            }
            s.step().await;
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body))
}

struct Rejoin {
    stream: EventStream,
    t: Translator,
    since: u64,
    until_idle: bool,
    started: bool,
    /// What was translated and not yet handed to the response (emptied before each step).
    out: SseWriter,
    done: bool,
}

impl Rejoin {
    async fn step(&mut self) {
        match self.stream.next().await {
            Ok(Next::Event(item)) => {
                if item.seq <= self.since {
                    self.t.skip_json(item.seq, &item.json);
                    return;
                }
                if !self.started {
                    self.started = true;
                    let (since, out) = (self.since, &mut self.out);
                    self.t.reopen_with(&mut |a| out.event(Some(since), &a));
                    // A rejoin's opening is not the end of a run.
                    let _ = out.take_ended();
                }
                self.t.write_item(&item, &mut self.out);
                if self.out.take_ended() && self.until_idle && self.stream.replayed() {
                    self.done = true;
                }
            }
            Ok(Next::Lagged) | Ok(Next::Closed) | Err(_) => self.done = true,
        }
    }
}

/// The response of a run: its translated events until `RUN_FINISHED` or `RUN_ERROR`.
fn run_response(stream: EventStream, t: Translator) -> HttpResponse {
    let since = stream.high_at_open();
    let state = (stream, t, SseWriter::default(), false);
    let body = futures_util::stream::unfold(
        state,
        move |(mut stream, mut t, mut out, mut done)| async move {
            loop {
                if !out.is_empty() {
                    // Everything translated so far goes out as one chunk.
                    let b = out.take();
                    return Some((Ok::<_, actix_web::Error>(b), (stream, t, out, done)));
                }
                if done {
                    return None;
                }
                match stream.next().await {
                    Ok(Next::Event(item)) if item.seq > since => {
                        t.write_item(&item, &mut out);
                        // The events already waiting join this chunk.
                        let mut events = 1;
                        while !out.ended() && events < CHUNK_EVENTS {
                            let Some(item) = stream.try_next() else {
                                break;
                            };
                            if item.seq > since {
                                t.write_item(&item, &mut out);
                                events += 1;
                            }
                        }
                        done = out.take_ended();
                    }
                    Ok(Next::Event(..)) => {}
                    Ok(Next::Lagged) | Ok(Next::Closed) | Err(_) => {
                        out.message(None, &json!({"type": "RUN_ERROR", "code": "stream_lost", "message":
                            "the stream fell behind or the conversation stopped; rejoin through GET /agui/{assistant}/threads/{threadId}/events"}));
                        done = true;
                    }
                }
            }
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

/// At most about this many stored events go into one chunk of a run's response.
const CHUNK_EVENTS: usize = 256;

/// `RUN_STARTED` then `RUN_ERROR` (a request refused after the stream's start, in AG-UI terms).
fn refusal(thread: &str, run_id: &str, code: ErrorCode, message: &str) -> Bytes {
    let mut w = SseWriter::default();
    w.message(
        None,
        &json!({"type": "RUN_STARTED", "threadId": thread, "runId": run_id}),
    );
    w.message(
        None,
        &json!({"type": "RUN_ERROR", "code": code.as_str(), "message": message}),
    );
    w.take()
}

/// A response known whole before it starts, streamed as one chunk (like a run's).
fn sse_response(chunk: Bytes) -> HttpResponse {
    let body = futures_util::stream::once(std::future::ready(Ok::<_, actix_web::Error>(chunk)));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}
