//! Scenario 12, `cluster`: three `parley serve` nodes sharing one PostgreSQL schema and one NATS
//! server (CONTRACT §9, docs/cluster.md), measured beside a single-node PostgreSQL server started
//! in the same run.
//!
//! - PostgreSQL: the run's `--backend postgres` URL, else `PARLEY_POSTGRES_URL` or
//!   `PARLEY_TEST_POSTGRES_URL` (this scenario puts the whole run on PostgreSQL); NATS:
//!   `PARLEY_TEST_NATS_URL`. Without them the scenario fails with the commands that start them
//!   (scripts/lib/postgres.sh, scripts/lib/nats.sh).
//! - Rows: (1) invoke throughput with connection `i` on node `i % 3`, next to one single node on
//!   PostgreSQL with the same connections; (2) HITL round trip with the conversation owned by
//!   node A and the socket that answers on node B (the resume is forwarded to A over NATS, the
//!   events relayed back); (1b) `invoke` continuing a conversation, every call through the node
//!   that holds it or each through the next node (a hand-over per call); (3) takeover: paused conversations owned by A, A gets SIGKILL, each
//!   is resumed through B or C; time from the kill to each resume's ack.
//! - Rows 1 and 2 run on nodes with a 10 s lease (a loaded machine must not turn them into
//!   failovers); row 3 on three fresh nodes with a 2 s lease.
//! - Correctness problems (errors, seq gaps, a resumed run that does not finish, a node that
//!   does not stop cleanly) go to [`Report::problems`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use serde_json::{json, Value};

use super::client::{WsClient, PATIENCE};
use super::scenarios::{http_load, metric, note_errors};
use super::server::{self, Extra, Home, Parley};
use super::stats::{Samples, Tally, Window};
use super::{Options, Report, Row, Target, Unit};

/// The lease of the throughput and HITL nodes: long, so that load does not cause failovers.
const STEADY_LEASE: f64 = 10.0;
/// The lease of the takeover nodes: short, as a deployment that wants fast failover sets it.
const TAKEOVER_LEASE: f64 = 2.0;
const INVOKE_PATH: &str = "/api/assistants/bench_auto/invoke";
const COMPLETED: &str = "parley_runs_total{status=\"completed\"}";

const HOW_TO_START: &str = "start them with: source scripts/lib/postgres.sh; pg_start DIR; \
     source scripts/lib/nats.sh; nats_start DIR2 (they export PARLEY_TEST_POSTGRES_URL and \
     PARLEY_TEST_NATS_URL)";

/// Puts the run on PostgreSQL (unless `--backend postgres` already did): the nodes of a cluster
/// share one database, and the single-node comparison must use the same backend.
/// Also checks that NATS is named, so a run fails before its first scenario, not at this one.
pub fn ensure_postgres() -> Result<(), String> {
    nats_url().map_err(|e| e.to_string())?;
    if server::backend_name() == "postgres" {
        return Ok(());
    }
    let url = std::env::var("PARLEY_POSTGRES_URL")
        .or_else(|_| std::env::var("PARLEY_TEST_POSTGRES_URL"))
        .map_err(|_| {
            format!("scenario 12 (cluster) needs PostgreSQL in PARLEY_TEST_POSTGRES_URL and NATS in PARLEY_TEST_NATS_URL; {HOW_TO_START}")
        })?;
    server::use_postgres(url);
    Ok(())
}

fn nats_url() -> anyhow::Result<String> {
    std::env::var("PARLEY_TEST_NATS_URL").map_err(|_| {
        anyhow!("scenario 12 (cluster) needs NATS in PARLEY_TEST_NATS_URL; {HOW_TO_START}")
    })
}

