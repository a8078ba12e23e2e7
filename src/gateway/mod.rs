//! The gateway: HTTP routes, the WebSocket session, the wire format, auth and limits.
//!
//! It is the only place that knows JSON frames and status codes. It never runs a process and
//! never touches storage tables: it talks to conversation actors through the registry, and reads
//! history through the store's typed reader API. Dependencies point one way: gateway →
//! conversation → engine; nothing below imports the gateway.
//!
//! Layout:
//!
//! | file | what it is |
//! |---|---|
//! | `mod.rs` | the one route table ([`routes`], [`ROUTES`]), [`ErrorBody`] and the mapping of an [`ApiError`] to a response |
//! | `http/` | the HTTP API, one file per resource (see its module doc) |
//! | `ws/` | the WebSocket session: `mod.rs` (loop, writing), `client_frame.rs` (decoding), `commands.rs` (one handler per client frame, replay) |
//! | `frame.rs` | [`frame::ServerFrame`]: every frame the server writes on a socket (`ack`, `error`, `event`), serialized here only |
//! | `auth/` | [`auth::User`], an extractor: a handler that takes one cannot run unauthenticated; tokens, JWTs (`jwt.rs`), roles per assistant, origins |
//! | `dedup.rs` | idempotency keys: HTTP `Idempotency-Key`s and WebSocket frame ids (same request: the first answer; different: `idempotency_key_reused`) |
//! | `limits.rs` | per-user rate limits |
//! | `agui/` | the AG-UI front (CONTRACT §7): `RunAgentInput` in, translated events out |
//! | `openai/` | the OpenAI-compatible front, `/v1` (see its module doc) |
//! | `openapi.rs` | `GET /openapi.json`, generated from the handlers' `#[utoipa::path]` |
//!
//! Errors: handlers and the session return [`ApiError`] (one code vocabulary, DESIGN invariant
//! 9). Over HTTP it becomes the code's status and `{"error": {…}}` ([`ErrorBody`]; `rate_limited`
//! adds `Retry-After: 1`); on a socket an `error` frame that echoes the client frame's `id`.

pub mod agui;
pub mod auth;
pub mod dedup;
pub mod frame;
pub mod http;
pub mod limits;
pub mod openai;
pub mod openapi;
pub mod state;
pub mod stream;
pub mod ws;

pub use state::GatewayState;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// The body of every HTTP error response: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if self.code == crate::error::ErrorCode::RateLimited {
            resp.insert_header(("Retry-After", "1"));
        }
        if self.code == crate::error::ErrorCode::StorageUnavailable {
            resp.insert_header((
                "Retry-After",
                crate::error::STORAGE_RETRY_AFTER_SECS.to_string(),
            ));
        }
        if self.status_code() == StatusCode::CONFLICT {
            // CONTRACT §6: a 409 is an answer about the conversation's state, not a failure.
            resp.insert_header(("x-should-retry", "false"));
        }
        resp.json(ErrorBody {
            error: self.clone(),
        })
    }
}

/// The one list of routes. From it come the actix-web registration ([`routes`]), the list
/// [`ROUTES`] and the operations of the OpenAPI document ([`openapi`]): each handler documents
/// itself with `#[utoipa::path]`, so a route cannot be served without being described.
macro_rules! route_table {
    ($($method:ident $path:literal => $($handler:ident)::+;)*) => {
        /// Configure every route on an actix-web app.
        /// (One resource per path: `405` with `Allow`, `415` for non-JSON bodies; `http::methods`.)
        pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
            http::methods::register(cfg, vec![
                $((stringify!($method), $path, actix_web::web::$method().to($($handler)::+))),*
            ]);
        }

        /// Every route [`routes`] registers, as `(method, path)` (lowercase method; the path in
        /// the actix-web and OpenAPI syntax, which agree: `{name}` for a segment).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// The operations of the routes above, from their handlers' `#[utoipa::path]`.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($handler)::+),*))]
        struct RouteDocs;
    };
}

route_table! {
    get "/" => http::static_files::index;
    get "/static/{file}" => http::static_files::static_file;
    get "/healthz" => http::server::healthz;
    get "/readyz" => http::server::readyz;
    get "/metrics" => http::server::metrics;
    get "/openapi.json" => openapi::openapi_json;
    get "/api/info" => http::server::info;
    get "/api/assistants" => http::assistants::list_assistants;
    get "/api/assistants/{id}" => http::assistants::get_assistant;
    post "/api/assistants/{id}/invoke" => http::invoke::invoke;
    get "/api/conversations" => http::conversations::list_conversations;
    get "/api/conversations/{id}" => http::conversations::get_conversation;
    patch "/api/conversations/{id}" => http::conversations::rename_conversation;
    delete "/api/conversations/{id}" => http::conversations::delete_conversation;
    get "/api/conversations/{id}/messages" => http::conversations::messages;
    get "/api/conversations/{id}/events" => http::conversations::events;
    post "/api/conversations" => http::commands::create_conversation;
    post "/api/conversations/{id}/messages" => http::commands::send_message;
    post "/api/conversations/{id}/resume" => http::commands::resume;
    post "/api/conversations/{id}/cancel" => http::commands::cancel;
    get "/api/conversations/{id}/stream" => http::sse::stream;
    get "/ws" => ws::handshake;
    post "/agui/{assistant}" => agui::run;
    get "/agui/{assistant}/threads/{threadId}/events" => agui::events;
    get "/v1/models" => openai::list_models;
    post "/v1/chat/completions" => openai::chat_completions;
}

/// Errors produced by actix-web itself (an oversized body) get the same JSON error body as ours.
pub fn framework_errors<B: 'static>() -> actix_web::middleware::ErrorHandlers<B> {
    use actix_web::dev::ServiceResponse;
    use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
    fn too_large<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
        let is_json = res
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if is_json {
            return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
        }
        let (req, _) = res.into_parts();
        let body = ApiError::new(
            crate::error::ErrorCode::PayloadTooLarge,
            "the request body is larger than server.max_frame_bytes",
        )
        .error_response();
        Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(req, body).map_into_right_body(),
        ))
    }
    ErrorHandlers::new().handler(StatusCode::PAYLOAD_TOO_LARGE, too_large)
}
