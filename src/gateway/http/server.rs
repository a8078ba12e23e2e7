//! What describes the server rather than a resource: liveness (`GET /healthz`), Prometheus
//! metrics (`GET /metrics`) and `GET /api/info` (version, built-in model, auth mode, message limit).
//!
//! Served to anyone (no user): they reveal nothing of a user's data, and probes and the demo
//! page read them before they hold a token.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::Svc;
use crate::config::AuthMode;

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses((status = 200, description = "The server is up", body = Health))
)]
pub(in crate::gateway) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: HealthStatus::Ok,
    })
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses((
        status = 200,
        description = "Metrics in the Prometheus text format 0.0.4",
        body = String,
        content_type = "text/plain; version=0.0.4"
    ))
)]
pub(in crate::gateway) async fn metrics(svc: Svc) -> HttpResponse {
    let text = svc.metrics.render(&svc.store.stats());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// `GET /api/info`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Always `parley`.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// True when the default LLM is the built-in offline model.
    pub builtin_model: bool,
    pub auth: AuthMode,
    /// The longest message `content` this server accepts, in characters.
    pub max_message_chars: usize,
}

/// What this server is: version, whether it runs the built-in model, its auth mode, its
/// message length limit.
#[utoipa::path(
    get,
    path = "/api/info",
    tag = "server",
    responses((status = 200, description = "About this server", body = ServerInfo))
)]
pub(in crate::gateway) async fn info(svc: Svc) -> HttpResponse {
    HttpResponse::Ok().json(ServerInfo {
        name: "parley".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        builtin_model: svc.builtin_model(),
        auth: svc.config.auth.mode,
        max_message_chars: svc.config.server.max_message_chars,
    })
}
