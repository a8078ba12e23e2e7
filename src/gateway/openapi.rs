//! `GET /openapi.json`: the OpenAPI 3 description of the HTTP API, generated from the code.
//!
//! The operations come from the handlers' `#[utoipa::path]` attributes (one per route of the
//! table in [`super`]), the schemas from the `ToSchema` derives of the types the handlers
//! actually serialize. Nothing here is written by hand but the document's header.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

/// The document's header: info, tags, the bearer security scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Parley",
        description = "Runs AI assistants as durable processes. HTTP API (CONTRACT §3); the \
                       WebSocket protocol is described in docs/protocol.md. Errors are \
                       `{\"error\": {\"code\", \"message\", \"details\"?}}` with the status that \
                       goes with the code."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "assistants", description = "The assistant catalog and synchronous calls"),
        (name = "conversations", description = "The caller's conversations and their history"),
        (name = "websocket", description = "The WebSocket: see docs/protocol.md"),
        (name = "server", description = "Health, metrics, server info, this document"),
        (name = "demo page", description = "The demo page and its files"),
    )
)]
struct Header;

/// Adds the `bearer` scheme (`[auth] mode = "token"`) that the operations refer to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "With `[auth] mode = \"token\"`: a token made by `parley token new USER`; with \
             `mode = \"jwt\"`: a JWT from the configured issuer. With the default mode `none` \
             no credentials are needed."
                .to_string(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Header::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.merge(super::RouteDocs::openapi());
    doc
}

static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// This document: the OpenAPI 3 description of the HTTP API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "server",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT_JSON.as_str())
}
