//! The gateway's own state, registered as actix-web app data next to the services.

use crate::config::ServerConfig;

use super::dedup::FrameAcks;
use super::limits::UserLimits;

pub struct GatewayState {
    /// Acks of `send`/`resume` frames by (user, frame id), for retried frames.
    pub frame_acks: FrameAcks,
    /// Per-user rate limits.
    pub limits: UserLimits,
}

impl GatewayState {
    pub fn new(cfg: &ServerConfig) -> Self {
        GatewayState {
            frame_acks: FrameAcks::default(),
            limits: UserLimits::new(cfg),
        }
    }
}
