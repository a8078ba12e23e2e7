//! Scenario 7: scenario 3 over Server-Sent Events. `stream_sockets` programs each create a
//! conversation of `bench_stream` over HTTP, follow it with one `GET …/stream` and, in a loop,
//! send a message (`POST …/messages`) and read the run's events off the SSE stream until its
//! `RUN_FINISHED`. Events/s are reported beside scenario 3's WebSocket figure (target: at least
//! 0.8× it); nothing may be lost (every seq once, in order, up to the stored last seq).

use std::sync::Arc;

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use super::scenarios::{join, note_errors, STREAM_TEXT};
use super::server::{CpuProbe, Home};
use super::stats::{Tally, Window};
use super::{Options, Report, Row, Target, Unit};

/// One SSE message as the server writes it (`id: <seq>`, `event: <type>`, `data: <json>`).
struct Message {
    seq: u64,
    event: String,
    data: String,
}

/// A lean reader of the server's SSE: splits messages at the blank line and reads their
/// `id`, `event` and `data` lines, skipping comments (heartbeats). The load generator shares
/// the server's 2 cores, so it reads frames as cheaply as the WebSocket client does (typed,
/// no general-purpose parser); the integration tests read the same streams with a real SSE
/// parser (`eventsource-stream`).
struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
    at: usize,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: Vec::new(),
            at: 0,
        }
    }

    async fn next(&mut self) -> anyhow::Result<Message> {
        loop {
            if let Some(end) = find(&self.buf[self.at..], b"\n\n") {
                let block = &self.buf[self.at..self.at + end];
                self.at += end + 2;
                if let Some(m) = parse(block)? {
                    return Ok(m);
                }
                continue;
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let chunk = self
                .resp
                .chunk()
                .await?
                .ok_or_else(|| anyhow!("the stream ended"))?;
            self.buf.extend_from_slice(&chunk);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// One message block; `None` for a comment-only block.
fn parse(block: &[u8]) -> anyhow::Result<Option<Message>> {
    let (mut seq, mut event, mut data) = (None, String::new(), String::new());
    for line in block.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line)?;
        if let Some(v) = line.strip_prefix("id: ") {
            seq = Some(v.parse::<u64>()?);
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            // Only an error's data is read (for its message).
            if event == "RUN_ERROR" {
                data = v.to_owned();
            }
        } else if !line.starts_with(':') && !line.is_empty() {
            bail!("an unexpected SSE line: {line}");
        }
    }
    match seq {
        Some(seq) => Ok(Some(Message { seq, event, data })),
        None if event.is_empty() && data.is_empty() => Ok(None),
        None => bail!("an SSE message without an id"),
    }
}

/// One program: its conversation's last seq seen and seq gaps.
async fn program(
    addr: std::net::SocketAddr,
    w: Window,
    t: &mut Tally,
) -> anyhow::Result<(String, u64, u64)> {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/api/conversations");
    let created: Value = http
        .post(&base)
        .json(&json!({"assistant": "bench_stream", "title": "sse"}))
        .send()
        .await?
        .json()
        .await?;
    let conv = created["conversationId"]
        .as_str()
        .ok_or_else(|| anyhow!("no conversationId: {created}"))?
        .to_string();
    let resp = http.get(format!("{base}/{conv}/stream")).send().await?;
    if !resp.status().is_success() {
        bail!("stream: {}", resp.status());
    }
    let mut events = SseReader::new(resp);
    let (mut last, mut gaps) = (0u64, 0u64);
    while !w.over() {
        let r = http
            .post(format!("{base}/{conv}/messages"))
            .json(&json!({"content": STREAM_TEXT}))
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!("send: {}", r.status());
        }
        let mut n = 0u64;
        loop {
            let ev = events.next().await?;
            if ev.seq != last + 1 {
                gaps += 1;
            }
            last = ev.seq;
            n += 1;
            match ev.event.as_str() {
                "RUN_ERROR" => bail!("the run failed: {}", ev.data),
                "RUN_FINISHED" => break,
                _ => {}
            }
        }
        if w.ends_in(std::time::Instant::now()) {
            t.ops += 1;
            t.items += n;
        }
    }
    Ok((conv, last, gaps))
}

pub async fn sse(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let mut server = home.start()?;
    let addr = server.addr;
    let cpu = CpuProbe::start(&server);
    let w = Window::after(o.warmup, o.duration);
    let ends = Arc::new(parking_lot::Mutex::new(Vec::<(String, u64, u64)>::new()));
    let mut handles = Vec::new();
    for _ in 0..o.stream_sockets {
        let ends = ends.clone();
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            match program(addr, w, &mut t).await {
                Ok(end) => ends.lock().push(end),
                Err(e) => t.error(format!("{e:#}")),
            }
            t
        }));
    }
    let t = join(handles).await;
    let cpu = cpu.report();
    note_errors(report, "8 sse", &t);
    if let Some(e) = server.exited() {
        bail!("{e}");
    }
    let eps = t.items as f64 / w.seconds();
    let http = reqwest::Client::new();
    let (mut lost, mut gaps) = (0u64, 0u64);
    let ends = ends.lock().clone();
    for (conv, last, g) in &ends {
        gaps += g;
        let v: Value = http
            .get(format!("http://{addr}/api/conversations/{conv}"))
            .send()
            .await?
            .json()
            .await?;
        lost += v["lastSeq"].as_u64().unwrap_or(0).saturating_sub(*last);
    }
    if ends.len() != o.stream_sockets {
        report.problem(format!(
            "8 sse: {} of {} programs finished",
            ends.len(),
            o.stream_sockets
        ));
    }
    if gaps > 0 || lost > 0 {
        report.problem(format!("8 sse: {gaps} seq gap(s), {lost} event(s) lost"));
    }
    let ws = report
        .rows_of("3")
        .first()
        .map(|r| r.value)
        .filter(|v| *v > 0.0);
    let mut row = Row::new(
        "8",
        format!(
            "streamed events delivered over SSE, {} streams: events/s",
            o.stream_sockets
        ),
        eps,
        Unit::PerSec,
    );
    if let Some(ws) = ws {
        row = row.target(Target::AtLeast(0.8 * ws)).baseline(ws);
    }
    report.row(row);
    report.row(
        Row::new(
            "8",
            "events lost + seq gaps (all streams)".into(),
            (lost + gaps) as f64,
            Unit::Count,
        )
        .target(Target::AtMost(0.0)),
    );
    report.note(format!(
        "8: {} runs in the window over SSE (baseline column: scenario 3's WebSocket events/s of the same run, when it ran). {cpu}",
        t.ops
    ));
    Ok(())
}
