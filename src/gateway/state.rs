//! The gateway's own state, registered as actix-web app data next to the services.

use crate::config::ServerConfig;

use std::sync::Arc;

use super::dedup::Idempotency;
use super::limits::{AuthThrottle, UserLimits};
use super::ws::SocketBudget;

pub struct GatewayState {
    /// Idempotency keys: HTTP `Idempotency-Key`s and WebSocket frame ids (`dedup.rs`).
    pub idempotency: Idempotency,
    /// Per-user rate limits.
    pub limits: UserLimits,
    /// Failed WebSocket authentications per client address.
    pub auth_throttle: AuthThrottle,
    /// Bytes written to WebSockets and not yet read, across the server (`ws/budget.rs`).
    pub sockets: Arc<SocketBudget>,
}

impl GatewayState {
    pub fn new(cfg: &ServerConfig) -> Self {
        GatewayState {
            idempotency: Idempotency::default(),
            limits: UserLimits::new(cfg),
            auth_throttle: AuthThrottle::new(cfg.auth_failures_per_minute),
            sockets: SocketBudget::new(cfg.max_unread_bytes_total),
        }
    }
}
