//! The shared test suite of the [`Store`] trait: every promise of the module docs (ordering of
//! batches, replay ranges, paging cursors, checkpoints, `last_seq`, status scans, delete,
//! flush and shutdown), written once against `Arc<dyn Store>`.
//!
//! A backend runs all of it with one line in its test module:
//!
//! ```ignore
//! crate::store::suite::store_suite!(make_a_fresh_empty_store());
//! ```
//!
//! (`redb/tests/mod.rs` does so with an in-memory redb.) Backend-specific behaviour (crash
//! consistency, group-commit sizes, on-disk formats, migration of old files) is tested next to
//! the backend instead.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{
    Ack, ConversationPage, ConversationRecord, MessageRecord, RunStatus, Store, StoreError, WriteOp,
};
use crate::llm::Role;

/// Generates one `#[tokio::test]` per suite function, each on a fresh store from `$new`
/// (an expression of a type that converts into `Arc<dyn Store>`).
macro_rules! store_suite {
    ($new:expr) => {
        $crate::store::suite::store_suite!(@tests $new;
            conversation_round_trip_and_replace,
            messages_page_newest_first_and_recent_oldest_first,
            events_since_and_last_seq,
            events_across_chunks_replay_from_any_seq,
            checkpoint_put_and_replace,
            idempotency_keys_are_stored_with_their_write_and_expire,
            expired_idempotency_keys_are_swept,
            conversations_with_status_scans_everything,
            listing_is_newest_first_per_owner_with_assistant_filter,
            paging_is_stable_when_timestamps_are_equal,
            activity_index_moves_with_updated_at_and_assistant,
            foreign_cursors_are_refused,
            delete_removes_everything_of_that_conversation_only,
            fifty_concurrent_writers_all_durable,
            submit_order_is_commit_order_even_when_acks_are_awaited_backwards,
            flush_waits_for_everything_queued_before_it,
            shutdown_commits_the_queue_then_refuses_writes,
            idle_conversations_page_by_id_before_a_time,
        );
    };
    (@tests $new:expr; $($name:ident),* $(,)?) => {
        mod store_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store: std::sync::Arc<dyn $crate::store::Store> = $new;
                    $crate::store::suite::$name(store).await;
                }
            )*
        }
    };
}
pub(crate) use store_suite;

// ---------------------------------------------------------------------------------------------
// helpers (also used by the backends' own tests)

pub(super) fn conv(id: &str, owner: &str, assistant: &str, updated_at: i64) -> ConversationRecord {
    ConversationRecord {
        id: id.to_owned(),
        owner: owner.to_owned(),
        assistant: assistant.to_owned(),
        title: format!("title of {id}"),
        title_set: false,
        status: RunStatus::Idle,
        created_at: 1,
        updated_at,
        args: json!({"department": "sales"}),
        last_seq: 0,
        message_count: 0,
        pending_interrupts: vec![],
    }
}

pub(super) fn message(no: u64) -> MessageRecord {
    MessageRecord {
        no,
        id: format!("m{no}"),
        role: if no % 2 == 1 {
            Role::User
        } else {
            Role::Assistant
        },
        content: format!("message number {no}"),
        run_id: no.is_multiple_of(2).then(|| "run-1".to_owned()),
        created_at: 1000 + no as i64,
        data: (no == 3).then(|| json!({"card": [1, 2, 3]})),
    }
}

pub(super) fn append_message(conversation: &str, no: u64) -> WriteOp {
    WriteOp::AppendMessage {
        conversation: conversation.to_owned(),
        message: message(no),
    }
}

pub(super) fn event_json(conversation: &str, seq: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"TEXT_MESSAGE_CONTENT","conversation":"{conversation}","delta":"d{seq}"}}"#
    ))
}

pub(super) fn append_event(conversation: &str, seq: u64) -> WriteOp {
    WriteOp::AppendEvent {
        conversation: conversation.to_owned(),
        seq,
        json: event_json(conversation, seq),
    }
}

pub(super) fn put(record: &ConversationRecord) -> WriteOp {
    WriteOp::PutConversation(record.clone())
}

pub(super) fn ids(page: &ConversationPage) -> Vec<String> {
    page.items.iter().map(|c| c.id.clone()).collect()
}

