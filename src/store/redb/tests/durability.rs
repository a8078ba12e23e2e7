//! Durability: reopening a file, and crash images taken through a fault-injecting backend.

use super::*;

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
        let unsynced = disk.unsynced_changes();
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
