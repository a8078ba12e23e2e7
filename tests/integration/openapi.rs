//! `GET /openapi.json` against the real server: an OpenAPI 3 document that names every route,
//! every error code, and whose schemas the real responses satisfy.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::common::*;

/// CONTRACT §3 (the HTTP API), §4 (the demo page), the WebSocket, `/api/info` and the document
/// itself, as `(method, path)`.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("get", "/api/assistants"),
    ("get", "/api/assistants/{id}"),
    ("post", "/api/assistants/{id}/invoke"),
    ("get", "/api/conversations"),
    ("get", "/api/conversations/{id}"),
    ("patch", "/api/conversations/{id}"),
    ("delete", "/api/conversations/{id}"),
    ("get", "/api/conversations/{id}/messages"),
    ("get", "/api/conversations/{id}/events"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/"),
    ("get", "/static/{file}"),
    ("get", "/ws"),
    ("get", "/api/info"),
    ("get", "/openapi.json"),
    // §6: programs over HTTP.
    ("post", "/api/conversations"),
    ("post", "/api/conversations/{id}/messages"),
    ("post", "/api/conversations/{id}/resume"),
    ("post", "/api/conversations/{id}/cancel"),
    ("get", "/api/conversations/{id}/stream"),
];

/// CONTRACT §2 "Error codes", then the codes that only say why a run ended (`RUN_ERROR`, and an
/// `invoke` whose run ended so).
const CONTRACT_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "unknown_assistant",
    "conversation_not_found",
    "invalid_args",
    "conversation_busy",
    "interrupt_not_pending",
    "assistant_not_automated",
    "payload_too_large",
    "rate_limited",
    "run_timeout",
    "llm_error",
    "storage_unavailable",
    "internal",
    "idempotency_key_reused",
    "limit_exceeded",
];
/// HTTP's own two (issue #18 defect 7; docs/http.md).
const HTTP_CODES: &[&str] = &["method_not_allowed", "unsupported_media_type"];

const RUN_CODES: &[&str] = &[
    "cancelled",
    "interrupted",
    "tool_error",
    "step_failed",
    "step_limit",
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn fetch_doc(s: &Server) -> Value {
    let r = http().get(s.http("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ty = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ty.starts_with("application/json"), "{ty}");
    r.json().await.expect("the document is JSON")
}

/// Every `(method, path)` the document describes.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_string(), path.clone()));
            }
        }
    }
    ops
}

fn set(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> &'d Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc.pointer(r.trim_start_matches('#'));
            resolve(doc, target.unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => schema,
    }
}

/// The properties an object schema names, its own and those of its `allOf` parts.
fn properties<'d>(doc: &'d Value, schema: &'d Value) -> BTreeMap<&'d str, &'d Value> {
    let mut props = BTreeMap::new();
    if let Some(p) = schema.get("properties").and_then(Value::as_object) {
        props.extend(p.iter().map(|(k, v)| (k.as_str(), v)));
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        props.extend(properties(doc, resolve(doc, part)));
    }
    props
}

