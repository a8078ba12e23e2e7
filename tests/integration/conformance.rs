//! Issue 18's conformance defects: an existence leak through an uninstalled assistant
//! (defect 5) and HTTP details the spec and the server must agree on (defect 7).

use serde_json::{json, Value};

use crate::common::*;

const ALICE: &str = "pk_alice_0123456789";
const BOB: &str = "pk_bob_0123456789";

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

fn token_config() -> String {
    format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n[[auth.tokens]]\nuser = \"bob\"\nsha256 = \"{}\"\n",
        sha(ALICE),
        sha(BOB)
    )
}

async fn ws_as(s: &Server, token: &str) -> Client {
    Client::connect_with(s, &[("authorization", &format!("Bearer {token}"))])
        .await
        .expect("connect")
}

/// Defect 5: another user's conversation whose assistant was uninstalled is
/// `conversation_not_found` (as an unknown id), for subscribe and cancel; its owner is told the
/// assistant is gone.
#[tokio::test]
async fn an_uninstalled_assistant_does_not_reveal_another_users_conversation() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let s = Server::start_with(Options {
        assistants: dir.path().to_path_buf(),
        extra_config: token_config(),
        ..Options::default()
    });
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .bearer_auth(ALICE)
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let conv = v["conversationId"].as_str().unwrap().to_string();

    std::fs::remove_file(dir.path().join("chat.json")).unwrap();
    let s = s.restart();

    let mut bob = ws_as(&s, BOB).await;
    for frame in [
        json!({"type": "subscribe", "conversationId": conv, "since": 0}),
        json!({"type": "cancel", "conversationId": conv}),
        json!({"type": "subscribe", "conversationId": "no-such-id", "since": 0}),
        json!({"type": "cancel", "conversationId": "no-such-id"}),
    ] {
        assert_eq!(
            bob.err(frame.clone()).await,
            "conversation_not_found",
            "{frame}"
        );
    }
    // The owner is told the truth where the front names the caller (HTTP; the WebSocket
    // session answers `conversation_not_found` until it uses `Registry::get_as`).
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .bearer_auth(ALICE)
        .json(&json!({"content": "again", "conversationId": conv}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_assistant")),
        "{v}"
    );
    let r = http()
        .patch(s.http(&format!("/api/conversations/{conv}")))
        .bearer_auth(BOB)
        .json(&json!({"title": "mine now"}))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("conversation_not_found")),
        "{v}"
    );
}

