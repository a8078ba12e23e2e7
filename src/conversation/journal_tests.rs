//! Unit tests of the journal: no actix, no store; commits are simulated by the test.

use futures_util::FutureExt;
use serde_json::json;

use super::*;
use crate::store::RunStatus;

fn journal(last_seq: u64) -> Journal {
    Journal::new(Arc::from("c1"), last_seq)
}

fn event(n: u64) -> Event {
    Event::TextMessageContent {
        message_id: "m".into(),
        delta: n.to_string(),
    }
}

fn record() -> ConversationRecord {
    ConversationRecord {
        id: "c1".into(),
        owner: "u".into(),
        assistant: "a".into(),
        title: String::new(),
        title_set: false,
        status: RunStatus::Idle,
        created_at: 0,
        updated_at: 0,
        args: json!({}),
        last_seq: 0,
        message_count: 0,
        pending_interrupts: Vec::new(),
    }
}

const IDLE: Conditions = Conditions {
    stored: true,
    running: false,
    unobserved_call: false,
};
const RUNNING: Conditions = Conditions {
    running: true,
    ..IDLE
};

fn waiter() -> (Waiter, oneshot::Receiver<Result<(), ConversationError>>) {
    oneshot::channel()
}

/// (first_seq, number of events) of the batch's event chunk.
fn chunk(ops: &[WriteOp]) -> Option<(u64, usize)> {
    ops.iter().find_map(|op| match op {
        WriteOp::AppendEvents {
            first_seq, events, ..
        } => Some((*first_seq, events.len())),
        _ => None,
    })
}

fn delivered(j: &mut Journal) -> Vec<u64> {
    j.deliverable().map(|(seq, ..)| seq).collect()
}

#[test]
fn seqs_continue_from_the_store_and_batches_are_contiguous() {
    let mut j = journal(10);
    let seqs: Vec<u64> = (0..3).map(|n| j.push_event(event(n)).unwrap()).collect();
    assert_eq!(seqs, [11, 12, 13]);
    let ops = j.begin_commit(&record());
    assert_eq!(chunk(&ops), Some((11, 3)));
    // Events queued while the commit is in flight form the next chunk.
    j.push_event(event(3)).unwrap();
    j.push_event(event(4)).unwrap();
    j.commit_landed();
    let ops = j.begin_commit(&record());
    assert_eq!(chunk(&ops), Some((14, 2)));
}

#[test]
fn nothing_is_delivered_before_its_commit_lands() {
    let mut j = journal(0);
    for n in 0..3 {
        j.push_event(event(n)).unwrap();
    }
    assert!(delivered(&mut j).is_empty());
    j.begin_commit(&record());
    j.push_event(event(3)).unwrap();
    assert!(delivered(&mut j).is_empty(), "in flight is not durable");
    assert!(j.commit_landed().is_empty());
    assert_eq!(j.durable_seq(), 3);
    assert_eq!(delivered(&mut j), [1, 2, 3], "seq 4 is not in that commit");
    assert!(delivered(&mut j).is_empty(), "delivered once");
    j.begin_commit(&record());
    j.commit_landed();
    assert_eq!(delivered(&mut j), [4]);
}

#[test]
fn a_waiter_is_answered_by_the_commit_that_holds_what_came_before_it() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let (w1, _r1) = waiter();
    j.add_waiter(w1);
    j.begin_commit(&record());
    let (w2, _r2) = waiter();
    j.add_waiter(w2);
    assert_eq!(j.commit_landed().len(), 1);
    assert!(j.wants_commit(IDLE), "the second waiter needs a commit");
    j.begin_commit(&record());
    assert_eq!(j.commit_landed().len(), 1);
}

#[test]
fn at_most_one_commit_in_flight() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    assert_eq!(j.kick(IDLE), Kick::Commit);
    j.begin_commit(&record());
    assert!(j.flushing());
    j.push_event(event(1)).unwrap();
    assert_eq!(j.kick(IDLE), Kick::Nothing);
    j.commit_landed();
    assert_eq!(
        j.kick(IDLE),
        Kick::Commit,
        "what was queued meanwhile follows"
    );
}

#[test]
fn nothing_is_written_before_the_conversation_is_stored() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let (w, _r) = waiter();
    j.add_waiter(w);
    let unstored = Conditions {
        stored: false,
        ..IDLE
    };
    assert!(!j.wants_commit(unstored));
    assert_eq!(j.kick(unstored), Kick::Nothing);
    assert!(!j.is_quiet());
}

#[test]
fn only_the_newest_checkpoint_and_a_changed_record_are_written() {
    let mut j = journal(0);
    assert!(!j.wants_commit(IDLE));
    j.put_checkpoint(Checkpoint::default());
    j.put_checkpoint(Checkpoint {
        run_id: Some("r2".into()),
        ..Checkpoint::default()
    });
    let ops = j.begin_commit(&record());
    assert_eq!(
        ops.len(),
        1,
        "one checkpoint, no record, no events: {ops:?}"
    );
    assert!(matches!(&ops[0], WriteOp::PutCheckpoint { data, .. }
        if serde_json::from_slice::<Checkpoint>(data).unwrap().run_id.as_deref() == Some("r2")));
    j.commit_landed();
    j.touch_record();
    let ops = j.begin_commit(&record());
    assert!(matches!(&ops[..], [WriteOp::PutConversation(r)] if r.id == "c1"));
}

#[test]
fn without_a_run_a_commit_starts_at_once() {
    let mut j = journal(0);
    assert_eq!(j.kick(IDLE), Kick::Nothing, "nothing queued");
    j.touch_record();
    assert_eq!(j.kick(IDLE), Kick::Commit);
}

