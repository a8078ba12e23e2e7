//! The demo page (`GET /`) and its files (`GET /static/{file}`), compiled into the binary.
//!
//! Served to anyone (no user): the page itself authenticates its WebSocket. Each file is sent
//! with `Cache-Control: no-cache`, so a new binary's page is picked up at once. An unknown file
//! is a `404` with the usual error body (code `bad_request`).

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::gateway::ErrorBody;

/// The demo page's files, compiled into the binary.
const STATIC: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../static/index.html"),
    ),
    (
        "parley.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../static/parley.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../static/style.css"),
    ),
];

fn serve(name: &str) -> HttpResponse {
    match STATIC.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, body)) => HttpResponse::Ok()
            .content_type(*ty)
            .insert_header(("Cache-Control", "no-cache"))
            .body(*body),
        None => HttpResponse::NotFound().json(ErrorBody {
            error: ApiError::bad_request(format!("there is no file '{name}'")),
        }),
    }
}

/// The demo page.
#[utoipa::path(
    get,
    path = "/",
    tag = "demo page",
    responses((status = 200, description = "The demo page", body = String, content_type = "text/html"))
)]
pub(in crate::gateway) async fn index() -> HttpResponse {
    serve("index.html")
}

/// One of the demo page's files (`parley.js`, `app.js`, `style.css`, `index.html`).
#[utoipa::path(
    get,
    path = "/static/{file}",
    tag = "demo page",
    params(("file" = String, Path, description = "The file name, e.g. `parley.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/html"),
        )),
        (status = 404, description = "No such file (code `bad_request`)", body = ErrorBody),
    )
)]
pub(in crate::gateway) async fn static_file(path: web::Path<String>) -> HttpResponse {
    serve(&path.into_inner())
}
