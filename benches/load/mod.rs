//! The load generator behind `cargo bench --bench load` (see BENCHMARKS.md), shared with the
//! smoke test `tests/bench_smoke.rs`.
//!
//! It measures a bare actix-web baseline in this process, then runs the chosen scenarios
//! against the real `parley` binary started as a child process (built-in model at pace 0,
//! temp data dir, the assistants of `benches/assistants/`), and prints one table. Correctness
//! problems (errors, seq gaps, lost events) are collected in [`Report::problems`]; the smoke
//! test asserts there are none. Nothing here asserts speed.

// Shared by the bench target and the smoke test: each uses only part of it.
#![allow(dead_code)]

mod agui;
mod baseline;
mod client;
mod cluster;
mod llm_stream;
mod openai;
mod scenarios;
mod server;
mod soak;
mod sse;
mod stats;

use std::fmt::Write as _;
use std::time::Duration;

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Invoke,
    Hitl,
    Stream,
    Idle,
    Durable,
    Cold,
    Agui,
    Sse,
    OpenAi,
    Soak,
    LlmStream,
    /// Scenario 12: three nodes on one PostgreSQL and one NATS. Not in `all` (it needs both
    /// servers); asked for by name.
    Cluster,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::Invoke,
        Scenario::Hitl,
        Scenario::Stream,
        Scenario::Idle,
        Scenario::Durable,
        Scenario::Cold,
        Scenario::Agui,
        Scenario::Sse,
        Scenario::OpenAi,
        Scenario::Soak,
        Scenario::LlmStream,
    ];

    pub fn parse(s: &str) -> Result<Vec<Scenario>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(Scenario::ALL),
                "1" | "invoke" => out.push(Scenario::Invoke),
                "2" | "hitl" => out.push(Scenario::Hitl),
                "3" | "stream" => out.push(Scenario::Stream),
                "4" | "idle" => out.push(Scenario::Idle),
                "5" | "durable" => out.push(Scenario::Durable),
                "6" | "cold" => out.push(Scenario::Cold),
                "7" | "agui" => out.push(Scenario::Agui),
                "8" | "sse" => out.push(Scenario::Sse),
                "9" | "openai" => out.push(Scenario::OpenAi),
                "10" | "soak" => out.push(Scenario::Soak),
                "11" | "llm-stream" => out.push(Scenario::LlmStream),
                "12" | "cluster" => out.push(Scenario::Cluster),
                other => {
                    return Err(format!(
                        "unknown scenario '{other}' (all, invoke, hitl, stream, idle, durable, cold, agui, sse, openai, soak, llm-stream, cluster or 1-12)"
                    ))
                }
            }
        }
        out.dedup();
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: &'static str,
    pub scenarios: Vec<Scenario>,
    /// Counted time of each timed load.
    pub duration: Duration,
    /// Load before the counted time.
    pub warmup: Duration,
    /// Counted time of each durable-write measurement.
    pub store_duration: Duration,
    pub invoke_connections: usize,
    pub hitl_clients: usize,
    pub stream_sockets: usize,
    pub idle_sockets: usize,
    pub durable_writers: usize,
    pub cold_conversations: usize,
    pub cold_messages: u64,
    pub cold_rounds: usize,
    /// Scenario 10: how long the soak runs, and how often it samples RSS and data size.
    pub soak: Duration,
    pub soak_sample: Duration,
    /// Scenario 11: conversations streaming at once from the fake OpenAI server, tokens in
    /// each answer (at 50 tokens/s), and answers per conversation.
    pub llm_streams: usize,
    pub llm_tokens: usize,
    pub llm_rounds: usize,
    /// Scenario 12: paused conversations owned by the node that is killed.
    pub cluster_paused: usize,
    /// Scenario 12: only the takeover rows (`--takeover-only`).
    pub takeover_only: bool,
}

impl Options {
    /// The figures of BENCHMARKS.md.
    pub fn full() -> Options {
        Options {
            mode: "full",
            scenarios: Scenario::ALL.to_vec(),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            store_duration: Duration::from_secs(5),
            invoke_connections: 32,
            hitl_clients: 64,
            stream_sockets: 100,
            idle_sockets: 10_000,
            durable_writers: 256,
            cold_conversations: 100,
            cold_messages: 10_000,
            cold_rounds: 3,
            soak: Duration::from_secs(180),
            soak_sample: Duration::from_secs(30),
            llm_streams: 1_000,
            llm_tokens: 100,
            llm_rounds: 3,
            cluster_paused: 100,
            takeover_only: false,
        }
    }

    /// The same loads, shorter and with fewer idle sockets and cold conversations.
    pub fn quick() -> Options {
        Options {
            mode: "quick",
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            store_duration: Duration::from_secs(2),
            idle_sockets: 1_000,
            cold_conversations: 10,
            llm_rounds: 1,
            ..Options::full()
        }
    }