#[test]
fn a_running_engine_is_waited_for_until_it_is_quiet() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let Kick::Coalesce(mut w) = j.kick(RUNNING) else {
        panic!("a running engine coalesces");
    };
    assert_eq!(j.kick(RUNNING), Kick::Nothing, "one wait at a time");
    // The engine produces in every round: the wait goes on.
    for n in 1..10 {
        j.push_event(event(n)).unwrap();
        match j.round(w, RUNNING) {
            Round::Again(next) => w = next,
            other => panic!("round {n}: {other:?}"),
        }
    }
    // Quiet rounds in a row end it.
    for _ in 1..COALESCE_QUIET_ROUNDS {
        match j.round(w, RUNNING) {
            Round::Again(next) => w = next,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(j.round(w, RUNNING), Round::Commit);
    assert_eq!(chunk(&j.begin_commit(&record())), Some((1, 10)));
}

#[test]
fn the_wait_is_bounded_in_rounds_and_in_writes() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let Kick::Coalesce(mut w) = j.kick(RUNNING) else {
        panic!()
    };
    let mut rounds = 0;
    loop {
        j.push_event(event(rounds)).unwrap();
        match j.round(w, RUNNING) {
            Round::Again(next) => w = next,
            Round::Commit => break,
            Round::Nothing => panic!("something is queued"),
        }
        rounds += 1;
    }
    assert_eq!(rounds, COALESCE_ROUNDS as u64);

    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let Kick::Coalesce(w) = j.kick(RUNNING) else {
        panic!()
    };
    for n in 0..COALESCE_OPS as u64 {
        j.push_event(event(n)).unwrap();
    }
    assert_eq!(j.round(w, RUNNING), Round::Commit, "enough queued");
}

#[test]
fn a_run_that_ends_during_the_wait_commits_at_once() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    let Kick::Coalesce(w) = j.kick(RUNNING) else {
        panic!()
    };
    j.push_event(event(1)).unwrap();
    assert_eq!(j.round(w, IDLE), Round::Commit);
}

#[test]
fn an_unobserved_call_commits_only_when_waited_on_or_half_the_bound_piles_up() {
    let lazy = Conditions {
        stored: true,
        running: true,
        unobserved_call: true,
    };
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    assert_eq!(j.kick(lazy), Kick::Nothing);
    let (w, _r) = waiter();
    j.add_waiter(w);
    assert!(matches!(j.kick(lazy), Kick::Coalesce(_)));

    let mut j = journal(0);
    for n in 0..MAX_UNDURABLE / 2 - 1 {
        j.push_event(event(n)).unwrap();
    }
    assert!(!j.wants_commit(lazy));
    j.push_event(event(0)).unwrap();
    assert!(j.wants_commit(lazy), "half the bound is not durable");
}

#[test]
fn a_failed_commit_fails_its_waiters_and_never_delivers_its_events() {
    let mut j = journal(5);
    j.push_event(event(0)).unwrap();
    j.push_event(event(1)).unwrap();
    let (w, _r) = waiter();
    j.add_waiter(w);
    j.begin_commit(&record());
    j.push_event(event(2)).unwrap();
    assert_eq!(j.commit_failed().len(), 1);
    assert!(!j.flushing());
    assert_eq!(j.durable_seq(), 5, "the mark does not move");
    assert!(delivered(&mut j).is_empty());
    // Later commits go on as before, with the seqs after the failed ones.
    assert_eq!(j.kick(IDLE), Kick::Commit);
    assert_eq!(chunk(&j.begin_commit(&record())), Some((8, 1)));
    j.commit_landed();
    assert_eq!(delivered(&mut j), [8], "6 and 7 were never stored");
}

#[test]
fn the_watch_follows_the_durable_mark_while_a_run_holds_it() {
    let mut j = journal(3);
    let rx = j.watch();
    assert_eq!(*rx.borrow(), 3);
    j.push_event(event(0)).unwrap();
    j.begin_commit(&record());
    j.commit_landed();
    assert_eq!(*rx.borrow(), 4);
    j.end_watch();
    assert!(
        rx.has_changed().is_err(),
        "the channel is gone after the run"
    );
}

#[test]
fn discard_forgets_everything_queued() {
    let mut j = journal(0);
    j.push_event(event(0)).unwrap();
    j.push_op(WriteOp::DeleteConversation {
        conversation: "c1".into(),
    });
    j.discard();
    assert!(j.is_quiet());
    assert!(delivered(&mut j).is_empty());
}

#[test]
fn the_sink_waits_beyond_the_bound_until_half_is_durable() {
    let (tx, rx) = watch::channel(0u64);
    let mut bp = Backpressure::new(rx, 0);
    for _ in 0..MAX_UNDURABLE {
        assert!(bp.sent_one().now_or_never().is_some(), "within the bound");
    }
    let mut over = Box::pin(bp.sent_one());
    assert!((&mut over).now_or_never().is_none(), "one beyond waits");
    tx.send_replace(MAX_UNDURABLE / 2);
    assert!((&mut over).now_or_never().is_none(), "still more than half");
    tx.send_replace(MAX_UNDURABLE / 2 + 1);
    assert!(over.now_or_never().is_some(), "half is durable");
}

#[test]
fn the_sink_stops_waiting_when_the_journal_drops_the_watch() {
    let (tx, rx) = watch::channel(0u64);
    let mut bp = Backpressure::new(rx, MAX_UNDURABLE);
    let mut over = Box::pin(bp.sent_one());
    assert!((&mut over).now_or_never().is_none());
    drop(tx);
    assert!(over.now_or_never().is_some());
}
