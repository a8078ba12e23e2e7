//! What a conversation actor uses of the server, and nothing more.
//!
//! One `Arc<Deps>` is shared by every actor (built once with the services). The conversation
//! layer depends on the store, the engine and the metrics; it knows nothing of the gateway
//! (frames, frame-id dedup and per-user limits are the gateway's own state).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::registry::LiveMap;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Deps {
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// One permit per active run (`server.max_concurrent_runs`).
    pub run_permits: Arc<Semaphore>,
    /// The registry's map of live actors, for an actor to unregister itself before it stops.
    pub live: Arc<LiveMap>,
    /// Cluster mode: this node (publish committed events, release the lease when stopping).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
