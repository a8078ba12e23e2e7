//! HTTP details every route keeps (issue #18 defect 7), applied where the route table is
//! registered ([`register`]), so no handler can forget them:
//!
//! - **One resource per path.** A method the path does not serve (`TRACE`, `PUT`, `HEAD` on a
//!   `GET` route, …) answers `405 method_not_allowed` with an `Allow` header listing the
//!   methods it does serve; an unknown path stays `404`.
//! - **JSON bodies are JSON.** A `POST`, `PUT` or `PATCH` whose `Content-Type` is not
//!   `application/json` (or a `+json` type), or that carries a body without a `Content-Type`,
//!   answers `415 unsupported_media_type` before the handler runs; a request with neither body
//!   nor `Content-Type` (`cancel`) passes.

use std::collections::BTreeMap;

use actix_web::dev::{Service, ServiceRequest};
use actix_web::http::{header, Method};
use actix_web::{web, HttpResponse, ResponseError, Route};
use futures_util::future::{ready, Either};

use crate::error::{ApiError, ErrorCode};

/// Register `routes` (`(method, path, route)`, in table order) as one resource per path.
pub fn register(cfg: &mut web::ServiceConfig, routes: Vec<(&'static str, &'static str, Route)>) {
    let mut order: Vec<&'static str> = Vec::new();
    let mut by_path: BTreeMap<&'static str, Vec<(&'static str, Route)>> = BTreeMap::new();
    for (method, path, route) in routes {
        if !by_path.contains_key(path) {
            order.push(path);
        }
        by_path.entry(path).or_default().push((method, route));
    }
    for path in order {
        let Some(routes) = by_path.remove(path) else {
            continue;
        };
        let allow = routes
            .iter()
            .map(|(m, _)| m.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resource = web::resource(path);
        for (_, route) in routes {
            resource = resource.route(route);
        }
        let resource = resource
            .default_service(web::to(move || {
                let allow = allow.clone();
                async move { method_not_allowed(&allow) }
            }))
            .wrap_fn(|req, srv| match json_body_refusal(&req) {
                Some(e) => Either::Left(ready(Err(e.into()))),
                None => Either::Right(srv.call(req)),
            });
        cfg.service(resource);
    }
}

fn method_not_allowed(allow: &str) -> HttpResponse {
    let mut resp = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route serves {allow} only"),
    )
    .error_response();
    if let Ok(v) = header::HeaderValue::from_str(allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// `unsupported_media_type` for a body method whose body is not declared JSON.
fn json_body_refusal(req: &ServiceRequest) -> Option<ApiError> {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return None;
    }
    let headers = req.headers();
    match headers.get(header::CONTENT_TYPE) {
        Some(ct) if is_json(ct.as_bytes()) => None,
        Some(_) => Some(refusal()),
        None if has_body(headers) => Some(refusal()),
        None => None,
    }
}

fn refusal() -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "the request body must be JSON: send 'Content-Type: application/json'",
    )
}

/// `application/json` or `…/…+json`, with any parameters, in any case.
fn is_json(ct: &[u8]) -> bool {
    let Ok(ct) = std::str::from_utf8(ct) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .split_once('/')
            .is_some_and(|(ty, sub)| !ty.is_empty() && sub.ends_with("+json"))
}

fn has_body(headers: &header::HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "",
            "multipart/form-data",
            "+json",
        ] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
    }
}
