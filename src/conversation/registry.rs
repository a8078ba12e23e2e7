//! Finds or starts the one actor of a conversation.
//!
//! The map is guarded by one mutex; looking up, loading from the store and starting the actor
//! happen under it, so two callers asking for the same id at once get the same actor. An actor
//! that leaves memory removes itself (only if the entry is still its own address) before it
//! stops; a caller that raced with that gets a mailbox error and asks again.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;

use super::actor::{Conversation, HISTORY_TAIL};
use crate::engine::Checkpoint;
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Arc<str>, Addr<Conversation>>>,
}

impl Registry {
    /// The live actor of a stored conversation, started (restored from the store) if needed.
    /// The owner check is the actor's: every message carries the caller.
    pub fn get(&self, svc: &Arc<Services>, id: &str) -> Result<Addr<Conversation>, ApiError> {
        let mut live = self.live.lock();
        if let Some(a) = live.get(id) {
            if a.connected() {
                return Ok(a.clone());
            }
        }
        let store = &svc.store;
        let rec = store
            .get_conversation(id)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::conversation_not_found(id))?;
        let assistant = svc.catalog.get(&rec.assistant).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownAssistant,
                format!(
                    "assistant '{}' of this conversation is no longer installed",
                    rec.assistant
                ),
            )
        })?;
        let cp: Checkpoint = match store
            .checkpoint(id)
            .map_err(|e| ApiError::internal(e.to_string()))?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::internal(format!(
                    "the stored checkpoint of '{id}' is unreadable: {e}"
                ))
            })?,
            None => Checkpoint::default(),
        };
        let last_seq = store
            .last_seq(id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let recent = store
            .recent_messages(id, HISTORY_TAIL)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let actor = Conversation::restore(svc.actors.clone(), assistant, rec, cp, last_seq, recent);
        let addr = actor.start();
        live.insert(Arc::from(id), addr.clone());
        Ok(addr)
    }

    /// A new conversation's actor (stored with its first message).
    pub fn create(
        &self,
        svc: &Arc<Services>,
        owner: &str,
        assistant: &str,
    ) -> Result<(String, Addr<Conversation>), ApiError> {
        let a = svc.catalog.get(assistant).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownAssistant,
                format!("there is no assistant '{assistant}'"),
            )
        })?;
        let id = uuid::Uuid::now_v7().to_string();
        let actor =
            Conversation::new_unstored(svc.actors.clone(), a, id.clone(), owner.to_string());
        let addr = actor.start();
        self.live
            .lock()
            .insert(Arc::from(id.as_str()), addr.clone());
        Ok((id, addr))
    }

    /// Forget an actor, if the entry is still this one.
    pub fn remove(&self, id: &str, addr: &Addr<Conversation>) {
        let mut live = self.live.lock();
        if live.get(id).is_some_and(|a| a == addr) {
            live.remove(id);
        }
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().len()
    }

    /// Every live actor (for shutdown).
    pub fn all(&self) -> Vec<Addr<Conversation>> {
        self.live.lock().values().cloned().collect()
    }
}

/// At start-up: end every run that was active when the process stopped (see
/// [`super::actor::interrupted_ops`]). Returns how many were ended.
pub async fn recover_interrupted(
    store: &crate::store::Store,
) -> Result<usize, crate::store::StoreError> {
    let running = store.conversations_with_status(crate::store::RunStatus::Running)?;
    let mut ops = Vec::new();
    let n = running.len();
    for mut rec in running {
        let mut cp: Checkpoint = store
            .checkpoint(&rec.id)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let last = store.last_seq(&rec.id)?;
        ops.extend(super::actor::interrupted_ops(&mut rec, &mut cp, last));
    }
    if !ops.is_empty() {
        store.write(ops).await?;
    }
    Ok(n)
}
