//! `POST /api/assistants/{id}/invoke` with `Accept: text/event-stream` (CONTRACT §6): the same
//! call, streamed. The checks are `invoke`'s; then the conversation's [`EventStream`] is
//! opened *before* the message is sent (so nothing of the run is missed), and the events from
//! then on (the user's message, then the run) go out as SSE messages ([`sse_message`]) until
//! the run's `RUN_FINISHED` or `RUN_ERROR`.
//!
//! The run is cancelled when the client goes away (the response is dropped: [`CancelOnDrop`])
//! or the timeout passes (the stream then ends with the run's `RUN_ERROR` code `cancelled`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::connection::CancelOnDrop;
use super::sse::sse_message;
use super::ApiResult;
use crate::conversation::{msg, Handle};
use crate::error::ApiError;
use crate::gateway::auth::User;
use crate::gateway::stream::{ends_run, EventStream, Item, Next};
use crate::services::Services;

/// Whether the caller asked for the streamed form.
pub fn wants_events(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

struct Run {
    events: EventStream,
    run_id: String,
    guard: CancelOnDrop,
    deadline: tokio::time::Instant,
    cancelled: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Run {
    async fn chunk(&mut self) -> Option<bytes::Bytes> {
        loop {
            if self.done {
                // Finished: nothing to cancel when the response is dropped.
                self.guard.addr = None;
                return None;
            }
            let next = tokio::select! {
                n = self.events.next() => n,
                _ = tokio::time::sleep_until(self.deadline), if !self.cancelled => {
                    self.cancelled = true;
                    if let Some(a) = &self.guard.addr {
                        a.do_send(msg::Cancel { owner: self.guard.owner.clone() });
                    }
                    continue;
                }
            };
            match next {
                Ok(Next::Event(Item { seq, json, .. })) => {
                    // Everything after the mark (the user's message, then the run), up to
                    // this run's end.
                    let ours = || {
                        serde_json::from_slice::<Value>(&json)
                            .ok()
                            .and_then(|v| v.get("runId").and_then(Value::as_str).map(str::to_owned))
                            .is_some_and(|r| r == self.run_id)
                    };
                    self.done = ends_run(&json) && ours();
                    return Some(sse_message(seq, &json));
                }
                Ok(Next::Lagged | Next::Closed) | Err(_) => return None,
            }
        }
    }
}

/// Send the message and stream its run.
#[allow(clippy::too_many_arguments)]
pub(super) async fn streamed(
    svc: &Arc<Services>,
    user: &User,
    conversation: String,
    addr: Handle,
    content: String,
    args: Option<Value>,
    timeout: f64,
    permit: OwnedSemaphorePermit,
) -> ApiResult {
    // Live from the durable mark on (the first opening tells the mark).
    let high = EventStream::open(svc, &user.0, &conversation, 0)
        .await?
        .high_at_open();
    let events = EventStream::open(svc, &user.0, &conversation, high).await?;
    let accepted = addr
        .send(msg::Send {
            owner: user.0.clone(),
            content,
            args,
            subscriber: None,
            report: None,
            on_busy: None,
            idempotency: None,
        })
        .await
        .map_err(|_| ApiError::internal("the conversation stopped; try again"))??;
    let run = Run {
        events,
        run_id: accepted.run_id,
        guard: CancelOnDrop {
            addr: Some(addr),
            owner: user.0.clone(),
        },
        deadline: tokio::time::Instant::now() + Duration::from_secs_f64(timeout),
        cancelled: false,
        done: false,
        _permit: permit,
    };
    let body = futures_util::stream::unfold(run, |mut r| async move {
        let chunk = r.chunk().await?;
        Some((Ok::<_, actix_web::Error>(chunk), r))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header(("x-conversation-id", accepted.conversation_id))
        .streaming(body))
}
