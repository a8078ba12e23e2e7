//! `http` tools: one templated HTTP request per call.
//!
//! The URL, every header value and the JSON body are templates over
//! `{"args": <the call's args>, ...<the process state's top-level keys>}` (see
//! [`super::template_context`]). The URL and headers render to text; the body is evaluated with
//! [`crate::template::Templates::eval_value`], so `"{{ args.amount }}"` stays a number. Values
//! put into a URL are *not* escaped automatically: write `{{ args.city | urlencode }}`.
//!
//! Every request carries `Idempotency-Key` (CONTRACT: a node in flight at a crash may run again
//! with the same key, so endpoints that change things should deduplicate on it) and, with a body,
//! `Content-Type: application/json` unless the tool sets its own. The whole exchange (connect,
//! send, read) is bounded by `timeoutSeconds` (default 30) and the response body by
//! [`super::MAX_RESPONSE_BYTES`]; cancelling the run drops the request. Redirects are followed
//! only to the same host (see [`super::Tools::new`]), so credentials in headers stay there.
//!
//! Error messages name the method, host and status and quote the start of the response body,
//! never a header value nor the URL's path and query (either may hold a secret); header values
//! are also scrubbed from quoted bodies. Logs follow the same rule.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Method, Response, StatusCode, Url};
use serde_json::{json, Value};

use super::template_context;
use crate::assistant::model::HttpTool;
use crate::engine::ToolCallCtx;

/// Timeout of a request when the tool sets none, in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// How much of an error response is read to quote from it.
const ERROR_BODY_READ: usize = 8 * 1024;
/// How many characters of an error response are quoted in the message.
const ERROR_BODY_QUOTE: usize = 300;

/// Runs one call of an `http` tool.
pub(super) async fn call(
    client: &Client,
    max_response_bytes: usize,
    name: &str,
    tool: &HttpTool,
    args: Value,
    ctx: &ToolCallCtx<'_>,
) -> Result<Value, String> {
    let secs = tool
        .timeout_seconds
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
        .max(1);
    let prepared = prepare(tool, &args, ctx)?;
    let host = prepared.host.clone();
    let method = prepared.method.clone();
    tracing::debug!(tool = name, %method, host = %host, timeout_s = secs, "http tool call");
    let started = Instant::now();
    let exchange = exchange(client, prepared, max_response_bytes);
    let result = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err("cancelled".to_string()),
        r = tokio::time::timeout(Duration::from_secs(secs), exchange) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {secs} s waiting for {method} {host}")),
        },
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(_) => tracing::debug!(tool = name, host = %host, elapsed_ms, "http tool answered"),
        Err(e) => {
            tracing::warn!(tool = name, host = %host, elapsed_ms, error = %e, "http tool failed")
        }
    }
    result
}

/// A request ready to send.
struct Prepared {
    method: Method,
    url: Url,
    /// `host[:port]`, the only part of the URL used in messages and logs.
    host: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    /// Rendered header values, scrubbed from quoted response bodies.
    secrets: Vec<String>,
}

/// Renders the URL, headers and body.
fn prepare(tool: &HttpTool, args: &Value, ctx: &ToolCallCtx<'_>) -> Result<Prepared, String> {
    let tctx = template_context(args, ctx.state);
    let method = Method::from_bytes(tool.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("'{}' is not an HTTP method", tool.method))?;

    let rendered = ctx
        .templates
        .render_text(&tool.url, &tctx)
        .map_err(|e| format!("url template: {e}"))?;
    let url = Url::parse(rendered.trim()).map_err(|e| {
        format!(
            "the URL template '{}' gave an invalid URL ({e})",
            without_query(&tool.url)
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "the URL must start with http:// or https://, not {}://",
            url.scheme()
        ));
    }
    let host = host_label(&url);

    let mut headers = HeaderMap::new();
    let mut secrets = Vec::new();
    for (k, v) in &tool.headers {
        let hname = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("'{k}' is not a valid HTTP header name"))?;
        let text = ctx
            .templates
            .render_text(v, &tctx)
            .map_err(|e| format!("header '{k}' template: {e}"))?;
        let mut hvalue = HeaderValue::from_str(text.trim()).map_err(|_| {
            format!("header '{k}' rendered to a value HTTP does not allow (a line break or control character?)")
        })?;
        hvalue.set_sensitive(true);
        if text.trim().len() >= 4 {
            secrets.push(text.trim().to_string());
        }
        headers.append(hname, hvalue);
    }
    let key = HeaderValue::from_str(&ctx.idempotency_key)
        .map_err(|_| "the idempotency key is not a valid header value".to_string())?;
    headers.insert(HeaderName::from_static("idempotency-key"), key);

    let body = match &tool.body {
        None => None,
        Some(template) => {
            let value = ctx
                .templates
                .eval_value(template, &tctx)
                .map_err(|e| format!("body template: {e}"))?;
            let bytes = serde_json::to_vec(&value)
                .map_err(|e| format!("body cannot be written as JSON: {e}"))?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(bytes)
        }
    };

    Ok(Prepared {
        method,
        url,
        host,
        headers,
        body,
        secrets,
    })
}

