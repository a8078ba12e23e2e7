//! Cluster mode (CONTRACT §9) with real servers on loopback: one PostgreSQL (a fresh database
//! per test on `PARLEY_TEST_POSTGRES_URL`), one NATS (`PARLEY_TEST_NATS_URL`, or a
//! `nats-server` the test starts itself when it must restart it) and three `parley serve`
//! nodes. Both variables are set by scripts/test; without them these tests fail, loudly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// The lease of the failover tests' nodes (short, so they are quick).
const LEASE_SECONDS: f64 = 2.0;
/// The lease of tests that need no failover: long, so that a node slowed down by a loaded
/// machine does not lose its leases (that is failover, tested on purpose elsewhere).
const STEADY_LEASE: f64 = 10.0;

fn is_end(e: &Value) -> bool {
    e["type"] == "RUN_FINISHED" || e["type"] == "RUN_ERROR"
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the cluster tests need a real PostgreSQL and NATS. Run them with \
             scripts/test (or: source scripts/lib/postgres.sh; pg_start DIR; and start \
             `nats-server -a 127.0.0.1 -p PORT`, exporting PARLEY_TEST_NATS_URL=nats://127.0.0.1:PORT)"
        )
    })
}

/// A new, empty database on the test server; its URL.
async fn fresh_database() -> String {
    let url = env("PARLEY_TEST_POSTGRES_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let name = format!("c_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

fn node(db: &str, nats: &str, name: &str, lease: f64) -> Server {
    Server::start_with(Options {
        storage_config: format!("backend = \"postgres\"\nurl = {db:?}\n"),
        extra_config: format!(
            "\n[cluster]\nnats_url = {nats:?}\nnode_id = {name:?}\nlease_seconds = {lease}\n"
        ),
        ..Default::default()
    })
}

/// Three nodes on one fresh database and `nats`, named `node-a-…`, `node-b-…`, `node-c-…`
/// (unique: tests running at once share the NATS server).
async fn three(nats: &str, lease: f64) -> Vec<Server> {
    let db = fresh_database().await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    ["a", "b", "c"]
        .iter()
        .map(|n| node(&db, nats, &format!("node-{n}-{run}"), lease))
        .collect()
}

fn interrupt_id(events: &[Value]) -> String {
    events.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
        .as_str()
        .expect("an interrupt")
        .to_string()
}

async fn subscribe(c: &mut Client, conv: &str) {
    c.ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
}

/// The stored events of `conv` as `(seq, event)`, read through `s`.
async fn stored(s: &Server, conv: &str) -> Vec<(u64, Value)> {
    let page = get_json(s, &format!("/api/conversations/{conv}/events?since=0")).await;
    page["items"]
        .as_array()
        .or_else(|| page["events"].as_array())
        .or_else(|| page.as_array())
        .unwrap_or_else(|| panic!("an event list: {page}"))
        .iter()
        .map(|e| (e["seq"].as_u64().expect("seq"), e["event"].clone()))
        .collect()
}

fn as_pairs(frames: &[Value]) -> Vec<(u64, Value)> {
    frames
        .iter()
        .map(|f| (f["seq"].as_u64().expect("seq"), f["event"].clone()))
        .collect()
}

fn signal(s: &Server, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(s.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig}");
}

async fn metric(s: &Server, name: &str) -> f64 {
    let text = metrics_text(s).await;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

#[tokio::test]
async fn cluster_every_subscriber_on_every_node_gets_every_event_once_in_order() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let health = get_json(b, "/healthz").await;
    let name = health["cluster"]["node"].as_str().unwrap_or_default();
    assert!(name.starts_with("node-b-"), "{health}");
    assert_eq!(health["cluster"]["natsConnected"], true, "{health}");

    let mut ca = Client::connect(a).await;
    let mut cb = Client::connect(b).await;
    let mut cc = Client::connect(c).await;
    // A page action and a card (an approval), both created through A (A owns them).
    let page = ca.create("page", "expense 12 EUR").await;
    let first_page = ca.run_events(&page).await;
    let card = ca.create("approval", "a desk").await;
    let first_card = ca.run_events(&card).await;
    let card_interrupt = interrupt_id(&first_card);
    for conv in [&page, &card] {
        subscribe(&mut cb, conv).await;
        subscribe(&mut cc, conv).await;
    }
    // B and C replay what A saw live.
    assert_eq!(cb.run_events(&page).await, first_page);
    assert_eq!(cc.run_events(&page).await, first_page);
    assert_eq!(cb.run_events(&card).await, first_card);
    assert_eq!(cc.run_events(&card).await, first_card);

    // Answered through C: forwarded to A, acked as if local.
    let ack = cc
        .ok(json!({"type": "send", "conversationId": page, "content": "submitted #77"}))
        .await;
    assert_eq!(ack["conversationId"], json!(page));
    let ack = cc
        .ok(json!({"type": "resume", "conversationId": card, "interruptId": card_interrupt, "action": "approve"}))
        .await;
    assert_eq!(ack["conversationId"], json!(card));
    // A wrong answer through C gets A's error, as a local one would.
    let code = cc
        .err(json!({"type": "resume", "conversationId": card, "interruptId": card_interrupt, "action": "approve"}))
        .await;
    assert_eq!(code, "interrupt_not_pending");

    for conv in [&page, &card] {
        let on_a = ca.run_events(conv).await;
        let on_b = cb.run_events(conv).await;
        let on_c = cc.run_events(conv).await;
        assert_eq!(on_a, on_b, "A and B saw the same second run");
        assert_eq!(on_a, on_c, "A and C saw the same second run");
        let first = if conv == &page {
            &first_page
        } else {
            &first_card
        };
        let mut all = first.clone();
        all.extend(on_a.clone());
        assert_contiguous(&all, 1);
        assert_eq!(
            as_pairs(&all),
            stored(b, conv).await,
            "live = replay, read on another node"
        );
        assert_eq!(on_a.last().unwrap()["event"]["type"], "RUN_FINISHED");
    }
    assert!(metric(c, "parley_cluster_forwarded_commands_total").await >= 3.0);
    assert!(metric(a, "parley_cluster_served_commands_total").await >= 3.0);
    let owned = get_json(a, "/healthz").await["cluster"]["ownedConversations"].clone();
    assert!(owned.as_u64().unwrap_or(0) >= 1, "{owned}");
}

#[tokio::test]
async fn cluster_a_second_node_with_the_same_id_refuses_to_start() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let db = fresh_database().await;
    let name = format!("node-dup-{}", uuid::Uuid::now_v7().simple());
    let first = node(&db, &nats, &name, STEADY_LEASE);
    // The same config (same node_id) again.
    let config = first.config.clone();
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run parley");
    assert!(!out.status.success(), "a duplicate node id must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_id"), "{err}");
}

