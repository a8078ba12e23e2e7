//! The clients: one HTTP/1.1 connection per task (hyper, keep-alive) and one WebSocket per
//! task (tokio-tungstenite). Frames are read with a borrowed, partial parse: the load generator
//! shares the CPU with the server, so it decodes only what it checks.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single answer may take before the client calls it an error.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: addr.to_string(),
        })
    }

    /// POST a JSON body; the status and the whole response body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let resp = tokio::time::timeout(PATIENCE, self.sender.send_request(req))
            .await
            .map_err(|_| anyhow!("no answer in {PATIENCE:?}"))??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// The parts of a server frame the load generator looks at.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub seq: u64,
    #[serde(rename = "conversationId", default, borrow)]
    pub conversation: Option<Cow<'a, str>>,
    #[serde(rename = "lastSeq", default)]
    pub last_seq: Option<u64>,
    #[serde(default, borrow)]
    pub event: Option<EventHead<'a>>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct EventHead<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

#[derive(Deserialize)]
pub struct Outcome {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub interrupts: Vec<InterruptHead>,
}

#[derive(Deserialize)]
pub struct InterruptHead {
    pub id: String,
}

/// How a run segment ended, as seen on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Success,
    Interrupt(String),
}

/// What a frame-and-run exchange returned.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub end: RunEnd,
    /// Event frames received during the exchange.
    pub events: u64,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that follows one conversation and checks its seqs.
