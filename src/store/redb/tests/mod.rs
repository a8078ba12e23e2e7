//! Tests of the redb backend: the shared suite of the `Store` trait (`store/suite.rs`) on an
//! in-memory database, then what only redb has.
//!
//! | file | what it tests |
//! |---|---|
//! | `mod.rs` | round trips, the activity index's keys, cursor encoding, damaged records, group commit and the queue's bounds, the migration of files written before event chunks |
//! | `storage_keys.rs` | where a conversation's rows are stored; files written before storage keys |
//! | `durability.rs` | reopening a file; crash images after every sync |
//! | `faults.rs` | a full disk, then room again, without a restart |
//! | `crash_disk.rs` | the storage backend that can crash, fill up and lose unsynced writes |
//!
//! The invariants under test are those of the module docs: one writer, ack after durable
//! commit, FIFO commits, atomic batches.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ::redb::backends::InMemoryBackend;
use ::redb::{ReadableDatabase, ReadableTable, StorageBackend};
use bytes::Bytes;

use super::tables::{Cursor, BY_OWNER, CHECKPOINTS, CONVERSATIONS, EVENTS, MESSAGES, STORAGE_KEYS};
use super::writer::{Batch, Queue};
use super::*;
use crate::store::suite::{self, append_event, append_message, conv, event_json, ids, put};

crate::store::suite::store_suite!(Arc::new(mem_store()));

// ---------------------------------------------------------------------------------------------
// helpers

fn mem_store() -> RedbStore {
    RedbStore::open_with_backend(InMemoryBackend::new()).unwrap()
}

