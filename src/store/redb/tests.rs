//! Tests of the redb backend: the shared suite of the `Store` trait (`store/suite.rs`) on an
//! in-memory database, then what only redb has: the activity index's keys, cursor encoding,
//! damaged records, group commit and the queue's bounds, reopening a file, the migration of
//! files written before event chunks, and crash consistency through a storage backend that can
//! lose unsynced writes.
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
// storage keys

/// The entry of `id` in `storage_keys` (`None`: it has none).
fn stored_key(store: &RedbStore, id: &str) -> Option<String> {
    let txn = store.inner.db.get().unwrap().begin_read().unwrap();
    let keys = txn.open_table(STORAGE_KEYS).unwrap();
    let found = keys.get(id).unwrap();
    found.map(|k| k.value().to_owned())
}

/// Rows of each of `messages`, `event_chunks` and `checkpoints` under `key`.
fn rows_under(store: &RedbStore, key: &str) -> [usize; 3] {
    let txn = store.inner.db.get().unwrap().begin_read().unwrap();
    let messages = txn.open_table(MESSAGES).unwrap();
    let events = txn.open_table(EVENTS).unwrap();
    let checkpoints = txn.open_table(CHECKPOINTS).unwrap();
    [
        messages
            .range((key, 0u64)..=(key, u64::MAX))
            .unwrap()
            .count(),
        events.range((key, 0u64)..=(key, u64::MAX)).unwrap().count(),
        usize::from(checkpoints.get(key).unwrap().is_some()),
    ]
}

fn checkpoint_op(conversation: &str) -> WriteOp {
    WriteOp::PutCheckpoint {
        conversation: conversation.to_owned(),
        data: Bytes::from_static(b"cp"),
    }
}

#[tokio::test]
async fn a_client_chosen_id_gets_a_time_ordered_storage_key_and_loses_it_on_delete() {
    let store = mem_store();
    // A UUID v4, as AG-UI clients make them.
    let thread = "3f0c8a9e-1b2d-4c5e-8f70-123456789abc";
    // Its rows come first in the batch, before its record: one key whatever the order.
    store
        .write(vec![
            append_message(thread, 1),
            append_event(thread, 1),
            put(&conv(thread, "u", "a", 5)),
            checkpoint_op(thread),
        ])
        .await
        .unwrap();
    store.write(vec![append_event(thread, 2)]).await.unwrap();
    let key = stored_key(&store, thread).expect("a storage key");
    assert!(key.starts_with('~'), "{key}");
    assert!(super::tables::time_ordered(&key[1..]), "{key}");
    assert_eq!(rows_under(&store, &key), [1, 2, 1]);
    assert_eq!(
        rows_under(&store, thread),
        [0, 0, 0],
        "nothing under the id"
    );
    // Every read finds the rows through the key.
    assert_eq!(store.messages(thread, None, 10).await.unwrap().len(), 1);
    assert_eq!(store.events_since(thread, 0, 10).await.unwrap().len(), 2);
    assert_eq!(store.last_seq(thread).await.unwrap(), 2);
    assert!(store.checkpoint(thread).await.unwrap().is_some());

    // A second such conversation gets a later key: new rows go to the end of the tables.
    let other = "thread-b";
    store.write(vec![append_event(other, 1)]).await.unwrap();
    let later = stored_key(&store, other).expect("a storage key");
    assert!(later > key, "{later} after {key}");

    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: thread.to_owned(),
        }])
        .await
        .unwrap();
    assert_eq!(stored_key(&store, thread), None);
    assert_eq!(rows_under(&store, &key), [0, 0, 0]);
    assert!(store.events_since(thread, 0, 10).await.unwrap().is_empty());
    assert_eq!(store.events_since(other, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_thread_deleted_and_made_again_in_one_group_gets_a_new_key() {
    let store = mem_store();
    let thread = "thread-a";
    store.write(vec![append_event(thread, 1)]).await.unwrap();
    let first = stored_key(&store, thread).expect("a storage key");
    // One batch is one group: the writer's per-group cache must forget the deleted key.
    store
        .write(vec![
            append_event(thread, 2),
            WriteOp::DeleteConversation {
                conversation: thread.to_owned(),
            },
            append_event(thread, 1),
        ])
        .await
        .unwrap();
    let second = stored_key(&store, thread).expect("a storage key");
    assert_ne!(first, second);
    assert_eq!(rows_under(&store, &first), [0, 0, 0]);
    assert_eq!(rows_under(&store, &second), [0, 1, 0]);
    assert_eq!(store.last_seq(thread).await.unwrap(), 1);
}

#[tokio::test]
async fn a_server_id_is_its_own_storage_key_and_is_listed_for_the_sweeper() {
    let store = mem_store();
    let server = uuid::Uuid::now_v7().to_string();
    store
        .write(vec![
            put(&conv(&server, "u", "a", 5)),
            append_event(&server, 1),
        ])
        .await
        .unwrap();
    assert_eq!(
        stored_key(&store, &server).as_deref(),
        Some(server.as_str())
    );
    assert_eq!(rows_under(&store, &server), [0, 1, 0]);
    let idle = store.idle_conversations(6, None, 10).await.unwrap();
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0].id, server);
}

