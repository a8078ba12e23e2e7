//! `GET /api/conversations/{id}/stream`: a conversation's event log as Server-Sent Events
//! (CONTRACT §6), a translation of [`EventStream`] (DESIGN: fronts are translations).
//!
//! - Each event is one SSE message, exactly `id: <seq>\nevent: <type>\ndata: <event json>\n\n`
//!   ([`sse_message`]); `data` is the stored event itself (what a WebSocket frame carries
//!   under `event`), so the seqs and JSON are the socket's.
//! - Start: after `Last-Event-ID` if the header is there (it wins), else after `?since`, else
//!   from the start (`since = 0`). Stored events first, then live ones, each once, in order.
//! - A comment line (`: heartbeat`) every `server.sse_heartbeat_seconds` while nothing else is
//!   sent, so proxies keep the connection open.
//! - `?until=idle` ends the stream once the conversation is paused, finished or failed: at
//!   the end of the replay when no run was active at opening, else after the first live
//!   `RUN_FINISHED` / `RUN_ERROR`.
//! - Bounds: the same queue as a socket's; a reader too slow for it is dropped
//!   ([`Next::Lagged`]): the response ends and the client resumes with `Last-Event-ID`,
//!   losing nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{owned_record, query, ApiResult, Svc};
use crate::error::ApiError;
use crate::gateway::auth::User;
use crate::gateway::stream::{ends_run, event_type, EventStream, Item, Next};
use crate::gateway::ErrorBody;

/// When a stream ends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// Once the conversation is paused, finished or failed.
    Idle,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only events after this seq (default 0). The `Last-Event-ID` header wins over it.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    since: Option<u64>,
    /// `idle`: end the stream once the conversation is paused, finished or failed.
    #[param(inline)]
    until: Option<Until>,
}

/// One Server-Sent Events message, as an SSE parser hands it to a client: `id` (the seq),
/// `event` (the event's type) and `data` (the event's JSON). The spec's schema of a
/// `text/event-stream` response is the schema of each of its messages.
#[derive(Debug, utoipa::ToSchema)]
pub struct SseMessage {
    /// The seq of the stored event.
    pub id: Option<String>,
    /// The event's type (`RUN_STARTED`, …).
    pub event: Option<String>,
    /// The event, as JSON text.
    pub data: String,
}

/// One SSE message for an event.
pub fn sse_message(seq: u64, event_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event_json.len() + 64);
    push_message(&mut out, seq, event_json);
    Bytes::from(out)
}

/// Append one SSE message for an event to `out`.
fn push_message(out: &mut Vec<u8>, seq: u64, event_json: &[u8]) {
    use std::io::Write as _;
    let kind = event_type(event_json);
    let kind = kind.as_deref().unwrap_or("message");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "id: {seq}\nevent: {kind}\ndata: ");
    // Stored events are compact JSON: one line. Guard anyway: a newline would end `data`.
    if event_json.contains(&b'\n') {
        out.extend(
            event_json
                .iter()
                .map(|&b| if b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(event_json);
    }
    out.extend_from_slice(b"\n\n");
}

/// At most this many bytes of messages go into one chunk of the response: the events already
/// waiting when one is handed out are written together (one chunk, one write), not one chunk
/// each.
const CHUNK_BYTES: usize = 64 * 1024;

/// Where a stream starts: `Last-Event-ID` (wins), else `since`, else 0.
fn start_after(req: &HttpRequest, since: Option<u64>) -> Result<u64, ApiError> {
    match req.headers().get("Last-Event-ID") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&s| s <= i64::MAX as u64)
            .ok_or_else(|| {
                ApiError::bad_request("Last-Event-ID must be a seq (a whole number up to 2^63-1)")
            }),
        None => super::conversations::since_param(since),
    }
}

/// The state of one response.
struct Sse {
    events: EventStream,
    until_idle: bool,
    heartbeat: Duration,
    /// Fires a heartbeat `heartbeat` after the last chunk. Armed once and moved only when it
    /// fires (to `heartbeat` after the last chunk, if one went out since), not once per event.
    beat: Pin<Box<tokio::time::Sleep>>,
    last_sent: tokio::time::Instant,
    done: bool,
}