async fn all_pages(
    store: &dyn Store,
    owner: &str,
    assistant: Option<&str>,
    limit: usize,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_conversations(owner, assistant, limit, cursor.as_deref())
            .await
            .unwrap();
        pages.push(ids(&page));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

pub(super) async fn conversation_round_trip_and_replace(store: Arc<dyn Store>) {
    assert_eq!(store.get_conversation("c1").await.unwrap(), None);

    let mut record = conv("c1", "alice", "expense_claim", 10);
    record.pending_interrupts = vec![crate::engine::Interrupt::new(
        crate::engine::InterruptReason::PageAction,
        "pick",
        "Pick a date",
    )
    .page_action("pick_date".into(), json!({"from": "2024-05-01"}))];
    record.status = RunStatus::Paused;
    store.write(vec![put(&record)]).await.unwrap();
    assert_eq!(
        store.get_conversation("c1").await.unwrap(),
        Some(record.clone())
    );

    record.title = "renamed".to_owned();
    record.title_set = true;
    record.last_seq = 42;
    record.message_count = 7;
    store.write(vec![put(&record)]).await.unwrap();
    assert_eq!(store.get_conversation("c1").await.unwrap(), Some(record));
}

pub(super) async fn messages_page_newest_first_and_recent_oldest_first(store: Arc<dyn Store>) {
    let ops: Vec<WriteOp> = (1..=10).map(|no| append_message("c", no)).collect();
    store.write(ops).await.unwrap();
    store
        .write(vec![append_message("c2", 1), append_message("ca", 1)])
        .await
        .unwrap();

    let nos = |v: Vec<MessageRecord>| v.into_iter().map(|m| m.no).collect::<Vec<_>>();
    assert_eq!(
        nos(store.messages("c", None, 3).await.unwrap()),
        vec![10, 9, 8]
    );
    assert_eq!(
        nos(store.messages("c", Some(8), 3).await.unwrap()),
        vec![7, 6, 5]
    );
    assert_eq!(
        nos(store.messages("c", Some(3), 10).await.unwrap()),
        vec![2, 1]
    );
    assert!(store.messages("c", Some(1), 10).await.unwrap().is_empty());
    assert!(store.messages("c", Some(0), 10).await.unwrap().is_empty());
    assert_eq!(
        nos(store.messages("c", Some(u64::MAX), 2).await.unwrap()),
        vec![10, 9]
    );
    assert!(store.messages("c", None, 0).await.unwrap().is_empty());
    assert_eq!(
        nos(store.recent_messages("c", 4).await.unwrap()),
        vec![7, 8, 9, 10]
    );
    assert_eq!(
        nos(store.recent_messages("c", 100).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(store.messages("nope", None, 10).await.unwrap().is_empty());
    // Full records survive, optional fields included.
    assert_eq!(
        store.messages("c", Some(4), 1).await.unwrap(),
        vec![message(3)]
    );
    assert_eq!(
        store.messages("c2", None, 10).await.unwrap(),
        vec![message(1)]
    );
}

pub(super) async fn events_since_and_last_seq(store: Arc<dyn Store>) {
    let ops: Vec<WriteOp> = (1..=5).map(|seq| append_event("c", seq)).collect();
    store.write(ops).await.unwrap();
    store.write(vec![append_event("c0", 1)]).await.unwrap();

    let all = store.events_since("c", 0, 100).await.unwrap();
    assert_eq!(
        all,
        (1..=5).map(|s| (s, event_json("c", s))).collect::<Vec<_>>()
    );
    let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.events_since("c", 3, 100).await.unwrap()),
        vec![4, 5]
    );
    assert_eq!(
        seqs(store.events_since("c", 0, 2).await.unwrap()),
        vec![1, 2]
    );
    assert!(store.events_since("c", 5, 100).await.unwrap().is_empty());
    assert!(store
        .events_since("c", u64::MAX, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store.events_since("c", 0, 0).await.unwrap().is_empty());
    assert_eq!(store.last_seq("c").await.unwrap(), 5);
    assert_eq!(store.last_seq("c0").await.unwrap(), 1);
    assert_eq!(store.last_seq("nope").await.unwrap(), 0);
    assert!(store.events_since("nope", 0, 10).await.unwrap().is_empty());
}

pub(super) async fn events_across_chunks_replay_from_any_seq(store: Arc<dyn Store>) {
    // Three commits, so three chunks: 1..=4, 5..=5, 6..=9.
    for range in [1..=4u64, 5..=5, 6..=9] {
        store
            .write(range.map(|seq| append_event("c", seq)).collect())
            .await
            .unwrap();
    }
    let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
    for since in 0..=9u64 {
        for limit in 1..=10usize {
            let got = store.events_since("c", since, limit).await.unwrap();
            let want: Vec<u64> = (since + 1..=9).take(limit).collect();
            assert_eq!(seqs(got.clone()), want, "since {since}, limit {limit}");
            for (seq, json) in got {
                assert_eq!(json, event_json("c", seq));
            }
        }
    }
    assert_eq!(store.last_seq("c").await.unwrap(), 9);
}

pub(super) async fn checkpoint_put_and_replace(store: Arc<dyn Store>) {
    assert_eq!(store.checkpoint("c").await.unwrap(), None);
    let put_checkpoint = |data: &'static [u8]| WriteOp::PutCheckpoint {
        conversation: "c".to_owned(),
        data: Bytes::from_static(data),
    };
    store.write(vec![put_checkpoint(b"one")]).await.unwrap();
    assert_eq!(
        store.checkpoint("c").await.unwrap(),
        Some(Bytes::from_static(b"one"))
    );
    store.write(vec![put_checkpoint(b"two")]).await.unwrap();
    assert_eq!(
        store.checkpoint("c").await.unwrap(),
        Some(Bytes::from_static(b"two"))
    );
    assert_eq!(store.checkpoint("c2").await.unwrap(), None);
}

pub(super) async fn idempotency_keys_are_stored_with_their_write_and_expire(store: Arc<dyn Store>) {
    use super::IdempotencyRecord;
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let record = |fp: &str, expires_at_ms: i64| IdempotencyRecord {
        fingerprint: fp.to_owned(),
        conversation_id: "c".to_owned(),
        run_id: "r1".to_owned(),
        expires_at_ms,
        cancelled: None,
    };
    assert_eq!(store.idempotency_key("3:u2:wsk1").await.unwrap(), None);
    // With the message it guards, in one batch.
    store
        .write(vec![
            append_message("c", 1),
            WriteOp::PutIdempotencyKey {
                key: "3:u2:wsk1".to_owned(),
                record: record("aa", now + 60_000),
            },
            WriteOp::PutIdempotencyKey {
                key: "3:u2:wsk2".to_owned(),
                record: record("bb", now - 1),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.idempotency_key("3:u2:wsk1").await.unwrap(),
        Some(record("aa", now + 60_000))
    );
    assert_eq!(store.messages("c", None, 10).await.unwrap().len(), 1);
    // An expired key reads as absent; keys are exact.
    assert_eq!(store.idempotency_key("3:u2:wsk2").await.unwrap(), None);
    assert_eq!(store.idempotency_key("3:u2:wsk").await.unwrap(), None);
}

pub(super) async fn expired_idempotency_keys_are_swept(store: Arc<dyn Store>) {
    use super::IdempotencyRecord;
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let record = |expires_at_ms: i64, cancelled: Option<bool>| IdempotencyRecord {
        fingerprint: "ff".to_owned(),
        conversation_id: "c".to_owned(),
        run_id: String::new(),
        expires_at_ms,
        cancelled,
    };
    let hour = 3_600_000;
    let keys = [
        ("k-soon", record(now + hour, Some(true))),
        ("k-later", record(now + 3 * hour, None)),
        ("k-at", record(now + 2 * hour, Some(false))),
    ];
    store
        .write(
            keys.iter()
                .map(|(k, r)| WriteOp::PutIdempotencyKey {
                    key: (*k).to_owned(),
                    record: r.clone(),
                })
                .collect(),
        )
        .await
        .unwrap();
    for (k, r) in &keys {
        assert_eq!(store.idempotency_key(k).await.unwrap().as_ref(), Some(r));
    }
    // A sweep "two hours from now": the keys expiring by then are deleted (not merely hidden:
    // by the clock they have not expired yet), the later one stays.
    store
        .write(vec![WriteOp::DeleteExpiredIdempotencyKeys {
            now_ms: now + 2 * hour,
        }])
        .await
        .unwrap();
    assert_eq!(store.idempotency_key("k-soon").await.unwrap(), None);
    assert_eq!(store.idempotency_key("k-at").await.unwrap(), None);
    assert_eq!(
        store.idempotency_key("k-later").await.unwrap(),
        Some(keys[1].1.clone())
    );
    // Sweeping again, or with nothing to sweep, is harmless.
    store
        .write(vec![WriteOp::DeleteExpiredIdempotencyKeys { now_ms: now }])
        .await
        .unwrap();
    assert_eq!(
        store.idempotency_key("k-later").await.unwrap(),
        Some(keys[1].1.clone())
    );
}

pub(super) async fn conversations_with_status_scans_everything(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for (i, status) in [
        RunStatus::Running,
        RunStatus::Paused,
        RunStatus::Running,
        RunStatus::Completed,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = conv(&format!("c{i}"), &format!("owner{i}"), "a", i as i64);
        c.status = status;
        ops.push(put(&c));
    }
    store.write(ops).await.unwrap();
    let running: Vec<String> = store
        .conversations_with_status(RunStatus::Running)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(running, vec!["c0", "c2"]);
    assert_eq!(
        store
            .conversations_with_status(RunStatus::Paused)
            .await
            .unwrap()[0]
            .id,
        "c1"
    );
    assert!(store
        .conversations_with_status(RunStatus::Failed)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn listing_is_newest_first_per_owner_with_assistant_filter(store: Arc<dyn Store>) {
    store
        .write(vec![
            put(&conv("a1", "alice", "expense", 100)),
            put(&conv("a2", "alice", "travel", 300)),
            put(&conv("a3", "alice", "expense", 200)),
            put(&conv("a4", "alice", "expense", -5)), // before 1970 sorts last
            put(&conv("b1", "alice2", "expense", 999)), // owner sharing a prefix
            put(&conv("b2", "bob", "expense", 500)),
            put(&conv("b3", "ali", "expense", 600)),
        ])
        .await
        .unwrap();

    let page = store
        .list_conversations("alice", None, 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&page), vec!["a2", "a3", "a1", "a4"]);
    assert_eq!(page.next_cursor, None);
    assert_eq!(page.items[0], conv("a2", "alice", "travel", 300));

    let page = store
        .list_conversations("alice", Some("expense"), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&page), vec!["a3", "a1", "a4"]);
    let page = store
        .list_conversations("alice", Some("exp"), 10, None)
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(
        ids(&store
            .list_conversations("bob", None, 10, None)
            .await
            .unwrap()),
        vec!["b2"]
    );
    assert!(store
        .list_conversations("nobody", None, 10, None)
        .await
        .unwrap()
        .items
        .is_empty());

    // Pages of 2, following the cursor.
    assert_eq!(
        all_pages(&*store, "alice", None, 2).await,
        vec![vec!["a2", "a3"], vec!["a1", "a4"]]
    );
    // limit 0 is treated as 1.
    assert_eq!(
        ids(&store
            .list_conversations("alice", None, 0, None)
            .await
            .unwrap()),
        vec!["a2"]
    );
}

pub(super) async fn paging_is_stable_when_timestamps_are_equal(store: Arc<dyn Store>) {
    let mut ops = Vec::new();
    for i in 0..25 {
        // Ids inserted in a scrambled order; all share one updated_at.
        let id = format!("conv-{:02}", (i * 7) % 25);
        let assistant = if i % 2 == 0 { "even" } else { "odd" };
        ops.push(put(&conv(&id, "u", assistant, 1_700_000_000_000)));
    }
    store.write(ops).await.unwrap();

    let pages = all_pages(&*store, "u", None, 10).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let flat: Vec<String> = pages.concat();
    let distinct: BTreeSet<&String> = flat.iter().collect();
    assert_eq!(distinct.len(), 25, "no duplicates, nothing skipped");
    let mut sorted = flat.clone();
    sorted.sort();
    assert_eq!(flat, sorted, "ties are broken by id");

    // The same through the assistant index.
    let even = all_pages(&*store, "u", Some("even"), 4).await.concat();
    let odd = all_pages(&*store, "u", Some("odd"), 4).await.concat();
    assert_eq!(even.len() + odd.len(), 25);
    let union: BTreeSet<&String> = even.iter().chain(odd.iter()).collect();
    assert_eq!(union.len(), 25);

    // An exact multiple of the page size ends without an empty trailing page.
    let twenty: Vec<WriteOp> = (0..20)
        .map(|i| put(&conv(&format!("x{i:02}"), "v", "a", 5)))
        .collect();
    store.write(twenty).await.unwrap();
    let pages = all_pages(&*store, "v", None, 10).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10]);
}

pub(super) async fn activity_index_moves_with_updated_at_and_assistant(store: Arc<dyn Store>) {
    store
        .write(vec![
            put(&conv("c1", "u", "a", 1)),
            put(&conv("c2", "u", "a", 2)),
        ])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["c2", "c1"]
    );

    // Two updates of c1 in one group, then one more in its own commit.
    store
        .write(vec![
            put(&conv("c1", "u", "a", 3)),
            put(&conv("c1", "u", "a", 4)),
        ])
        .await
        .unwrap();
    store
        .write(vec![put(&conv("c1", "u", "a", 5))])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["c1", "c2"]
    );
    assert_eq!(
        ids(&store
            .list_conversations("u", Some("a"), 10, None)
            .await
            .unwrap()),
        vec!["c1", "c2"]
    );
    // The index holds exactly one key per conversation.

    // Moving to another assistant leaves the old assistant's listing.
    store
        .write(vec![put(&conv("c1", "u", "b", 6))])
        .await
        .unwrap();
    assert_eq!(
        ids(&store
            .list_conversations("u", Some("a"), 10, None)
            .await
            .unwrap()),
        vec!["c2"]
    );
    assert_eq!(
        ids(&store
            .list_conversations("u", Some("b"), 10, None)
            .await
            .unwrap()),
        vec!["c1"]
    );
}