/// The fields of `instance` that `schema` does not name (JSON Schema allows them by default;
/// here they would mean the document is behind the wire). Free-form objects are skipped.
fn undocumented(doc: &Value, schema: &Value, instance: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    match instance {
        Value::Object(fields) => {
            let props = properties(doc, schema);
            if props.is_empty() {
                return;
            }
            for (k, v) in fields {
                match props.get(k.as_str()) {
                    Some(s) => undocumented(doc, s, v, &format!("{at}/{k}"), out),
                    None => out.push(format!("{at}/{k}")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    undocumented(doc, s, v, &format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

/// Validate `instance` against `schema`, a schema taken from the document whose `$ref`s point
/// into the document's `#/components`, and check that it has no field the schema does not name.
fn validate(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut root = schema.clone();
    assert!(root.is_object(), "{what}: schema {schema}");
    root["components"] = doc["components"].clone();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}\n{root:#}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance:#}\ndoes not match the document's schema {schema}:\n{}",
        errors.join("\n")
    );
    let mut extra = Vec::new();
    undocumented(doc, schema, instance, "", &mut extra);
    assert!(
        extra.is_empty(),
        "{what}: fields {extra:?} are not in the document's schema {schema}\n{instance:#}"
    );
}

/// The schema the document gives for `method path` answering `status` with JSON.
fn response_schema<'d>(doc: &'d Value, method: &str, path: &str, status: u16) -> &'d Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "no operation {method} {path}");
    let s = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        s.is_object(),
        "{method} {path} documents no JSON response {status}: {:#}",
        op["responses"]
    );
    s
}

/// Check a real response against the document: its status is documented for that operation
/// and its body matches the schema.
fn check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = response_schema(doc, method, path, status);
    validate(doc, schema, body, &format!("{method} {path} → {status}"));
}

async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut rb = http().request(method, s.http(path));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_document_describes_every_route_and_error_code() {
    let s = Server::start();
    let doc = fetch_doc(&s).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version}");
    assert_eq!(doc["info"]["title"], "Parley");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc.get("servers").is_none(), "servers are omitted");

    // Exactly the routes the server registers (one table makes both), and the contract's.
    let ops = operations(&doc);
    assert_eq!(ops, set(parley::gateway::ROUTES));
    let missing: Vec<_> = set(CONTRACT_ROUTES).difference(&ops).cloned().collect();
    assert!(
        missing.is_empty(),
        "the contract's routes {missing:?} are not documented"
    );

    // Every operation is documented with a tag and its responses; JSON errors are ErrorBody
    // (OpenAiErrorBody under /v1).
    for (m, p) in &ops {
        let op = &doc["paths"][p][m];
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{m} {p}: no tag"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{m} {p}: no responses");
        for (status, r) in responses {
            assert!(
                r["description"].is_string(),
                "{m} {p} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                if let Some(schema) = r["content"]["application/json"]["schema"].as_object() {
                    // The OpenAI-compatible front answers errors in OpenAI's shape (§8).
                    let body = if p.starts_with("/v1/") {
                        "#/components/schemas/OpenAiErrorBody"
                    } else {
                        "#/components/schemas/ErrorBody"
                    };
                    assert_eq!(schema["$ref"], body, "{m} {p} {status}");
                }
            }
        }
    }
    let ws = &doc["paths"]["/ws"]["get"];
    assert!(
        ws["description"]
            .as_str()
            .is_some_and(|d| d.contains("docs/protocol.md")),
        "{ws:#}"
    );

    // The error codes: the contract's list, HTTP's two, the run outcomes, nothing else.
    let schemas = &doc["components"]["schemas"];
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let expected: Vec<&str> = CONTRACT_CODES
        .iter()
        .chain(HTTP_CODES)
        .chain(RUN_CODES)
        .copied()
        .collect();
    assert_eq!(codes, expected);
    let error = &schemas["ErrorBody"]["properties"]["error"];
    assert_eq!(error["$ref"], "#/components/schemas/ApiError", "{error}");
    assert_eq!(
        schemas["ApiError"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    assert_eq!(schemas["ApiError"]["required"], json!(["code", "message"]));

    // Every documented operation is really served: substitute the path parameters and call
    // it. An unrouted request gets actix-web's empty 404; the server's own 404s say why.
    let (st, body) = call(&s, "get", "/api/no-such-route", None).await;
    assert_eq!((st, body), (404, Value::Null), "an unrouted request");
    for (m, p) in &ops {
        let path = p
            .replace("{id}", "no-such-id")
            .replace("{file}", "parley.js");
        let body = (m == "post" || m == "patch").then(|| json!({}));
        let (st, body) = call(&s, m, &path, body).await;
        assert!(
            st != 404 || body["error"]["code"].is_string(),
            "{m} {p} is documented but not served ({st})"
        );
    }
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let s = Server::start();
    let doc = fetch_doc(&s).await;

    // Assistants: the list (one automated, one not) and one with args.
    let (st, list) = call(&s, "get", "/api/assistants", None).await;
    check(&doc, "get", "/api/assistants", st, &list);
    for id in ["args", "approval"] {
        let (st, a) = call(&s, "get", &format!("/api/assistants/{id}"), None).await;
        assert_eq!(st, 200);
        check(&doc, "get", "/api/assistants/{id}", st, &a);
    }

    // invoke: the request body as documented, the answer, and refusals.
    let request = json!({"content": "taxi", "args": {"department": "r&d"}, "timeoutSeconds": 10});
    let request_schema = &doc["paths"]["/api/assistants/{id}/invoke"]["post"]["requestBody"]
        ["content"]["application/json"]["schema"];
    validate(&doc, request_schema, &request, "invoke's request body");
    let invoke = "/api/assistants/{id}/invoke";
    let (st, r) = call(&s, "post", "/api/assistants/args/invoke", Some(request)).await;
    assert_eq!(st, 200, "{r}");
    check(&doc, "post", invoke, st, &r);
    let conv = r["conversationId"].as_str().unwrap().to_string();
    for (path, body, status) in [
        (
            "/api/assistants/approval/invoke",
            json!({"content": "x"}),
            409,
        ),
        ("/api/assistants/nope/invoke", json!({"content": "x"}), 404),
        (
            "/api/assistants/args/invoke",
            json!({"content": "x", "args": {"department": 3}}),
            422,
        ),
        ("/api/assistants/chat/invoke", json!({"content": 5}), 400),
        (
            "/api/assistants/slow/invoke",
            json!({"content": "x", "timeoutSeconds": 0.2}),
            504,
        ),
    ] {
        let (st, e) = call(&s, "post", path, Some(body)).await;
        assert_eq!(st, status, "{path}: {e}");
        check(&doc, "post", invoke, st, &e);
    }

    // Conversations: one, the list, rename, messages, events, refusals.
    let one = format!("/api/conversations/{conv}");
    let (st, c) = call(&s, "get", &one, None).await;
    assert_eq!(st, 200);
    check(&doc, "get", "/api/conversations/{id}", st, &c);
    let (st, page) = call(&s, "get", "/api/conversations?limit=1", None).await;
    assert_eq!(st, 200);
    assert!(page["nextCursor"].is_string(), "{page}");
    check(&doc, "get", "/api/conversations", st, &page);
    let (st, e) = call(&s, "get", "/api/conversations?limit=500", None).await;
    check(&doc, "get", "/api/conversations", st, &e);
    let (st, c) = call(&s, "patch", &one, Some(json!({"title": "Taxi"}))).await;
    assert_eq!(st, 200);
    check(&doc, "patch", "/api/conversations/{id}", st, &c);
    let (st, e) = call(&s, "patch", &one, Some(json!({"title": ""}))).await;
    assert_eq!(st, 422);
    check(&doc, "patch", "/api/conversations/{id}", st, &e);
    let (st, m) = call(&s, "get", &format!("{one}/messages?limit=1"), None).await;
    assert_eq!(st, 200);
    assert!(m["nextCursor"].is_u64(), "{m}");
    check(&doc, "get", "/api/conversations/{id}/messages", st, &m);
    let (st, ev) = call(&s, "get", &format!("{one}/events"), None).await;
    assert_eq!(st, 200);
    assert!(!ev["items"].as_array().unwrap().is_empty());
    check(&doc, "get", "/api/conversations/{id}/events", st, &ev);
    let (st, e) = call(&s, "get", "/api/conversations/nope", None).await;
    assert_eq!(st, 404);
    check(&doc, "get", "/api/conversations/{id}", st, &e);

    // The rest.
    let (st, h) = call(&s, "get", "/healthz", None).await;
    check(&doc, "get", "/healthz", st, &h);
    let (st, i) = call(&s, "get", "/api/info", None).await;
    check(&doc, "get", "/api/info", st, &i);
    let (st, e) = call(&s, "get", "/static/nope.js", None).await;
    check(&doc, "get", "/static/{file}", st, &e);
}
