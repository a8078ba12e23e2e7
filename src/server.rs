//! Building the services and running the HTTP server, for `parley serve` and for tests.
//!
//! Start-up: load the config's assistants (an invalid one stops the server with every error),
//! build the LLM providers and tools, open the store, end the runs that were active when the
//! last process stopped, then listen. Shutdown (SIGTERM / Ctrl-C): actix-web stops accepting and
//! drains connections; then the store writer commits everything queued and the process exits 0.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::assistant::{Catalog, LoadOptions};
use crate::config::Config;
use crate::config::StorageBackend;
use crate::engine::Engine;
use crate::llm::LlmRegistry;
use crate::services::Services;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::redb::RedbStore;
use crate::store::Store;

/// Load and check the assistants named by the config.
pub fn load_catalog(config: &Config) -> anyhow::Result<Catalog> {
    let opts = LoadOptions {
        tools: config.tools.clone(),
        llms: config.llm.keys().cloned().collect(),
        default_max_steps: config.server.max_steps,
        default_session_timeout: config.server.session_timeout_seconds,
    };
    Catalog::load_dir(&config.assistants.dir, &opts).map_err(|errs| {
        let list: Vec<String> = errs.iter().map(|e| format!("  - {e}")).collect();
        anyhow::anyhow!(
            "{} problem(s) in the assistant definitions:\n{}",
            errs.len(),
            list.join("\n")
        )
    })
}

/// The configured store: the redb file in `data_dir`, or PostgreSQL at `url` (migrations
/// applied).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let storage = &config.storage;
    Ok(match storage.backend {
        StorageBackend::Redb => {
            let path = storage.data_dir.join("parley.redb");
            Arc::new(
                RedbStore::open_with_cache(&path, Some(cache_bytes(storage.cache_mb)))
                    .with_context(|| format!("opening the store at {}", path.display()))?,
            )
        }
        StorageBackend::Postgres => {
            let options = postgres_options(config)?;
            Arc::new(PgStore::open(&options).await.with_context(|| {
                format!(
                    "opening the PostgreSQL store (tried for up to {} s: [storage] connect_retry_seconds)",
                    options.connect_retry.as_secs()
                )
            })?)
        }
    })
}

/// The PostgreSQL options of the config (`backend = "postgres"` or not).
pub fn postgres_options(config: &Config) -> anyhow::Result<PgOptions> {
    let storage = &config.storage;
    let url = storage
        .url
        .clone()
        .context("storage.url (or PARLEY_POSTGRES_URL) is not set")?;
    let mut options = PgOptions::new(url);
    options.pool_size = storage.pool_size.max(1);
    options.writer_connections = storage.writer_connections.max(1);
    options.schema = storage.schema.clone();
    options.statement_timeout =
        std::time::Duration::from_millis(storage.statement_timeout_ms.max(1));
    options.connect_retry = std::time::Duration::from_secs(storage.connect_retry_seconds);
    Ok(options)
}