/// A cursor the store did not hand out is a client error, not a storage error.
pub(super) async fn foreign_cursors_are_refused(store: Arc<dyn Store>) {
    store
        .write(vec![put(&conv("c1", "u", "a", 1))])
        .await
        .unwrap();
    for bad in ["not a cursor!", "\u{1f600}"] {
        let result = store.list_conversations("u", None, 10, Some(bad)).await;
        assert!(
            matches!(result, Err(StoreError::InvalidCursor)),
            "{bad:?} -> {result:?}"
        );
    }
}

pub(super) async fn delete_removes_everything_of_that_conversation_only(store: Arc<dyn Store>) {
    for id in ["a", "ab"] {
        let mut ops = vec![put(&conv(id, "u", "asst", 10))];
        ops.extend((1..=3).map(|no| append_message(id, no)));
        ops.extend((1..=4).map(|seq| append_event(id, seq)));
        ops.push(WriteOp::PutCheckpoint {
            conversation: id.to_owned(),
            data: Bytes::from_static(b"state"),
        });
        store.write(ops).await.unwrap();
    }
    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: "a".to_owned(),
        }])
        .await
        .unwrap();

    assert_eq!(store.get_conversation("a").await.unwrap(), None);
    assert!(store.messages("a", None, 10).await.unwrap().is_empty());
    assert!(store.recent_messages("a", 10).await.unwrap().is_empty());
    assert!(store.events_since("a", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.last_seq("a").await.unwrap(), 0);
    assert_eq!(store.checkpoint("a").await.unwrap(), None);
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["ab"]
    );
    assert_eq!(
        ids(&store
            .list_conversations("u", Some("asst"), 10, None)
            .await
            .unwrap()),
        vec!["ab"]
    );

    // The neighbour whose id extends the deleted one is intact.
    assert!(store.get_conversation("ab").await.unwrap().is_some());
    assert_eq!(store.messages("ab", None, 10).await.unwrap().len(), 3);
    assert_eq!(store.last_seq("ab").await.unwrap(), 4);
    assert!(store.checkpoint("ab").await.unwrap().is_some());

    // Deleting what does not exist is fine.
    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: "zzz".to_owned(),
        }])
        .await
        .unwrap();
}

