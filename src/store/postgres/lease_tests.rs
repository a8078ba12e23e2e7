//! Leases and the fence against a real PostgreSQL: two "nodes" are two stores on one schema,
//! each with its own [`Fences`].

use std::time::Duration;

use super::{Belief, Claim, Fences};
use crate::store::postgres::tests::fresh_options;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::{ConversationRecord, RunStatus, Store, StoreError, WriteOp};

const LEASE: Duration = Duration::from_millis(400);

async fn node(options: &PgOptions, name: &str) -> PgStore {
    PgStore::open_fenced(options, Fences::new(name, LEASE))
        .await
        .expect("open")
}

fn record(id: &str, title: &str) -> WriteOp {
    WriteOp::PutConversation(ConversationRecord {
        id: id.to_owned(),
        owner: "u".to_owned(),
        assistant: "chat".to_owned(),
        title: title.to_owned(),
        title_set: true,
        status: RunStatus::Idle,
        created_at: 1,
        updated_at: 1,
        args: serde_json::json!({}),
        last_seq: 0,
        message_count: 0,
        pending_interrupts: Vec::new(),
    })
}

/// A failed claim names the holder and how long its lease still runs.
fn held_by_a(claim: Claim) {
    match claim {
        Claim::HeldBy { node, left } => {
            assert_eq!(node, "a");
            assert!(left > Duration::ZERO && left <= LEASE, "{left:?}");
        }
        other => panic!("expected HeldBy a, got {other:?}"),
    }
}

async fn title(store: &PgStore, id: &str) -> String {
    store.get_conversation(id).await.unwrap().unwrap().title
}

#[tokio::test]
async fn a_claim_is_exclusive_until_the_lease_expires_and_each_claim_bumps_the_epoch() {
    let options = fresh_options().await;
    let (a, b) = (node(&options, "a").await, node(&options, "b").await);
    assert_eq!(a.leases().claim("c").await.unwrap(), Claim::Won(1));
    held_by_a(b.leases().claim("c").await.unwrap());
    assert_eq!(b.leases().owner("c").await.unwrap().as_deref(), Some("a"));
    let (holder, left) = b.leases().lease_of("c").await.unwrap().expect("a row");
    assert_eq!(holder, "a");
    assert!(left > Duration::ZERO && left <= LEASE, "{left:?}");
    // Renewed, it stays a's.
    tokio::time::sleep(LEASE / 2).await;
    assert!(a.leases().renew().await.unwrap().is_empty());
    tokio::time::sleep(LEASE / 2).await;
    held_by_a(b.leases().claim("c").await.unwrap());
    // Not renewed: expired, b takes it at the next epoch, and a learns it at renewal.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(b.leases().owner("c").await.unwrap(), None);
    assert_eq!(
        b.leases().lease_of("c").await.unwrap(),
        Some(("a".to_owned(), Duration::ZERO))
    );
    assert_eq!(b.leases().lease_of("none").await.unwrap(), None);
    assert_eq!(b.leases().claim("c").await.unwrap(), Claim::Won(2));
    assert_eq!(a.leases().renew().await.unwrap(), vec!["c".to_owned()]);
    assert_eq!(a.leases().fences().get("c"), Some(Belief::Lost));
    // A released lease is free at once.
    b.leases()
        .release(&[("c".to_owned(), Some(2))])
        .await
        .unwrap();
    assert_eq!(a.leases().claim("c").await.unwrap(), Claim::Won(3));
}