pub struct WsClient {
    ws: Ws,
    prefix: String,
    next_id: u64,
    /// The conversation this socket follows (learnt from the first ack).
    pub conversation: Option<String>,
    /// The last event seq seen on this socket.
    pub last_seq: u64,
    /// Events whose seq was not `last_seq + 1`.
    pub seq_gaps: u64,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<WsClient> {
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .map_err(|_| anyhow!("WebSocket connect timed out"))?
        .context("WebSocket connect")?;
        Ok(WsClient {
            ws,
            prefix: uuid::Uuid::now_v7().simple().to_string(),
            next_id: 1,
            conversation: None,
            last_seq: 0,
            seq_gaps: 0,
        })
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next text frame (pings are answered by tungstenite while reading), before `deadline`.
    pub async fn next_text(
        &mut self,
        deadline: Instant,
    ) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
        loop {
            let m = tokio::time::timeout_at(deadline.into(), self.ws.next())
                .await
                .map_err(|_| anyhow!("no answer in {PATIENCE:?}"))?
                .ok_or_else(|| anyhow!("the socket ended"))??;
            match m {
                Message::Text(t) => return Ok(t),
                Message::Close(c) => bail!("the server closed the socket: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Read frames, answering pings, until `stop` resolves; errors if the socket ends first.
    pub async fn idle_until(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                m = self.ws.next() => match m {
                    Some(Ok(Message::Close(c))) => bail!("the server closed the socket: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the socket ended"),
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Frame ids must be unique per user across sockets: the server answers a repeated
    /// `(user, id)` of `send`/`resume` with the first answer (a retried frame), applying nothing.
    fn fresh_id(&mut self) -> String {
        let id = format!("{}-{}", self.prefix, self.next_id);
        self.next_id += 1;
        id
    }

    /// Track an event frame's seq. Returns whether it ended the run segment (and how).
    fn on_event(&mut self, f: &Frame<'_>) -> Option<anyhow::Result<RunEnd>> {
        if f.seq != self.last_seq + 1 {
            self.seq_gaps += 1;
        }
        self.last_seq = f.seq;
        let ev = f.event.as_ref()?;
        match ev.ty.as_ref() {
            "RUN_FINISHED" => Some(match &ev.outcome {
                Some(o) if o.ty == "interrupt" => o
                    .interrupts
                    .first()
                    .map(|i| RunEnd::Interrupt(i.id.clone()))
                    .ok_or_else(|| anyhow!("an interrupt outcome without interrupts")),
                _ => Ok(RunEnd::Success),
            }),
            "RUN_ERROR" => Some(Err(anyhow!("RUN_ERROR in the run"))),
            _ => None,
        }
    }

    /// Send `frame` (an id is added) and read until its ack and the end of the run segment it
    /// started. An `error` answer or a `RUN_ERROR` is an error.
    pub async fn exchange(&mut self, mut frame: Value) -> anyhow::Result<Exchange> {
        let id = self.fresh_id();
        frame["id"] = json!(id);
        self.send_text(frame.to_string()).await?;
        let mut acked = false;
        let mut end: Option<RunEnd> = None;
        let mut events = 0u64;
        let deadline = Instant::now() + PATIENCE;
        while !(acked && end.is_some()) {
            let text = self.next_text(deadline).await.with_context(|| {
                format!(
                    "waiting for the ack ({}) and the run's end ({}) in conversation {:?} after seq {}",
                    if acked { "received" } else { "missing" },
                    if end.is_some() { "received" } else { "missing" },
                    self.conversation,
                    self.last_seq
                )
            })?;
            let f: Frame<'_> = serde_json::from_str(text.as_str())
                .with_context(|| format!("unreadable frame {text}"))?;
            match f.ty.as_ref() {
                "event" => {
                    if let (Some(mine), Some(c)) = (&self.conversation, &f.conversation) {
                        if mine.as_str() != c.as_ref() {
                            bail!("an event of another conversation: {text}");
                        }
                    }
                    events += 1;
                    if let Some(r) = self.on_event(&f) {
                        end = Some(r?);
                    }
                }
                "ack" if f.id.as_ref().and_then(|v| v.as_str()) == Some(id.as_str()) => {
                    acked = true;
                    if self.conversation.is_none() {
                        self.conversation = f.conversation.map(|c| c.into_owned());
                    }
                }
                "error" => bail!(
                    "error {}: {}",
                    f.code.unwrap_or_default(),
                    f.message.unwrap_or_default()
                ),
                _ => {}
            }
        }
        Ok(Exchange {
            end: end.unwrap_or(RunEnd::Success),
            events,
        })
    }

    /// Send `frame` (an id is added) and wait for its ack only; returns the ack's `lastSeq`.
    pub async fn ack(&mut self, mut frame: Value) -> anyhow::Result<Option<u64>> {
        let id = self.fresh_id();
        frame["id"] = json!(id);
        self.send_text(frame.to_string()).await?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.next_text(deadline).await?;
            let f: Frame<'_> = serde_json::from_str(text.as_str())
                .with_context(|| format!("unreadable frame {text}"))?;
            match f.ty.as_ref() {
                "ack" if f.id.as_ref().and_then(|v| v.as_str()) == Some(id.as_str()) => {
                    return Ok(f.last_seq)
                }
                "error" => bail!(
                    "error {}: {}",
                    f.code.unwrap_or_default(),
                    f.message.unwrap_or_default()
                ),
                _ => {}
            }
        }
    }

    /// Start a conversation with `assistant` and wait for its first run segment.
    pub async fn start(&mut self, assistant: &str, content: &str) -> anyhow::Result<Exchange> {
        self.exchange(json!({"type": "send", "assistant": assistant, "content": content}))
            .await
    }

    /// Send a message in the followed conversation and wait for the run segment.
    pub async fn send(&mut self, content: &str) -> anyhow::Result<Exchange> {
        let conv = self
            .conversation
            .clone()
            .ok_or_else(|| anyhow!("no conversation yet"))?;
        self.exchange(json!({"type": "send", "conversationId": conv, "content": content}))
            .await
    }

    /// Answer a pending interrupt and wait for the run segment it resumes.
    pub async fn resume(&mut self, interrupt: &str, action: &str) -> anyhow::Result<Exchange> {
        let conv = self
            .conversation
            .clone()
            .ok_or_else(|| anyhow!("no conversation yet"))?;
        self.exchange(json!({"type": "resume", "conversationId": conv, "interruptId": interrupt, "action": action}))
            .await
    }

    /// Bare baseline: ask the bare endpoint for `n` frames and read them all. Returns `n`.
    pub async fn bare_burst(&mut self, n: u64) -> anyhow::Result<u64> {
        self.send_text(n.to_string()).await?;
        let mut got = 0;
        let deadline = Instant::now() + PATIENCE;
        while got < n {
            let text = self.next_text(deadline).await?;
            let f: Frame<'_> = serde_json::from_str(text.as_str())
                .with_context(|| format!("unreadable frame {text}"))?;
            if f.ty != "event" {
                bail!("unexpected bare frame {text}");
            }
            got += 1;
        }
        Ok(got)
    }
}