    /// Seconds in all, tiny numbers: checks that every code path works (the test suite).
    pub fn smoke() -> Options {
        Options {
            mode: "smoke",
            scenarios: Scenario::ALL.to_vec(),
            // Long enough that a busy CI machine still completes rounds inside the window
            // (the smoke test checks that each scenario measured something).
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(200),
            store_duration: Duration::from_millis(200),
            invoke_connections: 4,
            hitl_clients: 4,
            stream_sockets: 4,
            idle_sockets: 20,
            durable_writers: 8,
            cold_conversations: 3,
            cold_messages: 300,
            cold_rounds: 2,
            soak: Duration::from_secs(4),
            soak_sample: Duration::from_secs(1),
            llm_streams: 8,
            llm_tokens: 10,
            llm_rounds: 2,
            cluster_paused: 4,
            takeover_only: false,
        }
    }

    /// Parse command-line arguments (`--bench`, which cargo adds, is ignored).
    pub fn from_args(args: &[String]) -> Result<Options, String> {
        let mut o = if args.iter().any(|a| a == "--smoke") {
            Options::smoke()
        } else if args.iter().any(|a| a == "--quick") {
            Options::quick()
        } else {
            Options::full()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
            match a.as_str() {
                "--bench" | "--quick" | "--smoke" => {}
                "--scenario" => o.scenarios = Scenario::parse(&value("--scenario")?)?,
                "--backend" => match value("--backend")?.as_str() {
                    "redb" => {}
                    "postgres" => {
                        let url = std::env::var("PARLEY_POSTGRES_URL")
                            .or_else(|_| std::env::var("PARLEY_TEST_POSTGRES_URL"))
                            .map_err(|_| {
                                "--backend postgres needs PARLEY_POSTGRES_URL (or \
                                 PARLEY_TEST_POSTGRES_URL: source scripts/lib/postgres.sh; \
                                 pg_start DIR)"
                                    .to_string()
                            })?;
                        server::use_postgres(url);
                    }
                    other => return Err(format!("unknown backend '{other}' (redb, postgres)")),
                },
                "--duration" => {
                    o.duration = Duration::from_secs(num(value("--duration")?)?);
                    o.store_duration = o.duration;
                }
                "--invoke-connections" => {
                    o.invoke_connections = num(value("--invoke-connections")?)? as usize
                }
                "--hitl-clients" => o.hitl_clients = num(value("--hitl-clients")?)? as usize,
                "--idle-sockets" => o.idle_sockets = num(value("--idle-sockets")?)? as usize,
                "--soak-minutes" => {
                    let m: f64 = value("--soak-minutes")?
                        .parse()
                        .map_err(|e| format!("--soak-minutes: {e}"))?;
                    if !(m.is_finite() && m > 0.0 && m <= 24.0 * 60.0) {
                        return Err("--soak-minutes must be above 0 and at most a day".into());
                    }
                    o.soak = Duration::from_secs_f64(m * 60.0);
                }
                "--llm-streams" => o.llm_streams = num(value("--llm-streams")?)?.max(1) as usize,
                "--cold-conversations" => {
                    o.cold_conversations = num(value("--cold-conversations")?)? as usize
                }
                "--cluster-paused" => {
                    o.cluster_paused = num(value("--cluster-paused")?)?.max(1) as usize
                }
                "--takeover-only" => o.takeover_only = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
            }
        }
        if o.scenarios.contains(&Scenario::Cluster) {
            // The cluster's single-node comparison, and every other scenario of the run, on
            // PostgreSQL.
            cluster::ensure_postgres()?;
        }
        Ok(o)
    }
}

pub const USAGE: &str = "usage: cargo bench --bench load -- [--quick | --smoke] [--scenario all|invoke,hitl,stream,idle,durable,cold,agui,sse,openai,soak,llm-stream,cluster|1-12] [--backend redb|postgres] [--duration SECS] [--invoke-connections N] [--hitl-clients N] [--idle-sockets N] [--cold-conversations N] [--soak-minutes M] [--llm-streams N] [--cluster-paused N] [--takeover-only]";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    PerSec,
    Ms,
    KiB,
    Count,
    Ratio,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub measure: String,
    pub value: f64,
    /// For latency rows: the p50 shown next to the p99 in `value`.
    pub p50: Option<f64>,
    pub unit: Unit,
    pub target: Option<Target>,
    /// The bare figure to divide by (same unit).
    pub baseline: Option<f64>,
}

