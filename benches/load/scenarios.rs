//! The baselines and the six scenarios. Each returns rows for the table and records any
//! correctness problem (errors, seq gaps, lost events) in the report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use serde_json::{json, Value};

use super::baseline::Bare;
use super::client::{HttpConn, RunEnd, WsClient};
use super::server::{CpuProbe, Home};
use super::stats::{Samples, Tally, Window};
use super::{Options, Report, Row, Target, Unit};

use parley::llm::Role;
use parley::store::{ConversationRecord, MessageRecord, RunStatus, WriteOp};

/// About sixty words: the built-in model's pseudo-translation repeats them, one delta each.
pub(super) const STREAM_TEXT: &str = "The quarterly report shows that revenue grew by twelve percent while costs stayed flat. \
Hiring is paused until the new office opens in the spring. The board asked for a plan to reduce travel expenses \
and to move the remaining servers to the cloud before the end of the year. Customers praised the new support \
portal and asked for a mobile version soon.";

pub(super) async fn join(handles: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => all.merge(t),
            Err(e) => all.error(format!("a load task panicked: {e}")),
        }
    }
    all
}

pub(super) fn note_errors(report: &mut Report, what: &str, t: &Tally) {
    if t.errors > 0 {
        report.problem(format!(
            "{what}: {} error(s); first: {}",
            t.errors,
            t.first_error.clone().unwrap_or_default()
        ));
    }
}

// ---- baselines ------------------------------------------------------------------------------

/// Bare numbers measured in the same run, for the ratio column.
#[derive(Debug, Default, Clone)]
pub struct Baselines {
    pub http_rps: f64,
    pub http_p99_ms: f64,
    pub ws_rtt_p50_ms: f64,
    pub ws_rtt_p99_ms: f64,
    pub ws_rtt_rps: f64,
    pub ws_frames_per_s: f64,
}

pub(super) async fn http_load(
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
    connections: usize,
    w: Window,
    expect: &'static str,
) -> Tally {
    let mut handles = Vec::new();
    for _ in 0..connections {
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut conn = match HttpConn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            while !w.over() {
                let began = Instant::now();
                match conn.post(path, body.clone()).await {
                    Ok((200, b)) if holds(&b, expect.as_bytes()) => {
                        let now = Instant::now();
                        if w.counts(began, now) {
                            t.ops += 1;
                            t.samples.push(now - began);
                        }
                    }
                    Ok((status, b)) => {
                        t.error(format!("HTTP {status}: {}", String::from_utf8_lossy(&b)));
                    }
                    Err(e) => {
                        t.error(format!("{e:#}"));
                        match HttpConn::connect(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => return t,
                        }
                    }
                }
                if t.errors > 100 {
                    return t;
                }
            }
            t
        }));
    }
    join(handles).await
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Round trips of one frame to the bare WebSocket endpoint, `clients` sockets at once.
async fn bare_ws_rtt(addr: SocketAddr, clients: usize, w: Window) -> Tally {
    let mut handles = Vec::new();
    for _ in 0..clients {
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = match WsClient::connect(addr, "/ws").await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            while !w.over() {
                let began = Instant::now();
                match c.bare_burst(1).await {
                    Ok(_) => {
                        let now = Instant::now();
                        if w.counts(began, now) {
                            t.ops += 1;
                            t.samples.push(now - began);
                        }
                    }
                    Err(e) => {
                        t.error(e);
                        return t;
                    }
                }
            }
            c.close().await;
            t
        }));
    }
    join(handles).await
}

/// Bursts of `burst` frames from the bare WebSocket endpoint to `sockets` sockets at once.
async fn bare_ws_stream(addr: SocketAddr, sockets: usize, burst: u64, w: Window) -> Tally {
    let mut handles = Vec::new();
    for _ in 0..sockets {
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = match WsClient::connect(addr, "/ws").await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            while !w.over() {
                match c.bare_burst(burst).await {
                    Ok(n) => {
                        if w.ends_in(Instant::now()) {
                            t.items += n;
                        }
                    }
                    Err(e) => {
                        t.error(e);
                        return t;
                    }
                }
            }
            c.close().await;
            t
        }));
    }
    join(handles).await
}

