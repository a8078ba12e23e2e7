//! The schema, as numbered migrations applied in order at start (and by `parley migrate`).
//!
//! `parley_migrations` records every applied version. Applying is idempotent: each migration
//! runs in its own transaction together with its row in `parley_migrations`, under a
//! transaction-scoped advisory lock, so two nodes starting at once apply each version once.
//! A migration is never edited after release; a change is a new version.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `conversations` | `id` | the record's JSON, plus `owner`, `assistant`, `updated_at`, `status` for the indexes |
//! | `messages` | `(conversation, no)` | the message record's JSON |
//! | `events` | `(conversation, seq)` | the event JSON, exactly as sent to clients |
//! | `checkpoints` | `conversation` | opaque bytes |
//! | `leases` | `conversation` | cluster mode: the owner node, its fencing epoch, `lease_until` (`lease.rs`) |
//!
//! Replay is one range scan of the `events` primary key; listings are range scans of
//! `conversations_owner` / `conversations_owner_assistant` (newest `updated_at` first, then id);
//! the retention sweep's `idle_conversations` is a range scan of `conversations_idle`
//! (`(id, updated_at)`, v4) that tests `updated_at` on the index entry.

use super::pg_error;
use tokio_postgres::Client;

use crate::store::StoreError;

/// `(version, SQL)`, in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE conversations (
        id text PRIMARY KEY,
        owner text NOT NULL,
        assistant text NOT NULL,
        updated_at bigint NOT NULL,
        status text NOT NULL,
        record text NOT NULL
    );
    CREATE INDEX conversations_owner ON conversations (owner, updated_at DESC, id);
    CREATE INDEX conversations_owner_assistant
        ON conversations (owner, assistant, updated_at DESC, id);
    CREATE INDEX conversations_status ON conversations (status, id);
    CREATE TABLE messages (
        conversation text NOT NULL,
        no bigint NOT NULL,
        record text NOT NULL,
        PRIMARY KEY (conversation, no)
    );
    CREATE TABLE events (
        conversation text NOT NULL,
        seq bigint NOT NULL,
        json bytea NOT NULL,
        PRIMARY KEY (conversation, seq)
    );
    CREATE TABLE checkpoints (
        conversation text PRIMARY KEY,
        data bytea NOT NULL
    );",
    ),
    (
        2,
        "CREATE TABLE idempotency_keys (
        key text PRIMARY KEY,
        expires_at bigint NOT NULL,
        record text NOT NULL
    );",
    ),
    (
        3,
        "CREATE TABLE leases (
        conversation text PRIMARY KEY,
        node text NOT NULL,
        epoch bigint NOT NULL,
        lease_until timestamptz NOT NULL
    );
    CREATE INDEX leases_node ON leases (node);",
    ),
    (
        4,
        // The retention sweep pages idle conversations by id: a scan of this index starting
        // after the page's last id, with `updated_at < $before` checked on the index entry, so
        // rows that are not idle are skipped without reading their records.
        "CREATE INDEX conversations_idle ON conversations (id, updated_at);",
    ),
];

/// How many migrations this build knows.
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies every migration not applied yet; returns how many were applied.
pub async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS parley_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_error)?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg_error)?;
        // One migrator at a time (per database): others wait here, then see the row.
        tx.execute("SELECT pg_advisory_xact_lock(7203144)", &[])
            .await
            .map_err(pg_error)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM parley_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(pg_error)?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO parley_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version, "store schema migration applied");
        applied += 1;
    }
    let newest: Option<i32> = client
        .query_one("SELECT max(version) FROM parley_migrations", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if newest.unwrap_or(0) > SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            what: format!(
                "the database has schema version {} but this build knows only up to {SCHEMA_VERSION}",
                newest.unwrap_or(0)
            ),
            source: None,
        });
    }
    Ok(applied)
}