/// Three nodes `bench-a-…`, `bench-b-…`, `bench-c-…` on one fresh schema, started one after the
/// other (the first creates the schema).
fn start_cluster(lease: f64) -> anyhow::Result<Vec<Parley>> {
    let nats = nats_url()?;
    let first = Home::new()?;
    let homes = [first.sharing_schema()?, first.sharing_schema()?, first];
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut nodes = Vec::new();
    for (home, name) in homes.iter().zip(["a", "b", "c"]) {
        let sections = format!(
            "[cluster]\nnats_url = {nats:?}\nnode_id = \"bench-{name}-{run}\"\nlease_seconds = {lease}\n"
        );
        let node = home
            .start_with(&Extra {
                sections,
                ..Default::default()
            })
            .with_context(|| format!("starting cluster node {name}"))?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Stops `nodes` with SIGTERM; a node that does not exit cleanly is a problem.
fn stop_all(nodes: Vec<Parley>, report: &mut Report) {
    for (i, mut n) in nodes.into_iter().enumerate() {
        if let Some(exit) = n.exited() {
            report.problem(format!("12: node {i} died: {exit}"));
            continue;
        }
        let warnings = n.warnings();
        if let Some(first) = warnings.first() {
            report.note(format!(
                "12: node {i} logged {} warning(s); the first: {first}",
                warnings.len()
            ));
        }
        if let Err(e) = n.stop() {
            report.problem(format!("12: node {i} did not stop cleanly: {e:#}"));
        }
    }
}

pub async fn cluster(o: &Options, report: &mut Report) -> anyhow::Result<()> {
    ensure_postgres().map_err(|e| anyhow!(e))?;
    if !o.takeover_only {
        let nodes = start_cluster(STEADY_LEASE)?;
        let r = async {
            invoke_rows(o, &nodes, report).await?;
            continue_rows(o, &nodes, report).await?;
            hitl_rows(o, &nodes, report).await
        }
        .await;
        stop_all(nodes, report);
        r?;
    }
    // At the kill: a forward that reaches NATS before it has noticed the dead node's closed
    // connection is delivered to nobody and waits for the forward timeout (max(lease, 5 s)), then
    // answers conversation_busy (seen in debug runs: ~5.1 s). Half a second later NATS answers
    // "no responders" at once and only the lease expiry is left to wait for.
    takeover_rows(o, Duration::ZERO, report).await?;
    takeover_rows(o, Duration::from_millis(500), report).await
}

/// A `parley_cluster_*` value of a node's `/metrics` (they carry a `node` label).
async fn cluster_metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no {name} in /metrics of {addr}"))
}

// ---- 1. invoke spread over the nodes -----------------------------------------------------------

async fn invoke_load(addrs: &[SocketAddr], connections: usize, w: Window) -> Tally {
    let body = Bytes::from_static(br#"{"content":"hi"}"#);
    let expect = r#""status":"completed""#;
    // Connection i goes to node i % n: node k gets the connections ≡ k (mod n).
    let n = addrs.len();
    let loads = addrs.iter().enumerate().map(|(k, addr)| {
        let mine = (0..connections).filter(|i| i % n == k).count();
        http_load(*addr, INVOKE_PATH, body.clone(), mine, w, expect)
    });
    let mut all = Tally::default();
    for t in futures_util::future::join_all(loads).await {
        all.merge(t);
    }
    all
}

async fn invoke_rows(o: &Options, nodes: &[Parley], report: &mut Report) -> anyhow::Result<()> {
    // The single-node PostgreSQL figure of this run, on a schema of its own.
    let home = Home::new()?;
    let single = home.start()?;
    let w = Window::after(o.warmup, o.duration);
    let t = invoke_load(&[single.addr], o.invoke_connections, w).await;
    single.stop()?;
    note_errors(report, "12 invoke, single PostgreSQL node", &t);
    let single_rps = t.ops as f64 / w.seconds();
    report.row(Row::new(
        "12",
        format!(
            "single node on PostgreSQL, invoke, {} connections: requests/s",
            o.invoke_connections
        ),
        single_rps,
        Unit::PerSec,
    ));

    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let w = Window::after(o.warmup, o.duration);
    let mut t = invoke_load(&addrs, o.invoke_connections, w).await;
    note_errors(report, "12 invoke, 3 nodes", &t);
    report.row(
        Row::new(
            "12",
            format!(
                "3 nodes, invoke, {} connections round robin over the nodes: requests/s (baseline: the single node)",
                o.invoke_connections
            ),
            t.ops as f64 / w.seconds(),
            Unit::PerSec,
        )
        .baseline(single_rps),
    );
    report.row(
        Row::new(
            "12",
            "3 nodes, invoke: p50 / p99 latency".into(),
            t.samples.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(t.samples.percentile_ms(50.0)),
    );
    let mut served = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let n = metric(*a, COMPLETED).await.unwrap_or(0.0);
        if n < 1.0 && o.invoke_connections >= addrs.len() {
            report.problem(format!("12 invoke: node {i} completed no run"));
        }
        served.push(format!("{n:.0}"));
    }
    report.note(format!(
        "12: invoke runs completed per node (a, b, c): {}; each node runs the calls it receives",
        served.join(", ")
    ));
    Ok(())
}

// ---- 1b. invoke continuing a conversation, through the same node or the next one ------------

/// Clients that each continue one conversation with `invoke`, one call after another.
const CONTINUING_CLIENTS: usize = 8;

/// One `invoke` through `addr` (continuing `conv` if given); the conversation's id.
async fn invoke_once(
    http: &reqwest::Client,
    addr: SocketAddr,
    conv: Option<&str>,
) -> anyhow::Result<String> {
    let mut body = json!({"content": "again"});
    if let Some(c) = conv {
        body["conversationId"] = json!(c);
    }
    let r = http
        .post(format!("http://{addr}{INVOKE_PATH}"))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("invoke answered {status}: {v}");
    }
    v["conversationId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no conversationId in {v}"))
}