/// Defect 8: in token mode `/metrics` needs a token unless `[auth] metrics = "open"`.
#[tokio::test]
async fn metrics_follow_the_auth_mode_unless_opened() {
    let s = Server::start_with(Options {
        extra_config: token_config(),
        ..Options::default()
    });
    let r = http().get(s.http("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let r = http()
        .get(s.http("/metrics"))
        .bearer_auth("pk_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(s.http("/metrics"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("parley_store_writable 1"));
    // Probes stay open.
    for path in ["/healthz", "/readyz"] {
        let r = http().get(s.http(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    let open = Server::start_with(Options {
        extra_config: token_config().replacen(
            "[[auth.tokens]]",
            "metrics = \"open\"\n[[auth.tokens]]",
            1,
        ),
        ..Options::default()
    });
    let r = http().get(open.http("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn send(method: &str, s: &Server, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = http().request(method.parse().unwrap(), s.http(path));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

/// Defect 7: where schemathesis found the spec and the server disagreeing.
#[tokio::test]
async fn the_spec_and_the_server_agree_on_edge_values() {
    let s = Server::start();
    let doc = get_json(&s, "/openapi.json").await;
    let (st, v) = send(
        "POST",
        &s,
        "/api/assistants/chat/invoke",
        Some(json!({"content": "hi"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let conv = v["conversationId"].as_str().unwrap().to_string();

    // An empty cursor is the first page.
    let (st, v) = send("GET", &s, "/api/conversations?cursor=", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));

    // since above int64 is refused, and the spec says where int64 ends.
    let (st, v) = send(
        "GET",
        &s,
        &format!("/api/conversations/{conv}/events?since=9223372036854775808"),
        None,
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, _) = send(
        "GET",
        &s,
        &format!("/api/conversations/{conv}/events?since=9223372036854775807"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let params = doc["paths"]["/api/conversations/{id}/events"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let since = params.iter().find(|p| p["name"] == "since").unwrap();
    assert_eq!(since["schema"]["maximum"], json!(i64::MAX), "{since}");

    // An empty title is refused, and the spec says titles have at least one character.
    let (st, v) = send(
        "PATCH",
        &s,
        &format!("/api/conversations/{conv}"),
        Some(json!({"title": ""})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_args")),
        "{v}"
    );
    let title = &doc["components"]["schemas"]["RenameBody"]["properties"]["title"];
    assert_eq!(title["minLength"], 1, "{title}");
    assert_eq!(title["maxLength"], 200, "{title}");

    // A tiny or huge timeout is refused before anything is created; the spec gives the bounds.
    for t in [
        json!(5e-324),
        json!(0.001),
        json!(0),
        json!(-1),
        json!(86400.5),
        json!(1e308),
    ] {
        let (st, v) = send(
            "POST",
            &s,
            "/api/assistants/chat/invoke",
            Some(json!({"content": "hi", "timeoutSeconds": t})),
        )
        .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{t}: {v}"
        );
        assert!(v.to_string().len() < 200, "{v}");
    }
    let (_, list) = send("GET", &s, "/api/conversations", None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let timeout = &doc["components"]["schemas"]["InvokeBody"]["properties"]["timeoutSeconds"];
    assert_eq!(timeout["minimum"], json!(0.01), "{timeout}");
    assert_eq!(timeout["maximum"], json!(86400), "{timeout}");
    // `args` are an object in the spec as in the server.
    let args = &doc["components"]["schemas"]["InvokeBody"]["properties"]["args"];
    assert!(args.to_string().contains("object"), "{args}");
    let (st, v) = send(
        "POST",
        &s,
        "/api/assistants/chat/invoke",
        Some(json!({"content": "hi", "args": [1]})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_args")),
        "{v}"
    );

    // The SSE stream bounds `since` and `Last-Event-ID` like the event log does.
    let r = http()
        .get(s.http(&format!(
            "/api/conversations/{conv}/stream?since=9223372036854775808"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .get(s.http(&format!("/api/conversations/{conv}/stream")))
        .header("Last-Event-ID", "9223372036854775808")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Continuing another assistant's conversation through invoke: not found for this route.
    let (st, v) = send(
        "POST",
        &s,
        "/api/assistants/brief/invoke",
        Some(json!({"content": "hi", "conversationId": conv})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("conversation_not_found")),
        "{v}"
    );
}

/// Defect 7: a method a route does not serve is `405` with `Allow`, not `404`; an unknown path
/// stays `404`.
#[tokio::test]
async fn unsupported_methods_are_405_with_allow() {
    let s = Server::start();
    for (method, path, allow) in [
        ("TRACE", "/api/conversations", "GET, POST"),
        ("PUT", "/api/conversations/x", "GET, PATCH, DELETE"),
        ("DELETE", "/api/assistants", "GET"),
        ("POST", "/healthz", "GET"),
        ("GET", "/api/assistants/chat/invoke", "POST"),
        ("TRACE", "/", "GET"),
    ] {
        let r = http()
            .request(method.parse().unwrap(), s.http(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    }
    let r = http()
        .request("TRACE".parse().unwrap(), s.http("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Defect 7: a body that is not declared JSON is `415 unsupported_media_type` on every JSON
/// route, and nothing is stored; JSON with parameters and `+json` types pass.
#[tokio::test]
async fn non_json_bodies_are_415_and_change_nothing() {
    let s = Server::start();
    let body = json!({"content": "hi", "assistant": "chat"}).to_string();
    for path in [
        "/api/assistants/chat/invoke",
        "/api/conversations",
        "/v1/chat/completions",
        "/agui/chat",
    ] {
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut r = http().post(s.http(path)).body(body.clone());
            if let Some(ct) = ct {
                r = r.header("content-type", ct);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 415, "{path} {ct:?}");
            let v: Value = r.json().await.unwrap();
            let code = v["error"]["code"].as_str().unwrap_or_default();
            assert_eq!(code, "unsupported_media_type", "{path} {ct:?}: {v}");
        }
    }
    let r = http()
        .patch(s.http("/api/conversations/x"))
        .header("content-type", "text/plain")
        .body(r#"{"title": "t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (_, list) = send("GET", &s, "/api/conversations", None).await;
    assert_eq!(list["items"], json!([]), "{list}");
    for ct in [
        "application/json; charset=utf-8",
        "application/vnd.parley+json",
    ] {
        let r = http()
            .post(s.http("/api/assistants/chat/invoke"))
            .header("content-type", ct)
            .body(r#"{"content": "hi"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ct}");
    }
}
