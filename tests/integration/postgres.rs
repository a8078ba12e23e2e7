//! The durability tests against PostgreSQL (`[storage] backend = "postgres"`): SIGKILL during a
//! stream and during a pause, restart, replay, resume; and export → import between redb and
//! PostgreSQL, both ways. Each test gets a database of its own on the server named by
//! `PARLEY_TEST_POSTGRES_URL` (set by scripts/test); without it these tests fail, loudly.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::*;

fn is_end(e: &Value) -> bool {
    e["type"] == "RUN_FINISHED" || e["type"] == "RUN_ERROR"
}

fn test_url() -> String {
    std::env::var("PARLEY_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "PARLEY_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a real server. \
             Run them with scripts/test (or: source scripts/lib/postgres.sh; pg_start DIR)"
        )
    })
}

/// A new, empty database on the test server; its URL.
async fn fresh_database() -> String {
    let url = test_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

fn pg_options(url: &str) -> Options {
    Options {
        storage_config: format!("backend = \"postgres\"\nurl = {url:?}\n"),
        ..Default::default()
    }
}

async fn start_conv(c: &mut Client, assistant: &str, content: &str) -> (String, Vec<Value>) {
    let ack = c
        .ok(json!({"type": "send", "assistant": assistant, "content": content}))
        .await;
    let conv = ack["conversationId"]
        .as_str()
        .expect("conversationId")
        .to_string();
    let events = c.run_events(&conv).await;
    (conv, events)
}

fn interrupt_id(events: &[Value]) -> String {
    events.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
        .as_str()
        .expect("an interrupt")
        .to_string()
}

#[tokio::test]
async fn pg_killed_mid_stream_and_paused_keep_everything_acked() {
    let s = Server::start_with(pg_options(&fresh_database().await));
    let mut c = Client::connect(&s).await;
    let (paused, paused_events) = start_conv(&mut c, "approval", "a desk").await;
    let iid = interrupt_id(&paused_events);
    let streaming = c.create("slow", "glaciers").await;
    let seen = c
        .events_until(&streaming, |e| {
            e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "glaciers"
        })
        .await;

    let s = s.crash_and_restart();
    let mut c = Client::connect(&s).await;
    // The stream: everything shown is replayed unchanged, then RUN_ERROR interrupted.
    c.ok(json!({"type": "subscribe", "conversationId": streaming, "since": 0}))
        .await;
    let replay = c
        .events_until(&streaming, |e| e["type"] == "RUN_ERROR")
        .await;
    assert_eq!(&replay[..seen.len()], &seen[..]);
    assert_contiguous(&replay, 1);
    assert_eq!(replay.last().unwrap()["event"]["code"], "interrupted");
    let msgs = get_json(&s, &format!("/api/conversations/{streaming}/messages")).await;
    assert!(
        msgs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "user" && m["content"] == "glaciers"),
        "{msgs}"
    );
    // The pause: still paused, replay equal to live, and the resume continues after the wait.
    let rec = get_json(&s, &format!("/api/conversations/{paused}")).await;
    assert_eq!(rec["status"], "paused");
    assert_eq!(rec["pendingInterrupts"][0]["id"], json!(iid));
    c.ok(json!({"type": "subscribe", "conversationId": paused, "since": 0}))
        .await;
    assert_eq!(c.events_until(&paused, is_end).await, paused_events);
    c.ok(
        json!({"type": "resume", "conversationId": paused, "interruptId": iid, "action": "reject"}),
    )
    .await;
    let after = c.run_events(&paused).await;
    assert_eq!(
        after[0]["seq"].as_u64(),
        Some(paused_events.len() as u64 + 1)
    );
    assert_eq!(assistant_text(&after), "Rejected.");

    // A clean restart keeps it all too.
    let s = s.restart();
    let rec = get_json(&s, &format!("/api/conversations/{paused}")).await;
    assert_eq!(rec["status"], "completed");
    assert_eq!(
        rec["lastSeq"].as_u64(),
        Some((paused_events.len() + after.len()) as u64)
    );
}

