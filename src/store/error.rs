//! The store's one error type. Every variant that comes from below (the database engine, the
//! file system, serde) keeps that error as its `source()`; the `Display` text still says what
//! failed and why, because the gateway shows it in `internal` errors and logs it.
//!
//! `StoreError` is `Clone` (sources are shared behind `Arc`): one failed group commit answers
//! every waiter of the group with the same error.

use std::sync::Arc;

/// A shared, type-erased cause (the database engine's own error type is the backend's business).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database engine or the disk under it failed.
    #[error("storage error: {source}")]
    Db {
        #[source]
        source: Cause,
    },
    /// A file-system or thread operation around the database failed (`what` says which).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A record could not be turned into bytes (`what` names it).
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A stored value cannot be read back (`what` names it and says how).
    #[error("stored record is corrupt: {what}")]
    Corrupt {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// The write queue is at its hard bound: the disk has stalled for a long while.
    #[error("the store's write queue is full ({waiting} batches waiting)")]
    QueueFull { waiting: usize },
    /// The store cannot write right now (the disk is full or failing); the batch was not
    /// stored. The writer reopens the database and retries by itself; try again later.
    #[error("the store cannot write right now: {0}")]
    Unavailable(#[source] Arc<StoreError>),
    #[error("the store is shut down")]
    Closed,
    /// A read was lost before it answered (its task panicked or the runtime is shutting down).
    #[error("a store read did not finish: {0}")]
    ReadLost(#[source] Arc<tokio::task::JoinError>),
    /// Cluster mode: this node no longer holds the lease (epoch) of the conversation it wrote
    /// for; another node owns it now. Nothing of the batch was stored.
    #[error("conversation '{conversation}' is owned by another node now (lease lost); nothing was stored")]
    Fenced { conversation: String },
    /// A paging cursor that this store did not produce (client input: a bad request).
    #[error("invalid paging cursor")]
    InvalidCursor,
}

impl StoreError {
    /// A failure of the database engine (any backend's error type).
    pub fn db(source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Db {
            source: Arc::new(source),
        }
    }

    /// A stored value that does not decode.
    pub fn corrupt(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub(crate) fn encode(what: impl Into<String>, source: serde_json::Error) -> StoreError {
        StoreError::Encode {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

impl StoreError {
    /// Whether the cause is the storage itself (disk full, I/O errors, a stalled or reopening
    /// writer) rather than the data or the caller: clients see `storage_unavailable` (503) and
    /// may retry; anything else is `internal` (or, for a bad cursor, `bad_request`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db { .. }
            | StoreError::Io { .. }
            | StoreError::QueueFull { .. }
            | StoreError::Unavailable(_)
            | StoreError::Closed
            | StoreError::Fenced { .. } => true,
            StoreError::Encode { .. }
            | StoreError::Corrupt { .. }
            | StoreError::ReadLost(_)
            | StoreError::InvalidCursor => false,
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::ReadLost(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_kept_and_messages_name_them() {
        let io = std::io::Error::other("disk on fire");
        let e = StoreError::io("cannot create directory /x", io);
        assert_eq!(e.to_string(), "cannot create directory /x: disk on fire");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        let e = StoreError::Unavailable(Arc::new(StoreError::db(std::io::Error::other("eio"))));
        assert_eq!(
            e.to_string(),
            "the store cannot write right now: storage error: eio"
        );
        assert!(e.clone().source().is_some());
    }
}
