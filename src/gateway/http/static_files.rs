//! The demo page (`GET /`) and its files (`GET /static/{file}`), compiled into the binary.
//!
//! Served to anyone (no user): the page itself authenticates its WebSocket. Each file is sent
//! with `Cache-Control: no-cache`, so a new binary's page is picked up at once. An unknown file
//! is a `404` with the usual error body (code `bad_request`).

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::gateway::ErrorBody;

/// The demo page's files, compiled into the binary.
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// A file of `static/` embedded in the binary: (name in the URL, content type, bytes).
macro_rules! embedded {
    ($name:literal, $path:literal, $ty:expr) => {
        (
            $name,
            $ty,
            include_bytes!(concat!("../../../", $path)) as &[u8],
        )
    };
}

/// Every file the page may load (one URL segment each; vendored libraries under `static/vendor/`).
const STATIC: &[(&str, &str, &[u8])] = &[
    embedded!("index.html", "static/index.html", HTML),
    embedded!("parley.js", "static/parley.js", JS),
    embedded!("app.js", "static/app.js", JS),
    embedded!("style.css", "static/style.css", CSS),
    embedded!("render.js", "static/render.js", JS),
    embedded!("claim.js", "static/claim.js", JS),
    embedded!("args.js", "static/args.js", JS),
    embedded!("cards.js", "static/cards.js", JS),
    embedded!("graph.js", "static/graph.js", JS),
    embedded!("vendor-marked.js", "static/vendor/marked.umd.js", JS),
    embedded!("vendor-purify.js", "static/vendor/purify.min.js", JS),
    embedded!("vendor-dagre.js", "static/vendor/dagre.min.js", JS),
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