#[tokio::test]
async fn a_file_written_before_storage_keys_lists_its_conversations_under_their_ids_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    {
        // The format before storage keys: every row under the conversation's id, no entries.
        let db = ::redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let record = serde_json::to_vec(&conv("legacy", "u", "a", 6)).unwrap();
            let mut records = txn.open_table(CONVERSATIONS).unwrap();
            records.insert("legacy", record.as_slice()).unwrap();
            let mut events = txn.open_table(EVENTS).unwrap();
            for op in encode::encode(vec![append_event("legacy", 1)]).unwrap() {
                if let encode::Encoded::AppendEvents { last, chunk, .. } = op {
                    events.insert(("legacy", last), chunk.as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(stored_key(&store, "legacy").as_deref(), Some("legacy"));
    let rec = store
        .get_conversation("legacy")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(rec.updated_at, 6);
    // Later rows go under the id too, next to the old ones.
    store
        .write(vec![append_event("legacy", 2), append_message("legacy", 1)])
        .await
        .unwrap();
    assert_eq!(rows_under(&store, "legacy"), [1, 2, 0]);
    let seqs: Vec<u64> = store
        .events_since("legacy", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(
        store.idle_conversations(7, None, 10).await.unwrap()[0].id,
        "legacy"
    );
    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: "legacy".into(),
        }])
        .await
        .unwrap();
    assert_eq!(stored_key(&store, "legacy"), None);
    assert_eq!(rows_under(&store, "legacy"), [0, 0, 0]);
    assert!(store.get_conversation("legacy").await.unwrap().is_none());
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
// durability: reopen and crashes

#[tokio::test]
async fn reopen_after_clean_shutdown_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("data").join("parley.redb");
    let mut record = conv("c1", "u", "a", 77);
    record.last_seq = 3;
    {
        let store = RedbStore::open(&path).unwrap();
        let clone = store.clone();
        let mut ops = vec![put(&record)];
        ops.extend((1..=3).map(|seq| append_event("c1", seq)));
        ops.extend((1..=2).map(|no| append_message("c1", no)));
        ops.push(WriteOp::PutCheckpoint {
            conversation: "c1".to_owned(),
            data: Bytes::from_static(b"cp"),
        });
        store.write(ops).await.unwrap();
        // Queued but not awaited: a clean shutdown still commits it.
        let _ack = clone.submit(vec![append_event("c1", 4)]);
        drop(store);
        drop(clone); // the last handle: commits the queue, joins the writer, closes the file
    }
    {
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.get_conversation("c1").await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(store.last_seq("c1").await.unwrap(), 4);
        assert_eq!(store.recent_messages("c1", 10).await.unwrap().len(), 2);
        assert_eq!(
            store.checkpoint("c1").await.unwrap(),
            Some(Bytes::from_static(b"cp"))
        );
        assert_eq!(
            ids(&store
                .list_conversations("u", Some("a"), 10, None)
                .await
                .unwrap()),
            vec!["c1"]
        );
        // And it takes writes again.
        store.write(vec![append_event("c1", 5)]).await.unwrap();
        store.shutdown();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.last_seq("c1").await.unwrap(), 5);
}

/// One unsynced change to the simulated disk.
#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl Unsynced {
    fn apply_to(&self, image: &mut Vec<u8>) {
        match self {
            Unsynced::Write { offset, data } => {
                let end = offset + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset..end].copy_from_slice(data);
            }
            Unsynced::SetLen(len) => image.resize(*len, 0),
        }
    }
}

