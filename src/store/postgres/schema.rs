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
//! | `event_chunks` | `(conversation, last_seq)` | consecutive events ending at `last_seq`, as sent to clients (`store/chunk.rs`, v5) |
//! | `checkpoints` | `conversation` | opaque bytes |
//! | `leases` | `conversation` | cluster mode: the owner node, its fencing epoch, `lease_until` (`lease.rs`) |
//!
//! Replay is one range scan of the `event_chunks` primary key; listings are range scans of
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
    (
        5,
        // Events in chunks (`store/chunk.rs`), as redb stores them: one row per commit of a
        // conversation's events instead of one per event (an invoke wrote ~26 rows and index
        // entries). A chunk up to a page stays in the row, uncompressed (`toast_tuple_target`,
        // `STORAGE EXTERNAL`: compressing JSON that is read back at once costs more than it
        // saves). Each stored event becomes a chunk of one: `count = 1` (u32 LE), its length
        // (u32 LE), its bytes.
        "CREATE TABLE event_chunks (
        conversation text NOT NULL,
        last_seq bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (conversation, last_seq)
    ) WITH (toast_tuple_target = 8160);
    ALTER TABLE event_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
    INSERT INTO event_chunks (conversation, last_seq, data)
        SELECT conversation, seq,
            '\\x01000000'::bytea
            || set_byte(set_byte(set_byte(set_byte('\\x00000000'::bytea,
                0, length(json) & 255), 1, (length(json) >> 8) & 255),
                2, (length(json) >> 16) & 255), 3, (length(json) >> 24) & 255)
            || json
        FROM events;
    DROP TABLE events;",
    ),
];

/// How many migrations this build knows.
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies every migration not applied yet; returns how many were applied.
pub async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    migrate_to(client, SCHEMA_VERSION).await
}

/// Applies every migration up to `version` not applied yet (tests start from an older schema).
pub(super) async fn migrate_to(client: &mut Client, version: i32) -> Result<usize, StoreError> {
    let upto = version;
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
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= upto) {
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
