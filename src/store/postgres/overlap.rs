//! Which groups may be in flight together: the writer commits up to `writer_connections`
//! groups at once, each on its own connection, so that one group's statements run while
//! another waits for its WAL flush (`writer.rs`, docs/postgres.md for the profile behind it).
//!
//! # Invariants
//!
//! - **Disjoint groups only.** Two groups in flight at the same time never touch the same
//!   conversation (its record, messages, events, checkpoint, deletion, the idempotency keys of
//!   its requests) or the same idempotency key. A conversation's batches therefore commit one
//!   group after the other, in queue order, as with one connection; concurrent transactions
//!   never wait on each other's row locks.
//! - **The sweep of expired keys is exclusive.** A batch with `DeleteExpiredKeys` touches every
//!   key: it is only sent while no other group is in flight, and nothing is sent while it is.
//! - **A queue prefix.** A group is taken from the FRONT of the queue and stops at the first
//!   batch that conflicts with a group in flight, so no batch overtakes an earlier one; the
//!   writer then waits for the oldest group in flight before it tries again.

use std::collections::HashSet;

use super::Op;

/// What a group (or the groups in flight) writes.
#[derive(Debug, Default)]
pub(super) struct Touches {
    conversations: HashSet<String>,
    keys: HashSet<String>,
    /// A sweep of expired keys: conflicts with everything.
    exclusive: bool,
}

impl Touches {
    /// What `ops` write.
    #[cfg(test)]
    pub(super) fn of(ops: &[Op]) -> Touches {
        let mut t = Touches::default();
        t.add(ops);
        t
    }

    /// Adds what `ops` write.
    pub(super) fn add(&mut self, ops: &[Op]) {
        for op in ops {
            match touched(op) {
                Touched::Exclusive => self.exclusive = true,
                Touched::Rows { conversation, key } => {
                    if !self.conversations.contains(conversation) {
                        self.conversations.insert(conversation.to_owned());
                    }
                    if let Some(key) = key.filter(|k| !self.keys.contains(*k)) {
                        self.keys.insert(key.to_owned());
                    }
                }
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.conversations.is_empty() && self.keys.is_empty() && !self.exclusive
    }

    /// Whether a batch writing `ops` may be committed while the groups of `self` are in flight.
    pub(super) fn allows(&self, ops: &[Op]) -> bool {
        if self.is_empty() {
            return true;
        }
        if self.exclusive {
            return false;
        }
        ops.iter().all(|op| match touched(op) {
            Touched::Exclusive => false,
            Touched::Rows { conversation, key } => {
                !self.conversations.contains(conversation)
                    && key.is_none_or(|k| !self.keys.contains(k))
            }
        })
    }
}

/// What one op writes, for the conflict rules.
enum Touched<'a> {
    /// Rows of one conversation, and an idempotency key (a key counts as its conversation's).
    Rows {
        conversation: &'a str,
        key: Option<&'a str>,
    },
    /// Every key (the sweep of expired keys).
    Exclusive,
}

fn touched(op: &Op) -> Touched<'_> {
    match op {
        Op::Conversation { id: c, .. }
        | Op::Message {
            conversation: c, ..
        }
        | Op::Events {
            conversation: c, ..
        }
        | Op::Checkpoint {
            conversation: c, ..
        }
        | Op::Delete { conversation: c } => Touched::Rows {
            conversation: c,
            key: None,
        },
        Op::IdempotencyKey {
            key, conversation, ..
        } => Touched::Rows {
            conversation,
            key: Some(key),
        },
        Op::DeleteExpiredKeys { .. } => Touched::Exclusive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(c: &str) -> Op {
        Op::Events {
            conversation: c.to_owned(),
            first_seq: 1,
            events: Vec::new(),
        }
    }

    /// Key `k` of a request to conversation `c`.
    fn key(k: &str, c: &str) -> Op {
        Op::IdempotencyKey {
            key: k.to_owned(),
            expires_at: 0,
            record: String::new(),
            conversation: c.to_owned(),
        }
    }

    #[test]
    fn a_conversation_or_key_in_flight_blocks_only_itself() {
        let busy = Touches::of(&[events("a"), key("k1", "a")]);
        assert!(!busy.allows(&[events("a")]));
        assert!(!busy.allows(&[events("b"), key("k1", "b")]));
        assert!(!busy.allows(&[Op::Delete {
            conversation: "a".into()
        }]));
        assert!(busy.allows(&[events("b"), key("k2", "b")]));
        assert!(busy.allows(&[]));
        // A key is ordered with its conversation's batches, both ways.
        assert!(!busy.allows(&[key("k3", "a")]));
        assert!(!Touches::of(&[key("k4", "c")]).allows(&[events("c")]));
    }

    #[test]
    fn the_key_sweep_is_exclusive_both_ways() {
        let sweep = [Op::DeleteExpiredKeys { now_ms: 5 }];
        assert!(Touches::default().allows(&sweep));
        assert!(!Touches::of(&[events("a")]).allows(&sweep));
        let busy = Touches::of(&sweep);
        assert!(!busy.is_empty());
        assert!(!busy.allows(&[events("b")]));
        assert!(!busy.allows(&[]));
    }
}