#[tokio::test]
async fn cluster_a_frame_id_retried_on_another_node_is_recognised() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    let (b, c) = (&nodes[1], &nodes[2]);
    let frame = json!({"type": "send", "id": "k-cluster", "assistant": "chat", "content": "once"});
    let mut cb = Client::connect(b).await;
    cb.send_raw(&frame.to_string()).await;
    let ack = cb.reply("k-cluster").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let conv = ack["conversationId"].as_str().expect("id").to_string();
    cb.run_events(&conv).await;
    cb.close().await;

    // The same frame on C: the original ack, nothing applied twice.
    let mut cc = Client::connect(c).await;
    cc.send_raw(&frame.to_string()).await;
    assert_eq!(cc.reply("k-cluster").await, ack);
    // The same id with another frame: refused.
    let other = json!({"type": "send", "id": "k-cluster", "assistant": "chat", "content": "twice"});
    cc.send_raw(&other.to_string()).await;
    let err = cc.reply("k-cluster").await;
    assert_eq!(err["code"], "idempotency_key_reused", "{err}");
    // On an existing conversation, through a non-owner: the retry is recognised too.
    let again =
        json!({"type": "send", "id": "k-cluster-2", "conversationId": conv, "content": "more"});
    cc.send_raw(&again.to_string()).await;
    let first = cc.reply("k-cluster-2").await;
    assert_eq!(first["type"], "ack", "{first}");
    let mut ca = Client::connect(&nodes[0]).await;
    ca.send_raw(&again.to_string()).await;
    assert_eq!(ca.reply("k-cluster-2").await, first);
    let msgs = get_json(c, &format!("/api/conversations/{conv}/messages?limit=100")).await;
    let users: Vec<&Value> = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["role"] == "user")
        .collect();
    assert_eq!(users.len(), 2, "each message stored once: {msgs}");

    // Synchronous calls run where they arrive; a transient actor gives its lease up at once,
    // so the next call of the same conversation runs on another node.
    let invoke = |s: &Server, body: Value| {
        let url = s.http("/api/assistants/chat/invoke");
        async move {
            let r = http().post(url).json(&body).send().await.expect("invoke");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let (st, r) = invoke(&nodes[0], json!({"content": "first"})).await;
    assert_eq!(st, 200, "{r}");
    let c2 = r["conversationId"].as_str().expect("id").to_string();
    let (st, r) = invoke(c, json!({"content": "second", "conversationId": c2})).await;
    assert_eq!(st, 200, "{r}");
    let msgs = get_json(b, &format!("/api/conversations/{c2}/messages")).await;
    assert_eq!(msgs["items"].as_array().expect("items").len(), 4, "{msgs}");
}

#[tokio::test]
async fn cluster_sigkill_of_the_owner_paused_and_streaming() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let mut nodes = three(&nats, LEASE_SECONDS).await;
    let mut ca = Client::connect(&nodes[0]).await;
    let paused = ca.create("approval", "a lamp").await;
    let paused_events = ca.run_events(&paused).await;
    let iid = interrupt_id(&paused_events);
    let streaming = ca.create("slow", "glaciers").await;
    // A subscriber on B follows the stream; wait until it has seen streamed text.
    let mut cb = Client::connect(&nodes[1]).await;
    subscribe(&mut cb, &streaming).await;
    let seen = cb
        .events_until(&streaming, |e| {
            e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "glaciers"
        })
        .await;

    let _ = nodes[0].child.kill();
    let killed = Instant::now();
    let _ = nodes[0].child.wait();

    // The paused conversation resumes through C within the lease + 1 s.
    let mut cc = Client::connect(&nodes[2]).await;
    subscribe(&mut cc, &paused).await;
    assert_eq!(cc.events_until(&paused, is_end).await, paused_events);
    cc.ok(
        json!({"type": "resume", "conversationId": paused, "interruptId": iid, "action": "reject"}),
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs_f64(LEASE_SECONDS + 1.0),
        "resume after the owner died took {took:?}"
    );
    let after = cc.run_events(&paused).await;
    assert_eq!(
        after[0]["seq"].as_u64(),
        Some(paused_events.len() as u64 + 1)
    );
    assert_eq!(assistant_text(&after), "Rejected.");

    // The stream: once the dead owner's lease expired, a node adopts the conversation (no
    // request needed) and its run ends as after a single-node crash; B's subscriber sees it.
    let mut all = seen.clone();
    all.extend(cb.events_until(&streaming, is_end).await);
    let took = killed.elapsed();
    assert_eq!(
        all.last().unwrap()["event"]["code"],
        "interrupted",
        "{all:?}"
    );
    assert!(
        took <= Duration::from_secs_f64(LEASE_SECONDS * 2.0 + 3.0),
        "the interrupted run ended {took:?} after the owner died"
    );
    // Everything acknowledged is kept and the conversation goes on.
    let ack = cb
        .ok(json!({"type": "send", "conversationId": streaming, "content": "again"}))
        .await;
    assert_eq!(ack["conversationId"], json!(streaming));
    all.extend(cb.run_events(&streaming).await);
    assert_contiguous(&all, 1);
    let codes: Vec<&Value> = all
        .iter()
        .filter(|f| f["event"]["type"] == "RUN_ERROR")
        .map(|f| &f["event"]["code"])
        .collect();
    assert_eq!(codes, vec![&json!("interrupted")], "{all:?}");
    assert_eq!(all.last().unwrap()["event"]["type"], "RUN_FINISHED");
    assert_eq!(as_pairs(&all), stored(&nodes[2], &streaming).await);
    let msgs = get_json(
        &nodes[1],
        &format!("/api/conversations/{streaming}/messages?limit=100"),
    )
    .await;
    for text in ["glaciers", "again"] {
        assert!(
            msgs["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "user" && m["content"] == text),
            "acknowledged message {text:?} kept: {msgs}"
        );
    }
}

/// Conversations resumed at once in the takeover test (each socket sends its frames together).
const TAKEOVER_CONVERSATIONS: usize = 20;

/// Sends every resume of `convs` (conversation, interrupt) at once on `c`; the time from
/// `killed` to each ack, in the order they came. Any other answer fails the test.
async fn resume_all(c: &mut Client, convs: &[(String, String)], killed: Instant) -> Vec<Duration> {
    let mut ids = Vec::new();
    for (conv, iid) in convs {
        ids.push(
            c.frame(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "reject"}))
                .await,
        );
    }
    let mut took = Vec::new();
    for (id, (conv, _)) in ids.iter().zip(convs) {
        let r = c.reply(id).await;
        assert_eq!(
            r["type"], "ack",
            "resume of {conv} after the owner died: {r}"
        );
        took.push(killed.elapsed());
    }
    took
}

