//! The gateway's own state, registered as actix-web app data next to the services.

use crate::config::Config;

use std::sync::Arc;

use super::auth::Authenticator;
use super::dedup::Idempotency;
use super::limits::{AuthThrottle, UserLimits};
use super::ws::SocketBudget;

pub struct GatewayState {
    /// Who is calling (`[auth]`: tokens, or JWTs with their cached keys).
    pub auth: Arc<Authenticator>,
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
    pub fn new(config: &Config) -> Self {
        let cfg = &config.server;
        GatewayState {
            auth: Arc::new(Authenticator::new(&config.auth)),
            idempotency: Idempotency::default(),
            limits: UserLimits::new(cfg),
            auth_throttle: AuthThrottle::new(cfg.auth_failures_per_minute),
            sockets: SocketBudget::new(cfg.max_unread_bytes_total),
        }
    }
}