pub async fn baselines(o: &Options, report: &mut Report) -> anyhow::Result<Baselines> {
    let bare = Bare::start()?;
    let mut b = Baselines::default();
    let body = Bytes::from_static(br#"{"content":"hi"}"#);

    let w = Window::after(o.warmup, o.duration);
    let mut t = http_load(
        bare.addr,
        "/invoke",
        body,
        o.invoke_connections,
        w,
        "completed",
    )
    .await;
    note_errors(report, "bare HTTP", &t);
    b.http_rps = t.ops as f64 / w.seconds();
    b.http_p99_ms = t.samples.percentile_ms(99.0);
    report.row(Row::new(
        "B",
        format!(
            "bare actix-web POST → fixed JSON, {} connections: requests/s",
            o.invoke_connections
        ),
        b.http_rps,
        Unit::PerSec,
    ));
    report.row(
        Row::new(
            "B",
            "bare actix-web POST: p50 / p99 latency".to_string(),
            b.http_p99_ms,
            Unit::Ms,
        )
        .with_p50(t.samples.percentile_ms(50.0)),
    );

    let w = Window::after(o.warmup, o.duration);
    let mut t = bare_ws_rtt(bare.addr, 1, w).await;
    note_errors(report, "bare WebSocket round trip", &t);
    b.ws_rtt_p50_ms = t.samples.percentile_ms(50.0);
    b.ws_rtt_p99_ms = t.samples.percentile_ms(99.0);
    report.row(
        Row::new(
            "B",
            "bare actix-ws frame → frame, 1 client: p50 / p99".to_string(),
            b.ws_rtt_p99_ms,
            Unit::Ms,
        )
        .with_p50(b.ws_rtt_p50_ms),
    );

    let w = Window::after(o.warmup, o.duration);
    let t = bare_ws_rtt(bare.addr, o.hitl_clients, w).await;
    note_errors(report, "bare WebSocket round trips", &t);
    b.ws_rtt_rps = t.ops as f64 / w.seconds();
    report.row(Row::new(
        "B",
        format!(
            "bare actix-ws frame → frame, {} clients: round trips/s",
            o.hitl_clients
        ),
        b.ws_rtt_rps,
        Unit::PerSec,
    ));

    let w = Window::after(o.warmup, o.duration);
    let t = bare_ws_stream(bare.addr, o.stream_sockets, 250, w).await;
    note_errors(report, "bare WebSocket stream", &t);
    b.ws_frames_per_s = t.items as f64 / w.seconds();
    report.row(Row::new(
        "B",
        format!(
            "bare actix-ws, {} sockets, bursts of 250 frames: frames/s",
            o.stream_sockets
        ),
        b.ws_frames_per_s,
        Unit::PerSec,
    ));
    bare.stop();
    Ok(b)
}

// ---- 1. synchronous invoke --------------------------------------------------------------------

pub async fn invoke(o: &Options, b: &Baselines, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let server = home.start()?;
    let c0 = metric(server.addr, "parley_store_commits_total").await?;
    let busy0 = metric(server.addr, "parley_store_commit_seconds_sum").await?;
    let cpu = CpuProbe::start(&server);
    let started = Instant::now();
    let w = Window::after(o.warmup, o.duration);
    let mut t = http_load(
        server.addr,
        "/api/assistants/bench_auto/invoke",
        Bytes::from_static(br#"{"content":"hi"}"#),
        o.invoke_connections,
        w,
        r#""status":"completed""#,
    )
    .await;
    let cpu = cpu.report();
    let busy = (metric(server.addr, "parley_store_commit_seconds_sum").await? - busy0)
        / started.elapsed().as_secs_f64();
    note_errors(report, "1 invoke", &t);
    let rps = t.ops as f64 / w.seconds();
    report.row(
        Row::new(
            "1",
            format!(
                "invoke 3-node assistant, {} connections: requests/s",
                o.invoke_connections
            ),
            rps,
            Unit::PerSec,
        )
        .target(Target::AtLeast(10_000.0))
        .baseline(b.http_rps),
    );
    report.row(
        Row::new(
            "1",
            "invoke: p50 / p99 latency".into(),
            t.samples.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(t.samples.percentile_ms(50.0))
        .target(Target::AtMost(10.0))
        .baseline(b.http_p99_ms),
    );
    report.row(
        Row::new(
            "1",
            "invoke: throughput ÷ bare actix-web throughput".into(),
            if b.http_rps > 0.0 {
                rps / b.http_rps
            } else {
                0.0
            },
            Unit::Ratio,
        )
        .target(Target::AtLeast(0.3)),
    );
    // History stored: every call is a stored conversation with its messages.
    let listed = reqwest::get(format!(
        "http://{}/api/conversations?assistant=bench_auto&limit=1",
        server.addr
    ))
    .await?
    .json::<Value>()
    .await?;
    if listed["items"].as_array().is_none_or(|a| a.is_empty()) {
        report.problem("1 invoke: no stored conversation after the load".into());
    } else if listed["items"][0]["messageCount"].as_u64() != Some(2) {
        report.problem(format!(
            "1 invoke: a stored conversation without its 2 messages: {}",
            listed["items"][0]
        ));
    }
    let total_calls = metric(server.addr, COMPLETED).await.unwrap_or(0.0);
    let per = commits_since(server.addr, c0, total_calls as u64).await;
    report.note(format!(
        "1: {} calls in the window; every call creates and stores a conversation (user + assistant message, ~30 events, checkpoint, record): {per} store commits (fsyncs) per call, shared by all conversations through group commit; the store writer was inside a commit (apply + commit + fsync) {:.0} % of the time. {cpu}",
        t.ops,
        busy * 100.0,
    ));
    server.stop()?;
    Ok(())
}

// ---- 2. human in the loop over WebSocket -----------------------------------------------------

/// One round trip: send → RUN_FINISHED(interrupt) → resume(approve) → RUN_FINISHED(success).
async fn hitl_round(c: &mut WsClient, first: bool) -> anyhow::Result<()> {
    let ex = if first {
        c.start("bench_hitl", "pay the taxi").await?
    } else {
        c.send("pay the taxi").await?
    };
    let RunEnd::Interrupt(id) = ex.end else {
        bail!("the run did not pause")
    };
    let ex = c.resume(&id, "approve").await?;
    if ex.end != RunEnd::Success {
        bail!("the resumed run did not finish");
    }
    Ok(())
}

async fn hitl_load(addr: SocketAddr, clients: usize, w: Window) -> (Tally, u64) {
    let gaps = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let gaps = gaps.clone();
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = match WsClient::connect(addr, "/ws").await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            let mut first = true;
            while !w.over() {
                let began = Instant::now();
                match hitl_round(&mut c, first).await {
                    Ok(()) => {
                        let now = Instant::now();
                        if w.counts(began, now) {
                            t.ops += 1;
                            t.samples.push(now - began);
                        }
                    }
                    Err(e) => {
                        t.error(format!("{e:#}"));
                        break;
                    }
                }
                first = false;
            }
            gaps.fetch_add(c.seq_gaps, Relaxed);
            c.close().await;
            t
        }));
    }
    let t = join(handles).await;
    (t, gaps.load(Relaxed))
}

