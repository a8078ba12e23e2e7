//! Driving one request: find or create the conversation, subscribe to its event log (noting the
//! durable mark), send the command, then hand the run's events — those after the mark — to a
//! [`Translator`] until the run finishes, pauses or fails (`gateway::stream::ends_run`).
//!
//! Order of the checks (the first failing one answers): the content's length and the args; the
//! per-user rate limits; the named conversation is the caller's and of this model; then the
//! actor accepts the command (`conversation_busy`, `interrupt_not_pending`, …). Nothing is
//! stored before the actor accepts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::error::OpenAiError;
use super::request::Command;
use super::translate::{Output, Translator};
use crate::assistant::Assistant;
use crate::conversation::{msg, Handle};
use crate::engine::Event;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::auth::User;
use crate::gateway::stream::{EventStream, Item, Next};
use crate::gateway::GatewayState;
use crate::services::Services;

/// A command accepted by its conversation, and the stream of what follows it.
pub(super) struct Started {
    pub conversation: String,
    stream: EventStream,
    /// Events up to here happened before the command.
    mark: u64,
}

/// Check, find or create the conversation, subscribe, and send `command`.
pub(super) async fn start(
    svc: &Arc<Services>,
    gw: &GatewayState,
    user: &User,
    a: &Assistant,
    named: Option<String>,
    command: Command,
    args: Option<Value>,
) -> Result<Started, OpenAiError> {
    check_input(svc, a, &command, args.as_ref())?;
    let (conversation, new) = match named {
        Some(cid) => {
            owned_by(svc, user, a, &cid).await?;
            (cid, false)
        }
        None => (create(svc, gw, user, a, &command)?, true),
    };
    let in_conv = |e: ApiError| OpenAiError::from(e).in_conversation(&conversation);
    gw.limits.message(&user.0).map_err(in_conv)?;
    // Replay only what the mark holds beyond the stored end (a new conversation has nothing).
    let since = if new {
        0
    } else {
        svc.store
            .last_seq(&conversation)
            .await
            .map_err(|e| in_conv(ApiError::internal(e.to_string())))?
    };
    let stream = EventStream::open(svc, &user.0, &conversation, since)
        .await
        .map_err(in_conv)?;
    let mark = stream.high_at_open();
    let addr = svc
        .registry
        .get_as(&conversation, &user.0)
        .await
        .map_err(|e| in_conv(e.into()))?;
    dispatch(&addr, user, command, args)
        .await
        .map_err(in_conv)?;
    Ok(Started {
        conversation,
        stream,
        mark,
    })
}

/// The content's length and the args (a `send` only).
fn check_input(
    svc: &Services,
    a: &Assistant,
    command: &Command,
    args: Option<&Value>,
) -> Result<(), OpenAiError> {
    let Command::Send { content } = command else {
        return Ok(());
    };
    let max = svc.config.server.max_message_chars;
    if content.chars().count() > max {
        return Err(OpenAiError::from(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the user message is longer than {max} characters"),
        ))
        .param("messages"));
    }
    let max_args = svc.config.server.max_args_bytes;
    if args.is_some_and(|v| v.to_string().len() > max_args) {
        return Err(OpenAiError::from(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("parley.args is larger than {max_args} bytes"),
        ))
        .param("parley.args"));
    }
    a.check_args(args)
        .map_err(|e| OpenAiError::from(e).param("parley.args"))?;
    Ok(())
}

/// A new conversation for a request that names none (a `send` only: a resume must name the
/// conversation whose interrupt it answers).
fn create(
    svc: &Services,
    gw: &GatewayState,
    user: &User,
    a: &Assistant,
    command: &Command,
) -> Result<String, OpenAiError> {
    if matches!(command, Command::Resume { .. }) {
        return Err(OpenAiError::from(ApiError::bad_request(
            "a tool message answers an interrupt of a conversation: name it with the X-Parley-Conversation-Id header or parley.conversationId",
        ))
        .param("messages"));
    }
    gw.limits.new_conversation(&user.0)?;
    Ok(svc
        .registry
        .create(&user.0, &a.id)
        .map_err(ApiError::from)?
        .0)
}

/// Sends `command` to the conversation's actor; its refusal (`conversation_busy`, …) is the
/// error.
async fn dispatch(
    addr: &Handle,
    user: &User,
    command: Command,
    args: Option<Value>,
) -> Result<(), ApiError> {
    let owner = user.0.clone();
    let accepted = match command {
        Command::Send { content } => {
            addr.send(msg::Send {
                owner,
                content,
                args,
                subscriber: None,
                report: None,
                on_busy: None,
                idempotency: None,
            })
            .await
        }
        Command::Resume {
            interrupt_id,
            action,
            value,
        } => {
            addr.send(msg::Resume {
                owner,
                interrupt_id,
                action,
                value,
                idempotency: None,
            })
            .await
        }
    };
    accepted
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))?
        .map_err(ApiError::from)?;
    Ok(())
}