/// Each client continues its own conversation for the window: every call through node A
/// (`hop = false`), or each call through the next node (`hop = true`: the node holding the
/// conversation hands it over, docs/cluster.md). Latency samples and errors.
async fn continuing(addrs: &[SocketAddr], hop: bool, w: Window) -> (Samples, Vec<String>) {
    let clients = (0..CONTINUING_CLIENTS).map(|i| async move {
        let http = reqwest::Client::new();
        let mut samples = Samples::default();
        let conv = invoke_once(&http, addrs[0], None).await?;
        let mut k = i;
        while !w.over() {
            k += 1;
            let addr = if hop {
                addrs[k % addrs.len()]
            } else {
                addrs[0]
            };
            let began = Instant::now();
            invoke_once(&http, addr, Some(&conv)).await?;
            if w.counts(began, Instant::now()) {
                samples.push(began.elapsed());
            }
        }
        anyhow::Ok(samples)
    });
    let mut all = Samples::default();
    let mut errors = Vec::new();
    for r in futures_util::future::join_all(clients).await {
        match r {
            Ok(s) => all.merge(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (all, errors)
}

async fn continue_rows(o: &Options, nodes: &[Parley], report: &mut Report) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    for (hop, what) in [
        (false, "every call through the node that holds it"),
        (
            true,
            "each call through the next node (handed over every call)",
        ),
    ] {
        let w = Window::after(o.warmup, o.duration);
        let (mut s, errors) = continuing(&addrs, hop, w).await;
        for e in errors {
            report.problem(format!("12 invoke continuing ({what}): {e}"));
        }
        report.row(
            Row::new(
                "12",
                format!("3 nodes, invoke continuing a conversation, {CONTINUING_CLIENTS} clients, {what}: p50 / p99 latency"),
                s.percentile_ms(99.0),
                Unit::Ms,
            )
            .with_p50(s.percentile_ms(50.0)),
        );
    }
    let handed: f64 = futures_util::future::join_all(
        addrs
            .iter()
            .map(|a| cluster_metric(*a, "parley_cluster_handed_over_total")),
    )
    .await
    .into_iter()
    .filter_map(Result::ok)
    .sum();
    report.note(format!(
        "12: conversations handed over between nodes for a synchronous call: {handed:.0}"
    ));
    Ok(())
}

// ---- a WebSocket that follows several conversations --------------------------------------------

/// A paused conversation: (conversation, interrupt id, seq of the pause's `RUN_FINISHED`).
type Paused = (String, String, u64);

/// How a run segment ended, seen on a socket.
#[derive(Debug, Clone)]
struct End {
    seq: u64,
    interrupt: Option<String>,
    error: bool,
}

/// A socket that sends frames with fresh ids, follows the events of any number of
/// conversations (checking each one's seqs) and remembers where run segments ended.
struct Sock {
    ws: WsClient,
    prefix: String,
    next: u64,
    last: HashMap<String, u64>,
    ends: HashMap<String, Vec<End>>,
    gaps: u64,
}

impl Sock {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Sock> {
        Ok(Sock {
            ws: WsClient::connect(addr, "/ws").await?,
            prefix: uuid::Uuid::now_v7().simple().to_string(),
            next: 0,
            last: HashMap::new(),
            ends: HashMap::new(),
            gaps: 0,
        })
    }

    /// One frame; an event updates the seq check and the run ends.
    async fn read(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        let text = self.ws.next_text(deadline).await?;
        let f: Value = serde_json::from_str(text.as_str())
            .with_context(|| format!("unreadable frame {text}"))?;
        if f["type"] == "event" {
            let conv = f["conversationId"]
                .as_str()
                .ok_or_else(|| anyhow!("an event without conversationId: {text}"))?;
            let seq = f["seq"]
                .as_u64()
                .ok_or_else(|| anyhow!("an event without seq: {text}"))?;
            let last = self.last.entry(conv.to_string()).or_insert(0);
            if seq != *last + 1 {
                self.gaps += 1;
            }
            *last = seq;
            let ev = &f["event"];
            if ev["type"] == "RUN_FINISHED" || ev["type"] == "RUN_ERROR" {
                let interrupt = (ev["outcome"]["type"] == "interrupt")
                    .then(|| ev["outcome"]["interrupts"][0]["id"].as_str())
                    .flatten()
                    .map(str::to_string);
                self.ends.entry(conv.to_string()).or_default().push(End {
                    seq,
                    interrupt,
                    error: ev["type"] == "RUN_ERROR",
                });
            }
        }
        Ok(f)
    }

    /// Sends `frame` with a fresh id; returns the id.
    async fn send(&mut self, mut frame: Value) -> anyhow::Result<String> {
        self.next += 1;
        let id = format!("{}-{}", self.prefix, self.next);
        frame["id"] = json!(id);
        self.ws.send_text(frame.to_string()).await?;
        Ok(id)
    }

    /// The answer to frame `id`: its ack, or its error as an error.
    async fn answer(&mut self, id: &str, deadline: Instant) -> anyhow::Result<Value> {
        loop {
            let f = self.read(deadline).await?;
            let to_me = f["id"].as_str() == Some(id);
            match f["type"].as_str() {
                Some("ack") if to_me => return Ok(f),
                Some("error") if to_me || f["id"].is_null() => {
                    bail!("error {}: {}", f["code"], f["message"])
                }
                _ => {}
            }
        }
    }

    async fn request(&mut self, frame: Value) -> anyhow::Result<Value> {
        let id = self.send(frame).await?;
        self.answer(&id, Instant::now() + PATIENCE).await
    }

    /// The first run end of `conv` after seq `after`.
    async fn end_after(&mut self, conv: &str, after: u64) -> anyhow::Result<End> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .ends
                .get(conv)
                .and_then(|v| v.iter().find(|e| e.seq > after));
            if let Some(e) = found {
                return Ok(e.clone());
            }
            self.read(deadline)
                .await
                .with_context(|| format!("waiting for the end of a run of {conv} after {after}"))?;
        }
    }

    /// Starts a `bench_hitl` conversation and waits for its pause.
    async fn paused(&mut self, content: &str) -> anyhow::Result<Paused> {
        let ack = self
            .request(json!({"type": "send", "assistant": "bench_hitl", "content": content}))
            .await?;
        let conv = ack["conversationId"]
            .as_str()
            .ok_or_else(|| anyhow!("an ack without conversationId: {ack}"))?
            .to_string();
        let end = self.end_after(&conv, 0).await?;
        let iid = end
            .interrupt
            .ok_or_else(|| anyhow!("the run of {conv} did not pause"))?;
        Ok((conv, iid, end.seq))
    }
}

