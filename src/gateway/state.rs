//! The gateway's own state, registered as actix-web app data next to the services.

use crate::config::ServerConfig;

use super::dedup::Idempotency;
use super::limits::UserLimits;

pub struct GatewayState {
    /// Idempotency keys: HTTP `Idempotency-Key`s and WebSocket frame ids (`dedup.rs`).
    pub idempotency: Idempotency,
    /// Per-user rate limits.
    pub limits: UserLimits,
}

impl GatewayState {
    pub fn new(cfg: &ServerConfig) -> Self {
        GatewayState {
            idempotency: Idempotency::default(),
            limits: UserLimits::new(cfg),
        }
    }
}