/// Runs `parley export|import` with `config` (plus `extra` args); panics with its output on
/// failure, or returns stdout.
fn parley(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run parley");
    assert!(
        out.status.success(),
        "parley {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parley_fails(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run parley");
    assert!(!out.status.success(), "parley {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What must survive a move: per conversation, its record, every event and every message.
async fn snapshot(s: &Server, convs: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for conv in convs {
        let mut rec = get_json(s, &format!("/api/conversations/{conv}")).await;
        rec.as_object_mut().unwrap().remove("updatedAt");
        out.push(rec);
        out.push(get_json(s, &format!("/api/conversations/{conv}/events?since=0")).await);
        out.push(get_json(s, &format!("/api/conversations/{conv}/messages?limit=100")).await);
    }
    out
}

/// A server with a paused and a finished conversation, stopped cleanly; their snapshot.
async fn populate(s: Server) -> (Server, Vec<String>, String, Vec<Value>) {
    let mut c = Client::connect(&s).await;
    let (paused, paused_events) = start_conv(&mut c, "approval", "a lamp").await;
    let iid = interrupt_id(&paused_events);
    let (done, _) = start_conv(&mut c, "chat", "hello there").await;
    c.close().await;
    let convs = vec![paused, done];
    let snap = snapshot(&s, &convs).await;
    (s, convs, iid, snap)
}

/// After a move: same snapshot, and the paused conversation resumes with the next seq.
async fn check_moved(s: &Server, convs: &[String], iid: &str, before: &[Value]) {
    assert_eq!(snapshot(s, convs).await, before);
    let mut c = Client::connect(s).await;
    let paused = &convs[0];
    c.ok(json!({"type": "subscribe", "conversationId": paused, "since": 0}))
        .await;
    let replay = c.events_until(paused, is_end).await;
    c.ok(json!({"type": "resume", "conversationId": paused, "interruptId": iid, "action": "approve"}))
        .await;
    let after = c.run_events(paused).await;
    assert_eq!(after[0]["seq"].as_u64(), Some(replay.len() as u64 + 1));
    assert_eq!(after.last().unwrap()["event"]["type"], "RUN_FINISHED");
}

/// SIGTERM once the server answers requests (so its signal handlers are installed), a clean
/// exit, and its data dir and config back.
async fn stop(mut s: Server) -> (tempfile::TempDir, std::path::PathBuf) {
    let health = http()
        .get(s.http("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    let pid = s.child.id().to_string();
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    assert!(s.child.wait().expect("wait").success());
    let data = std::mem::replace(&mut s.data, tempfile::tempdir().expect("tempdir"));
    (data, s.config.clone())
}

#[tokio::test]
async fn export_import_between_redb_and_postgres_both_ways() {
    // redb → file.
    let (s, convs, iid, snap) = populate(Server::start()).await;
    let (redb_dir, redb_config) = stop(s).await;
    let file = redb_dir.path().join("export.jsonl");
    let file = file.to_str().unwrap();
    let said = parley(&redb_config, &["export", file]);
    assert!(said.contains("conversations: 2"), "{said}");

    // file → PostgreSQL; a second import is refused (not empty), changing nothing.
    let url = fresh_database().await;
    let pg = Server::start_with(pg_options(&url));
    let (pg_dir, pg_config) = stop(pg).await;
    parley(&pg_config, &["import", file]);
    let refused = parley_fails(&pg_config, &["import", file]);
    assert!(refused.contains("not empty"), "{refused}");
    let garbage = pg_dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"kind\":\"nope\"}\n").unwrap();
    let fresh = fresh_database().await;
    let refused = parley_fails(
        &pg_config,
        &[
            "import",
            garbage.to_str().unwrap(),
            "--postgres-url",
            &fresh,
        ],
    );
    assert!(refused.contains("line 1"), "{refused}");

    let pg = Server::start_with(pg_options(&url));
    assert_eq!(snapshot(&pg, &convs).await, snap);
    // PostgreSQL → file → a new redb, before the resume changes anything.
    let (pg_dir2, pg_config) = stop(pg).await;
    let back = pg_dir2.path().join("back.jsonl");
    parley(&pg_config, &["export", back.to_str().unwrap()]);
    let pg = Server::start_with(pg_options(&url));
    check_moved(&pg, &convs, &iid, &snap).await;

    let redb = Server::start();
    let (redb2_dir, redb2_config) = stop(redb).await;
    parley(&redb2_config, &["import", back.to_str().unwrap()]);
    let redb = Server::spawn_again(redb2_dir, redb2_config);
    check_moved(&redb, &convs, &iid, &snap).await;
    drop(pg_dir);
}

/// A PostgreSQL cluster of the test's own (scripts/lib/postgres.sh), so that it can be stopped
/// and started without disturbing other tests. Stopped and removed on drop.
struct OwnCluster {
    dir: tempfile::TempDir,
    url: String,
    bin: String,
    user: String,
    port: String,
}

fn script(body: &str) -> String {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/postgres.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e; source {lib:?}; {body}"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{body}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl OwnCluster {
    fn start() -> OwnCluster {
        // Fails loudly, like every PostgreSQL test, where scripts/test was not used.
        test_url();
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = dir.path().join("pg");
        let said = script(&format!(
            "pg_start {pg:?}; echo \"$PARLEY_TEST_POSTGRES_URL $PARLEY_TEST_PG_BIN $PARLEY_TEST_PG_USER $PARLEY_TEST_PG_PORT\""
        ));
        let mut words = said.split_whitespace().map(str::to_owned);
        let mut next = || words.next().expect("pg_start output");
        OwnCluster {
            url: next(),
            bin: next(),
            user: next(),
            port: next(),
            dir,
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("pg/data");
        let pg_ctl = format!("{}/pg_ctl", self.bin);
        let mut all: Vec<String> = vec![pg_ctl, "-D".into(), data.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let me = Command::new("id").arg("-un").output().expect("id");
        let mut cmd = if String::from_utf8_lossy(&me.stdout).trim() == self.user {
            Command::new(&all[0])
        } else {
            let mut c = Command::new("runuser");
            c.args(["-u", &self.user, "--", &all[0]]);
            c
        };
        let status = cmd.args(&all[1..]).status().expect("pg_ctl");
        assert!(status.success(), "pg_ctl {args:?}");
    }

    fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    fn start_again(&self) {
        let pg = self.dir.path().join("pg");
        let log = pg.join("log").display().to_string();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            pg.display()
        );
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &opts, "start"]);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let pg = self.dir.path().join("pg");
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {:?}; pg_stop {pg:?}",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/postgres.sh")
            ))
            .status();
    }
}

