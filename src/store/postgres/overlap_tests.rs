//! The writer with several groups in flight (`writer.rs`, `overlap.rs`): a conversation's
//! batches still commit in queue order, acks are still answered in queue order, and a group
//! failing in the middle fails nothing before it and lets nothing after it succeed.

use std::time::Duration;

use futures_util::FutureExt;

use super::tests::fresh_options;
use super::PgStore;
use crate::store::suite::{append_event, append_message, conv, put};
use crate::store::{Ack, Store, StoreError, WriteOp};

const CONVERSATIONS: u64 = 24;
const ROUNDS: u64 = 30;

/// Round `n` of conversation `c`: its record (updated_at and last_seq `n`: the last write must
/// win) and event `n`.
fn batch(c: &str, n: u64) -> Vec<WriteOp> {
    let mut record = conv(c, "alice", "chat", n as i64);
    record.last_seq = n;
    vec![put(&record), append_event(c, n)]
}

type Watched = (String, Option<Ack>, Option<Result<(), StoreError>>);

/// Acks in submission order, watched for the FIFO promise: sweeping from the newest to the
/// oldest, an ack seen pending after a LATER one was seen resolved is a violation (no race can
/// make this check fail wrongly: the later one was resolved before the earlier one was polled).
struct Watch {
    /// (conversation, the ack while pending, its result once resolved), in submission order.
    acks: Vec<Watched>,
    violations: Vec<String>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            acks: Vec::new(),
            violations: Vec::new(),
        }
    }

    fn push(&mut self, conversation: &str, ack: Ack) {
        self.acks.push((conversation.to_owned(), Some(ack), None));
    }

    fn sweep(&mut self) {
        let mut later_resolved: Option<usize> = None;
        for i in (0..self.acks.len()).rev() {
            let (_, ack, result) = &mut self.acks[i];
            if let Some(pending) = ack {
                // Unconstrained: a sweep polls hundreds of acks in one go, and tokio's
                // cooperative budget would otherwise answer a ready one "pending".
                if let Some(r) = tokio::task::unconstrained(pending).now_or_never() {
                    *result = Some(r);
                    *ack = None;
                }
            }
            if result.is_some() {
                later_resolved.get_or_insert(i);
            } else if let Some(later) = later_resolved {
                self.violations
                    .push(format!("ack {later} resolved while ack {i} was pending"));
            }
        }
    }

    fn pending(&self) -> usize {
        self.acks.iter().filter(|a| a.2.is_none()).count()
    }

    /// The conversation's results, in submission order.
    fn of(&self, conversation: &str) -> Vec<bool> {
        self.acks
            .iter()
            .filter(|a| a.0 == conversation)
            .map(|a| matches!(a.2, Some(Ok(()))))
            .collect()
    }
}

