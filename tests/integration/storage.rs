//! Storage faults against the real binary (issue 18, defect 1): the data directory on a small
//! tmpfs the test mounts, filled up, then freed. Writes answer `storage_unavailable` (503 with
//! `Retry-After`) while the disk is full, reads are served, `/healthz` says degraded and
//! `/readyz` 503; once space is freed writes work again without a restart.
//!
//! Mounting needs CAP_SYS_ADMIN; where the machine forbids it the test says so and returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a message) when this machine does not allow mounting.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes 64 KiB chunks into `path` until the file system refuses (ENOSPC).
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // Also the last partial blocks.
    while f.write_all(&[7u8; 512]).is_ok() {}
    let _ = f.sync_all();
    written
}

async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value, bool) {
    let mut req = http().request(method.parse().expect("method"), s.http(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    (status, r.json().await.unwrap_or(Value::Null), retry_after)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_storage_unavailable_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount("20m") else {
        return;
    };
    let data: PathBuf = fs.path().join("db");
    let s = Server::start_with(Options {
        data_dir: Some(data),
        ..Options::default()
    });
    let invoke = |content: &str| json!({"content": content});

    let (st, first, _) = call(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        Some(invoke("before")),
    )
    .await;
    assert_eq!(st, 200, "{first}");
    let conv = first["conversationId"].as_str().expect("id").to_string();

    // Fill the file system, then write until the store refuses (redb may still have free pages).
    let filler = fs.path().join("filler");
    fill(&filler);
    let mut refused = None;
    for i in 0..300 {
        let (st, body, retry_after) = call(
            &s,
            "POST",
            "/api/assistants/chat/invoke",
            Some(invoke(&format!("fill {i} {}", "x".repeat(4000)))),
        )
        .await;
        match st {
            200 => continue,
            503 => {
                refused = Some((body, retry_after));
                break;
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    let (body, retry_after) = refused.expect("the full disk never refused a write");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    assert!(retry_after, "503 storage_unavailable without Retry-After");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("space"),
        "raw I/O error on the wire: {message}"
    );

    // Other writes are refused the same way; nothing is a 500.
    let (st, body, _) = call(
        &s,
        "PATCH",
        &format!("/api/conversations/{conv}"),
        Some(json!({"title": "renamed while full"})),
    )
    .await;
    assert!(st == 503 || st == 200, "rename on a full disk: {st} {body}");
    if st == 503 {
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    }

    // Health says degraded, readiness 503, metrics count the failures.
    let (st, h, _) = call(&s, "GET", "/healthz", None).await;
    assert_eq!(
        (st, h["status"].as_str(), h["storage"].as_str()),
        (200, Some("degraded"), Some("unavailable")),
        "{h}"
    );
    let (st, body, retry_after) = call(&s, "GET", "/readyz", None).await;
    assert_eq!(st, 503, "{body}");
    assert!(retry_after);
    let m = metrics_text(&s).await;
    assert_eq!(metric(&m, "parley_store_writable"), 0.0);
    assert!(
        metric(&m, "parley_store_failed_commits_total") >= 1.0,
        "{m}"
    );

    // Reads are served meanwhile.
    let (st, rec, _) = call(&s, "GET", &format!("/api/conversations/{conv}"), None).await;
    assert_eq!(st, 200, "{rec}");
    let (st, msgs, _) = call(
        &s,
        "GET",
        &format!("/api/conversations/{conv}/messages"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{msgs}");
    let (st, list, _) = call(&s, "GET", "/api/conversations", None).await;
    assert_eq!(st, 200, "{list}");

    // Free the space: the server notices by itself (no restart) and writes work again.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _, _) = call(&s, "GET", "/readyz", None).await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, h, _) = call(&s, "GET", "/healthz", None).await;
    assert_eq!((st, h["status"].as_str()), (200, Some("ok")), "{h}");
    let (st, after, _) = call(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        Some(invoke("after")),
    )
    .await;
    assert_eq!(st, 200, "{after}");
    let (st, more, _) = call(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        Some(json!({"content": "again", "conversationId": conv})),
    )
    .await;
    assert_eq!(st, 200, "{more}");
    let m = metrics_text(&s).await;
    assert_eq!(metric(&m, "parley_store_writable"), 1.0);

    // Everything acknowledged before the fault is still there.
    let (st, rec, _) = call(&s, "GET", &format!("/api/conversations/{conv}"), None).await;
    assert_eq!(st, 200, "{rec}");
    drop(s);
    drop(fs);
}

/// Retention: conversations of an assistant with a short `retentionDays` are deleted by the
/// sweeper once finished and idle that long, whether the server or a client (an AG-UI thread)
/// chose their id; those with no retention are kept; `/metrics` shows the swept count, the
/// stored conversations and the store's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_deletes_expired_finished_conversations_only() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    // ~1.7 s for `chat`; `args` has none (and the server's is 0: keep forever).
    let chat = dir.path().join("chat.json");
    let mut def: Value = serde_json::from_str(&std::fs::read_to_string(&chat).unwrap()).unwrap();
    def["retentionDays"] = json!(0.00002);
    // An AG-UI thread's actor stays for `sessionTimeout` after its run (the sweeper leaves a
    // conversation alone while its actor is live); invoke's leave at once.
    def["sessionTimeout"] = json!(1);
    std::fs::write(&chat, def.to_string()).unwrap();
    let s = Server::start_with(Options {
        assistants: dir.path().to_path_buf(),
        storage_config: "sweep_interval_seconds = 1\nsweep_batch = 2\n".into(),
        ..Options::default()
    });
    let mut chats = Vec::new();
    for i in 0..5 {
        let (st, v, _) = call(
            &s,
            "POST",
            "/api/assistants/chat/invoke",
            Some(json!({"content": format!("hi {i}")})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        chats.push(v["conversationId"].as_str().unwrap().to_string());
    }
    // Two AG-UI threads: ids the client chose (UUID v4), stored under keys of their own.
    for i in 0..2 {
        let thread = format!("5b1c6f0e-9a2d-4e7b-8c3f-0000000000{i:02}");
        let res = http()
            .post(s.http("/agui/chat"))
            .header("accept", "text/event-stream")
            .json(
                &json!({"threadId": thread, "runId": format!("r{i}"), "state": {},
                "messages": [{"id": format!("m{i}"), "role": "user", "content": "hi"}],
                "tools": [], "context": [], "forwardedProps": {}}),
            )
            .send()
            .await
            .expect("POST /agui/chat");
        assert_eq!(res.status().as_u16(), 200);
        let body = res.text().await.expect("body");
        assert!(body.contains("RUN_FINISHED"), "{body}");
        chats.push(thread);
    }
    let (st, v, _) = call(
        &s,
        "POST",
        "/api/assistants/args/invoke",
        Some(json!({"content": "taxi", "args": {"department": "r&d"}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let kept = v["conversationId"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (st, list, _) = call(&s, "GET", "/api/conversations?limit=100", None).await;
        assert_eq!(st, 200, "{list}");
        let ids: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert!(
            ids.contains(&kept.as_str()),
            "a conversation without retention was swept"
        );
        if ids.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not swept after 40 s: {ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in &chats {
        let (st, _, _) = call(&s, "GET", &format!("/api/conversations/{c}"), None).await;
        assert_eq!(st, 404, "{c} still readable");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&s).await;
        assert!(metric(&m, "parley_store_size_bytes") > 0.0);
        if metric(&m, "parley_conversations_swept_total") == 7.0
            && metric(&m, "parley_stored_conversations") == 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
