//! Storage faults: a full disk, then room again, without a restart.

use super::*;

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
