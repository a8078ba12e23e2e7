//! The shared services of one server: configuration, assistants, engine, store, registry,
//! metrics and the global run and call permits. Built once at start and handed to the gateway.
//!
//! The conversation actors do not see this struct: they get [`Deps`] (store, engine, metrics,
//! run permits, registry), built here once and shared. Gateway state (frame-id dedup, per-user
//! limits) lives in `gateway::GatewayState`, not here.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::assistant::Catalog;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::conversation::{Deps, Registry, Relays};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Services {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// One permit per active run (`server.max_concurrent_runs`).
    pub run_permits: Arc<Semaphore>,
    /// One permit per synchronous invocation (`server.max_concurrent_invokes`).
    pub invoke_permits: Arc<Semaphore>,
    /// What every conversation actor is given (shares the fields above).
    pub actors: Arc<Deps>,
    /// Cluster mode: this node (`[cluster]`); `None` on a single node.
    pub cluster: Option<Arc<Cluster>>,
}

impl Services {
    pub fn new(
        config: Config,
        catalog: Catalog,
        engine: Engine,
        store: Arc<dyn Store>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        let runs = config.server.max_concurrent_runs;
        let invokes = config.server.max_concurrent_invokes;
        let metrics = Arc::new(Metrics::with_llm(engine.llms().metrics()));
        let run_permits = Arc::new(Semaphore::new(runs));
        let actors = Arc::new(Deps {
            store: store.clone(),
            engine: engine.clone(),
            metrics: metrics.clone(),
            run_permits: run_permits.clone(),
            live: Arc::default(),
            cluster: cluster.clone(),
        });
        let catalog = Arc::new(catalog);
        let relays = cluster
            .as_ref()
            .map(|c| Relays::new(c.clone(), store.clone(), c.reconnects()));
        let registry = Arc::new(Registry::new(catalog.clone(), actors.clone(), relays));
        Arc::new(Services {
            config,
            catalog,
            engine,
            store,
            registry,
            metrics,
            run_permits,
            invoke_permits: Arc::new(Semaphore::new(invokes)),
            actors,
            cluster,
        })
    }

    /// Whether the default LLM is the built-in offline model (the demo page says so).
    pub fn builtin_model(&self) -> bool {
        self.engine.llms().is_builtin("default")
    }
}