#[derive(Debug, Default)]
struct Disk {
    /// What the running process sees (the page cache).
    live: Vec<u8>,
    /// What has reached stable storage: the state after the last completed `sync_data`.
    durable: Vec<u8>,
    /// Changes since the last `sync_data`, in order.
    unsynced: Vec<Unsynced>,
    /// While true, `sync_data` blocks (a slow disk), counting itself in `held`.
    hold: bool,
    held: usize,
    /// A full disk: writes and `set_len` past this many bytes fail with `StorageFull`.
    capacity: Option<usize>,
}

/// A simulated disk for redb: reads see every write at once, but only `sync_data` makes writes
/// durable. A "crash" image is the durable bytes, optionally with some of the unsynced writes
/// (each `write`/`set_len` call as one unit) that the OS might have written back on its own.
/// Torn writes inside a single call are not modelled.
#[derive(Debug, Clone, Default)]
struct CrashDisk {
    disk: Arc<(Mutex<Disk>, Condvar)>,
}

impl CrashDisk {
    fn from_image(image: Vec<u8>) -> CrashDisk {
        let disk = CrashDisk::default();
        {
            let mut d = disk.disk.0.lock().unwrap();
            d.live = image.clone();
            d.durable = image;
        }
        disk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.0.lock().unwrap()
    }

    /// The bytes a power cut leaves right now: unsynced writes are all lost.
    fn crash_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The bytes a power cut leaves when the OS had written back the unsynced changes for which
    /// `keep` says true.
    fn torn_crash_image(&self, mut keep: impl FnMut() -> bool) -> Vec<u8> {
        let d = self.lock();
        let mut image = d.durable.clone();
        for change in &d.unsynced {
            if keep() {
                change.apply_to(&mut image);
            }
        }
        image
    }

    /// No room beyond the current size (`None`: room again).
    fn set_full(&self, full: bool) {
        let mut d = self.lock();
        d.capacity = full.then_some(d.live.len());
    }

    fn hold_syncs(&self) {
        self.lock().hold = true;
    }

    fn release_syncs(&self) {
        self.lock().hold = false;
        self.disk.1.notify_all();
    }