pub(super) async fn fifty_concurrent_writers_all_durable(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("w{t}");
            for seq in 1..=4 {
                store
                    .write(vec![append_event(&id, seq), append_message(&id, seq)])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.batches_committed, 200);
    assert!(stats.commits <= 200);
    for t in 0..50u64 {
        let id = format!("w{t}");
        assert_eq!(store.last_seq(&id).await.unwrap(), 4);
        assert_eq!(store.messages(&id, None, 10).await.unwrap().len(), 4);
    }
}

pub(super) async fn submit_order_is_commit_order_even_when_acks_are_awaited_backwards(
    store: Arc<dyn Store>,
) {
    let mut acks: Vec<Ack> = (1..=50)
        .map(|n| store.submit(vec![put(&conv("c", "u", "a", n))]))
        .collect();
    acks.reverse();
    for ack in acks {
        ack.await.unwrap();
    }
    // The last submitted record wins: it was committed last.
    assert_eq!(
        store
            .get_conversation("c")
            .await
            .unwrap()
            .unwrap()
            .updated_at,
        50
    );

    // `enqueue` awaited in turn keeps order too, with the acks awaited later.
    let mut acks = Vec::new();
    for n in 51..=60 {
        acks.push(
            store
                .enqueue(vec![put(&conv("c", "u", "a", n))])
                .await
                .unwrap(),
        );
    }
    for ack in acks.into_iter().rev() {
        ack.await.unwrap();
    }
    assert_eq!(
        store
            .get_conversation("c")
            .await
            .unwrap()
            .unwrap()
            .updated_at,
        60
    );
    assert_eq!(
        ids(&store.list_conversations("u", None, 10, None).await.unwrap()),
        vec!["c"]
    );
}