pub async fn hitl(o: &Options, b: &Baselines, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let server = home.start()?;

    let c0 = metric(server.addr, "parley_store_commits_total").await?;
    let busy0 = metric(server.addr, "parley_store_commit_seconds_sum").await?;
    let w = Window::after(o.warmup, o.duration);
    let (mut t, gaps) = hitl_load(server.addr, 1, w).await;
    let r0 = metric(server.addr, COMPLETED).await.unwrap_or(0.0);
    let per = commits_since(server.addr, c0, r0 as u64).await;
    // The mean time of one commit (apply + commit + fsync) while one client drives the server.
    let commit_ms = {
        let commits = metric(server.addr, "parley_store_commits_total").await? - c0;
        let busy = metric(server.addr, "parley_store_commit_seconds_sum").await? - busy0;
        if commits > 0.0 {
            busy / commits * 1e3
        } else {
            0.0
        }
    };
    note_errors(report, "2 HITL, 1 client", &t);
    if gaps > 0 {
        report.problem(format!("2 HITL, 1 client: {gaps} seq gap(s)"));
    }
    report.row(
        Row::new(
            "2",
            "WS send → interrupt → resume → RUN_FINISHED, 1 client: p50".into(),
            t.samples.percentile_ms(50.0),
            Unit::Ms,
        )
        .target(Target::AtMost(1.0))
        .baseline(b.ws_rtt_p50_ms),
    );
    report.row(
        Row::new(
            "2",
            "same, 1 client: p99".into(),
            t.samples.percentile_ms(99.0),
            Unit::Ms,
        )
        .target(Target::AtMost(5.0))
        .baseline(b.ws_rtt_p99_ms),
    );
    let one = t.ops;

    let cpu = CpuProbe::start(&server);
    let w = Window::after(o.warmup, o.duration);
    let (mut t, gaps) = hitl_load(server.addr, o.hitl_clients, w).await;
    let cpu = cpu.report();
    note_errors(report, "2 HITL, many clients", &t);
    for w in server.warnings() {
        report.problem(format!("2 HITL server log: {w}"));
    }
    if gaps > 0 {
        report.problem(format!(
            "2 HITL, {} clients: {gaps} seq gap(s)",
            o.hitl_clients
        ));
    }
    report.row(
        Row::new(
            "2",
            format!("same, {} clients: round trips/s", o.hitl_clients),
            t.ops as f64 / w.seconds(),
            Unit::PerSec,
        )
        .target(Target::AtLeast(5_000.0))
        .baseline(b.ws_rtt_rps),
    );
    report.note(format!(
        "2: {one} round trips measured with 1 client ({per} store commits per round trip, {commit_ms:.3} ms per commit: apply + commit + fsync); with {} clients p50 {:.2} ms, p99 {:.2} ms, {cpu}. One round trip = 2 client frames, 2 acks, 2 run segments, about 20 events",
        o.hitl_clients,
        t.samples.percentile_ms(50.0),
        t.samples.percentile_ms(99.0)
    ));
    server.stop()?;
    Ok(())
}

