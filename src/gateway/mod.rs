//! The gateway: HTTP routes, the WebSocket session, the wire format, auth and limits.
//!
//! It is the only place that knows JSON frames and status codes. It never runs a process and
//! never touches storage tables: it talks to conversation actors through the registry, and reads
//! history through the store's typed reader API.

pub mod auth;
pub mod dedup;
pub mod http;
pub mod limits;
pub mod ws;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::error::ApiError;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        let mut resp = HttpResponse::build(self.status_code());
        if self.code == crate::error::ErrorCode::RateLimited {
            resp.insert_header(("Retry-After", "1"));
        }
        resp.json(json!({ "error": body }))
    }
}

/// Configure every route on an actix-web app.
pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
    http::routes(cfg);
    cfg.route("/ws", actix_web::web::get().to(ws::handshake));
}
