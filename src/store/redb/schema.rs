//! The file's tables at open: each created when missing (so that read transactions can always
//! open them), and a file of an older layout moved to this one in the same write transaction
//! (a crash leaves either layout whole).

use redb::{Database, ReadableTable, TableHandle};

use super::tables::{
    BY_OWNER, BY_OWNER_ASSISTANT, CHECKPOINTS, CONVERSATIONS, EVENTS, EVENTS_V1, IDEMPOTENCY,
    MESSAGES, STORAGE_KEYS,
};
use crate::store::{StoreError, WriteOp};

/// Creates every table (no-op when they exist) so that read transactions can always open them.
pub(super) fn create_all(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(CONVERSATIONS)?;
    txn.open_table(BY_OWNER)?;
    txn.open_table(BY_OWNER_ASSISTANT)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(EVENTS)?;
    txn.open_table(CHECKPOINTS)?;
    txn.open_table(IDEMPOTENCY)?;
    let keys_are_new = !txn.list_tables()?.any(|t| t.name() == STORAGE_KEYS.name());
    if keys_are_new {
        migrate_storage_keys(&txn)?;
    }
    migrate_events_v1(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Moves the events of a file written before event chunks into chunks (in the same write
/// transaction as the table creation, so a crash leaves either format whole), then deletes
/// the old table.
fn migrate_events_v1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let exists = txn.list_tables()?.any(|t| t.name() == EVENTS_V1.name());
    if !exists {
        return Ok(());
    }
    let mut ops = Vec::new();
    let mut moved = 0usize;
    {
        let old = txn.open_table(EVENTS_V1)?;
        for entry in old.iter()? {
            let (key, value) = entry?;
            let (conversation, seq) = key.value();
            ops.push(WriteOp::AppendEvent {
                conversation: conversation.to_owned(),
                seq,
                json: bytes::Bytes::copy_from_slice(value.value()),
            });
        }
    }
    let mut events = txn.open_table(EVENTS)?;
    for op in super::encode::encode(ops)? {
        if let super::encode::Encoded::AppendEvents {
            conversation,
            last,
            chunk,
        } = op
        {
            events.insert((conversation.as_str(), last), chunk.as_slice())?;
            moved += 1;
        }
    }
    drop(events);
    txn.delete_table(EVENTS_V1)?;
    tracing::info!(chunks = moved, "moved stored events into event chunks");
    Ok(())
}

/// Gives every conversation of a file written before `storage_keys` its entry (its id, under
/// which its rows are stored), in the transaction that creates the table.
fn migrate_storage_keys(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let conversations = txn.open_table(CONVERSATIONS)?;
    let mut keys = txn.open_table(STORAGE_KEYS)?;
    let mut moved = 0usize;
    for entry in conversations.iter()? {
        let (id, _) = entry?;
        keys.insert(id.value(), id.value())?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(
            conversations = moved,
            "listed stored conversations in storage_keys"
        );
    }
    Ok(())
}