/// Submits round after round, all conversations in turn (a pause between batches, so groups
/// form and overlap), watching the acks. `poison` submits a batch that fails on the server
/// after that many batches.
async fn run(store: &PgStore, poison: Option<usize>) -> Watch {
    let mut watch = Watch::new();
    let mut submitted = 0;
    for n in 1..=ROUNDS {
        for c in 0..CONVERSATIONS {
            if poison == Some(submitted) {
                // A NUL in a text column: the messages statement fails on the server.
                watch.push("poison", store.submit(vec![append_message("bad\0id", 1)]));
            }
            let id = format!("c{c}");
            watch.push(&id, store.submit(batch(&id, n)));
            submitted += 1;
            watch.sweep();
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while watch.pending() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "acks still pending after 120 s"
        );
        watch.sweep();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    watch.sweep();
    watch
}

/// The seqs stored for `c`, ascending, and its record's updated_at (0 when none).
/// No ordering violation, every batch acknowledged, and every conversation's events stored
/// 1..=ROUNDS with the record of its last batch (each batch rewrote it: the last in queue order
/// won).
async fn all_acked_and_in_order(store: &PgStore, watch: &Watch) {
    assert_eq!(watch.violations, Vec::<String>::new());
    for (c, _, result) in &watch.acks {
        assert!(matches!(result, Some(Ok(()))), "{c}: {result:?}");
    }
    for c in 0..CONVERSATIONS {
        let id = format!("c{c}");
        let (seqs, updated) = stored(store, &id).await;
        assert_eq!(seqs, (1..=ROUNDS).collect::<Vec<_>>(), "{id}");
        assert_eq!(updated, ROUNDS as i64, "{id}");
    }
}

async fn stored(store: &PgStore, c: &str) -> (Vec<u64>, i64) {
    let seqs = store
        .events_since(c, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    let updated = store
        .get_conversation(c)
        .await
        .unwrap()
        .map_or(0, |r| r.updated_at);
    (seqs, updated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_groups_keep_each_conversation_in_order_and_answer_in_queue_order() {
    let mut options = fresh_options().await;
    options.writer_connections = 4;
    let store = PgStore::open(&options).await.unwrap();
    let watch = run(&store, None).await;
    all_acked_and_in_order(&store, &watch).await;
    let stats = store.stats();
    assert_eq!(stats.batches_committed, CONVERSATIONS * ROUNDS);
    assert!(stats.commits > 1, "{stats:?}");
}

/// One group fails on the server while others are in flight: the failing group, the groups in
/// flight after it and the batches queued behind it get the error, nothing before it does, and
/// batches submitted once the writer moved on commit again. In submission order the failures
/// are ONE run holding the poison batch; every acknowledged batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_failing_in_the_middle_fails_one_run_of_batches_around_it() {
    let mut options = fresh_options().await;
    options.writer_connections = 4;
    let store = PgStore::open(&options).await.unwrap();
    let poison_at = (CONVERSATIONS * ROUNDS / 2) as usize;
    let watch = run(&store, Some(poison_at)).await;
    assert_eq!(watch.violations, Vec::<String>::new());
    assert_eq!(watch.of("poison"), vec![false]);
    let poison = poison_at;
    assert_eq!(watch.acks[poison].0, "poison");
    let failed: Vec<usize> = (0..watch.acks.len())
        .filter(|&i| !matches!(watch.acks[i].2, Some(Ok(()))))
        .collect();
    let (first, last) = (failed[0], failed[failed.len() - 1]);
    assert!(first <= poison && poison <= last, "{failed:?}");
    assert_eq!(
        failed,
        (first..=last).collect::<Vec<_>>(),
        "the failures are one run of the queue"
    );
    assert!(first > 0 && last + 1 < watch.acks.len(), "{first}..={last}");
    for c in 0..CONVERSATIONS {
        let id = format!("c{c}");
        let (seqs, _) = stored(&store, &id).await;
        for (n, ok) in (1..).zip(watch.of(&id)) {
            assert!(
                !ok || seqs.contains(&n),
                "{id}: batch {n} acked but not stored"
            );
        }
    }
    assert!(store.stats().failed_commits >= 1);
    assert!(store.stats().writable, "a bad row is not an outage");
}

/// Writer connections killed in the middle of their transactions (`pg_terminate_backend` of
/// every backend holding a lock on this store's `event_chunks`), again and again while groups are in
/// flight: each lost group is retried on a fresh connection (a group is idempotent), every ack
/// is `Ok`, still in queue order, and each conversation's events and record are exactly as if
/// nothing had happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_transaction_lose_and_reorder_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut options = fresh_options().await;
    options.writer_connections = 4;
    let store = PgStore::open(&options).await.unwrap();
    let (client, connection) = options
        .config()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schema = options.schema.clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let killed = client
                    .query(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                         JOIN pg_class c ON c.oid = l.relation
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relname = 'event_chunks'
                           AND l.pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await
                    .unwrap();
                kills.fetch_add(killed.len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let watch = run(&store, None).await;
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    assert!(
        kills.load(Ordering::Relaxed) > 0,
        "no connection was killed"
    );
    all_acked_and_in_order(&store, &watch).await;
}