#[tokio::test]
async fn cluster_sigkill_of_an_owner_of_many_paused_conversations_all_resumed_at_once() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let mut nodes = three(&nats, LEASE_SECONDS).await;
    let mut ca = Client::connect(&nodes[0]).await;
    let mut convs = Vec::new();
    for i in 0..TAKEOVER_CONVERSATIONS {
        let conv = ca.create("approval", &format!("lamp {i}")).await;
        let events = ca.run_events(&conv).await;
        convs.push((conv, interrupt_id(&events), events.len() as u64));
    }
    // Half of them followed on B, half on C (so each node knows A holds them).
    let (mut cb, mut cc) = (
        Client::connect(&nodes[1]).await,
        Client::connect(&nodes[2]).await,
    );
    let mut halves: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
    for (i, (conv, iid, n)) in convs.iter().enumerate() {
        let c = if i % 2 == 0 { &mut cb } else { &mut cc };
        subscribe(c, conv).await;
        assert_eq!(c.run_events(conv).await.len() as u64, *n);
        halves[i % 2].push((conv.clone(), iid.clone()));
    }

    let _ = nodes[0].child.kill();
    let killed = Instant::now();
    let _ = nodes[0].child.wait();
    let (on_b, on_c) = tokio::join!(
        resume_all(&mut cb, &halves[0], killed),
        resume_all(&mut cc, &halves[1], killed)
    );
    let slowest = on_b.iter().chain(&on_c).max().copied().unwrap_or_default();
    // CONTRACT §9 / issue 17: every one within lease_seconds + 1 s of the kill.
    assert!(
        slowest <= Duration::from_secs_f64(LEASE_SECONDS + 1.0),
        "the slowest of {TAKEOVER_CONVERSATIONS} resumes after the owner died took {slowest:?} (B: {on_b:?}, C: {on_c:?})"
    );
    // Every resumed run goes on where it paused and ends as on a single node.
    for (i, (conv, _, n)) in convs.iter().enumerate() {
        let c = if i % 2 == 0 { &mut cb } else { &mut cc };
        let after = c.run_events(conv).await;
        assert_eq!(after[0]["seq"].as_u64(), Some(n + 1), "{conv}: {after:?}");
        assert_eq!(assistant_text(&after), "Rejected.", "{conv}");
    }
    let taken = metric(&nodes[1], "parley_cluster_claims_total").await
        + metric(&nodes[2], "parley_cluster_claims_total").await;
    assert!(
        taken >= TAKEOVER_CONVERSATIONS as f64,
        "B and C claimed them all: {taken}"
    );
}

