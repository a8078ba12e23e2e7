//! Scenario 7: AG-UI runs beside invoke. The same automated assistant (`bench_auto`) on one
//! server, first through `POST /api/assistants/bench_auto/invoke`, then through
//! `POST /agui/bench_auto` (a new thread per run, the whole SSE answer read until
//! `RUN_FINISHED`), at the same number of connections. Target: AG-UI at least 0.8× invoke.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::client::HttpConn;
use super::server::Home;
use super::stats::{Tally, Window};
use super::{Options, Report, Row, Target, Unit};

/// `connections` clients posting bodies made by `body(n)` until the window is over; an answer
/// counts when it is a 200 holding `expect`.
async fn load(
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
            let mut n = (c as u64) << 32;
            while !w.over() && t.errors <= 100 {
                n += 1;
                let began = Instant::now();
                match conn.post(path, body(n)).await {
                    Ok((200, b)) if b.windows(expect.len()).any(|x| x == expect) => {
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

/// The order of the two halves: the measure is `invoke` first, then AG-UI on the same server.
/// `LOAD_AGUI_ORDER=agui-first` swaps them and `fresh` gives AG-UI a server of its own (an
/// empty database like invoke's): experiments on what the database's growth during the first
/// half costs the second (BENCHMARKS.md, session 6).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    InvokeFirst,
    AguiFirst,
    Fresh,
}

fn order() -> Order {
    match std::env::var("LOAD_AGUI_ORDER").as_deref() {
        Ok("agui-first") => Order::AguiFirst,
        Ok("fresh") => Order::Fresh,
        _ => Order::InvokeFirst,
    }
}

pub async fn agui(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let mut server = home.start()?;
    let n = o.invoke_connections;
    let path = "/api/assistants/bench_auto/invoke";
    let invoke_expect: &'static [u8] = br#""status":"completed""#;
    let order = order();
    if order != Order::InvokeFirst {
        eprintln!("scenario 7: LOAD_AGUI_ORDER={order:?} (an experiment, not the measure)");
    }
    let run_agui = |addr| {
        let w = Window::after(o.warmup, o.duration);
        async move {
            let t = load(
                addr,
                "/agui/bench_auto",
                agui_body,
                n,
                w,
                b"\"RUN_FINISHED\"",
            )
            .await;
            (t, w)
        }
    };
    let run_invoke = |addr| {
        let w = Window::after(o.warmup, o.duration);
        async move { (load(addr, path, invoke_body, n, w, invoke_expect).await, w) }
    };
    let _fresh_home;
    let ((inv, w), (mut ag, w2)) = match order {
        Order::InvokeFirst => {
            let i = run_invoke(server.addr).await;
            (i, run_agui(server.addr).await)
        }
        Order::AguiFirst => {
            let a = run_agui(server.addr).await;
            (run_invoke(server.addr).await, a)
        }
        Order::Fresh => {
            let i = run_invoke(server.addr).await;
            server.stop()?;
            _fresh_home = Home::new()?;
            server = _fresh_home.start()?;
            (i, run_agui(server.addr).await)
        }
    };
    for (what, t) in [("7 invoke", &inv), ("7 agui", &ag)] {
        if t.errors > 0 {
            report.problem(format!(
                "{what}: {} errors, first: {}",
                t.errors,
                t.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    let inv_rps = inv.ops as f64 / w.seconds();
    let ag_rps = ag.ops as f64 / w2.seconds();
    report.row(Row::new(
        "7",
        format!("invoke (same server, before AG-UI), {n} connections: requests/s"),
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
