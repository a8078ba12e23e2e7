//! Storage keys: where a conversation's rows are stored (`tables.rs`).

use super::*;

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

/// A conversation `thread` with a record, a message, an event and a checkpoint; its key.
async fn store_thread(store: &RedbStore, thread: &str) -> String {
    store
        .write(vec![
            put(&conv(thread, "u", "a", 5)),
            append_message(thread, 1),
            append_event(thread, 1),
            checkpoint_op(thread),
        ])
        .await
        .unwrap();
    stored_key(store, thread).expect("a storage key")
}

#[tokio::test]
async fn an_id_that_names_another_conversations_storage_key_reads_nothing() {
    let (store, thread) = (mem_store(), "thread-a");
    let key = store_thread(&store, thread).await;
    // An id someone made up, equal to that key (`~` cannot come from a client's thread id, but
    // other routes take ids in paths): it is not a conversation, and reads find nothing.
    assert!(store.get_conversation(&key).await.unwrap().is_none());
    assert!(store.messages(&key, None, 10).await.unwrap().is_empty());
    assert!(store.events_since(&key, 0, 10).await.unwrap().is_empty());
    assert_eq!(store.last_seq(&key).await.unwrap(), 0);
    assert!(store.checkpoint(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_an_id_that_names_another_conversations_storage_key_deletes_nothing() {
    let (store, thread) = (mem_store(), "thread-a");
    let key = store_thread(&store, thread).await;
    store
        .write(vec![WriteOp::DeleteConversation {
            conversation: key.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(rows_under(&store, &key), [1, 1, 1]);
    assert!(store.get_conversation(thread).await.unwrap().is_some());
}