impl Row {
    pub fn new(scenario: &'static str, measure: String, value: f64, unit: Unit) -> Row {
        Row {
            scenario,
            measure,
            value,
            p50: None,
            unit,
            target: None,
            baseline: None,
        }
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    pub fn baseline(mut self, b: f64) -> Row {
        self.baseline = Some(b);
        self
    }

    pub fn with_p50(mut self, p50: f64) -> Row {
        self.p50 = Some(p50);
        self
    }

    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.value))
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.value / b)
    }
}

fn fmt_num(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec => format!("{} /s", thousands(v.round() as u64)),
        Unit::Ms => format!("{v:.3} ms"),
        Unit::KiB => format!("{v:.1} KiB"),
        Unit::Count => thousands(v.round() as u64),
        Unit::Ratio => format!("{v:.2}"),
        Unit::Percent => format!("{v:.1} %"),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Everything one run measured and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Correctness problems: errors, seq gaps, lost events. Empty in a good run.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&mut self, r: Row) {
        eprintln!(
            "  {} {}: {}",
            r.scenario,
            r.measure,
            fmt_num(r.value, r.unit)
        );
        self.rows.push(r);
    }

    pub fn problem(&mut self, p: String) {
        eprintln!("  PROBLEM: {p}");
        self.problems.push(p);
    }

    pub fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    /// The rows of one scenario ("B" for the baselines).
    pub fn rows_of(&self, scenario: &str) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect()
    }

    /// The table, in Markdown.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("| # | measure | value | target | bare baseline | ratio | met |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let value = match r.p50 {
                Some(p50) => format!("{} / {}", fmt_num(p50, r.unit), fmt_num(r.value, r.unit)),
                None => fmt_num(r.value, r.unit),
            };
            let target = match r.target {
                Some(Target::AtLeast(t)) => format!("≥ {}", fmt_num(t, r.unit)),
                Some(Target::AtMost(t)) => format!("≤ {}", fmt_num(t, r.unit)),
                None => String::new(),
            };
            let base = r.baseline.map(|b| fmt_num(b, r.unit)).unwrap_or_default();
            let ratio = r.ratio().map(|x| format!("{x:.2}")).unwrap_or_default();
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {value} | {target} | {base} | {ratio} | {met} |",
                r.scenario, r.measure
            );
        }
        s
    }

    pub fn print(&self) {
        println!();
        println!("{}", self.table());
        for n in &self.notes {
            println!("- {n}");
        }
        if self.problems.is_empty() {
            println!("\nno correctness problems (no errors, no seq gaps, nothing lost)");
        } else {
            println!("\nPROBLEMS:");
            for p in &self.problems {
                println!("- {p}");
            }
        }
    }
}

/// Run the baselines and the chosen scenarios; never panics on a failed scenario (it becomes a
/// problem in the report).
pub fn run(o: &Options) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run_async(o))
}

async fn run_async(o: &Options) -> Report {
    let mut report = Report::default();
    report
        .notes
        .push(format!("storage backend: {}", server::backend_name()));
    server::raise_fd_limit();
    eprintln!(
        "load ({} mode, {} store): server {}, scenarios {:?}",
        o.mode,
        server::backend_name(),
        server::binary().display(),
        o.scenarios
    );
    let needs_bare = o.scenarios.iter().any(|s| {
        !matches!(
            s,
            Scenario::Durable
                | Scenario::Idle
                | Scenario::Soak
                | Scenario::LlmStream
                | Scenario::Cluster
        )
    });
    let b = if needs_bare {
        eprintln!("baseline: bare actix-web in this process");
        match scenarios::baselines(o, &mut report).await {
            Ok(b) => b,
            Err(e) => {
                report.problem(format!("baseline failed: {e:#}"));
                Default::default()
            }
        }
    } else {
        Default::default()
    };
    for s in &o.scenarios {
        eprintln!("scenario {s:?}");
        let r = match s {
            Scenario::Invoke => scenarios::invoke(o, &b, &mut report).await,
            Scenario::Hitl => scenarios::hitl(o, &b, &mut report).await,
            Scenario::Stream => scenarios::stream(o, &b, &mut report).await,
            Scenario::Idle => scenarios::idle(o, &mut report).await,
            Scenario::Durable => scenarios::durable(o, &mut report).await,
            Scenario::Cold => scenarios::cold(o, &b, &mut report).await,
            Scenario::Agui => agui::agui(o, &mut report).await,
            Scenario::Sse => sse::sse(o, &mut report).await,
            Scenario::OpenAi => openai::openai(o, &mut report).await,
            Scenario::Soak => soak::soak(o, &mut report).await,
            Scenario::LlmStream => llm_stream::llm_stream(o, &mut report).await,
            Scenario::Cluster => cluster::cluster(o, &mut report).await,
        };
        if let Err(e) = r {
            report.problem(format!("scenario {s:?} failed: {e:#}"));
        }
    }
    report
}