/// `[storage] cache_mb` in bytes (saturating; at least 1 MiB).
fn cache_bytes(cache_mb: u64) -> usize {
    usize::try_from(cache_mb.max(1).saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}

/// Everything the server needs, ready to serve.
pub async fn build(config: Config) -> anyhow::Result<Arc<Services>> {
    let catalog = load_catalog(&config)?;
    let llms = LlmRegistry::from_config(&config.llm).context("configuring the LLM providers")?;
    let tools = Arc::new(crate::tools::Tools::new().context("building the HTTP client for tools")?);
    let engine = Engine::new(Arc::new(llms), tools);
    if let Some(cluster) = config.cluster.clone() {
        return build_cluster_node(config, &cluster, catalog, engine).await;
    }
    let store = open_store(&config).await?;
    let ended = crate::conversation::recover_interrupted(store.as_ref())
        .await
        .context("ending runs interrupted by the last shutdown")?;
    if ended > 0 {
        tracing::warn!("{ended} run(s) were active when the server last stopped; they ended with RUN_ERROR 'interrupted'");
    }
    Ok(Services::new(config, catalog, engine, store, None))
}

/// A cluster node (`[cluster]`, CONTRACT §9): the PostgreSQL store with this node's fence,
/// NATS, lease renewal and the server of forwarded commands. Runs that were active on a node
/// that died are ended when their conversation is next claimed, not at start-up (other nodes
/// may be running them).
async fn build_cluster_node(
    config: Config,
    cluster: &crate::config::ClusterConfig,
    catalog: Catalog,
    engine: Engine,
) -> anyhow::Result<Arc<Services>> {
    let node = cluster.node_id();
    let fences = crate::store::postgres::lease::Fences::new(node.clone(), cluster.lease());
    let pg = PgStore::open_fenced(&postgres_options(&config)?, fences)
        .await
        .context("opening the PostgreSQL store")?;
    let leases = pg.leases();
    let store: Arc<dyn Store> = Arc::new(pg);
    let node = crate::cluster::Cluster::connect(cluster, leases)
        .await
        .context("joining the cluster")?;
    if node.id_taken().await {
        anyhow::bail!(
            "another running node already uses cluster.node_id = {:?}; give each node its own",
            node.node()
        );
    }
    let services = Services::new(config, catalog, engine, store, Some(node.clone()));
    let registry = services.registry.clone();
    let orphans = services.registry.clone();
    node.spawn_renewal(
        move |lost| registry.lost(&lost),
        move |ids| orphans.adopt(ids),
    );
    crate::conversation::remote::spawn_server(node, (*services.registry).clone());
    Ok(services)
}

/// Graceful shutdown of a cluster node, after the store was flushed: its leases are given up
/// at once, so other nodes take its conversations over without waiting for expiry.
pub async fn leave_cluster(services: &Services) {
    if let Some(cluster) = &services.cluster {
        cluster.release_all().await;
        cluster.flush().await;
        tracing::info!(node = %cluster.node(), "left the cluster; leases released");
    }
}

/// A server bound to its address, running in the current actix system.
pub struct Running {
    pub addr: SocketAddr,
    pub services: Arc<Services>,
    pub server: actix_web::dev::Server,
}

impl Running {
    /// Stop accepting, drain, and flush the store.
    pub async fn stop(self) {
        self.server.handle().stop(true).await;
        let _ = self.services.store.flush().await;
        leave_cluster(&self.services).await;
    }
}

/// Bind and start serving (the returned server runs until stopped; await `server` to wait).
pub fn start(services: Arc<Services>) -> anyhow::Result<Running> {
    let listen = services.config.listen_addr();
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let data = web::Data::new(services.clone());
    let gateway = web::Data::new(crate::gateway::GatewayState::new(&services.config));
    let max_body = services.config.server.max_frame_bytes;
    let origins = services.config.auth.allowed_origins.clone();
    let server = HttpServer::new(move || {
        // CORS is off unless origins are configured.
        let mut cors = actix_cors::Cors::default()
            .allowed_methods(["GET", "POST", "PATCH", "DELETE"])
            .allowed_headers(["authorization", "content-type"])
            .max_age(600);
        for o in &origins {
            cors = if o == "*" {
                cors.allow_any_origin()
            } else {
                cors.allowed_origin(o)
            };
        }
        App::new()
            .wrap(actix_web::middleware::Condition::new(
                !origins.is_empty(),
                cors,
            ))
            .app_data(data.clone())
            .app_data(gateway.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .wrap(crate::gateway::framework_errors())
            .wrap(actix_web::middleware::Compress::default())
            .configure(crate::gateway::routes)
    })
    .on_connect(crate::gateway::http::on_connect)
    .workers(2)
    // Acks and events are small frames written one by one: without TCP_NODELAY, Nagle's
    // algorithm holds each one back until the client's (delayed, up to 40 ms) ACK of the
    // previous one. See BENCHMARKS.md.
    .tcp_nodelay(true)
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    actix_web::rt::spawn(crate::retention::run(services.clone()));
    Ok(Running {
        addr,
        services,
        server,
    })
}