    async fn wait_for_held_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lock().held == 0 {
            assert!(Instant::now() < deadline, "no sync arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn no_space() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device")
}

fn io_error(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message.to_owned())
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.lock();
        let start = usize::try_from(offset).map_err(|_| io_error("offset"))?;
        let source = d
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io_error("read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| io_error("len"))?;
        let mut d = self.lock();
        if d.capacity.is_some_and(|cap| len > cap) {
            return Err(no_space());
        }
        let change = Unsynced::SetLen(len);
        change.apply_to(&mut d.live);
        d.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.lock();
        if d.hold {
            d.held += 1;
            while d.hold {
                d = self.disk.1.wait(d).unwrap();
            }
            d.held -= 1;
        }
        let changes = std::mem::take(&mut d.unsynced);
        for change in &changes {
            change.apply_to(&mut d.durable);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let offset = usize::try_from(offset).map_err(|_| io_error("offset"))?;
        let mut d = self.lock();
        if d.capacity.is_some_and(|cap| offset + data.len() > cap) {
            return Err(no_space());
        }
        let change = Unsynced::Write {
            offset,
            data: data.to_vec(),
        };
        change.apply_to(&mut d.live);
        d.unsynced.push(change);
        Ok(())
    }
}

/// A small deterministic generator (xorshift64*), so that failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

const CRASH_CONVERSATIONS: u64 = 4;

/// The batch that takes conversation `c` to `seq`: its event, a message every third seq, and the
/// record that says how far it got. A batch is atomic, so record and log must always agree.
fn crash_batch(c: u64, seq: u64) -> Vec<WriteOp> {
    let id = format!("crash-{c}");
    let mut record = conv(&id, "u", "a", seq as i64);
    record.last_seq = seq;
    record.message_count = seq / 3;
    let mut ops = vec![append_event(&id, seq)];
    if seq.is_multiple_of(3) {
        ops.push(append_message(&id, seq / 3));
    }
    ops.push(put(&record));
    ops
}

/// Checks a store reopened from a crash image: every acknowledged batch is there, each
/// conversation's log is a gap-free prefix, and each record agrees with its log.
async fn check_recovered(image: Vec<u8>, acked: &[u64], what: &str) {
    let store = RedbStore::open_with_backend(CrashDisk::from_image(image))
        .unwrap_or_else(|e| panic!("{what}: the crash image does not open: {e}"));
    for c in 0..CRASH_CONVERSATIONS {
        let id = format!("crash-{c}");
        let events = store.events_since(&id, 0, 100_000).await.unwrap();
        let n = events.len() as u64;
        assert!(
            n >= acked[c as usize],
            "{what}: {id} lost acknowledged events ({n} < {})",
            acked[c as usize]
        );
        for (i, (seq, json)) in events.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{what}: {id} has a gap");
            assert_eq!(json, &event_json(&id, *seq), "{what}: {id} event {seq}");
        }
        match store.get_conversation(&id).await.unwrap() {
            Some(record) => assert_eq!(record.last_seq, n, "{what}: {id} record vs log"),
            None => assert_eq!(n, 0, "{what}: {id} log without record"),
        }
        assert_eq!(
            store.messages(&id, None, 100_000).await.unwrap().len() as u64,
            n / 3,
            "{what}: {id} messages"
        );
    }
    // The recovered store takes writes and lists consistently.
    store.write(crash_batch(99, 1)).await.unwrap();
    let listed = store
        .list_conversations("u", None, 100, None)
        .await
        .unwrap();
    let distinct: BTreeSet<String> = ids(&listed).into_iter().collect();
    assert_eq!(
        distinct.len(),
        listed.items.len(),
        "{what}: duplicate listing"
    );
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_crash() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for crash_after in [1usize, 5, 23, 80, 170] {
        let disk = CrashDisk::default();
        let store = RedbStore::open_with_backend(disk.clone()).unwrap();

        // Pipelined writers: up to 16 batches in flight, round-robin over the conversations.
        let mut next_seq = vec![1u64; CRASH_CONVERSATIONS as usize];
        let mut in_flight: std::collections::VecDeque<(u64, u64, Ack)> = Default::default();
        let mut acked = vec![0u64; CRASH_CONVERSATIONS as usize];
        let mut acks = 0usize;
        let mut turn = 0u64;
        while acks < crash_after {
            while in_flight.len() < 16 {
                let c = turn % CRASH_CONVERSATIONS;
                turn += 1;
                let seq = next_seq[c as usize];
                next_seq[c as usize] += 1;
                in_flight.push_back((c, seq, store.submit(crash_batch(c, seq))));
            }
            let (c, seq, ack) = in_flight.pop_front().unwrap();
            ack.await.unwrap();
            acked[c as usize] = acked[c as usize].max(seq);
            acks += 1;
        }
        // Power cut in the middle of a commit: hold the next fsync, make sure a commit is under
        // way (new batches behind the ones in flight), and take the images while it waits.
        disk.hold_syncs();
        for c in 0..CRASH_CONVERSATIONS {
            let seq = next_seq[c as usize];
            next_seq[c as usize] += 1;
            in_flight.push_back((c, seq, store.submit(crash_batch(c, seq))));
        }
        disk.wait_for_held_sync().await;
        let unsynced = disk.lock().unsynced.len();
        assert!(unsynced > 0, "the held commit has written nothing");
        let lost_all = disk.crash_image();
        // Also: the OS wrote back everything unsynced (the commit's fsync just did not return),
        // and random subsets of it.
        let mut torn = vec![disk.torn_crash_image(|| true)];
        torn.extend((0..4).map(|_| disk.torn_crash_image(|| rng.coin())));
        disk.release_syncs();

        check_recovered(lost_all, &acked, &format!("crash after {crash_after} acks")).await;
        for (i, image) in torn.into_iter().enumerate() {
            let what = format!("torn crash {i} after {crash_after} acks");
            check_recovered(image, &acked, &what).await;
        }
        drop(in_flight);
        store.shutdown();
    }
}

