//! The shared suite against a real PostgreSQL (`PARLEY_TEST_POSTGRES_URL`, set by `scripts/test`),
//! each test in a schema of its own, plus backend-specific checks.

use bytes::Bytes;
use tokio_postgres::NoTls;

use super::{PgOptions, PgStore};
use crate::store::{Store, WriteOp};

/// A fresh, empty store in a new schema. Fails loudly without a test database.
pub(crate) async fn fresh_options() -> PgOptions {
    let url = std::env::var("PARLEY_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "PARLEY_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a real server. \
             Run them with scripts/test, which starts a throwaway cluster \
             (or: source scripts/lib/postgres.sh; pg_start DIR)"
        )
    });
    let mut options = PgOptions::new(url);
    options.pool_size = 4;
    options.schema = Some(format!("t_{}", uuid::Uuid::now_v7().simple()));
    options
}

pub(crate) async fn fresh() -> PgStore {
    PgStore::open(&fresh_options().await)
        .await
        .expect("opening a postgres store")
}

crate::store::suite::store_suite!(std::sync::Arc::new(super::fresh().await));

#[tokio::test]
async fn migrations_are_idempotent() {
    let options = fresh_options().await;
    assert_eq!(
        super::migrate(&options).await.unwrap(),
        super::schema::MIGRATION_COUNT
    );
    assert_eq!(super::migrate(&options).await.unwrap(), 0);
    let store = PgStore::open(&options).await.unwrap();
    drop(store);
    assert_eq!(super::migrate(&options).await.unwrap(), 0);
}

#[tokio::test]
async fn a_bad_url_is_an_error_not_a_panic() {
    let mut options = PgOptions::new("postgres://nobody@127.0.0.1:1/none");
    options.statement_timeout = std::time::Duration::from_millis(500);
    options.connect_retry = std::time::Duration::ZERO;
    assert!(PgStore::open(&options).await.is_err());
    let mut options = fresh_options().await;
    options.schema = Some("Robert'); DROP TABLE x;--".to_owned());
    assert!(PgStore::open(&options).await.is_err());
}

#[tokio::test]
async fn an_unreachable_database_is_waited_for_then_a_clear_error() {
    use std::time::{Duration, Instant};
    // Nothing listens on port 1: refused, retried with backoff for about a second.
    let mut options = PgOptions::new("postgres://nobody@127.0.0.1:1/none");
    options.connect_retry = Duration::from_secs(1);
    let started = Instant::now();
    let error = PgStore::open(&options).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(20), "took {waited:?}");
    assert!(error.to_string().contains("connect"), "{error}");
}

#[tokio::test]
async fn a_database_that_answers_no_is_not_waited_for() {
    use std::time::{Duration, Instant};
    // The server is up but the database does not exist: retrying cannot help.
    let base = fresh_options().await.url;
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    let mut options = PgOptions::new(format!("{server}/no_such_database_here"));
    options.connect_retry = Duration::from_secs(30);
    let started = Instant::now();
    let error = PgStore::open(&options).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    assert!(
        error.to_string().contains("no_such_database_here"),
        "{error}"
    );
}

