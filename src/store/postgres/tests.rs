//! The shared suite against a real PostgreSQL (`PARLEY_TEST_POSTGRES_URL`, set by `scripts/test`),
//! each test in a schema of its own, plus backend-specific checks.

use super::{PgOptions, PgStore};

/// A fresh, empty store in a new schema. Fails loudly without a test database.
pub(crate) async fn fresh_options() -> PgOptions {
    let url = std::env::var("PARLEY_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "PARLEY_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a real server. \
             Run them with scripts/test, which starts a throwaway cluster \
             (or: source scripts/lib/postgres.sh; pg_start DIR)"
        )
    });
    let mut options = PgOptions::new(url);
    options.pool_size = 4;
    options.schema = Some(format!("t_{}", uuid::Uuid::now_v7().simple()));
    options
}

pub(crate) async fn fresh() -> PgStore {
    PgStore::open(&fresh_options().await)
        .await
        .expect("opening a postgres store")
}

crate::store::suite::store_suite!(std::sync::Arc::new(super::fresh().await));

#[tokio::test]
async fn migrations_are_idempotent() {
    let options = fresh_options().await;
    assert_eq!(
        super::migrate(&options).await.unwrap(),
        super::schema::SCHEMA_VERSION as usize
    );
    assert_eq!(super::migrate(&options).await.unwrap(), 0);
    let store = PgStore::open(&options).await.unwrap();
    drop(store);
    assert_eq!(super::migrate(&options).await.unwrap(), 0);
}

#[tokio::test]
async fn a_bad_url_is_an_error_not_a_panic() {
    let mut options = PgOptions::new("postgres://nobody@127.0.0.1:1/none");
    options.statement_timeout = std::time::Duration::from_millis(500);
    assert!(PgStore::open(&options).await.is_err());
    let mut options = fresh_options().await;
    options.schema = Some("Robert'); DROP TABLE x;--".to_owned());
    assert!(PgStore::open(&options).await.is_err());
}
