//! Scenario 10 (#18): a soak. Synchronous invokes of `bench_auto` at `invoke_connections`
//! keep-alive connections for `soak` (3 minutes by default) on a server whose retention is one
//! minute (`[storage] retention_days = 1/1440`, a sweep every 10 s), sampling the server's RSS
//! and the size of its data directory every `soak_sample` (30 s). Memory and disk are bounded
//! when both are flat after the warm-up: the growth between the last two samples is the figure
//! (target ≤ 5 %). The samples go in the notes. On PostgreSQL (`--backend postgres`) the data
//! size is that of the server's schema (tables, indexes, TOAST: `pg_total_relation_size`).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::scenarios::{http_load, metric, note_errors};
use super::server::{Extra, Home};
use super::stats::Window;
use super::{Options, Report, Row, Target, Unit};

/// One minute, in days.
const RETENTION_DAYS: f64 = 60.0 / 86_400.0;

/// What one sample saw.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    data_kib: u64,
    stored: f64,
    swept: f64,
}

/// Bytes of every file under `dir`, in KiB.
fn dir_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) / 1024
}

/// Growth from `a` to `b`, in percent of `a`.
fn growth(a: u64, b: u64) -> f64 {
    if a == 0 {
        return if b == 0 { 0.0 } else { 100.0 };
    }
    (b as f64 - a as f64) / a as f64 * 100.0
}

pub async fn soak(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    let home = Home::new()?;
    let server = home.start_with(&Extra {
        storage: format!("retention_days = {RETENTION_DAYS}\nsweep_interval_seconds = 10\n"),
        ..Extra::default()
    })?;
    let addr = server.addr;
    let began = Instant::now();
    let w = Window::after(Duration::ZERO, o.soak);
    let load = tokio::spawn(http_load(
        addr,
        "/api/assistants/bench_auto/invoke",
        Bytes::from_static(br#"{"content":"hi"}"#),
        o.invoke_connections,
        w,
        r#""status":"completed""#,
    ));
    let mut samples = Vec::new();
    let mut next = began + o.soak_sample;
    let end = began + o.soak;
    while next <= end + Duration::from_millis(1) {
        tokio::time::sleep_until(next.into()).await;
        let size = match home.postgres_kib().await? {
            Some(kib) => kib,
            None => dir_kib(&home.data_dir()),
        };
        let s = Sample {
            at: began.elapsed(),
            rss_kib: server.rss_kib()?,
            data_kib: size,
            stored: metric(addr, "parley_stored_conversations")
                .await
                .unwrap_or(f64::NAN),
            swept: metric(addr, "parley_conversations_swept_total")
                .await
                .unwrap_or(f64::NAN),
        };
        eprintln!(
            "  10 sample at {:.0} s: RSS {} KiB, data {} KiB, stored {}, swept {}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.data_kib,
            s.stored,
            s.swept
        );
        samples.push(s);
        next += o.soak_sample;
    }
    let t = load.await?;
    note_errors(report, "10 soak invoke", &t);
    report.row(Row::new(
        "10",
        format!(
            "soak: invokes/s over {} s, {} connections, retention 1 min",
            o.soak.as_secs(),
            o.invoke_connections
        ),
        t.ops as f64 / w.seconds(),
        Unit::PerSec,
    ));
    let n = samples.len();
    if n < 2 {
        report.problem(format!(
            "10 soak: {n} sample(s); two are needed for a growth"
        ));
    } else {
        let (a, b) = (samples[n - 2], samples[n - 1]);
        report.row(Row::new(
            "10",
            format!("soak: RSS at {:.0} s", b.at.as_secs_f64()),
            b.rss_kib as f64,
            Unit::KiB,
        ));
        report.row(Row::new(
            "10",
            format!("soak: data size at {:.0} s", b.at.as_secs_f64()),
            b.data_kib as f64,
            Unit::KiB,
        ));
        report.row(
            Row::new(
                "10",
                "soak: RSS growth between the last two samples".into(),
                growth(a.rss_kib, b.rss_kib),
                Unit::Percent,
            )
            .target(Target::AtMost(5.0)),
        );
        report.row(
            Row::new(
                "10",
                "soak: data size growth between the last two samples".into(),
                growth(a.data_kib, b.data_kib),
                Unit::Percent,
            )
            .target(Target::AtMost(5.0)),
        );
    }
    let mut lines = String::from(
        "10: soak samples (time, server RSS, data size, stored conversations, swept so far):",
    );
    for s in &samples {
        lines.push_str(&format!(
            " {:.0} s: {:.1} MiB, {:.1} MiB, {}, {};",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.data_kib as f64 / 1024.0,
            s.stored,
            s.swept
        ));
    }
    report.note(lines);
    if let Some(e) = server_warnings(&server) {
        report.note(e);
    }
    server.stop()?;
    Ok(())
}

/// Warnings or errors the server logged during the soak (the sweeper's failures among them).
fn server_warnings(server: &super::server::Parley) -> Option<String> {
    let w = server.warnings();
    (!w.is_empty()).then(|| {
        format!(
            "10 soak: the server logged {} warning(s); first: {}",
            w.len(),
            w[0]
        )
    })
}