/// Polls `/healthz` (always 200) until its `status` is `want`; its body.
async fn wait_for_health(s: &Server, want: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = http()
            .get(s.http("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(
            r.status(),
            200,
            "healthz is liveness: 200 even when degraded"
        );
        let body: Value = r.json().await.expect("json");
        if body["status"] == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "healthz not {want} after 30 s: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn assert_storage_unavailable(r: reqwest::Response) {
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
}

#[tokio::test]
async fn postgres_restart_while_serving_fails_cleanly_and_recovers() {
    let cluster = OwnCluster::start();
    let s = Server::start_with(pg_options(&cluster.url));
    let mut c = Client::connect(&s).await;
    let (done, done_events) = start_conv(&mut c, "chat", "before the outage").await;
    let (paused, paused_events) = start_conv(&mut c, "approval", "a mirror").await;
    let iid = interrupt_id(&paused_events);

    cluster.stop();
    // During the outage: /healthz says so (the idle writer's probe notices, no write needed),
    // /readyz takes the node out of rotation, and reads and writes fail with
    // storage_unavailable (503, Retry-After) in bounded time; the process stays up.
    let started = std::time::Instant::now();
    let health = wait_for_health(&s, "degraded").await;
    assert_eq!(health["storage"], "unavailable", "{health}");
    let ready = http().get(s.http("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let r = http()
        .get(s.http(&format!("/api/conversations/{done}/events?since=0")))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_storage_unavailable(r).await;
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .json(&json!({"content": "during the outage"}))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_storage_unavailable(r).await;
    let id = c
        .frame(json!({"type": "send", "assistant": "chat", "content": "during the outage"}))
        .await;
    let reply = c.reply(&id).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "storage_unavailable", "{reply}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    cluster.start_again();
    // Service comes back without restarting Parley; nothing acknowledged is lost.
    let mut back = false;
    for _ in 0..60 {
        let r = http()
            .get(s.http(&format!("/api/conversations/{done}")))
            .send()
            .await
            .expect("answer");
        if r.status().is_success() {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(back, "reads work again once PostgreSQL is back");
    let health = wait_for_health(&s, "ok").await;
    assert_eq!(health["storage"], "ok", "{health}");
    let mut c = Client::connect(&s).await;
    c.ok(json!({"type": "subscribe", "conversationId": done, "since": 0}))
        .await;
    assert_eq!(c.events_until(&done, is_end).await, done_events);
    let (after, events) = start_conv(&mut c, "chat", "after the outage").await;
    assert_eq!(events.last().unwrap()["event"]["type"], "RUN_FINISHED");
    assert_contiguous(&events, 1);
    assert!(!after.is_empty());
    c.ok(json!({"type": "subscribe", "conversationId": paused, "since": 0}))
        .await;
    assert_eq!(c.events_until(&paused, is_end).await, paused_events);
    c.ok(json!({"type": "resume", "conversationId": paused, "interruptId": iid, "action": "approve"}))
        .await;
    let resumed = c.run_events(&paused).await;
    assert_eq!(
        resumed[0]["seq"].as_u64(),
        Some(paused_events.len() as u64 + 1)
    );
    assert_eq!(resumed.last().unwrap()["event"]["type"], "RUN_FINISHED");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Retention on PostgreSQL: with a server retention of ~1.7 s, the sweeper (paging the store's
/// `idle_conversations`) deletes every finished conversation, and `/metrics` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_postgres_conversations() {
    let url = fresh_database().await;
    let mut options = pg_options(&url);
    options
        .storage_config
        .push_str("retention_days = 0.00002\nsweep_interval_seconds = 1\nsweep_batch = 2\n");
    let s = Server::start_with(options);
    let mut convs = Vec::new();
    for i in 0..5 {
        let r = http()
            .post(s.http("/api/assistants/chat/invoke"))
            .json(&json!({"content": format!("hi {i}")}))
            .send()
            .await
            .expect("invoke");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        convs.push(v["conversationId"].as_str().expect("id").to_owned());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let m = metrics_text(&s).await;
        if metric(&m, "parley_conversations_swept_total") == 5.0
            && metric(&m, "parley_stored_conversations") == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not swept in 40 s: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for c in &convs {
        let r = http()
            .get(s.http(&format!("/api/conversations/{c}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{c} still readable");
    }
    // And gone from the database itself, not only from the API.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    for table in ["conversations", "messages", "event_chunks", "checkpoints"] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{table} still has rows");
    }
}

/// Start-up while PostgreSQL is down: Parley waits for it (logging that it does), and serves
/// once it is up; with a short `connect_retry_seconds` and no database it exits with a clear
/// error instead of waiting forever.
#[tokio::test]
async fn startup_waits_for_postgres_then_gives_up_clearly() {
    let cluster = OwnCluster::start();
    cluster.stop();
    let options = pg_options(&cluster.url);
    let starting = std::thread::spawn(move || Server::start_with(options));
    std::thread::sleep(std::time::Duration::from_secs(2));
    cluster.start_again();
    let s = starting
        .join()
        .expect("the server started once PostgreSQL was up");
    assert!(
        s.stderr_log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("not reachable yet")),
        "the wait is logged"
    );
    let health = wait_for_health(&s, "ok").await;
    assert_eq!(health["storage"], "ok");
    let mut c = Client::connect(&s).await;
    let (_, events) = start_conv(&mut c, "chat", "after the wait").await;
    assert_eq!(events.last().unwrap()["event"]["type"], "RUN_FINISHED");
    drop(s);

    cluster.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\nbackend = \"postgres\"\nurl = {:?}\nconnect_retry_seconds = 1\n[assistants]\ndir = {:?}\n[llm.default]\nprovider = \"builtin\"\n[llm.slow]\nprovider = \"builtin\"\n[llm.broken]\nprovider = \"builtin\"\n",
            dir.path().join("db"),
            cluster.url,
            fixtures()
        ),
    )
    .expect("config");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run parley");
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening the PostgreSQL store") && stderr.contains("connect_retry_seconds"),
        "{stderr}"
    );
}

/// `parley export` from PostgreSQL beside a serving node, mid-stream: it neither waits for nor
/// disturbs the server, and the file is a snapshot: every conversation's events run from seq 1
/// without a gap, and the stream goes on to finish after the export.
#[tokio::test]
async fn export_from_postgres_while_serving_mid_stream() {
    let s = Server::start_with(pg_options(&fresh_database().await));
    let mut c = Client::connect(&s).await;
    let (done, _) = start_conv(&mut c, "chat", "before the export").await;
    let streaming = c.create("slow", "rivers").await;
    c.events_until(&streaming, |e| {
        e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "rivers"
    })
    .await;

    let file = s.data.path().join("live.jsonl");
    let said = parley(&s.config, &["export", file.to_str().unwrap()]);
    assert!(said.contains("conversations: 2"), "{said}");
    let text = std::fs::read_to_string(&file).expect("the export");
    let mut next_seq: std::collections::HashMap<String, u64> = Default::default();
    for line in text.lines().skip(1) {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        if v["kind"] == "events" {
            let conv = v["conversation"].as_str().unwrap().to_owned();
            let expected = next_seq.get(&conv).copied().unwrap_or(1);
            assert_eq!(v["firstSeq"].as_u64(), Some(expected), "{conv}: a gap");
            next_seq.insert(
                conv,
                expected + v["events"].as_array().unwrap().len() as u64,
            );
        }
    }
    assert!(next_seq.contains_key(&done) && next_seq.contains_key(&streaming));

    let rest = c.events_until(&streaming, is_end).await;
    assert_eq!(rest.last().unwrap()["event"]["type"], "RUN_FINISHED");
}