/// One encoded op, for tests of the queue itself (which counts encoded ops).
fn raw_op(n: u64) -> encode::Encoded {
    encode::Encoded::PutCheckpoint {
        conversation: format!("c{n}"),
        data: Bytes::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// round trips

#[tokio::test]
async fn a_file_with_one_key_per_event_is_moved_into_chunks_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    {
        // The format before event chunks: table "events", (conversation, seq) -> event.
        let db = ::redb::Database::create(&path).unwrap();
        let old: ::redb::TableDefinition<(&str, u64), &[u8]> =
            ::redb::TableDefinition::new("events");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(old).unwrap();
            for seq in (1..=3).chain(5..=6) {
                t.insert(("a", seq), event_json("a", seq).as_ref()).unwrap();
            }
            t.insert(("b", 1), event_json("b", 1).as_ref()).unwrap();
            // Their records, keyed by id (a file that old has no storage keys either).
            let mut records = txn.open_table(CONVERSATIONS).unwrap();
            for id in ["a", "b"] {
                let json = serde_json::to_vec(&conv(id, "u", "x", 1)).unwrap();
                records.insert(id, json.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.events_since("a", 0, 100).await.unwrap()),
        vec![1, 2, 3, 5, 6]
    );
    assert_eq!(
        store.events_since("a", 4, 1).await.unwrap(),
        vec![(5, event_json("a", 5))]
    );
    assert_eq!(
        store.events_since("b", 0, 100).await.unwrap(),
        vec![(1, event_json("b", 1))]
    );
    assert_eq!(store.last_seq("a").await.unwrap(), 6);
    store.shutdown();
    drop(store);
    // Opening again finds nothing left to move and the same events.
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        seqs(store.events_since("a", 0, 100).await.unwrap()),
        vec![1, 2, 3, 5, 6]
    );
}

// ---------------------------------------------------------------------------------------------
// the activity index: exactly one key per conversation

#[tokio::test]
async fn the_activity_index_keeps_one_key_per_conversation() {
    let store = mem_store();
    suite::activity_index_moves_with_updated_at_and_assistant(Arc::new(store.clone())).await;
    assert_eq!(index_len(&store), 2);
    let store = mem_store();
    suite::delete_removes_everything_of_that_conversation_only(Arc::new(store.clone())).await;
    assert_eq!(index_len(&store), 1);
}

fn index_len(store: &RedbStore) -> usize {
    use ::redb::ReadableTableMetadata;
    let txn = store.inner.db.get().unwrap().begin_read().unwrap();
    let table = txn.open_table(BY_OWNER).unwrap();
    table.len().unwrap() as usize
}

#[tokio::test]
async fn cursors_are_opaque_and_checked() {
    for id in ["", "c", "conversation-ü-✓", "a\"b"] {
        let cursor = Cursor {
            inverted_time: u64::MAX - 7,
            id: id.to_owned(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }
    let store = mem_store();
    for bad in [
        "",
        "xyz",
        "ffffffffffffffff0",
        "gfffffffffffffff00",
        "ffffffffffffffffff",
    ] {
        let result = store.list_conversations("u", None, 10, Some(bad)).await;
        assert!(
            matches!(result, Err(StoreError::InvalidCursor)),
            "{bad:?} -> {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// corrupt data

#[tokio::test]
async fn corrupt_records_become_errors_not_panics() {
    let store = mem_store();
    store
        .write(vec![put(&conv("good", "u", "a", 1))])
        .await
        .unwrap();
    // Damage the store behind the writer's back (the writer is idle; redb serializes writers).
    {
        let txn = store.inner.db.get().unwrap().begin_write().unwrap();
        {
            let mut records = txn.open_table(CONVERSATIONS).unwrap();
            records.insert("bad", b"{not json".as_slice()).unwrap();
            let mut keys = txn.open_table(STORAGE_KEYS).unwrap();
            keys.insert("bad", "bad").unwrap();
            let mut index = txn.open_table(BY_OWNER).unwrap();
            index.insert(("u", u64::MAX - 2, "bad"), ()).unwrap();
            // An index key whose record is gone.
            index.insert(("u", u64::MAX - 3, "ghost"), ()).unwrap();
            // "good" is not a UUID v7: its rows are under its storage key.
            let key = keys
                .get("good")
                .unwrap()
                .map(|k| k.value().to_owned())
                .expect("a storage key for \"good\"");
            let mut messages = txn.open_table(MESSAGES).unwrap();
            messages
                .insert((key.as_str(), 1u64), b"\xff\xfe".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    assert!(matches!(
        store.get_conversation("bad").await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.messages("good", None, 10).await,
        Err(StoreError::Corrupt { .. })
    ));
    // Scans skip what they cannot read.
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["good"]
    );
    assert_eq!(
        store
            .conversations_with_status(RunStatus::Idle)
            .await
            .unwrap()
            .len(),
        1
    );

    // Writing a new record over the unreadable one repairs it; its stale key stays hidden.
    store
        .write(vec![put(&conv("bad", "u", "a", 7))])
        .await
        .unwrap();
    assert_eq!(
        store.get_conversation("bad").await.unwrap(),
        Some(conv("bad", "u", "a", 7))
    );
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["bad", "good"]
    );
    // Deleting works over damage too.
    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: "good".to_owned(),
        }])
        .await
        .unwrap();
    assert!(store.messages("good", None, 10).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// the write path

#[tokio::test]
async fn many_submits_are_grouped_into_few_commits() {
    let store = mem_store();
    let acks: Vec<Ack> = (1..=200)
        .map(|seq| store.submit(vec![append_event("c", seq)]))
        .collect();
    for ack in acks {
        ack.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.batches_committed, 200);
    assert_eq!(stats.ops_committed, 200);
    assert!(
        stats.commits < 200,
        "200 batches submitted at once must share commits: {stats:?}"
    );
    assert_eq!(store.last_seq("c").await.unwrap(), 200);
    assert_eq!(store.events_since("c", 0, 1000).await.unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_tasks_share_one_commit_behind_a_slow_fsync() {
    let disk = CrashDisk::default();
    let store = RedbStore::open_with_backend(disk.clone()).unwrap();
    let before = store.stats().commits;

    // Hold the first commit inside its fsync while 50 tasks queue 199 more batches.
    disk.hold_syncs();
    let first = store.submit(vec![append_event("t00", 1)]);
    disk.wait_for_held_sync().await;

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let id = format!("t{t:02}");
            let first_seq = if t == 0 { 2 } else { 1 };
            // Submitted without awaiting in between, then awaited together.
            let acks: Vec<Ack> = (first_seq..=4)
                .map(|seq| store.submit(vec![append_event(&id, seq)]))
                .collect();
            acks
        }));
    }
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.unwrap());
    }
    assert_eq!(acks.len(), 199);
    assert_eq!(store.stats().queued_batches, 199);

    disk.release_syncs();
    first.await.unwrap();
    for ack in acks {
        ack.await.unwrap();
    }

    let stats = store.stats();
    assert_eq!(
        stats.commits - before,
        2,
        "the 199 queued batches commit together: {stats:?}"
    );
    assert_eq!(stats.last_group_batches, 199);
    for t in 0..50u64 {
        let id = format!("t{t:02}");
        let seqs: Vec<u64> = store
            .events_since(&id, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "{id}");
    }
}

#[tokio::test]
async fn queue_bounds_wait_at_soft_cap_and_refuse_at_hard_cap() {
    let queue = Queue::new(2, 3);
    let batch = || Batch {
        ops: vec![raw_op(1)],
        done: None,
    };
    assert!(queue.push_now(batch()).is_ok());
    assert!(queue.push_now(batch()).is_ok());

    // At the soft cap, `push_when_room` waits...
    let mut waiting = Box::pin(queue.push_when_room(batch()));
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    // ...while `push_now` goes on up to the hard cap, then refuses.
    assert!(queue.push_now(batch()).is_ok());
    let refused = queue.push_now(batch()).err().unwrap().into_error();
    assert!(matches!(refused, StoreError::QueueFull { .. }));

    // The writer taking a group makes room.
    let group = queue.next_group(None).unwrap();
    assert_eq!(group.len(), 3);
    assert!(matches!(
        futures_util::poll!(waiting.as_mut()),
        std::task::Poll::Ready(Ok(()))
    ));
    assert_eq!(queue.len(), 1);

    // Closing wakes waiters with `Closed`, and the queue drains before `None`.
    assert!(queue.push_now(batch()).is_ok());
    let mut waiting = Box::pin(queue.push_when_room(batch()));
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    queue.close();
    assert!(matches!(
        futures_util::poll!(waiting.as_mut()),
        std::task::Poll::Ready(Err(StoreError::Closed))
    ));
    assert!(matches!(
        queue.push_now(batch()).err().unwrap().into_error(),
        StoreError::Closed
    ));
    assert_eq!(queue.next_group(None).unwrap().len(), 2);
    assert!(matches!(queue.next_group(None), writer::Next::Closed));
}

#[tokio::test]
async fn groups_respect_the_op_cap_but_take_a_large_batch_whole() {
    let queue = Queue::new(10_000, 10_000);
    let big = |n: u64| Batch {
        ops: (1..=n).map(raw_op).collect(),
        done: None,
    };
    queue.push_now(big(MAX_GROUP_OPS as u64 + 10)).ok().unwrap();
    queue.push_now(big(1)).ok().unwrap();
    queue.push_now(big(MAX_GROUP_OPS as u64 - 1)).ok().unwrap();
    queue.push_now(big(1)).ok().unwrap();
    let sizes = |g: Vec<Batch>| g.iter().map(|b| b.ops.len()).collect::<Vec<_>>();
    assert_eq!(
        sizes(queue.next_group(None).unwrap()),
        vec![MAX_GROUP_OPS + 10]
    );
    assert_eq!(
        sizes(queue.next_group(None).unwrap()),
        vec![1, MAX_GROUP_OPS - 1]
    );
    assert_eq!(sizes(queue.next_group(None).unwrap()), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// timing

/// `cargo test --release --lib store::tests::bench_group_commit -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing print, not a test"]
async fn bench_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("bench.redb")).unwrap();

    let n = 300u64;
    let started = Instant::now();
    for seq in 1..=n {
        store
            .write(vec![append_event("single", seq)])
            .await
            .unwrap();
    }
    let single = started.elapsed();
    println!(
        "one batch per commit: {n} durable commits in {single:?} = {:.0} commits/s",
        n as f64 / single.as_secs_f64()
    );

    let before = store.stats();
    let batches = 20_000u64;
    let conversations = 200u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conversations {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("grouped-{c}");
            let per = batches / conversations;
            let mut acks = Vec::new();
            for seq in 1..=per {
                acks.push(store.submit(vec![append_event(&id, seq)]));
                if acks.len() == 10 {
                    for ack in acks.drain(..) {
                        ack.await.unwrap();
                    }
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let grouped = started.elapsed();
    let after = store.stats();
    let commits = after.commits - before.commits;
    println!(
        "grouped: {batches} durable batches from {conversations} writers in {grouped:?} = \
         {:.0} batches/s, {commits} commits ({:.1} batches per commit, {:.2} ms per commit)",
        batches as f64 / grouped.as_secs_f64(),
        batches as f64 / commits as f64,
        (after.commit_time - before.commit_time).as_secs_f64() * 1000.0 / commits as f64,
    );
}

mod crash_disk;
mod durability;
mod faults;
mod storage_keys;

use crash_disk::CrashDisk;
