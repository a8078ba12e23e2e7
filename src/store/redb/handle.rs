//! The open database behind a swappable handle, so that the writer can reopen it after a
//! storage fault without a restart.
//!
//! # Why reopen
//!
//! After a failed write (disk full, EIO) redb latches the failure: every later transaction,
//! reads included, answers `PreviousIo` until the `Database` is dropped and opened again. The
//! writer thread owns recovery: it drops the handle's database, opens the file again (redb
//! repairs it to the last durable commit) and retries the failed group (`writer.rs`).
//!
//! # Invariants
//!
//! - Readers take an `Arc<Database>` for one read transaction and drop it when the read ends,
//!   so an old instance is released quickly; reopening waits (bounded) for that, since redb
//!   refuses a second open of a file that is still open (`DatabaseAlreadyOpen`).
//! - While the handle is empty (between drop and reopen, or when reopening failed) readers get
//!   [`StoreError::Unavailable`]; nothing reads a half-open database.
//! - Only the writer thread calls [`DbHandle::reopen`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redb::{Database, DatabaseError};

use super::schema;
use crate::store::StoreError;

/// Opens the database again (the file at the configured path, with the configured cache).
pub(super) type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// How long a reopen waits for readers to release the old instance.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

pub(super) struct DbHandle {
    current: RwLock<Option<Arc<Database>>>,
    /// `None` for a database over a backend that cannot be opened twice (tests' in-memory ones).
    opener: Option<Opener>,
}

impl DbHandle {
    pub(super) fn new(db: Database, opener: Option<Opener>) -> DbHandle {
        DbHandle {
            current: RwLock::new(Some(Arc::new(db))),
            opener,
        }
    }

    /// The open database, or `Unavailable` while it is being reopened.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current.read().clone().ok_or_else(|| {
            StoreError::Unavailable(Arc::new(StoreError::io(
                "the database is being reopened after a storage fault",
                std::io::Error::other("not open"),
            )))
        })
    }

    /// Whether this handle can reopen its database at all.
    pub(super) fn can_reopen(&self) -> bool {
        self.opener.is_some()
    }

    /// Drops the current instance and opens the database again. On failure the handle stays
    /// empty (reads answer `Unavailable`) and the next call tries again.
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
        let Some(opener) = &self.opener else {
            return Ok(());
        };
        let old = self.current.write().take();
        drop(old);
        let started = Instant::now();
        let db = loop {
            match opener() {
                Ok(db) => break db,
                // A reader still holds the old instance: it lets go when its read ends.
                Err(DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < RELEASE_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(StoreError::db(e)),
            }
        };
        schema::create_all(&db)?;
        *self.current.write() = Some(Arc::new(db));
        tracing::info!("store reopened after a storage fault");
        Ok(())
    }
}
