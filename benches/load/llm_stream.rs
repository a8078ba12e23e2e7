//! Scenario 11 (#18): the LLM path under load. A fake OpenAI-compatible server in this process
//! streams every answer at 50 tokens/s (`llm_tokens` tokens, the first at once); `llm_streams`
//! conversations stream from it at the same time, each to its own WebSocket, `llm_rounds`
//! answers each (a new conversation per answer; the starts are spread over one answer's length,
//! so about `llm_streams` answers are in flight at any time).
//!
//! Measured: every token delivered (each answer's text is exactly the fake's), seqs contiguous,
//! the server's CPU, and the time to first token through Parley (from the `send` frame to the
//! first assistant `TEXT_MESSAGE_CONTENT`) minus the time to first token from the fake directly
//! (from the request to the first content chunk, the same number of streams at once, measured
//! just before): p50 and p99 (target ≤ 1 ms added at p99).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{WsClient, PATIENCE};
use super::scenarios::{join, note_errors};
use super::server::{CpuProbe, Extra, Home};
use super::stats::Tally;
use super::{Options, Report, Row, Target, Unit};

/// 50 tokens per second.
const TOKEN_EVERY: Duration = Duration::from_millis(20);

/// The fake's answer: `tokens` words, one per chunk.
fn answer(tokens: usize) -> Vec<String> {
    (0..tokens).map(|i| format!("tok{i} ")).collect()
}

/// Streams in flight now, and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(n, Relaxed);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Relaxed);
    }
}

// ---- the fake OpenAI-compatible server ------------------------------------------------------

/// Accepts chat completion requests and streams `tokens` content chunks at 50/s each, then a
/// finish chunk, usage and `[DONE]`; one request per connection (`Connection: close`). The
/// chunks are made once: the fake shares the 2 cores with the server it measures, and 50,000
/// `json!` + `format!` a second were ~12 % of its CPU.
async fn fake_openai(tokens: usize) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let chunks: Arc<Vec<Vec<u8>>> = Arc::new(
        answer(tokens)
            .iter()
            .map(|w| {
                let chunk = json!({"id": "fake", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
                format!("data: {chunk}\n\n").into_bytes()
            })
            .collect(),
    );
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let _ = fake_answer(sock, &chunks).await;
            });
        }
    });
    Ok((addr, task))
}

async fn fake_answer(mut sock: TcpStream, chunks: &[Vec<u8>]) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    read_request(&mut sock).await?;
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut tick = tokio::time::interval(TOKEN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for chunk in chunks {
        tick.tick().await;
        sock.write_all(chunk).await?;
    }
    let done = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": chunks.len(), "total_tokens": chunks.len() + 1}});
    sock.write_all(format!("data: {done}\n\ndata: {usage}\n\ndata: [DONE]\n\n").as_bytes())
        .await?;
    sock.shutdown().await?;
    Ok(())
}

