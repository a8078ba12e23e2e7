//! What describes the server rather than a resource: liveness (`GET /healthz`, 200 while the
//! process serves, `degraded` while the store cannot write), readiness for load balancers
//! (`GET /readyz`, 503 while the store cannot write), Prometheus metrics (`GET /metrics`) and
//! `GET /api/info` (version, built-in model, auth mode, message limit).
//!
//! Served to anyone (no user): they reveal nothing of a user's data, and probes and the demo
//! page read them before they hold a token.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::Svc;
use crate::config::AuthMode;
use crate::error::{ApiError, ErrorCode};
use crate::gateway::ErrorBody;

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` while a part (the store) does not work.
    pub status: HealthStatus,
    /// Whether the store can write.
    pub storage: StorageHealth,
    /// Cluster mode: this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// Cluster mode's part of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterHealth {
    /// This node's id (`[cluster] node_id`).
    pub node: String,
    /// Whether the NATS connection is up.
    pub nats_connected: bool,
    /// Conversations whose lease this node holds.
    pub owned_conversations: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageHealth {
    /// Writes work.
    Ok,
    /// Writes answer `storage_unavailable` (disk full or failing); reads are served. The store
    /// retries by itself.
    Unavailable,
}

fn health(svc: &Svc) -> Health {
    let cluster = svc.cluster.as_ref().map(|c| ClusterHealth {
        node: c.node().to_owned(),
        nats_connected: c.connected(),
        owned_conversations: c.fences().owned(),
    });
    if svc.store.stats().writable {
        Health {
            status: HealthStatus::Ok,
            storage: StorageHealth::Ok,
            cluster,
        }
    } else {
        Health {
            status: HealthStatus::Degraded,
            storage: StorageHealth::Unavailable,
            cluster,
        }
    }
}

/// Liveness: 200 while the process serves (also when degraded: a restart would not help).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses((status = 200, description = "The server is up (`status` says whether degraded)", body = Health))
)]
pub(in crate::gateway) async fn healthz(svc: Svc) -> HttpResponse {
    HttpResponse::Ok().json(health(&svc))
}

/// Readiness, for load balancers: 503 `storage_unavailable` (with `Retry-After`) while the
/// store cannot write.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "server",
    responses(
        (status = 200, description = "Ready: the store can write", body = Health),
        (status = 503, description = "Not ready: the store cannot write (`storage_unavailable`)", body = ErrorBody)
    )
)]
pub(in crate::gateway) async fn readyz(svc: Svc) -> Result<HttpResponse, ApiError> {
    let h = health(&svc);
    if h.storage == StorageHealth::Ok {
        Ok(HttpResponse::Ok().json(h))
    } else {
        Err(ApiError::new(
            ErrorCode::StorageUnavailable,
            "the store cannot write; this server is not ready for traffic",
        ))
    }
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
    ), (
        status = 401,
        description = "`[auth] metrics = \"token\"` (the default in token mode) and no valid token",
        body = ErrorBody
    ))
)]
pub(in crate::gateway) async fn metrics(
    svc: Svc,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if svc.config.auth.metrics_access() == crate::config::MetricsAccess::Token {
        // The same check as every API route (`[auth] metrics = "open"` lifts it).
        let mut payload = actix_web::dev::Payload::None;
        <crate::gateway::auth::User as actix_web::FromRequest>::from_request(&req, &mut payload)
            .await?;
    }
    let mut text = svc.metrics.render(&svc.store.stats());
    if let Some(c) = &svc.cluster {
        c.metrics
            .render(c.node(), c.fences().owned(), c.connected(), &mut text);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
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