/// Sends the request and reads the answer.
async fn exchange(client: &Client, p: Prepared, max_bytes: usize) -> Result<Value, String> {
    let mut req = client.request(p.method.clone(), p.url).headers(p.headers);
    if let Some(body) = p.body {
        req = req.body(body);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| send_error(e, &p.method, &p.host))?;
    let status = resp.status();
    if status.is_redirection() {
        let to = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| resp.url().join(l).ok())
            .map(|u| host_label(&u));
        if let Some(to) = to.filter(|to| *to != host_label(resp.url())) {
            return Err(format!(
                "HTTP {} from {}: redirects to another host ({to}), which is not followed so \
                 the tool's headers are not sent there; point the tool's URL at {to} if it is \
                 trusted",
                status_text(status),
                p.host
            ));
        }
    }
    if !status.is_success() {
        let quoted = read_prefix(resp, ERROR_BODY_READ).await;
        return Err(status_error(
            status, &p.method, &p.host, &quoted, &p.secrets,
        ));
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_ascii_lowercase());
    if let Some(len) = resp.content_length() {
        if len > max_bytes as u64 {
            return Err(too_large(&p.host, max_bytes));
        }
    }
    let body = read_capped(resp, max_bytes).await.map_err(|e| match e {
        ReadError::TooLarge => too_large(&p.host, max_bytes),
        ReadError::Http(e) => format!(
            "reading the response from {} failed: {}",
            p.host,
            error_chain(&e.without_url())
        ),
    })?;
    Ok(interpret(status, content_type.as_deref(), &body))
}