/// `parley export` from a snapshot while writes go on: every exported conversation is
/// internally consistent (its record's `last_seq` equals its events, its messages and its
/// checkpoint, which each write changes together, in one batch), although the writes run
/// during the export. Reading the live store instead would mix states (record of one round,
/// messages of the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_a_snapshot_is_consistent_while_writes_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use crate::store::suite::{append_event, append_message, conv, put};
    use crate::store::{Store, WriteOp};

    const CONVERSATIONS: usize = 20;
    let options = fresh_options().await;
    let store = Arc::new(PgStore::open(&options).await.unwrap());
    let round = |r: u64| -> Vec<Vec<WriteOp>> {
        (0..CONVERSATIONS)
            .map(|i| {
                let id = format!("c{i:02}");
                let mut record = conv(&id, "alice", "chat", r as i64);
                record.last_seq = r;
                record.message_count = r;
                vec![
                    put(&record),
                    append_event(&id, r),
                    append_message(&id, r),
                    WriteOp::PutCheckpoint {
                        conversation: id,
                        data: bytes::Bytes::from(r.to_string()),
                    },
                ]
            })
            .collect()
    };
    for batch in round(1) {
        store.write(batch).await.unwrap();
    }
    let rounds = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, rounds, stop) = (store.clone(), rounds.clone(), stop.clone());
        tokio::spawn(async move {
            let mut r = 1;
            while !stop.load(Ordering::Relaxed) {
                r += 1;
                let acks: Vec<_> = round(r).into_iter().map(|b| store.submit(b)).collect();
                for ack in acks {
                    ack.await.unwrap();
                }
                rounds.store(r, Ordering::Relaxed);
            }
        })
    };

    // At least ten exports, and more (up to 60) until one overlapped a commit: on a loaded
    // machine the writer task may not get its turn during the first ones.
    let mut overlapped = 0;
    for i in 0..60 {
        if i >= 10 && overlapped > 0 {
            break;
        }
        let before = rounds.load(Ordering::Relaxed);
        let snapshot = super::PgSnapshot::begin(&options).await.unwrap();
        let mut file = Vec::new();
        let counts = crate::store::transfer::export_from(&snapshot, &mut file)
            .await
            .unwrap();
        drop(snapshot);
        if rounds.load(Ordering::Relaxed) > before {
            overlapped += 1;
        }
        assert_eq!(counts.conversations, CONVERSATIONS as u64);
        check_consistent(&file);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(overlapped > 0, "no export ran while a write committed");
}

/// Per conversation of an export file: record `last_seq` = events = messages = checkpoint.
fn check_consistent(file: &[u8]) {
    use std::collections::HashMap;
    let mut seen: HashMap<String, [u64; 4]> = HashMap::new();
    for line in std::str::from_utf8(file).unwrap().lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str().unwrap() {
            "conversation" => {
                let id = v["record"]["id"].as_str().unwrap().to_owned();
                seen.entry(id).or_default()[0] = v["record"]["lastSeq"].as_u64().unwrap();
            }
            "events" => {
                let id = v["conversation"].as_str().unwrap().to_owned();
                let n = v["events"].as_array().unwrap().len() as u64;
                assert_eq!(v["firstSeq"], seen.get(&id).map_or(0, |s| s[1]) + 1);
                seen.entry(id).or_default()[1] += n;
            }
            "message" => {
                let id = v["conversation"].as_str().unwrap().to_owned();
                seen.entry(id).or_default()[2] += 1;
            }
            "checkpoint" => {
                let id = v["conversation"].as_str().unwrap().to_owned();
                let data = hex::decode(v["data"].as_str().unwrap()).unwrap();
                let n: u64 = String::from_utf8(data).unwrap().parse().unwrap();
                seen.entry(id).or_default()[3] = n;
            }
            other => panic!("unexpected line kind {other}"),
        }
    }
    for (id, [record, events, messages, checkpoint]) in seen {
        assert_eq!(
            (events, messages, checkpoint),
            (record, record, record),
            "{id}: a mixed state"
        );
    }
}