#[tokio::test]
async fn cluster_a_keyed_resume_delivered_to_a_stopped_owner_is_applied_once_after_its_lease() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, LEASE_SECONDS).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ca = Client::connect(a).await;
    let conv = ca.create("approval", "a desk").await;
    let first = ca.run_events(&conv).await;
    let iid = interrupt_id(&first);
    let mut cb = Client::connect(b).await;
    subscribe(&mut cb, &conv).await;
    assert_eq!(cb.run_events(&conv).await, first);

    // A stopped process keeps its NATS connection: the forward is delivered and never
    // answered. The frame id makes it safe to apply elsewhere once A's lease has expired.
    signal(a, "STOP");
    let stopped = Instant::now();
    let ack = cb
        .ok(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"}))
        .await;
    let took = stopped.elapsed();
    assert_eq!(ack["conversationId"], json!(conv));
    assert!(
        took <= Duration::from_secs_f64(LEASE_SECONDS + 1.0),
        "the resume waited {took:?} (the forward timeout is 5 s)"
    );
    let second = cb.run_events(&conv).await;
    assert_eq!(second.last().unwrap()["event"]["type"], "RUN_FINISHED");

    // A wakes up and finds the forwarded resume in its socket: its actor's commit is refused
    // (fenced), so the resume was applied once, on B.
    signal(a, "CONT");
    let lost = async {
        loop {
            if metric(a, "parley_cluster_leases_lost_total").await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, lost)
        .await
        .expect("the old owner noticed it lost the lease");
    // Time for A to answer what waited in its socket (its answer goes nowhere).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all = first.clone();
    all.extend(second);
    assert_contiguous(&all, 1);
    assert_eq!(as_pairs(&all), stored(b, &conv).await, "applied once");
    let starts = all
        .iter()
        .filter(|f| f["event"]["type"] == "RUN_STARTED")
        .count();
    assert_eq!(starts, 2, "the first run and one resumed run: {all:?}");
}

#[tokio::test]
async fn cluster_a_paused_owner_past_its_lease_is_fenced_and_its_actor_stops() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, LEASE_SECONDS).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ca = Client::connect(a).await;
    let conv = ca.create("approval", "a chair").await;
    let first = ca.run_events(&conv).await;
    let iid = interrupt_id(&first);

    signal(a, "STOP");
    tokio::time::sleep(Duration::from_secs_f64(LEASE_SECONDS + 0.5)).await;
    // B takes over and answers the interrupt.
    let mut cb = Client::connect(b).await;
    subscribe(&mut cb, &conv).await;
    cb.events_until(&conv, is_end).await;
    let ack = cb
        .ok(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"}))
        .await;
    assert_eq!(ack["conversationId"], json!(conv));
    let second = cb.run_events(&conv).await;
    assert_eq!(second.last().unwrap()["event"]["type"], "RUN_FINISHED");
    signal(a, "CONT");

    // The old owner still has its actor; whatever it is asked now, it must not write: either
    // its renewal found the lease lost and stopped the actor, or the fence refuses the commit.
    // Either way nothing is stored there, and the command goes to the new owner.
    let ack = ca
        .ok(json!({"type": "send", "conversationId": conv, "content": "from the old owner"}))
        .await;
    assert_eq!(ack["conversationId"], json!(conv));
    let third = cb.run_events(&conv).await;
    assert_eq!(third.last().unwrap()["event"]["type"], "RUN_FINISHED");
    let lost = metric(a, "parley_cluster_leases_lost_total").await;
    assert!(lost >= 1.0, "the old owner noticed it lost the lease");
    let events = stored(b, &conv).await;
    let mut all = first.clone();
    all.extend(second);
    all.extend(third);
    assert_contiguous(&all, 1);
    assert_eq!(
        as_pairs(&all),
        events,
        "no duplicate or conflicting event: the log is what B's subscriber saw"
    );
    let log = a.stderr_log.lock().unwrap().join("\n");
    assert!(
        log.contains("lease lost") || log.contains("write refused"),
        "the old owner says why it stopped"
    );
}