// ---- 3. event streaming ------------------------------------------------------------------------

pub async fn stream(o: &Options, b: &Baselines, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let mut server = home.start()?;
    let addr = server.addr;
    let cpu = CpuProbe::start(&server);
    let w = Window::after(o.warmup, o.duration);
    let mut handles = Vec::new();
    let ends = Arc::new(parking_lot::Mutex::new(Vec::<(String, u64, u64)>::new()));
    for _ in 0..o.stream_sockets {
        let ends = ends.clone();
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = match WsClient::connect(addr, "/ws").await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            let mut first = true;
            while !w.over() {
                let r = if first {
                    c.start("bench_stream", STREAM_TEXT).await
                } else {
                    c.send(STREAM_TEXT).await
                };
                first = false;
                match r {
                    Ok(ex) if ex.end == RunEnd::Success => {
                        if w.ends_in(Instant::now()) {
                            t.ops += 1;
                            t.items += ex.events;
                        }
                    }
                    Ok(_) => {
                        t.error("the streaming run did not succeed");
                        break;
                    }
                    Err(e) => {
                        t.error(format!("{e:#}"));
                        break;
                    }
                }
            }
            if let Some(conv) = c.conversation.clone() {
                ends.lock().push((conv, c.last_seq, c.seq_gaps));
            }
            c.close().await;
            t
        }));
    }
    let t = join(handles).await;
    let cpu = cpu.report();
    note_errors(report, "3 stream", &t);
    if let Some(e) = server.exited() {
        bail!("{e}");
    }
    let eps = t.items as f64 / w.seconds();
    // None lost: each socket saw 1..=lastSeq with no gap, and lastSeq is the stored last seq.
    let http = reqwest::Client::new();
    let mut lost = 0u64;
    let mut gaps = 0u64;
    let ends = ends.lock().clone();
    for (conv, last, g) in &ends {
        gaps += g;
        let v: Value = http
            .get(format!("http://{addr}/api/conversations/{conv}"))
            .send()
            .await?
            .json()
            .await?;
        let stored = v["lastSeq"].as_u64().unwrap_or(0);
        lost += stored.saturating_sub(*last);
    }
    if ends.len() != o.stream_sockets {
        report.problem(format!(
            "3 stream: {} of {} sockets got a conversation",
            ends.len(),
            o.stream_sockets
        ));
    }
    if gaps > 0 || lost > 0 {
        report.problem(format!("3 stream: {gaps} seq gap(s), {lost} event(s) lost"));
    }
    report.row(
        Row::new(
            "3",
            format!(
                "streamed events delivered, {} sockets: events/s",
                o.stream_sockets
            ),
            eps,
            Unit::PerSec,
        )
        .target(Target::AtLeast(200_000.0))
        .baseline(b.ws_frames_per_s),
    );
    report.row(
        Row::new(
            "3",
            "events lost + seq gaps (all sockets)".into(),
            (lost + gaps) as f64,
            Unit::Count,
        )
        .target(Target::AtMost(0.0)),
    );
    report.note(format!(
        "3: {} runs of ~{} events each in the window; every event is stored (redb, durable) before it is sent. {cpu}",
        t.ops,
        t.items.checked_div(t.ops).unwrap_or(0)
    ));
    server.stop()?;
    Ok(())
}

