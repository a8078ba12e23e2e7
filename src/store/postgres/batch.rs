//! A caller's batch: the ops it writes, committed together in one transaction, and where its
//! answer goes once the transaction holding them has committed (or failed).

use super::Op;
use crate::store::{AckSender, StoreError};

pub(super) struct Batch {
    pub ops: Vec<Op>,
    pub done: Option<AckSender>,
}

impl Batch {
    /// Sends the batch's answer (a caller that stopped waiting is not an error).
    pub(super) fn answer(self, result: Result<(), StoreError>) {
        if let Some(done) = self.done {
            let _ = done.send(result);
        }
    }
}