/// Reads one request: the head, then `Content-Length` bytes of body.
async fn read_request(sock: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            bail!("the client closed before a whole request");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("request head too long");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            bail!("the client closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

// ---- the two measurements -------------------------------------------------------------------

/// One answer read from the fake directly: the time to its first content chunk; checks that
/// every token arrived.
async fn direct_once(
    client: &reqwest::Client,
    fake: SocketAddr,
    words: &[String],
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut resp = client
        .post(format!("http://{fake}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"fake","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .timeout(PATIENCE + TOKEN_EVERY * words.len() as u32)
        .send()
        .await?;
    let mut buf = Vec::new();
    let mut first = None;
    while let Some(c) = resp.chunk().await? {
        buf.extend_from_slice(&c);
        if first.is_none() && buf.windows(11).any(|w| w == br#""content":""#) {
            first = Some(began.elapsed());
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let got = text.matches(r#""content":"tok"#).count();
    if got != words.len() || !text.ends_with("data: [DONE]\n\n") {
        bail!("direct: {got} of {} tokens, or no [DONE]", words.len());
    }
    first.ok_or_else(|| anyhow!("direct: no content chunk"))
}

/// The parts of a server frame that scenario 11 reads, borrowed from the frame's text: 50,000
/// frames a second go through this on the cores the server uses, and a `Value` per frame cost
/// the load generator ~10 % of its CPU.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "conversationId", default)]
    conversation_id: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    event: Option<Event<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    role: Option<&'a str>,
    #[serde(rename = "messageId", default)]
    message_id: Option<&'a str>,
    /// Text for a `TEXT_MESSAGE_CONTENT`, other JSON for other events (`STATE_DELTA`).
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
}

/// One answer through Parley on socket `c`: a `send` starting a new conversation, read to its
/// `RUN_FINISHED`. Returns the time to the first assistant text and the tokens delivered;
/// checks the text, the ack and the seqs.
async fn parley_once(
    c: &mut WsClient,
    id: String,
    words: &[String],
) -> anyhow::Result<(Duration, usize)> {
    let began = Instant::now();
    let quoted = Value::from(id.as_str()).to_string();
    c.send_text(
        json!({"type": "send", "id": id, "assistant": "bench_fake", "content": "hi"}).to_string(),
    )
    .await?;
    let deadline = began + PATIENCE + TOKEN_EVERY * words.len() as u32;
    let mut conversation: Option<String> = None;
    let mut acked = false;
    let mut last_seq = 0u64;
    let mut assistant: Option<String> = None;
    let mut text = String::new();
    let mut first = None;
    loop {
        let raw = c.next_text(deadline).await.with_context(|| {
            format!("waiting for the end of the answer in {conversation:?} after seq {last_seq}")
        })?;
        let f: Frame = serde_json::from_str(raw.as_str())
            .with_context(|| format!("a frame that is not a server frame: {}", raw.as_str()))?;
        match f.kind {
            "ack" if f.id.map(RawValue::get) == Some(quoted.as_str()) => {
                acked = true;
                conversation = f.conversation_id.map(str::to_owned);
                continue;
            }
            "error" => bail!("error frame {}", raw.as_str()),
            "event" => {}
            _ => continue,
        }
        // Events of this round's conversation only (a socket stays subscribed to the earlier
        // ones, which are finished and quiet).
        if let (Some(mine), Some(theirs)) = (&conversation, f.conversation_id) {
            if mine != theirs {
                continue;
            }
        }
        let seq = f.seq.unwrap_or(0);
        if seq != last_seq + 1 {
            bail!("seq {seq} after {last_seq}");
        }
        last_seq = seq;
        let Some(ev) = f.event else { continue };
        match ev.kind {
            "TEXT_MESSAGE_START" if ev.role == Some("assistant") => {
                assistant = ev.message_id.map(str::to_owned);
            }
            "TEXT_MESSAGE_CONTENT"
                if assistant.is_some() && assistant.as_deref() == ev.message_id =>
            {
                if first.is_none() {
                    first = Some(began.elapsed());
                }
                if let Some(delta) = ev.delta {
                    text.push_str(&serde_json::from_str::<String>(delta.get())?);
                }
            }
            "RUN_FINISHED" => break,
            "RUN_ERROR" => bail!("RUN_ERROR {}", raw.as_str()),
            _ => {}
        }
    }
    if !acked {
        bail!("the run ended before its ack");
    }
    let expected: String = words.concat();
    let delivered = text.split_whitespace().count();
    if text != expected {
        bail!(
            "the answer differs from the fake's: {delivered} of {} tokens",
            words.len()
        );
    }
    let first = first.ok_or_else(|| anyhow!("no assistant text"))?;
    Ok((first, delivered))
}

/// `n` tasks, task `i` starting at `i × spread / n`, each running `round` `rounds` times.
async fn spread<F, Fut>(n: usize, spread: Duration, round: F) -> Tally
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = t0 + spread.mul_f64(i as f64 / n as f64);
        let fut = round(i);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            fut.await
        }));
    }
    join(handles).await
}

pub async fn llm_stream(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = o.llm_streams;
    let words = Arc::new(answer(o.llm_tokens));
    let length = TOKEN_EVERY * o.llm_tokens as u32;
    let (fake, fake_task) = fake_openai(o.llm_tokens).await?;

    // The fake directly.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let gauge = Arc::new(Gauge::default());
    let rounds = o.llm_rounds;
    let direct = spread(n, length, |_| {
        let (client, words, gauge) = (client.clone(), words.clone(), gauge.clone());
        async move {
            let mut t = Tally::default();
            for _ in 0..rounds {
                gauge.enter();
                let r = direct_once(&client, fake, &words).await;
                gauge.leave();
                match r {
                    Ok(d) => {
                        t.ops += 1;
                        t.samples.push(d);
                    }
                    Err(e) => t.error(format!("{e:#}")),
                }
            }
            t
        }
    })
    .await;
    note_errors(report, "11 direct", &direct);
    let direct_peak = gauge.peak.load(Relaxed);

    // Through Parley.
    let home = Home::new()?;
    let dir = home.path().join("assistants");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("bench_fake.json"),
        json!({
            "title": "Bench: fake OpenAI stream",
            "description": "One LLM node on the fake OpenAI-compatible server of scenario 11.",
            "llm": "fake",
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "answer", "type": "llm", "history": false, "prompt": "{{ start.userInput }}"},
                {"id": "end", "type": "end", "outputs": {"text": "{{ answer.text }}"}}
            ],
            "edges": [{"from": "start", "to": "answer"}, {"from": "answer", "to": "end"}]
        })
        .to_string(),
    )?;
    let server = home.start_with(&Extra {
        sections: format!(
            "[llm.fake]\nprovider = \"openai\"\nbase_url = \"http://{fake}/v1\"\nmodel = \"fake\"\n\
             max_concurrency = {}\nmax_retries = 0\nbreaker_threshold = 0\n",
            (n * 2).max(16)
        ),
        assistants: Some(dir),
        ..Extra::default()
    })?;
    let addr = server.addr;
    // Connect every socket first: the measurement is of streaming, not of handshakes.
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(Arc::new(tokio::sync::Mutex::new(
            WsClient::connect(addr, "/ws").await?,
        )));
    }
    let gauge = Arc::new(Gauge::default());
    let tokens = Arc::new(AtomicU64::new(0));
    let cpu = CpuProbe::start(&server);
    let prefix = uuid::Uuid::now_v7().simple().to_string();
    let through = spread(n, length, |i| {
        let (sock, words, gauge, tokens, prefix) = (
            sockets[i].clone(),
            words.clone(),
            gauge.clone(),
            tokens.clone(),
            prefix.clone(),
        );
        async move {
            let mut t = Tally::default();
            let mut c = sock.lock().await;
            for r in 0..rounds {
                gauge.enter();
                let res = parley_once(&mut c, format!("{prefix}-{i}-{r}"), &words).await;
                gauge.leave();
                match res {
                    Ok((d, k)) => {
                        t.ops += 1;
                        t.samples.push(d);
                        tokens.fetch_add(k as u64, Relaxed);
                    }
                    Err(e) => {
                        t.error(format!("{e:#}"));
                        break;
                    }
                }
            }
            t
        }
    })
    .await;
    let cores = cpu.server_cores();
    let cpu_text = cpu.report();
    note_errors(report, "11 through Parley", &through);
    for s in sockets {
        if let Ok(m) = Arc::try_unwrap(s) {
            m.into_inner().close().await;
        }
    }
    server.stop()?;
    fake_task.abort();

    let (mut d, mut p) = (direct.samples, through.samples);
    let expected = (n * rounds * o.llm_tokens) as f64;
    let delivered = tokens.load(Relaxed) as f64;
    report.row(
        Row::new(
            "11",
            format!("{n} conversations × {rounds} answers of {} tokens at 50/s: tokens delivered ÷ sent", o.llm_tokens),
            if expected > 0.0 { delivered / expected } else { 0.0 },
            Unit::Ratio,
        )
        .target(Target::AtLeast(1.0)),
    );
    report.row(Row::new(
        "11",
        "streams in flight at once through Parley (peak)".into(),
        gauge.peak.load(Relaxed) as f64,
        Unit::Count,
    ));
    report.row(Row::new(
        "11",
        "server CPU while streaming (cores, of 2)".into(),
        cores,
        Unit::Ratio,
    ));
    report.row(
        Row::new(
            "11",
            format!("time to first token from the fake directly, {n} streams: p50 / p99"),
            d.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(d.percentile_ms(50.0)),
    );
    report.row(
        Row::new(
            "11",
            format!("time to first token through Parley (WebSocket), {n} streams: p50 / p99"),
            p.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(p.percentile_ms(50.0)),
    );
    report.note(format!(
        "11: {} answers through Parley, {} directly (peak {direct_peak} at once); {cpu_text}.",
        p.len(),
        d.len()
    ));
    if delivered < expected && through.errors == 0 {
        report.problem(format!("11: {delivered} of {expected} tokens delivered"));
    }
    if d.is_empty() || p.is_empty() {
        report.problem(format!(
            "11: no time to first token to compare ({} direct, {} through Parley)",
            d.len(),
            p.len()
        ));
        return Ok(());
    }
    let added = p.percentile_ms(99.0) - d.percentile_ms(99.0);
    let row = Row::new(
        "11",
        "time to first token added by Parley: p50 / p99 (through − direct)".into(),
        added,
        Unit::Ms,
    )
    .with_p50(p.percentile_ms(50.0) - d.percentile_ms(50.0));
    if added >= 0.0 {
        report.row(row.target(Target::AtMost(1.0)));
    } else {
        // The two percentiles come from separate runs: a direct p99 above Parley's says the
        // machine was too noisy to tell, not that Parley took time away.
        report.row(row);
        report.note(
            "11: the direct p99 was above the p99 through Parley: too noisy a machine for a verdict on the added time; run again on a quiet one".into(),
        );
    }
    Ok(())
}