/// Not a test: the writer's commit cost, printed (`cargo test --lib pg_commit_micro --
/// --ignored --nocapture`). One invoke-like batch (record, two messages, events, checkpoint)
/// per write: first one writer at a time (each write its own group: the latency of one group
/// commit), then 32 writers at once (group commit); for 1, 2 and 4 writer connections
/// (groups in flight at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing print, not a test"]
async fn pg_commit_micro() {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::store::suite::{append_event, append_message, conv, put};
    use crate::store::{Store, WriteOp};

    fn batch(id: &str, n: u64) -> Vec<WriteOp> {
        let mut record = conv(id, "alice", "chat", n as i64);
        record.last_seq = 3 * n;
        vec![
            put(&record),
            append_message(id, 2 * n - 1),
            append_message(id, 2 * n),
            append_event(id, 3 * n - 2),
            append_event(id, 3 * n - 1),
            append_event(id, 3 * n),
            WriteOp::PutCheckpoint {
                conversation: id.to_owned(),
                data: bytes::Bytes::from(vec![7u8; 200]),
            },
        ]
    }
    for connections in [1, 2, 4] {
        let mut options = fresh_options().await;
        options.writer_connections = connections;
        let store = Arc::new(PgStore::open(&options).await.unwrap());
        let started = Instant::now();
        for n in 1..=300 {
            store.write(batch("solo", n)).await.unwrap();
        }
        let solo = started.elapsed();
        println!(
            "writer_connections={connections}: one writer: 300 groups in {solo:?}: {:.0} µs per group commit",
            solo.as_micros() as f64 / 300.0
        );
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("c{t}");
                    for n in 1..=100 {
                        store.write(batch(&id, n)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let many = started.elapsed();
        let stats = store.stats();
        println!(
            "writer_connections={connections}: 32 writers: 3200 batches in {many:?}: {:.0} batches/s; {} commits in all, {:.0} µs per commit",
            3200.0 / many.as_secs_f64(),
            stats.commits,
            stats.commit_time.as_micros() as f64 / stats.commits as f64
        );
    }
}

/// A group is pipelined (BEGIN, statements, COMMIT in one round trip): when a later statement
/// fails on the server, the earlier ones that succeeded are rolled back with it (the pipelined
/// COMMIT only ends the aborted transaction), the batch gets the error, and the store goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_mid_group_commits_nothing_of_it() {
    use crate::store::suite::{append_event, append_message, conv, put};
    use crate::store::Store;

    let store = fresh().await;
    // Conversations are written first, messages after: the NUL in a text column makes the
    // messages statement fail after the conversations statement succeeded.
    let error = store
        .write(vec![
            put(&conv("kept-out", "alice", "chat", 1)),
            append_event("kept-out", 1),
            append_message("bad\0id", 1),
        ])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("SQLSTATE"), "{error}");
    assert!(store.get_conversation("kept-out").await.unwrap().is_none());
    assert_eq!(store.last_seq("kept-out").await.unwrap(), 0);
    assert!(store.stats().writable, "a bad row is not an outage");
    // The next group commits normally (a fresh connection, nothing left over).
    store
        .write(vec![
            put(&conv("after", "alice", "chat", 2)),
            append_event("after", 1),
        ])
        .await
        .unwrap();
    assert!(store.get_conversation("after").await.unwrap().is_some());
    assert!(store.get_conversation("kept-out").await.unwrap().is_none());
}

/// The retention sweep's query is served by a range scan of `conversations_idle` with
/// `updated_at` tested on the index entry (records that are not idle are never read). The
/// planner picks by cost (on a large table it picks this scan; on this small one a sort may be
/// cheaper), so the alternatives are switched off to show the index fits the query.
#[tokio::test]
async fn idle_conversations_is_an_index_range_scan() {
    let options = fresh_options().await;
    let store = PgStore::open(&options).await.unwrap();
    let (client, connection) = options
        .config()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO conversations
             SELECT 'c' || g, 'o', 'a', (g * 7919) % 100000, 'idle', repeat('x', 300)
             FROM generate_series(1, 20000) g;
             ANALYZE conversations;
             SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off;",
        )
        .await
        .unwrap();
    let sql = super::read::IDLE_CONVERSATIONS
        .replace("$1", "'c5'")
        .replace("$2", "1000")
        .replace("$3", "100");
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {sql}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using conversations_idle"),
        "{plan}"
    );
    assert!(
        plan.contains("Index Cond: ((id > 'c5'::text) AND (updated_at < 1000))"),
        "{plan}"
    );
    drop(store);
}