pub(super) async fn flush_waits_for_everything_queued_before_it(store: Arc<dyn Store>) {
    let acks: Vec<Ack> = (1..=20)
        .map(|seq| store.submit(vec![append_event("c", seq)]))
        .collect();
    store.flush().await.unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 20);
    drop(acks); // dropping acks does not cancel anything
    let ack = store.submit(vec![append_event("c", 21)]);
    drop(ack);
    store.flush().await.unwrap();
    assert_eq!(store.last_seq("c").await.unwrap(), 21);
    // Flushing an idle store is immediate.
    store.flush().await.unwrap();
}

pub(super) async fn shutdown_commits_the_queue_then_refuses_writes(store: Arc<dyn Store>) {
    let other = store.clone();
    let acks: Vec<Ack> = (1..=30)
        .map(|seq| store.submit(vec![append_event("c", seq)]))
        .collect();
    store.shutdown();
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(other.last_seq("c").await.unwrap(), 30, "reads still work");
    assert!(matches!(
        other.write(vec![append_event("c", 31)]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        other.submit(vec![append_event("c", 31)]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(other.flush().await, Err(StoreError::Closed)));
    other.shutdown(); // idempotent
    assert_eq!(store.last_seq("c").await.unwrap(), 30);
}

pub(super) async fn idle_conversations_page_by_id_before_a_time(store: Arc<dyn Store>) {
    // Ids deliberately not in time order; "b" and "e" are recent.
    let times = [
        ("a", 100),
        ("b", 900),
        ("c", 300),
        ("d", 100),
        ("e", 1000),
        ("f", 499),
    ];
    let ops = times
        .iter()
        .map(|(id, at)| put(&conv(id, "alice", "chat", *at)))
        .collect();
    store.write(ops).await.unwrap();
    assert_eq!(store.conversation_count().await.unwrap(), 6);
    let ids = |v: Vec<ConversationRecord>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();

    // Everything before 500, in id order, two at a time.
    let first = store.idle_conversations(500, None, 2).await.unwrap();
    assert_eq!(ids(first), ["a", "c"]);
    let second = store.idle_conversations(500, Some("c"), 2).await.unwrap();
    assert_eq!(ids(second), ["d", "f"]);
    let third = store.idle_conversations(500, Some("f"), 2).await.unwrap();
    assert!(third.is_empty());
    // The bound is exclusive; a time before everything finds nothing.
    assert_eq!(
        ids(store.idle_conversations(499, None, 10).await.unwrap()),
        ["a", "c", "d"]
    );
    assert!(store
        .idle_conversations(100, None, 10)
        .await
        .unwrap()
        .is_empty());

    // An update makes a conversation not idle; a delete removes it from the scan and the count.
    let mut a = conv("a", "alice", "chat", 2000);
    a.status = RunStatus::Completed;
    store
        .write(vec![
            put(&a),
            WriteOp::DeleteConversation {
                conversation: "d".to_owned(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        ids(store.idle_conversations(500, None, 10).await.unwrap()),
        ["c", "f"]
    );
    assert_eq!(store.conversation_count().await.unwrap(), 5);
}
