//! Scenario 7: AG-UI runs beside invoke. The same automated assistant (`bench_auto`) on one
//! server, through `POST /api/assistants/bench_auto/invoke` and through `POST /agui/bench_auto`
//! (a new thread per run, the whole SSE answer read until `RUN_FINISHED`) in alternating
//! slices ([`rounds`]), at the same number of connections. Target: AG-UI at least 0.8× invoke.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::client::HttpConn;
use super::server::Home;
use super::stats::{Tally, Window};
use super::{Options, Report, Row, Target, Unit};

/// `connections` clients posting bodies made by `body(n)` until the window is over; an answer
/// counts when it is a 200 holding `expect`. `slice` keeps each slice's `n` (thread ids) apart
/// from every other slice's.
async fn load(
    slice: u32,
    addr: SocketAddr,
    path: &'static str,
    body: fn(u64) -> Bytes,
    connections: usize,
    w: Window,
    expect: &'static [u8],
) -> Tally {
    let mut handles = Vec::new();
    for c in 0..connections {
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut conn = match HttpConn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    t.error(e);
                    return t;
                }
            };
            let mut n = (u64::from(slice) << 48) | ((c as u64) << 32);
            while !w.over() && t.errors <= 100 {
                n += 1;
                let began = Instant::now();
                match conn.post(path, body(n)).await {
                    Ok((200, b)) if memchr::memmem::find(&b, expect).is_some() => {
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
            }
            t
        }));
    }
    let mut all = Tally::default();
    for h in handles {
        match h.await {
            Ok(t) => all.merge(t),
            Err(e) => all.error(format!("a load task panicked: {e}")),
        }
    }
    all
}

fn invoke_body(_: u64) -> Bytes {
    Bytes::from_static(br#"{"content":"hi"}"#)
}

/// `LOAD_AGUI_IDS=v7`: time-ordered thread ids (UUID v7, like the ids the server picks for
/// invoke) instead of `bench-<pid>-<n>` (32 insertion points): an experiment on what a
/// client-chosen id's position in the tables costs the store's commits.
fn time_ordered_ids() -> bool {
    static V7: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V7.get_or_init(|| std::env::var("LOAD_AGUI_IDS").as_deref() == Ok("v7"))
}

fn agui_body(n: u64) -> Bytes {
    let thread = if time_ordered_ids() {
        uuid::Uuid::now_v7().to_string()
    } else {
        format!("bench-{}-{n}", std::process::id())
    };
    // Written directly (its ids need no escaping): the load generator shares the two cores
    // with the server, and building a `serde_json::Value` per run cost it several µs.
    Bytes::from(format!(
        r#"{{"threadId":"{thread}","runId":"r{n}","state":{{}},"messages":[{{"id":"m{n}","role":"user","content":"hi"}}],"tools":[],"context":[],"forwardedProps":{{}}}}"#
    ))
}

/// How many times the measure alternates: `rounds` slices of invoke, each followed by a slice
/// of AG-UI, each slice `duration / rounds` long (after one warm-up of each). Alternating puts
/// both halves on the same machine weather and the same database growth: run one after the
/// other, the second half always ran on a database the first had grown, and a machine whose
/// speed drifts by ±10 % over a minute moved a single run's ratio between 0.70 and 0.95
/// (BENCHMARKS.md, session 9). `LOAD_AGUI_ROUNDS=1` is the old order: all of invoke, then all
/// of AG-UI.
fn rounds() -> u32 {
    std::env::var("LOAD_AGUI_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r >= 1)
        .unwrap_or(10)
}

/// Not counted at the start of each slice after the first: the other protocol's last commits.
const SLICE_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

pub async fn agui(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let server = home.start()?;
    let n = o.invoke_connections;
    let addr = server.addr;
    let path = "/api/assistants/bench_auto/invoke";
    let invoke_expect: &'static [u8] = br#""status":"completed""#;
    let agui_path = "/agui/bench_auto";
    let agui_expect: &'static [u8] = b"\"RUN_FINISHED\"";
    let rounds = rounds();
    let slice = o.duration / rounds;
    let (mut inv, mut ag) = (Tally::default(), Tally::default());
    let (mut inv_s, mut ag_s) = (0.0, 0.0);
    for r in 0..rounds {
        let settle = if r == 0 { o.warmup } else { SLICE_SETTLE };
        let w = Window::after(settle, slice);
        inv.merge(load(r, addr, path, invoke_body, n, w, invoke_expect).await);
        inv_s += w.seconds();
        let w = Window::after(settle, slice);
        ag.merge(load(r, addr, agui_path, agui_body, n, w, agui_expect).await);
        ag_s += w.seconds();
    }
    for (what, t) in [("7 invoke", &inv), ("7 agui", &ag)] {
        if t.errors > 0 {
            report.problem(format!(
                "{what}: {} errors, first: {}",
                t.errors,
                t.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    let inv_rps = inv.ops as f64 / inv_s;
    let ag_rps = ag.ops as f64 / ag_s;
    report.row(Row::new(
        "7",
        format!("invoke (same server, alternating with AG-UI), {n} connections: requests/s"),
        inv_rps,
        Unit::PerSec,
    ));
    report.row(Row::new(
        "7",
        format!("AG-UI POST /agui (new thread per run, SSE read to RUN_FINISHED), {n} connections: runs/s"),
        ag_rps,
        Unit::PerSec,
    ));
    report.row(
        Row::new(
            "7",
            "AG-UI: p50 / p99 latency".into(),
            ag.samples.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(ag.samples.percentile_ms(50.0)),
    );
    report.row(
        Row::new(
            "7",
            "AG-UI throughput ÷ invoke throughput".into(),
            if inv_rps > 0.0 { ag_rps / inv_rps } else { 0.0 },
            Unit::Ratio,
        )
        .target(Target::AtLeast(0.8)),
    );
    server.stop()?;
    Ok(())
}
