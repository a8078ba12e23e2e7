//! The shared services of one server: configuration, assistants, engine, store, registry,
//! metrics and the global limits. Built once at start and handed to the gateway and the actors.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::assistant::Catalog;
use crate::config::Config;
use crate::conversation::Registry;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Services {
    pub config: Config,
    pub catalog: Catalog,
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub metrics: Metrics,
    /// Acks of `send`/`resume` frames by (user, frame id), for retried frames.
    pub frame_acks: crate::gateway::dedup::FrameAcks,
    /// Per-user rate limits.
    pub limits: crate::gateway::limits::UserLimits,
    /// One permit per active run (`server.max_concurrent_runs`).
    pub run_permits: Arc<Semaphore>,
    /// One permit per synchronous invocation (`server.max_concurrent_invokes`).
    pub invoke_permits: Arc<Semaphore>,
}

impl Services {
    pub fn new(
        config: Config,
        catalog: Catalog,
        engine: Engine,
        store: Arc<dyn Store>,
    ) -> Arc<Self> {
        let runs = config.server.max_concurrent_runs;
        let invokes = config.server.max_concurrent_invokes;
        let limits = crate::gateway::limits::UserLimits::new(&config.server);
        let metrics = Metrics::with_llm(engine.llms().metrics());
        Arc::new(Services {
            config,
            catalog,
            engine,
            store,
            registry: Registry::default(),
            metrics,
            frame_acks: Default::default(),
            limits,
            run_permits: Arc::new(Semaphore::new(runs)),
            invoke_permits: Arc::new(Semaphore::new(invokes)),
        })
    }

    /// Whether the default LLM is the built-in offline model (the demo page says so).
    pub fn builtin_model(&self) -> bool {
        self.engine.llms().is_builtin("default")
    }
}