/// `/metrics`' `parley_store_size_bytes`: the store measures its tables when it opens (a real
/// figure at the first scrape, not 0), and a stale figure is refreshed in the background by a
/// later read (`size.rs`), so it grows as data is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_bytes_is_measured_and_grows_with_the_data() {
    use crate::store::suite::conv;
    use crate::store::{Store, WriteOp};

    let store = fresh().await;
    let at_open = store.stats().size_bytes;
    // Empty tables still have their index pages (8 KiB each at least).
    assert!(at_open >= 8192, "{at_open}");
    let mut ops = vec![WriteOp::PutConversation(conv("big", "alice", "chat", 1))];
    ops.push(WriteOp::AppendEvents {
        conversation: "big".to_owned(),
        first_seq: 1,
        // 3,000 events of ~800 bytes (under TOAST's threshold: stored as they are).
        events: (0..3000u32)
            .map(|i| {
                let noise: String = (0..200)
                    .map(|j| format!("{:x}", (i.wrapping_mul(2654435761) ^ (j * 40503)) % 65536))
                    .collect();
                bytes::Bytes::from(format!(r#"{{"type":"CUSTOM","i":{i},"noise":"{noise}"}}"#))
            })
            .collect(),
    });
    store.write(ops).await.unwrap();
    let deadline = std::time::Instant::now() + super::size::MAX_AGE * 6;
    loop {
        let now = store.stats().size_bytes;
        if now >= at_open + 1_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "size_bytes still {now} (at open {at_open}) after 2.4 MB written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A database written before v5 (one row per event) is moved into chunks of one event by the
/// migration: replay, the last seq and later appends read as before.
#[tokio::test]
async fn events_written_before_chunks_read_the_same_after_the_migration() {
    let options = fresh_options().await;
    let schema = options.schema.clone().unwrap();
    let mut plain = options.config().unwrap();
    plain.options("-c synchronous_commit=on");
    let (client, connection) = plain.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let (mut client, connection) = options.config().unwrap().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(super::schema::migrate_to(&mut client, 4).await.unwrap(), 4);
    let big = format!("{{\"text\":\"{}\"}}", "é".repeat(70_000));
    for (seq, json) in [(1, "{\"a\":1}"), (2, "{\"a\":2}"), (3, big.as_str())] {
        client
            .execute(
                "INSERT INTO events (conversation, seq, json) VALUES ('c', $1, $2)",
                &[&(seq as i64), &json.as_bytes()],
            )
            .await
            .unwrap();
    }
    let store = PgStore::open(&options).await.unwrap();
    let events = store.events_since("c", 0, 10).await.unwrap();
    let got: Vec<(u64, &[u8])> = events.iter().map(|(s, j)| (*s, j.as_ref())).collect();
    assert_eq!(
        got,
        vec![
            (1, &b"{\"a\":1}"[..]),
            (2, b"{\"a\":2}"),
            (3, big.as_bytes())
        ]
    );
    assert_eq!(store.last_seq("c").await.unwrap(), 3);
    assert_eq!(seqs(store.events_since("c", 1, 1).await.unwrap()), vec![2]);
    let more = WriteOp::AppendEvents {
        conversation: "c".into(),
        first_seq: 4,
        events: vec![Bytes::from_static(b"{\"a\":4}"), Bytes::from_static(b"{}")],
    };
    store.enqueue(vec![more]).await.unwrap().await.unwrap();
    assert_eq!(
        seqs(store.events_since("c", 2, 10).await.unwrap()),
        vec![3, 4, 5]
    );
    let old_table = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'events'",
            &[&schema],
        )
        .await
        .unwrap();
    assert!(old_table.is_none(), "the old table is gone");
}

fn seqs(events: Vec<(u64, Bytes)>) -> Vec<u64> {
    events.into_iter().map(|(s, _)| s).collect()
}