#[tokio::test]
async fn a_crash_image_taken_after_each_sync_is_consistent() {
    // Crash at every point the writer can stop between two fsyncs: after each ack.
    let disk = CrashDisk::default();
    let store = RedbStore::open_with_backend(disk.clone()).unwrap();
    let mut acked = vec![0u64; CRASH_CONVERSATIONS as usize];
    for seq in 1..=6 {
        for c in 0..CRASH_CONVERSATIONS {
            store.write(crash_batch(c, seq)).await.unwrap();
            acked[c as usize] = seq;
            let what = format!("after conversation {c} seq {seq}");
            check_recovered(disk.crash_image(), &acked, &what).await;
        }
    }
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

// ---------------------------------------------------------------------------------------------
// storage faults: a full disk, then room again, without a restart

/// A batch big enough to need new pages: a record and a 64 KiB checkpoint.
fn big_batch(c: u64) -> Vec<WriteOp> {
    let id = format!("full-{c}");
    vec![
        put(&conv(&id, "u", "a", c as i64)),
        WriteOp::PutCheckpoint {
            conversation: id,
            data: Bytes::from(vec![b'x'; 64 * 1024]),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_store_unavailable_then_it_recovers_by_itself() {
    let disk = CrashDisk::default();
    let factory = disk.clone();
    let store = RedbStore::open_with_backend_factory(move || factory.clone()).unwrap();
    let mut acked = Vec::new();
    for c in 0..5 {
        store.write(big_batch(c)).await.unwrap();
        acked.push(c);
    }
    assert!(store.stats().writable);

    // The disk fills up: writes fail with Unavailable (after the quiet retries), never Ok.
    disk.set_full(true);
    let mut refused = Vec::new();
    for c in 100..140 {
        match store.write(big_batch(c)).await {
            Ok(()) => acked.push(c),
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
                assert!(e.is_unavailable());
                refused.push(c);
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused.len(), 3, "the full disk never refused a write");
    let stats = store.stats();
    assert!(!stats.writable, "{stats:?}");
    assert!(stats.failed_commits >= 3, "{stats:?}");
    assert!(stats.reopens >= 1, "{stats:?}");

    // Reads are served meanwhile: everything acknowledged is there.
    for c in &acked {
        let id = format!("full-{c}");
        assert!(store.get_conversation(&id).await.unwrap().is_some(), "{id}");
    }

    // Room again: the idle writer's probe notices without any write, and writes work.
    disk.set_full(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store.stats().writable {
        assert!(
            Instant::now() < deadline,
            "the store did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.write(big_batch(1000)).await.unwrap();
    acked.push(1000);
    for c in &acked {
        let id = format!("full-{c}");
        assert!(
            store.get_conversation(&id).await.unwrap().is_some(),
            "{id} lost"
        );
    }
    // Nothing refused was stored as a half batch: a refused record has no checkpoint either.
    for c in &refused {
        let id = format!("full-{c}");
        let record = store.get_conversation(&id).await.unwrap();
        let checkpoint = store.checkpoint(&id).await.unwrap();
        assert_eq!(record.is_some(), checkpoint.is_some(), "{id} half stored");
    }
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_is_retried_and_the_write_succeeds() {
    let disk = CrashDisk::default();
    let factory = disk.clone();
    let store = RedbStore::open_with_backend_factory(move || factory.clone()).unwrap();
    store.write(big_batch(0)).await.unwrap();
    disk.set_full(true);
    let freer = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            // Within the writer's retry window (50 + 200 + 500 ms).
            std::thread::sleep(Duration::from_millis(120));
            disk.set_full(false);
        })
    };
    store.write(big_batch(1)).await.unwrap();
    freer.join().unwrap();
    let stats = store.stats();
    assert!(stats.writable, "{stats:?}");
    assert!(
        stats.failed_commits >= 1,
        "the fault was not hit: {stats:?}"
    );
    assert!(store.get_conversation("full-1").await.unwrap().is_some());
    store.shutdown();
}

/// Retention's premise: pages freed by deletions are reused, so a file under steady
/// write-then-delete traffic stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_pages_are_reused_so_the_file_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reuse.redb");
    let store = RedbStore::open_with_cache(&path, Some(4 << 20)).unwrap();
    let mut sizes = Vec::new();
    for round in 0..6u64 {
        let ids: Vec<u64> = (round * 50..round * 50 + 50).collect();
        for c in &ids {
            store.write(big_batch(*c)).await.unwrap();
        }
        let deletes = ids
            .iter()
            .map(|c| WriteOp::DeleteConversation {
                conversation: format!("full-{c}"),
            })
            .collect();
        store.write(deletes).await.unwrap();
        sizes.push(store.size_bytes());
    }
    let (second, last) = (sizes[1], sizes[5]);
    assert!(
        last as f64 <= second as f64 * 1.05,
        "the file kept growing: {sizes:?}"
    );
    store.shutdown();
}