#[tokio::test]
async fn a_node_that_lost_its_lease_cannot_write_and_others_batches_still_commit() {
    let options = fresh_options().await;
    let (a, b) = (node(&options, "a").await, node(&options, "b").await);
    assert_eq!(a.leases().claim("c").await.unwrap(), Claim::Won(1));
    a.write(vec![record("c", "by a")]).await.unwrap();
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(b.leases().claim("c").await.unwrap(), Claim::Won(2));
    b.write(vec![record("c", "by b")]).await.unwrap();

    // a still believes it holds epoch 1: its batch is refused; a batch queued with it for
    // another conversation (no lease) commits in the same group.
    let stale = a.submit(vec![record("c", "stale"), record("other", "x")]);
    let fine = a.submit(vec![record("free", "free")]);
    match stale.await {
        Err(StoreError::Fenced { conversation }) => assert_eq!(conversation, "c"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    fine.await.unwrap();
    assert_eq!(title(&b, "c").await, "by b", "nothing of the stale batch");
    assert!(b.get_conversation("other").await.unwrap().is_none());
    assert_eq!(title(&b, "free").await, "free");
    // Refused once, refused for good (until a claims again).
    assert_eq!(a.leases().fences().get("c"), Some(Belief::Lost));
    assert!(matches!(
        a.write(vec![record("c", "again")]).await,
        Err(StoreError::Fenced { .. })
    ));
}

#[tokio::test]
async fn a_new_conversation_is_claimed_by_its_first_commit() {
    let options = fresh_options().await;
    let (a, b) = (node(&options, "a").await, node(&options, "b").await);
    a.leases().fences().set("n", Belief::New);
    a.write(vec![record("n", "first")]).await.unwrap();
    // Confirmed once the transaction committed: a release names epoch 1 from now on.
    assert_eq!(a.leases().fences().get("n"), Some(Belief::Held(1)));
    assert!(a.leases().renew().await.unwrap().is_empty());
    assert_eq!(a.leases().fences().get("n"), Some(Belief::Held(1)));
    assert_eq!(b.leases().owner("n").await.unwrap().as_deref(), Some("a"));
    // Another node creating the same id at the same time loses.
    b.leases().fences().set("n", Belief::New);
    assert!(matches!(
        b.write(vec![record("n", "second")]).await,
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(title(&a, "n").await, "first");
    // Renewal keeps it; released, it is free at once.
    assert!(a.leases().renew().await.unwrap().is_empty());
    a.leases().release(&[("n".to_owned(), None)]).await.unwrap();
    assert_eq!(b.leases().owner("n").await.unwrap(), None);
}

#[tokio::test]
async fn many_claims_in_one_statement_win_only_expired_leases() {
    let options = fresh_options().await;
    let (a, b) = (node(&options, "a").await, node(&options, "b").await);
    for c in ["x", "y", "z"] {
        assert_eq!(a.leases().claim(c).await.unwrap(), Claim::Won(1));
    }
    // Live: nothing is won, and each answer says how long a's lease still runs.
    let claims = b.leases().claim_many(&["x", "y", "none"]).await.unwrap();
    assert_eq!(claims.len(), 2, "no row, no answer: {claims:?}");
    for (_, claim) in claims {
        held_by_a(claim);
    }
    assert_eq!(b.leases().fences().get("x"), None);
    // z is renewed, x and y are not: after the lease, b wins exactly x and y.
    tokio::time::sleep(LEASE / 2).await;
    a.leases()
        .release(&[("z".to_owned(), Some(1))])
        .await
        .unwrap();
    assert_eq!(a.leases().claim("z").await.unwrap(), Claim::Won(2));
    tokio::time::sleep(LEASE / 2 + Duration::from_millis(100)).await;
    let mut claims = b.leases().claim_many(&["x", "y", "z"]).await.unwrap();
    claims.sort_by(|l, r| l.0.cmp(&r.0));
    assert_eq!(claims[0], ("x".to_owned(), Claim::Won(2)));
    assert_eq!(claims[1], ("y".to_owned(), Claim::Won(2)));
    assert_eq!(claims[2].0, "z");
    held_by_a(claims[2].1.clone());
    assert_eq!(b.leases().fences().get("x"), Some(Belief::Held(2)));
    assert_eq!(b.leases().fences().get("z"), None);
    // a learns it lost x and y at its renewal.
    let mut lost = a.leases().renew().await.unwrap();
    lost.sort();
    assert_eq!(lost, vec!["x".to_owned(), "y".to_owned()]);
}

#[tokio::test]
async fn a_late_release_of_a_new_conversation_cannot_give_up_its_next_claim() {
    let options = fresh_options().await;
    let (a, b) = (node(&options, "a").await, node(&options, "b").await);
    a.leases().fences().set("n", Belief::New);
    a.write(vec![record("n", "first")]).await.unwrap();
    // The actor stops: what its release names is taken now, the statement runs later...
    // (as `Cluster::release` does: a new, unconfirmed conversation names no epoch).
    let epoch = match a.leases().fences().forget("n") {
        Some(Belief::Held(e)) => Some(e),
        _ => None,
    };
    // ...after this node claimed the conversation again for its next request.
    assert_eq!(a.leases().claim("n").await.unwrap(), Claim::Won(2));
    a.leases()
        .release(&[("n".to_owned(), epoch)])
        .await
        .unwrap();
    // The new claim holds: another node cannot take it, and this node's writes go on.
    assert!(matches!(
        b.leases().claim("n").await.unwrap(),
        Claim::HeldBy { .. }
    ));
    a.write(vec![record("n", "second")]).await.unwrap();
    assert_eq!(title(&a, "n").await, "second");
}