impl Sse {
    fn new(events: EventStream, until_idle: bool, heartbeat: Duration) -> Sse {
        let now = tokio::time::Instant::now();
        Sse {
            events,
            until_idle,
            heartbeat,
            beat: Box::pin(tokio::time::sleep_until(now + heartbeat)),
            last_sent: now,
            done: false,
        }
    }

    /// Whether the stream ends before the next event (`?until=idle` with no run at opening:
    /// the end of the replay).
    fn idle_end(&self) -> bool {
        self.until_idle && !self.events.running_at_open() && self.events.replayed()
    }

    /// The next chunk of the response (one or more messages, or a heartbeat), or `None` when it
    /// ends.
    async fn chunk(&mut self) -> Option<Bytes> {
        if self.done || self.idle_end() {
            return None;
        }
        let next = loop {
            tokio::select! {
                n = self.events.next() => break n,
                _ = &mut self.beat => {
                    let due = self.last_sent + self.heartbeat;
                    if tokio::time::Instant::now() >= due {
                        self.last_sent = tokio::time::Instant::now();
                        let again = self.last_sent + self.heartbeat;
                        self.beat.as_mut().reset(again);
                        return Some(Bytes::from_static(b": heartbeat\n\n"));
                    }
                    self.beat.as_mut().reset(due);
                }
            }
        };
        let mut out = Vec::new();
        match next {
            Ok(Next::Event(Item { seq, json, .. })) => self.push(&mut out, seq, &json),
            Ok(Next::Lagged) => {
                tracing::debug!("an SSE reader fell behind; its response ends");
                return None;
            }
            Ok(Next::Closed) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "an SSE stream could not read the store");
                return None;
            }
        }
        // The events already waiting go out in the same chunk.
        while !self.done && !self.idle_end() && out.len() < CHUNK_BYTES {
            let Some(Item { seq, json, .. }) = self.events.try_next() else {
                break;
            };
            self.push(&mut out, seq, &json);
        }
        self.last_sent = tokio::time::Instant::now();
        Some(Bytes::from(out))
    }

    /// Append one event's message; notes the end of an `?until=idle` stream.
    fn push(&mut self, out: &mut Vec<u8>, seq: u64, json: &[u8]) {
        let live = seq > self.events.high_at_open();
        if self.until_idle && self.events.running_at_open() && live && ends_run(json) {
            self.done = true;
        }
        push_message(out, seq, json);
    }
}

/// Stream a conversation's events as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/api/conversations/{id}/stream",
    tag = "conversations",
    security((), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, nullable = false, description = "Resume after this seq (wins over `since`)"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id: <seq>`, `event: <type>`, `data: <event JSON>` per event; `: heartbeat` comments", content_type = "text/event-stream", body = SseMessage),
        (status = 400, description = "`bad_request`: a bad query string or Last-Event-ID", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn stream(
    svc: Svc,
    req: HttpRequest,
    id: web::Path<String>,
    user: User,
) -> ApiResult {
    let q: StreamQuery = query(&req)?;
    let since = start_after(&req, q.since)?;
    owned_record(&svc, &user.0, &id).await?;
    let svc: Arc<_> = svc.into_inner().as_ref().clone();
    let events = EventStream::open(&svc, &user.0, &id, since).await?;
    let state = Sse::new(
        events,
        q.until == Some(Until::Idle),
        Duration::from_secs(svc.config.server.sse_heartbeat_seconds.max(1)),
    );
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = s.chunk().await?;
        Some((Ok::<_, actix_web::Error>(chunk), s))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_contract_format() {
        let m = sse_message(7, br#"{"type":"RUN_STARTED","runId":"r"}"#);
        assert_eq!(
            &m[..],
            b"id: 7\nevent: RUN_STARTED\ndata: {\"type\":\"RUN_STARTED\",\"runId\":\"r\"}\n\n"
        );
        let m = sse_message(1, b"{\"a\":\n1}");
        assert_eq!(&m[..], b"id: 1\nevent: message\ndata: {\"a\": 1}\n\n");
    }
}