// ---- 4. idle scale -----------------------------------------------------------------------------

pub async fn idle(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    // The server inherits this limit and needs one descriptor per socket, like this process.
    // Below it, connections would wait for an accept that never comes: skip instead.
    let limit = super::server::raise_fd_limit();
    if (limit as usize) < o.idle_sockets + 200 {
        report.problem(format!(
            "4 idle: skipped: the open-files limit ({limit}) is below {} sockets + 200; raise the hard limit or pass a smaller --idle-sockets",
            o.idle_sockets
        ));
        return Ok(());
    }
    let home = Home::new()?;
    let server = home.start()?;
    let addr = server.addr;

    // Warm up the server (allocator, threads, store) so that the baseline RSS is not cold.
    let warm = open_idle(addr, 50.min(o.idle_sockets), 50);
    warm.begin.send_replace(true);
    warm.settled(2).await;
    warm.go.send_replace(true);
    warm.settled(3).await;
    warm.done.send_replace(true);
    let wt = join(warm.handles).await;
    note_errors(report, "4 idle (warm-up)", &wt);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = server.rss_kib()?;

    // Sockets alone, then a conversation on each.
    let started = Instant::now();
    let set = open_idle(addr, o.idle_sockets, 64);
    set.settled(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_sockets = server.rss_kib()?;
    let connected = set.connected.load(Relaxed);
    set.begin.send_replace(true);
    set.settled(2).await;
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = server.rss_kib()?;
    // Profiling aid: `LOAD_IDLE_HOLD=SECS` waits here, every socket open and every
    // conversation idle after its first run, so that a heap profiler (LOAD_SERVER_WRAPPER) can
    // be stopped at this point and show what stays allocated (its "leaks").
    if let Some(secs) = std::env::var("LOAD_IDLE_HOLD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!(
            "HOLDING {secs} s after the first runs (server pid {})",
            server.pid()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let opened = set.opened.load(Relaxed);
    let per = (rss1.saturating_sub(rss0)) as f64 / opened.max(1) as f64;
    let per_socket = (rss_sockets.saturating_sub(rss0)) as f64 / connected.max(1) as f64;
    let store_cache = metric(addr, "parley_store_ops_total").await.unwrap_or(0.0);

    let started = Instant::now();
    set.go.send_replace(true);
    set.settled(3).await;
    let send_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss2 = server.rss_kib()?;
    let store_ops2 = metric(addr, "parley_store_ops_total").await.unwrap_or(0.0);
    set.done.send_replace(true);
    let mut t = join(set.handles).await;
    note_errors(report, "4 idle", &t);
    let gaps = set.gaps.load(Relaxed);
    if gaps > 0 {
        report.problem(format!("4 idle: {gaps} seq gap(s)"));
    }
    report.row(
        Row::new(
            "4",
            format!("server memory per open socket + conversation ({opened} open)"),
            per,
            Unit::KiB,
        )
        .target(Target::AtMost(40.0)),
    );
    report.row(
        Row::new(
            "4",
            format!(
                "then one send on each of the {} sockets: sends without error",
                o.idle_sockets
            ),
            t.ops as f64,
            Unit::Count,
        )
        .target(Target::AtLeast(o.idle_sockets as f64)),
    );
    report.note(format!(
        "4: RSS {rss0} KiB → {rss_sockets} KiB with {connected} idle sockets ({per_socket:.1} KiB each) → {rss1} KiB once each started a conversation and its first run finished ({:.1} s in all; {store_cache:.0} store ops written, which stay in redb's page cache); the {} sends took {:.1} s (p50 {:.1} ms, p99 {:.1} ms, all at once) and left RSS at {rss2} KiB ({:.1} KiB more per conversation for its second run: {:.0} more store ops, history, the frame-id cache)",
        open_time.as_secs_f64(),
        t.ops,
        send_time.as_secs_f64(),
        t.samples.percentile_ms(50.0),
        t.samples.percentile_ms(99.0),
        (rss2.saturating_sub(rss1)) as f64 / opened.max(1) as f64,
        store_ops2 - store_cache,
    ));
    server.stop()?;
    Ok(())
}

struct IdleSet {
    handles: Vec<tokio::task::JoinHandle<Tally>>,
    /// Once true, each connected socket starts its conversation.
    begin: Arc<tokio::sync::watch::Sender<bool>>,
    /// Once true, each socket sends one more message.
    go: Arc<tokio::sync::watch::Sender<bool>>,
    /// Once true, each socket closes (after its second run).
    done: Arc<tokio::sync::watch::Sender<bool>>,
    connected: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    /// Tasks done with the current phase (connected or failed; then started or failed).
    settled: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
    n: u64,
}

impl IdleSet {
    /// Wait until every task settled `phase` (1: connected, 2: conversation started, 3: sent
    /// again).
    async fn settled(&self, phase: u64) {
        while self.settled.load(Relaxed) < self.n * phase {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Open `n` sockets (at most `parallel` connecting or starting at once). Each task connects,
/// waits for `begin`, starts a conversation and waits for its first run, then idles (answering
/// pings) until `go`, sends one more message, and returns its tally.
fn open_idle(addr: SocketAddr, n: usize, parallel: usize) -> IdleSet {
    let (begin, _) = tokio::sync::watch::channel(false);
    let (go, _) = tokio::sync::watch::channel(false);
    let (done, _) = tokio::sync::watch::channel(false);
    let set = IdleSet {
        handles: Vec::with_capacity(n),
        begin: Arc::new(begin),
        go: Arc::new(go),
        done: Arc::new(done),
        connected: Arc::new(AtomicU64::new(0)),
        opened: Arc::new(AtomicU64::new(0)),
        settled: Arc::new(AtomicU64::new(0)),
        gaps: Arc::new(AtomicU64::new(0)),
        n: n as u64,
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (begin, go, done, connected, opened, settled, gaps, gate) = (
            set.begin.clone(),
            set.go.clone(),
            set.done.clone(),
            set.connected.clone(),
            set.opened.clone(),
            set.settled.clone(),
            set.gaps.clone(),
            gate.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let permit = gate.clone().acquire_owned().await;
            let c = WsClient::connect(addr, "/ws").await;
            drop(permit);
            let mut c = match c {
                Ok(c) => {
                    connected.fetch_add(1, Relaxed);
                    settled.fetch_add(1, Relaxed);
                    c
                }
                Err(e) => {
                    settled.fetch_add(3, Relaxed);
                    t.error(format!("{e:#}"));
                    return t;
                }
            };
            if let Err(e) = idle_until_raised(&mut c, &begin).await {
                settled.fetch_add(2, Relaxed);
                t.error(format!("while idle: {e:#}"));
                return t;
            }
            let permit = gate.acquire_owned().await;
            let first = c.start("bench_auto", "hi").await;
            drop(permit);
            settled.fetch_add(1, Relaxed);
            match first {
                Ok(ex) if ex.end == RunEnd::Success => {
                    opened.fetch_add(1, Relaxed);
                }
                Ok(_) => {
                    settled.fetch_add(1, Relaxed);
                    t.error("the first run did not finish");
                    return t;
                }
                Err(e) => {
                    settled.fetch_add(1, Relaxed);
                    t.error(format!("{e:#}"));
                    return t;
                }
            }
            if let Err(e) = idle_until_raised(&mut c, &go).await {
                settled.fetch_add(1, Relaxed);
                t.error(format!("while idle: {e:#}"));
                return t;
            }
            let began = Instant::now();
            match c.send("hello again").await {
                Ok(ex) if ex.end == RunEnd::Success => {
                    t.ops += 1;
                    t.samples.push(began.elapsed());
                }
                Ok(_) => t.error("the second run did not finish"),
                Err(e) => t.error(format!("{e:#}")),
            }
            settled.fetch_add(1, Relaxed);
            gaps.fetch_add(c.seq_gaps, Relaxed);
            let _ = idle_until_raised(&mut c, &done).await;
            c.close().await;
            t
        }));
    }
    IdleSet { handles, ..set }
}

/// Idles on the socket (answering pings) until `flag` is raised.
async fn idle_until_raised(
    c: &mut WsClient,
    flag: &tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    let mut rx = flag.subscribe();
    c.idle_until(async move {
        let _ = rx.wait_for(|g| *g).await;
    })
    .await
}

// ---- 5. durable writes -------------------------------------------------------------------------

fn message(no: u64) -> MessageRecord {
    MessageRecord {
        no,
        id: uuid::Uuid::now_v7().to_string(),
        role: if no % 2 == 1 { Role::User } else { Role::Assistant },
        content: "I took a taxi to the airport for the customer visit; it cost 45 EUR and I have the receipt.".into(),
        run_id: Some("019a0000-0000-7000-8000-00000000abcd".into()),
        created_at: 1_760_000_000_000 + no as i64,
        data: None,
    }
}

pub async fn durable(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let store = home.open_store_async().await?;

    // Single-message durable commits, one after another.
    let w = Window::after(o.warmup.min(Duration::from_millis(500)), o.store_duration);
    let mut single = 0u64;
    let mut no = 0u64;
    while !w.over() {
        no += 1;
        let began = Instant::now();
        store
            .write(vec![WriteOp::AppendMessage {
                conversation: "single".into(),
                message: message(no),
            }])
            .await?;
        if w.counts(began, Instant::now()) {
            single += 1;
        }
    }
    let single_rate = single as f64 / w.seconds();

    // Grouped: many writers, one message per write, each waiting for its durable commit.
    let before = store.stats();
    let w = Window::after(o.warmup.min(Duration::from_millis(500)), o.store_duration);
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..o.durable_writers {
        let store = store.clone();
        let count = count.clone();
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let conv = format!("grouped-{i}");
            let mut no = 0;
            while !w.over() {
                no += 1;
                let began = Instant::now();
                let r = store
                    .write(vec![WriteOp::AppendMessage {
                        conversation: conv.clone(),
                        message: message(no),
                    }])
                    .await;
                match r {
                    Ok(()) => {
                        if w.counts(began, Instant::now()) {
                            t.ops += 1;
                            count.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => {
                        t.error(e);
                        break;
                    }
                }
            }
            t
        }));
    }
    let t = join(handles).await;
    note_errors(report, "5 durable", &t);
    let after = store.stats();
    let grouped_rate = t.ops as f64 / w.seconds();
    let commits = after.commits - before.commits;
    let group = (after.batches_committed - before.batches_committed) as f64 / commits.max(1) as f64;
    // Every acknowledged message is readable back.
    let stored = store.messages("grouped-0", None, 100).await?;
    if t.ops > 0 && stored.is_empty() {
        report.problem("5 durable: acknowledged messages are not in the store".into());
    }
    report.row(
        Row::new(
            "5",
            format!(
                "messages stored/s, {} writers, group commit, fsync each commit",
                o.durable_writers
            ),
            grouped_rate,
            Unit::PerSec,
        )
        .target(Target::AtLeast(20_000.0))
        .baseline(single_rate),
    );
    report.row(Row::new(
        "5",
        "single-message durable commits/s on the same disk (the baseline of the row above)".into(),
        single_rate,
        Unit::PerSec,
    ));
    report.note(format!(
        "5: {commits} grouped commits, {group:.0} messages per commit on average; store time {:.2} s of {:.2} s",
        (after.commit_time - before.commit_time).as_secs_f64(),
        w.seconds()
    ));
    store.shutdown();
    Ok(())
}

// ---- 6. cold start -----------------------------------------------------------------------------

/// Write `n` conversations of `messages` messages (one event each) straight into the store.
fn prepare_cold(home: &Home, n: usize, messages: u64) -> anyhow::Result<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = home.open_store(&rt)?;
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let rec = ConversationRecord {
            id: id.clone(),
            owner: "local".into(),
            assistant: "bench_cold".into(),
            title: "cold".into(),
            title_set: false,
            status: RunStatus::Completed,
            created_at: 1_760_000_000_000,
            updated_at: 1_760_000_000_000,
            args: json!({}),
            last_seq: messages,
            message_count: messages,
            pending_interrupts: Vec::new(),
        };
        let mut ops = vec![WriteOp::PutConversation(rec)];
        for no in 1..=messages {
            let m = message(no);
            let ev = json!({"type": "TEXT_MESSAGE_END", "messageId": m.id});
            ops.push(WriteOp::AppendEvent {
                conversation: id.clone(),
                seq: no,
                json: Bytes::from(ev.to_string()),
            });
            ops.push(WriteOp::AppendMessage {
                conversation: id.clone(),
                message: m,
            });
            if ops.len() >= 4000 {
                rt.block_on(store.write(std::mem::take(&mut ops)))?;
            }
        }
        rt.block_on(store.write(ops))?;
        ids.push(id);
    }
    store.shutdown();
    Ok(ids)
}

