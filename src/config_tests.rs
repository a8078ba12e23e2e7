//! Tests of the configuration: the embedded defaults, a file then overrides, the backend,
//! cluster, bind, JWT and LLM sections, unknown keys.

use super::*;

#[test]
fn embedded_defaults_parse_and_check() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.llm["default"].provider, LlmProviderKind::Builtin);
}

#[test]
fn file_then_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[server]\nlisten = \"127.0.0.1:9000\"\n[storage]\ndata_dir = \"/x\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&f), &Overrides::default()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9000");
    assert_eq!(c.storage.data_dir, PathBuf::from("/x"));
    let o = Overrides {
        listen: Some("127.0.0.1:9100".into()),
        ..Default::default()
    };
    let c = Config::load(Some(&f), &o).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9100");
}

#[test]
fn postgres_backend_needs_a_url_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[storage]\ndata_dir = \"/x\"\nbackend = \"postgres\"\n").unwrap();
    let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("storage.url"), "{e}");
    let o = Overrides {
        postgres_url: Some("postgres://u@h/db".into()),
        ..Default::default()
    };
    let c = Config::load(Some(&f), &o).unwrap();
    assert_eq!(c.storage.backend, StorageBackend::Postgres);
    assert_eq!(c.storage.url.as_deref(), Some("postgres://u@h/db"));
    assert_eq!(c.storage.pool_size, 16);
    assert_eq!(c.storage.connect_retry_seconds, 30);
    let o = Overrides {
        storage_backend: Some(StorageBackend::Redb),
        ..Default::default()
    };
    assert_eq!(
        Config::load(Some(&f), &o).unwrap().storage.backend,
        StorageBackend::Redb
    );
    std::fs::write(&f, "[storage]\ndata_dir = \"/x\"\nbackend = \"mysql\"\n").unwrap();
    assert!(Config::load(Some(&f), &Overrides::default()).is_err());
    // The embedded default stays redb: `cargo run` needs nothing else.
    assert_eq!(Config::embedded().storage.backend, StorageBackend::Redb);
}

#[test]
fn cluster_is_off_by_default_and_needs_postgres() {
    assert!(Config::embedded().cluster.is_none());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    let cluster = "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n";
    std::fs::write(&f, cluster).unwrap();
    let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("postgres"), "{e}");
    let pg = "[storage]\ndata_dir = \"/x\"\nbackend = \"postgres\"\nurl = \"postgres://u@h/db\"\n";
    std::fs::write(&f, format!("{pg}{cluster}")).unwrap();
    let c = Config::load(Some(&f), &Overrides::default()).unwrap();
    let k = c.cluster.expect("[cluster]");
    assert_eq!(k.lease_seconds, 10.0);
    let id = k.node_id();
    assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    assert!(!id.contains('.'), "{id}");
    for bad in ["lease_seconds = 0", "node_id = \"a.b\"", "node_id = \"\""] {
        std::fs::write(&f, format!("{pg}{cluster}{bad}\n")).unwrap();
        assert!(
            Config::load(Some(&f), &Overrides::default()).is_err(),
            "{bad} is refused"
        );
    }
    std::fs::write(
        &f,
        format!("{pg}{cluster}node_id = \"node-a\"\nlease_seconds = 2.5\n"),
    )
    .unwrap();
    let k = Config::load(Some(&f), &Overrides::default())
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(
        (k.node_id().as_str(), k.lease()),
        ("node-a", std::time::Duration::from_millis(2500))
    );
}

#[test]
fn refuses_public_bind_without_auth() {
    let o = Overrides {
        listen: Some("0.0.0.0:8080".into()),
        ..Default::default()
    };
    let e = Config::load(None, &o).unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn jwt_mode_needs_one_key_source_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    let load = |text: &str| {
        std::fs::write(&f, text).unwrap();
        Config::load(Some(&f), &Overrides::default()).map_err(|e| e.to_string())
    };
    let e = load("[auth]\nmode = \"jwt\"\n").unwrap_err();
    assert!(e.contains("[auth.jwt]"), "{e}");
    let e =
        load("[auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n").unwrap_err();
    assert!(e.contains("exactly one of jwks_file and jwks_url"), "{e}");
    let e = load("[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_url = \"http://x\"\nissuer = \"\"\naudience = \"a\"\n")
        .unwrap_err();
    assert!(e.contains("must not be empty"), "{e}");
    let c = load("[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_url = \"http://x\"\nissuer = \"i\"\naudience = \"a\"\n")
        .unwrap();
    let j = c.auth.jwt.unwrap();
    assert_eq!((j.user_claim.as_str(), j.leeway_seconds), ("sub", 30));
}

#[test]
fn llm_fault_settings_default_in_a_file_section() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[llm.remote]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nstall_timeout_ms = 250\n",
    )
    .unwrap();
    let c = Config::load(Some(&f), &Overrides::default()).unwrap();
    let l = &c.llm["remote"];
    let d = LlmConfig::new(LlmProviderKind::Openai);
    assert_eq!(l.stall_timeout_ms, 250);
    assert_eq!(l.first_byte_timeout_ms, d.first_byte_timeout_ms);
    assert_eq!(l.max_stream_ms, d.max_stream_ms);
    assert_eq!(l.max_output_chars, d.max_output_chars);
    assert_eq!(l.breaker_threshold, 5);
    assert_eq!(l.breaker_cooldown_ms, d.breaker_cooldown_ms);
}

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[server]\nlisten_typo = 1\n").unwrap();
    assert!(Config::load(Some(&f), &Overrides::default()).is_err());
}