/// A `nats-server` of the test's own (to restart it).
struct Nats {
    child: Option<Child>,
    port: u16,
}

impl Nats {
    fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut n = Nats { child: None, port };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("PARLEY_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (scripts/test installs it; or set PARLEY_TEST_NATS_SERVER): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn cluster_nats_restarted_mid_run_loses_nothing() {
    let mut nats = Nats::start();
    let nodes = three(&nats.url(), STEADY_LEASE).await;
    let mut ca = Client::connect(&nodes[0]).await;
    let conv = ca.create("slow", "rivers and lakes").await;
    let mut cb = Client::connect(&nodes[1]).await;
    subscribe(&mut cb, &conv).await;
    let mut seen = cb
        .events_until(&conv, |e| e["type"] == "TEXT_MESSAGE_CONTENT")
        .await;
    nats.restart();
    seen.extend(cb.run_events(&conv).await);
    assert_contiguous(&seen, 1);
    assert_eq!(seen.last().unwrap()["event"]["type"], "RUN_FINISHED");
    assert_eq!(as_pairs(&seen), stored(&nodes[2], &conv).await);
    // After the reconnect, forwarding works again.
    let mut cc = Client::connect(&nodes[2]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let id = cc
            .frame(json!({"type": "send", "conversationId": conv, "content": "still there?"}))
            .await;
        let r = cc.reply(&id).await;
        if r["type"] == "ack" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ack after NATS came back: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let more = cb.run_events(&conv).await;
    assert_eq!(
        more[0]["seq"].as_u64(),
        Some(seen.len() as u64 + 1),
        "the subscriber on B goes on without a gap"
    );
}

#[tokio::test]
async fn cluster_graceful_shutdown_hands_conversations_over_at_once() {
    // A long lease: a hand-over that waited for expiry would take 30 s.
    let nats = env("PARLEY_TEST_NATS_URL");
    let mut nodes = three(&nats, 30.0).await;
    let mut ca = Client::connect(&nodes[0]).await;
    let conv = ca.create("approval", "a shelf").await;
    let first = ca.run_events(&conv).await;
    let iid = interrupt_id(&first);
    ca.close().await;

    signal(&nodes[0], "TERM");
    let status = nodes[0].child.wait().expect("wait");
    assert!(status.success(), "clean exit: {status:?}");
    let stopped = Instant::now();
    let mut cb = Client::connect(&nodes[1]).await;
    subscribe(&mut cb, &conv).await;
    assert_eq!(cb.events_until(&conv, is_end).await, first);
    cb.ok(
        json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"}),
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "handed over without waiting for the 30 s lease: {took:?}"
    );
    let mut all = first.clone();
    all.extend(cb.run_events(&conv).await);
    assert_contiguous(&all, 1);
    assert_eq!(all.last().unwrap()["event"]["type"], "RUN_FINISHED");
}

#[tokio::test]
async fn cluster_retention_never_deletes_a_conversation_another_node_holds() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let db = fresh_database().await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let a = node(&db, &nats, &format!("ret-a-{run}"), STEADY_LEASE);
    let mut c = node(&db, &nats, &format!("ret-c-{run}"), STEADY_LEASE);
    // A conversation held by A (its actor is live there), and one C gives up when it stops.
    let mut ca = Client::connect(&a).await;
    let held = ca.create("chat", "keep me").await;
    ca.run_events(&held).await;
    let mut cc = Client::connect(&c).await;
    let free = cc.create("chat", "sweep me").await;
    cc.run_events(&free).await;
    cc.close().await;
    signal(&c, "TERM");
    assert!(c.child.wait().expect("wait").success());

    // B sweeps every second whatever finished more than about a second ago.
    let b = Server::start_with(Options {
        storage_config: format!(
            "backend = \"postgres\"\nurl = {db:?}\nretention_days = 0.00001\nsweep_interval_seconds = 1\n"
        ),
        extra_config: format!(
            "\n[cluster]\nnats_url = {nats:?}\nnode_id = \"ret-b-{run}\"\nlease_seconds = {STEADY_LEASE}\n"
        ),
        ..Default::default()
    });
    let gone = async {
        loop {
            let r = http()
                .get(b.http(&format!("/api/conversations/{free}")))
                .send()
                .await
                .expect("get");
            if r.status() == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("the conversation nobody holds is swept");
    // Swept in the same (or a later) sweep as `free`, had it not been A's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = get_json(&b, &format!("/api/conversations/{held}")).await;
    assert_eq!(kept["id"], json!(held), "{kept}");
    // And A goes on with it.
    let ack = ca
        .ok(json!({"type": "send", "conversationId": held, "content": "still here"}))
        .await;
    assert_eq!(ack["conversationId"], json!(held));
    assert_eq!(
        ca.run_events(&held).await.last().unwrap()["event"]["type"],
        "RUN_FINISHED"
    );
    assert!(metric(&b, "parley_conversations_swept_total").await >= 1.0);
}

/// `invoke` through `s`: its status and body.
async fn invoke(s: &Server, assistant: &str, body: Value) -> (u16, Value) {
    let url = s.http(&format!("/api/assistants/{assistant}/invoke"));
    let r = http().post(url).json(&body).send().await.expect("invoke");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.expect("json"))
}

#[tokio::test]
async fn cluster_an_invoke_continuing_a_conversation_another_node_holds_is_handed_over() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // Created through A's socket: A's actor holds it (idle, for its session timeout).
    let mut ca = Client::connect(a).await;
    let conv = ca.create("chat", "first").await;
    let mut seen = ca.run_events(&conv).await;
    let mut cb = Client::connect(b).await;
    subscribe(&mut cb, &conv).await;
    assert_eq!(cb.run_events(&conv).await, seen, "B replays what A saw");

    // A synchronous call through C: A hands the conversation over, C runs it.
    let began = Instant::now();
    let (st, r) = invoke(
        c,
        "chat",
        json!({"content": "second", "conversationId": conv}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["conversationId"], json!(conv), "{r}");
    assert!(!r["output"].is_null(), "{r}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "handed over, not waited out: {:?}",
        began.elapsed()
    );
    assert_eq!(metric(a, "parley_cluster_handed_over_total").await, 1.0);
    let second = cb.run_events(&conv).await;
    assert_eq!(second.last().unwrap()["event"]["type"], "RUN_FINISHED");
    assert_eq!(
        ca.run_events(&conv).await,
        second,
        "A's socket still follows it"
    );
    seen.extend(second);

    // A's socket still reaches the conversation (now forwarded to C), and B sees that too.
    let ack = ca
        .ok(json!({"type": "send", "conversationId": conv, "content": "third"}))
        .await;
    assert_eq!(ack["conversationId"], json!(conv));
    let third = cb.run_events(&conv).await;
    assert_eq!(
        ca.run_events(&conv).await,
        third,
        "A and B saw the same run"
    );
    seen.extend(third);
    assert_contiguous(&seen, 1);
    assert_eq!(as_pairs(&seen), stored(a, &conv).await, "live = replay");
    let msgs = get_json(b, &format!("/api/conversations/{conv}/messages?limit=100")).await;
    let users: Vec<&str> = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    // Newest first.
    assert_eq!(
        users,
        ["third", "second", "first"],
        "each stored once: {msgs}"
    );
}

#[tokio::test]
async fn cluster_an_invoke_meeting_a_run_active_on_another_node_follows_on_busy() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    let (a, c) = (&nodes[0], &nodes[2]);
    let mut ca = Client::connect(a).await;

    // `onBusy: reject` (the default): refused at once, A's run goes on untouched.
    let slow = ca.create("slow", "a long story").await;
    let began = Instant::now();
    let (st, r) = invoke(c, "slow", json!({"content": "now", "conversationId": slow})).await;
    assert_eq!(st, 409, "{r}");
    assert_eq!(r["error"]["code"], "conversation_busy", "{r}");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    let run = ca.run_events(&slow).await;
    assert_eq!(run.last().unwrap()["event"]["type"], "RUN_FINISHED");
    assert_eq!(metric(a, "parley_cluster_handed_over_total").await, 0.0);

    // `onBusy: enqueue`: the call waits for A's run to end, then runs on C.
    let queued = ca.create("queue", "one").await;
    let (st, r) = invoke(
        c,
        "queue",
        json!({"content": "two", "conversationId": queued}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let events = stored(c, &queued).await;
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| e["type"].as_str())
        .filter(|t| t.starts_with("RUN_"))
        .collect();
    assert_eq!(
        kinds,
        ["RUN_STARTED", "RUN_FINISHED", "RUN_STARTED", "RUN_FINISHED"],
        "the call's run after A's: {events:?}"
    );
    assert_eq!(metric(a, "parley_cluster_handed_over_total").await, 1.0);

    // A timeout shorter than the active run: `run_timeout`, and nothing of the call stored.
    let third = ca.create("queue", "three").await;
    let (st, r) = invoke(
        c,
        "queue",
        json!({"content": "never", "conversationId": third, "timeoutSeconds": 0.05}),
    )
    .await;
    assert_eq!(st, 504, "{r}");
    assert_eq!(r["error"]["code"], "run_timeout", "{r}");
    let run = ca.run_events(&third).await;
    assert_eq!(run.last().unwrap()["event"]["type"], "RUN_FINISHED");
    let msgs = get_json(a, &format!("/api/conversations/{third}/messages?limit=100")).await;
    assert!(!msgs.to_string().contains("never"), "{msgs}");
}

#[tokio::test]
async fn cluster_invokes_continuing_conversations_through_every_node_in_turn_all_succeed() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    // Eight programs, each continuing its own conversation, each call through the next node
    // (a load balancer's round robin): the conversation is handed over on every call.
    let clients = (0..8).map(|i| {
        let nodes = &nodes;
        async move {
            let (st, r) = invoke(&nodes[0], "chat", json!({"content": "call 0"})).await;
            assert_eq!(st, 200, "{r}");
            let conv = r["conversationId"].as_str().expect("id").to_string();
            for k in 1..=20 {
                let node = &nodes[(i + k) % 3];
                let body = json!({"content": format!("call {k}"), "conversationId": conv});
                let (st, r) = invoke(node, "chat", body).await;
                assert_eq!(st, 200, "client {i}, call {k}: {r}");
            }
            conv
        }
    });
    let convs = futures_util::future::join_all(clients).await;
    for conv in convs {
        let url = format!("/api/conversations/{conv}/events?since=0&limit=10000");
        let page = get_json(&nodes[1], &url).await;
        let events: Vec<(u64, Value)> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| (e["seq"].as_u64().expect("seq"), e["event"].clone()))
            .collect();
        let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "contiguous"
        );
        let runs = events
            .iter()
            .filter(|(_, e)| e["type"] == "RUN_FINISHED")
            .count();
        assert_eq!(runs, 21, "every call ran once");
    }
}