const COMPLETED: &str = "parley_runs_total{status=\"completed\"}";

/// One value of the server's `/metrics`, by its full name (with labels).
pub(super) async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no {name} in /metrics"))
}

async fn live_actors(addr: SocketAddr) -> anyhow::Result<u64> {
    Ok(metric(addr, "parley_live_actors").await? as u64)
}

/// Store commits per operation, from the server's counters before and after a load.
async fn commits_since(addr: SocketAddr, before: f64, ops: u64) -> String {
    match metric(addr, "parley_store_commits_total").await {
        Ok(after) if ops > 0 => format!("{:.2}", (after - before) / ops as f64),
        _ => "?".into(),
    }
}

pub async fn cold(o: &Options, b: &Baselines, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let (n, m) = (o.cold_conversations, o.cold_messages);
    let prep = Instant::now();
    let home = Arc::new(home);
    let prep_home = home.clone();
    let ids = tokio::task::spawn_blocking(move || prepare_cold(&prep_home, n, m)).await??;
    let prep_time = prep.elapsed();
    let server = home.start()?;
    let mut c = WsClient::connect(server.addr, "/ws").await?;
    let mut all = Samples::default();
    let mut first_round = Samples::default();
    let mut errors = Tally::default();
    for round in 0..o.cold_rounds {
        // Every actor of the previous round has left memory (sessionTimeout 1 s).
        let until = Instant::now() + Duration::from_secs(15);
        while live_actors(server.addr).await? > 0 {
            if Instant::now() > until {
                bail!("6 cold: actors did not leave memory");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in &ids {
            let began = Instant::now();
            match c
                .ack(json!({"type": "subscribe", "conversationId": id, "since": m}))
                .await
            {
                Ok(last) => {
                    let d = began.elapsed();
                    all.push(d);
                    if round == 0 {
                        first_round.push(d);
                    }
                    if last != Some(m) {
                        errors.error(format!("subscribe answered lastSeq {last:?}, stored {m}"));
                    }
                }
                Err(e) => errors.error(format!("{e:#}")),
            }
        }
        for id in &ids {
            if let Err(e) = c
                .ack(json!({"type": "unsubscribe", "conversationId": id}))
                .await
            {
                errors.error(format!("{e:#}"));
            }
        }
    }
    c.close().await;
    note_errors(report, "6 cold", &errors);
    report.row(
        Row::new(
            "6",
            format!("cold start, conversation of {m} messages (subscribe → ack): p50 / p99"),
            all.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(all.percentile_ms(50.0))
        .target(Target::AtMost(2.0))
        .baseline(b.ws_rtt_p99_ms),
    );
    report.note(format!(
        "6: {} cold starts ({n} conversations × {} rounds; first round after the server started: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms); {n} × {m} messages + {m} events each written in {:.1} s through the store API",
        all.len(),
        o.cold_rounds,
        first_round.percentile_ms(50.0),
        first_round.percentile_ms(99.0),
        first_round.max_ms(),
        prep_time.as_secs_f64()
    ));
    server.stop()?;
    Ok(())
}