fn when(delay: Duration) -> String {
    if delay.is_zero() {
        "at the kill".into()
    } else {
        format!("{} ms after the kill", delay.as_millis())
    }
}

fn resume(conv: &str, iid: &str) -> Value {
    json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})
}

// ---- 2. HITL with the socket on a non-owner node -----------------------------------------------

async fn hitl_rows(o: &Options, nodes: &[Parley], report: &mut Report) -> anyhow::Result<()> {
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let forwarded0 = cluster_metric(b, "parley_cluster_forwarded_commands_total").await?;
    let mut sa = Sock::connect(a).await?;
    let mut sb = Sock::connect(b).await?;
    let (conv, mut iid, mut paused_at) = sa.paused("pay the taxi").await?;
    sb.request(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await?;
    let mut samples = Samples::default();
    let w = Window::after(o.warmup, o.duration);
    while !w.over() {
        // B has seen the pause (as a user would) before answering it.
        sb.end_after(&conv, paused_at - 1).await?;
        let began = Instant::now();
        sb.request(resume(&conv, &iid)).await?;
        let done = sb.end_after(&conv, paused_at).await?;
        let now = Instant::now();
        if done.error || done.interrupt.is_some() {
            bail!("the resumed run of {conv} did not finish: {done:?}");
        }
        if w.counts(began, now) {
            samples.push(now - began);
        }
        // The next pause, asked for through A (the owner).
        sa.request(json!({"type": "send", "conversationId": conv, "content": "again"}))
            .await?;
        let next = sa.end_after(&conv, done.seq).await?;
        iid = next
            .interrupt
            .ok_or_else(|| anyhow!("the run of {conv} did not pause again"))?;
        paused_at = next.seq;
    }
    let gaps = sa.gaps + sb.gaps;
    if gaps > 0 {
        report.problem(format!("12 HITL across nodes: {gaps} seq gap(s)"));
    }
    let forwarded =
        cluster_metric(b, "parley_cluster_forwarded_commands_total").await? - forwarded0;
    if forwarded < samples.len() as f64 {
        report.problem(format!(
            "12 HITL: node B forwarded {forwarded} commands for {} resumes: the socket's node owned the conversation",
            samples.len()
        ));
    }
    if samples.is_empty() {
        report.problem("12 HITL: no round trip in the window".into());
    }
    report.row(
        Row::new(
            "12",
            "HITL, owner A, socket on B: resume → ack → RUN_FINISHED on B: p50".into(),
            samples.percentile_ms(50.0),
            Unit::Ms,
        )
        .target(Target::AtMost(5.0)),
    );
    report.row(Row::new(
        "12",
        "same: p99".into(),
        samples.percentile_ms(99.0),
        Unit::Ms,
    ));
    report.note(format!(
        "12: {} HITL round trips on B; each resume is forwarded to the owner A (NATS request/reply) and its events relayed back to B (NATS, gaps filled from PostgreSQL); the next pause is asked for through A",
        samples.len()
    ));
    sa.ws.close().await;
    sb.ws.close().await;
    Ok(())
}

// ---- 3. takeover after SIGKILL of the owner ----------------------------------------------------

/// Resumes `convs` (conversation, interrupt) through `s`, all at once; the time from `killed`
/// to each ack. A `conversation_busy` answer (the dead owner's lease had not expired when the
/// command gave up) is retried with a new frame id.
async fn resume_all(
    s: &mut Sock,
    convs: &[Paused],
    killed: Instant,
    give_up: Instant,
) -> anyhow::Result<(Samples, u64)> {
    let mut pending: HashMap<String, usize> = HashMap::new();
    for (i, (conv, iid, _)) in convs.iter().enumerate() {
        pending.insert(s.send(resume(conv, iid)).await?, i);
    }
    let mut samples = Samples::default();
    let mut retries = 0;
    while !pending.is_empty() {
        let f = s.read(give_up).await.context("waiting for resume acks")?;
        let Some(i) = f["id"].as_str().and_then(|id| pending.remove(id)) else {
            continue;
        };
        match f["type"].as_str() {
            Some("ack") => samples.push(killed.elapsed()),
            Some("error") if f["code"] == "conversation_busy" => {
                retries += 1;
                let (conv, iid, _) = &convs[i];
                pending.insert(s.send(resume(conv, iid)).await?, i);
            }
            _ => bail!("resume of {}: {f}", convs[i].0),
        }
    }
    Ok((samples, retries))
}

/// `n` paused conversations created through `a`, which must report owning them.
async fn paused_on(a: SocketAddr, n: usize, report: &mut Report) -> anyhow::Result<Vec<Paused>> {
    let mut sa = Sock::connect(a).await?;
    let mut paused = Vec::new();
    for i in 0..n {
        paused.push(sa.paused(&format!("a lamp #{i}")).await?);
    }
    let health: Value = reqwest::get(format!("http://{a}/healthz"))
        .await?
        .json()
        .await?;
    let owned = health["cluster"]["ownedConversations"]
        .as_u64()
        .unwrap_or(0);
    if owned < n as u64 {
        report.problem(format!(
            "12 takeover: node A owns {owned} conversations, expected at least {n}: {health}"
        ));
    }
    sa.ws.close().await;
    Ok(paused)
}

/// Paused conversations owned by A; SIGKILL of A; after `delay`, every one is resumed through B
/// or C. Times are from the kill.
async fn takeover_rows(o: &Options, delay: Duration, report: &mut Report) -> anyhow::Result<()> {
    let mut nodes = start_cluster(TAKEOVER_LEASE)?;
    let n = o.cluster_paused.max(1);
    let paused = paused_on(nodes[0].addr, n, report).await?;
    // Subscribers on B and C (alternately), before the kill.
    let on_b: Vec<Paused> = paused.iter().step_by(2).cloned().collect();
    let on_c: Vec<Paused> = paused.iter().skip(1).step_by(2).cloned().collect();
    let mut sb = Sock::connect(nodes[1].addr).await?;
    let mut sc = Sock::connect(nodes[2].addr).await?;
    for (s, convs) in [(&mut sb, &on_b), (&mut sc, &on_c)] {
        for (conv, _, _) in convs {
            s.request(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
                .await?;
        }
    }

    // SAFETY: kill(2) with the pid of a child we own and have not reaped.
    unsafe {
        libc::kill(nodes[0].pid() as libc::pid_t, libc::SIGKILL);
    }
    let killed = Instant::now();
    tokio::time::sleep(delay).await;
    let give_up = killed + Duration::from_secs_f64(TAKEOVER_LEASE * 3.0) + PATIENCE;
    let (rb, rc) = tokio::join!(
        resume_all(&mut sb, &on_b, killed, give_up),
        resume_all(&mut sc, &on_c, killed, give_up)
    );
    let (mut samples, retries) = rb?;
    let (more, retries_c) = rc?;
    samples.merge(more);

    // Every resumed run finishes, seen by the socket that resumed it.
    for (s, convs) in [(&mut sb, &on_b), (&mut sc, &on_c)] {
        for (conv, _, at) in convs {
            let end = s.end_after(conv, *at).await?;
            if end.error || end.interrupt.is_some() {
                report.problem(format!(
                    "12 takeover: the resumed run of {conv} did not finish: {end:?}"
                ));
            }
        }
    }
    let gaps = sb.gaps + sc.gaps;
    if gaps > 0 {
        report.problem(format!("12 takeover: {gaps} seq gap(s)"));
    }
    let target_ms = (TAKEOVER_LEASE + 1.0) * 1e3;
    report.row(
        Row::new(
            "12",
            format!(
                "takeover after SIGKILL of the owner (lease_seconds = {TAKEOVER_LEASE}), {n} paused conversations resumed through B and C {}: kill → ack p50 / p99",
                when(delay)
            ),
            samples.percentile_ms(99.0),
            Unit::Ms,
        )
        .with_p50(samples.percentile_ms(50.0))
        .target(Target::AtMost(target_ms)),
    );
    report.row(Row::new(
        "12",
        format!("takeover, resumes sent {}: kill → ack, max", when(delay)),
        samples.max_ms(),
        Unit::Ms,
    ));
    report.note(format!(
        "12: takeover, resumes sent {}: {} resumes acknowledged, {} answered conversation_busy and were retried; LangGraph's sweeper re-queues a dead worker's runs after up to 2 minutes",
        when(delay),
        samples.len(),
        retries + retries_c
    ));
    sb.ws.close().await;
    sc.ws.close().await;
    let dead = nodes.remove(0);
    drop(dead);
    stop_all(nodes, report);
    Ok(())
}