/// The response as JSON when it is JSON, else `{"status": code, "text": body}`.
///
/// A body is JSON when the content type says so (`application/json`, `*+json`) and it parses;
/// without a content type or with a `text/*` one, an object or array that parses is taken too
/// (many services label JSON sloppily).
fn interpret(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> Value {
    let essence = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .unwrap_or("");
    let declared_json = essence == "application/json" || essence.ends_with("+json");
    let sloppy = essence.is_empty() || essence.starts_with("text/");
    if declared_json || sloppy {
        let trimmed = body.trim_ascii_start();
        let structured = trimmed.starts_with(b"{") || trimmed.starts_with(b"[");
        if declared_json || structured {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                return v;
            }
        }
    }
    json!({"status": status.as_u16(), "text": String::from_utf8_lossy(body)})
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads the whole body, refusing more than `cap` bytes.
async fn read_capped(mut resp: Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if buf.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Reads at most about `cap` bytes of the body, for quoting; errors just end the read.
async fn read_prefix(mut resp: Response, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(cap);
    buf
}

fn too_large(host: &str, max_bytes: usize) -> String {
    format!(
        "the response from {host} is larger than {} and was refused",
        human_bytes(max_bytes)
    )
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// `HTTP 404 Not Found from api.example.com: no such city (check the URL)`.
fn status_error(
    status: StatusCode,
    method: &Method,
    host: &str,
    body: &[u8],
    secrets: &[String],
) -> String {
    let mut msg = format!("HTTP {} from {host}", status_text(status));
    let quote = quote_body(body, secrets);
    if !quote.is_empty() {
        msg.push_str(": ");
        msg.push_str(&quote);
    }
    let hint = match status.as_u16() {
        401 | 403 => Some("check the tool's credentials"),
        404 => Some("check the tool's URL and the arguments put into it"),
        405 => Some(if *method == Method::GET {
            "the endpoint does not accept GET; check the tool's method"
        } else {
            "check the tool's method"
        }),
        400 | 422 => Some("the service rejected the request; check the arguments and body"),
        408 | 429 => Some("the service is busy; try again later"),
        500..=599 => Some("the service failed; try again later"),
        _ => None,
    };
    if let Some(hint) = hint {
        msg.push_str(&format!(" ({hint})"));
    }
    msg
}

/// `404 Not Found`, or just the code when it has no standard reason.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The start of a body on one line, with header values scrubbed out.
fn quote_body(body: &[u8], secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for s in secrets {
        one_line = one_line.replace(s.as_str(), "[redacted]");
    }
    if one_line.chars().count() > ERROR_BODY_QUOTE {
        let cut: String = one_line.chars().take(ERROR_BODY_QUOTE).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// A send failure in words a person can act on (the URL is left out: it may hold a secret).
fn send_error(e: reqwest::Error, method: &Method, host: &str) -> String {
    let e = e.without_url();
    if e.is_connect() {
        format!("could not connect to {host}: {}", root_cause(&e))
    } else if e.is_redirect() {
        format!("{method} {host} redirected too many times")
    } else if e.is_timeout() {
        format!("{method} {host} timed out")
    } else {
        format!("{method} {host} failed: {}", error_chain(&e))
    }
}

/// The innermost error's message (`Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Every message of an error chain, joined with `: `.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        let s = next.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = next;
    }
    parts.join(": ")
}

/// `host` or `host:port`.
fn host_label(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// A URL template without its query string, for messages.
fn without_query(template: &str) -> &str {
    template.split('?').next().unwrap_or(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interprets_bodies() {
        let ok = StatusCode::OK;
        assert_eq!(
            interpret(ok, Some("application/json; charset=utf-8"), b"{\"a\":1}"),
            json!({"a": 1})
        );
        assert_eq!(interpret(ok, Some("application/json"), b"42"), json!(42));
        assert_eq!(
            interpret(ok, Some("application/problem+json"), b"[1]"),
            json!([1])
        );
        assert_eq!(interpret(ok, None, b" {\"a\":1}"), json!({"a": 1}));
        assert_eq!(interpret(ok, Some("text/html"), b"[1, 2]"), json!([1, 2]));
        assert_eq!(
            interpret(ok, Some("text/plain"), b"42"),
            json!({"status": 200, "text": "42"})
        );
        assert_eq!(
            interpret(ok, Some("application/json"), b"{broken"),
            json!({"status": 200, "text": "{broken"})
        );
        assert_eq!(
            interpret(StatusCode::NO_CONTENT, Some("application/json"), b""),
            json!({"status": 204, "text": ""})
        );
        assert_eq!(
            interpret(ok, Some("application/octet-stream"), b"{\"a\":1}"),
            json!({"status": 200, "text": "{\"a\":1}"})
        );
    }

    #[test]
    fn status_errors_read_well() {
        let m = status_error(
            StatusCode::NOT_FOUND,
            &Method::GET,
            "api.example.com",
            b"  no such\n city  ",
            &[],
        );
        assert_eq!(
            m,
            "HTTP 404 Not Found from api.example.com: no such city \
             (check the tool's URL and the arguments put into it)"
        );
        let m = status_error(
            StatusCode::UNAUTHORIZED,
            &Method::POST,
            "h",
            b"bad token sk-123456",
            &["Bearer sk-123456".into(), "sk-123456".into()],
        );
        assert!(!m.contains("sk-123456"), "{m}");
        assert!(m.contains("[redacted]"), "{m}");
        let long = "x".repeat(1000);
        let m = status_error(
            StatusCode::from_u16(599).unwrap(),
            &Method::GET,
            "h",
            long.as_bytes(),
            &[],
        );
        assert!(m.starts_with("HTTP 599 from h: xxx"), "{m}");
        assert!(m.len() < 400, "{m}");
        let m = status_error(StatusCode::IM_A_TEAPOT, &Method::GET, "h", b"", &[]);
        assert_eq!(m, "HTTP 418 I'm a teapot from h");
    }

    #[test]
    fn helpers() {
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(without_query("https://x/y?key={{ k }}"), "https://x/y");
        let u = Url::parse("http://127.0.0.1:8080/a?b").unwrap();
        assert_eq!(host_label(&u), "127.0.0.1:8080");
        let u = Url::parse("https://example.com/a").unwrap();
        assert_eq!(host_label(&u), "example.com");
    }
}