#[tokio::test]
async fn cluster_two_invokes_of_one_conversation_at_once_on_two_nodes_run_one_at_a_time() {
    let nats = env("PARLEY_TEST_NATS_URL");
    let nodes = three(&nats, STEADY_LEASE).await;
    let (st, r) = invoke(&nodes[2], "chat", json!({"content": "start"})).await;
    assert_eq!(st, 200, "{r}");
    let conv = r["conversationId"].as_str().expect("id").to_string();
    let mut ran = 1;
    for round in 0..10 {
        let body = json!({"content": format!("round {round}"), "conversationId": conv});
        let calls = [&nodes[0], &nodes[1]].map(|n| invoke(n, "chat", body.clone()));
        let answers = futures_util::future::join_all(calls).await;
        for (st, r) in &answers {
            // As on one node: the call that finds the other one running is told so.
            assert!(
                *st == 200 || (*st == 409 && r["error"]["code"] == "conversation_busy"),
                "round {round}: {st} {r}"
            );
        }
        let ok = answers.iter().filter(|(st, _)| *st == 200).count();
        assert!(ok >= 1, "round {round}: one of the two runs: {answers:?}");
        ran += ok;
    }
    let url = format!("/api/conversations/{conv}/events?since=0&limit=10000");
    let page = get_json(&nodes[2], &url).await;
    let finished = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["event"]["type"] == "RUN_FINISHED")
        .count();
    assert_eq!(
        finished, ran,
        "every call answered 200 ran once, no other did"
    );
}
