//! Scenario 7: the OpenAI-compatible front. Streamed chat completions (`stream: true`, read to
//! `data: [DONE]`) at `invoke_connections` keep-alive connections, beside synchronous invokes of
//! the same assistant on the same server in the same run; then, at one client, the time from
//! sending to the first content chunk, beside the WebSocket's time from sending to the first
//! assistant `TEXT_MESSAGE_CONTENT`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use serde_json::{json, Value};

use super::client::{WsClient, PATIENCE};
use super::scenarios::{http_load, note_errors};
use super::server::Home;
use super::stats::{Samples, Window};
use super::{Options, Report, Row, Target, Unit};

const CHAT: &[u8] =
    br#"{"model":"bench_auto","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

pub async fn openai(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let server = home.start()?;
    let addr = server.addr;
    let w = Window::after(o.warmup, o.duration);
    let inv = http_load(
        addr,
        "/api/assistants/bench_auto/invoke",
        Bytes::from_static(br#"{"content":"hi"}"#),
        o.invoke_connections,
        w,
        r#""status":"completed""#,
    )
    .await;
    note_errors(report, "9 invoke", &inv);
    let inv_rps = inv.ops as f64 / w.seconds();
    let w = Window::after(o.warmup, o.duration);
    let chat = http_load(
        addr,
        "/v1/chat/completions",
        Bytes::from_static(CHAT),
        o.invoke_connections,
        w,
        "data: [DONE]",
    )
    .await;
    note_errors(report, "9 openai", &chat);
    let chat_rps = chat.ops as f64 / w.seconds();
    report.row(Row::new(
        "9",
        format!(
            "invoke (same run), {} connections: requests/s",
            o.invoke_connections
        ),
        inv_rps,
        Unit::PerSec,
    ));
    report.row(Row::new(
        "9",
        format!(
            "streamed chat completions, {} connections: requests/s",
            o.invoke_connections
        ),
        chat_rps,
        Unit::PerSec,
    ));
    report.row(
        Row::new(
            "9",
            "streamed chat completions ÷ invoke throughput".into(),
            if inv_rps > 0.0 {
                chat_rps / inv_rps
            } else {
                0.0
            },
            Unit::Ratio,
        )
        .target(Target::AtLeast(0.8)),
    );

    let rounds = if o.mode == "smoke" { 5 } else { 100 };
    let mut http = Samples::default();
    let mut ws = Samples::default();
    let client = reqwest::Client::new();
    let mut sock = WsClient::connect(addr, "/ws").await?;
    for _ in 0..rounds {
        http.push(first_content_http(&client, addr).await?);
        ws.push(first_content_ws(&mut sock).await?);
    }
    sock.close().await;
    let (h50, w50) = (http.percentile_ms(50.0), ws.percentile_ms(50.0));
    report.row(
        Row::new(
            "9",
            "time to first content chunk, 1 client: p50 / p99".into(),
            http.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(h50),
    );
    report.row(
        Row::new(
            "9",
            "WebSocket time to first TEXT_MESSAGE_CONTENT, 1 client: p50 / p99".into(),
            ws.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(w50),
    );
    report.row(
        Row::new(
            "9",
            "first content: p50 chat completion − p50 WebSocket".into(),
            h50 - w50,
            Unit::Ms,
        )
        .target(Target::AtMost(0.5)),
    );
    report.note(format!(
        "9: {} streamed completions and {} invokes in their windows (bench_auto, a new conversation each); first content over {rounds} rounds each (the HTTP client opens a new request per round, the WebSocket is one socket).",
        chat.ops, inv.ops
    ));
    server.stop()?;
    Ok(())
}

/// From sending a streamed completion to the first chunk with `content`; reads to the end.
async fn first_content_http(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(CHAT)
        .timeout(PATIENCE)
        .send()
        .await?;
    if resp.status() != 200 {
        bail!("chat completion: HTTP {}", resp.status());
    }
    let mut buf = Vec::new();
    let mut first = None;
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        if first.is_none() && buf.windows(11).any(|w| w == br#""content":""#) {
            first = Some(began.elapsed());
        }
    }
    if !buf.ends_with(b"data: [DONE]\n\n") {
        bail!("the stream did not end with [DONE]");
    }
    first.ok_or_else(|| anyhow!("no content chunk"))
}

/// From sending a WebSocket `send` (new conversation) to the first assistant text delta; reads
/// to the end of the run.
async fn first_content_ws(c: &mut WsClient) -> anyhow::Result<Duration> {
    let began = Instant::now();
    c.send_text(json!({"type": "send", "assistant": "bench_auto", "content": "hi"}).to_string())
        .await?;
    let deadline = began + PATIENCE;
    let mut assistant: Option<String> = None;
    let mut first = None;
    loop {
        let text = c.next_text(deadline).await?;
        let f: Value = serde_json::from_str(text.as_str())?;
        if f["type"] == "error" {
            bail!("error frame {f}");
        }
        let ev = &f["event"];
        match ev["type"].as_str() {
            Some("TEXT_MESSAGE_START") if ev["role"] == "assistant" => {
                assistant = ev["messageId"].as_str().map(str::to_owned);
            }
            Some("TEXT_MESSAGE_CONTENT")
                if first.is_none() && assistant.as_deref() == ev["messageId"].as_str() =>
            {
                first = Some(began.elapsed());
            }
            Some("RUN_FINISHED") => break,
            Some("RUN_ERROR") => bail!("run error {ev}"),
            _ => {}
        }
    }
    first.ok_or_else(|| anyhow!("no assistant text"))
}