/// The conversation must be the caller's (`conversation_not_found` otherwise) and this model's.
async fn owned_by(
    svc: &Services,
    user: &User,
    a: &Assistant,
    cid: &str,
) -> Result<(), OpenAiError> {
    let rec = match svc.store.get_conversation(cid).await {
        Ok(Some(r)) if r.owner == user.0 => r,
        Ok(_) => {
            return Err(
                OpenAiError::from(ApiError::conversation_not_found(cid)).param("conversationId")
            )
        }
        Err(e) => return Err(ApiError::internal(e.to_string()).into()),
    };
    if rec.assistant != a.id {
        return Err(OpenAiError::from(ApiError::bad_request(format!(
            "conversation '{cid}' belongs to model '{}', not '{}'",
            rec.assistant, a.id
        )))
        .param("model"));
    }
    Ok(())
}

/// The outputs of one event: the event the actor delivered with it when it came live from
/// this process (no parse), else the event parsed from its stored JSON; an unreadable stored
/// event is skipped.
fn translate(tr: &mut Translator, item: &Item) -> Vec<Output> {
    if let Some(ev) = item.typed.as_deref() {
        return tr.push(ev);
    }
    match serde_json::from_slice::<Event>(&item.json) {
        Ok(ev) => tr.push(&ev),
        Err(e) => {
            tracing::warn!(seq = item.seq, error = %e, "skipping an unreadable stored event");
            Vec::new()
        }
    }
}

impl Started {
    /// The next outputs of the run (empty once the translator is done).
    pub async fn next(&mut self, tr: &mut Translator) -> Vec<Output> {
        while !tr.is_done() {
            let next = match self.stream.next().await {
                Ok(n) => n,
                Err(e) => return tr_error(tr, e),
            };
            let item = match next {
                Next::Event(item) => item,
                Next::Lagged => {
                    return tr_error(
                        tr,
                        ApiError::internal("the answer fell too far behind the run; read the conversation's events to catch up"),
                    )
                }
                Next::Closed => {
                    return tr_error(tr, ApiError::internal("the conversation stopped"))
                }
            };
            if item.seq <= self.mark {
                continue;
            }
            let out = translate(tr, &item);
            if !out.is_empty() {
                return out;
            }
        }
        Vec::new()
    }

    /// The outputs of the events already waiting, without waiting for more (at most
    /// [`READY_EVENTS`] events): they join the chunk of the response being written.
    fn ready(&mut self, tr: &mut Translator) -> Vec<Output> {
        let mut out = Vec::new();
        for _ in 0..READY_EVENTS {
            if tr.is_done() {
                break;
            }
            let Some(item) = self.stream.try_next() else {
                break;
            };
            if item.seq > self.mark {
                out.extend(translate(tr, &item));
            }
        }
        out
    }

    /// Wait for the whole run (non-streamed answers); cancel it after `timeout`.
    pub async fn finish(
        mut self,
        svc: &Arc<Services>,
        user: &User,
        tr: &mut Translator,
        timeout: Duration,
    ) -> Result<(), OpenAiError> {
        let conversation = self.conversation.clone();
        let run = async {
            while !tr.is_done() {
                self.next(tr).await;
            }
        };
        if tokio::time::timeout(timeout, run).await.is_err() {
            if let Ok(addr) = svc.registry.get(&conversation).await {
                let _ = addr
                    .send(msg::Cancel {
                        owner: user.0.clone(),
                    })
                    .await;
            }
            return Err(OpenAiError::from(ApiError::new(
                ErrorCode::RunTimeout,
                format!(
                    "the run took longer than {} s and was cancelled",
                    timeout.as_secs_f64()
                ),
            ))
            .in_conversation(&conversation));
        }
        match tr.error() {
            Some(e) => Err(OpenAiError::from(e.clone()).in_conversation(&conversation)),
            None => Ok(()),
        }
    }

    /// The run as SSE bytes: `data: <chunk>` messages, an error as `data: {"error": …}`, then
    /// `data: [DONE]`.
    pub fn into_sse(
        self,
        tr: Translator,
    ) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
        let state = (self, tr, VecDeque::<Bytes>::new(), false);
        futures_util::stream::unfold(state, |(mut s, mut tr, mut queue, mut ended)| async move {
            loop {
                if !queue.is_empty() {
                    // Everything ready goes out as one chunk of the response.
                    let b = crate::gateway::stream::concat(&mut queue);
                    return Some((Ok(b), (s, tr, queue, ended)));
                }
                if ended {
                    return None;
                }
                for out in s.next(&mut tr).await {
                    queue.push_back(sse(&out));
                }
                for out in s.ready(&mut tr) {
                    queue.push_back(sse(&out));
                }
                if tr.is_done() {
                    queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    ended = true;
                }
            }
        })
    }
}

/// At most this many waiting events are added to one chunk of a streamed answer.
const READY_EVENTS: usize = 256;

fn tr_error(tr: &mut Translator, e: ApiError) -> Vec<Output> {
    tr.push(&Event::RunError {
        run_id: String::new(),
        code: e.code,
        message: e.message,
    })
}

/// One output as an SSE message.
pub fn sse(out: &Output) -> Bytes {
    let json = match out {
        Output::Chunk(c) => serde_json::to_vec(c),
        Output::Error(e) => serde_json::to_vec(&super::error::body_of(e, None)),
    }
    .unwrap_or_default();
    let mut b = Vec::with_capacity(json.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(&json);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}
