//! `[auth] mode = "jwt"` against the real server: tokens signed in the test with the fixed test
//! keys of tests/fixtures/jwt (RSA, P-256, an HMAC secret; `jwks.json` holds their public
//! halves), over HTTP, the WebSocket (header and `auth` frame), AG-UI and `/v1`; every way a
//! token can be wrong; roles per assistant; a JWKS served over HTTP by a tiny local server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::*;

const ISS: &str = "https://issuer.test";
const AUD: &str = "parley";

fn key_file(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).expect("test key")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for `sub`, valid for a minute, with `roles`.
fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 60, "iat": now(), "roles": roles})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    encode(&h, claims, key).expect("sign")
}

fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap();
    sign(Algorithm::RS256, "rsa-1", &key, claims)
}

fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&read("ec.pem")).unwrap();
    sign(Algorithm::ES256, "ec-1", &key, claims)
}

fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(&read("hs256.secret"));
    sign(Algorithm::HS256, "hs-1", &key, claims)
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn jwt_config(source: &str, extra: &str) -> String {
    format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\n{source}\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nleeway_seconds = 5\n{extra}\n"
    )
}

fn file_server(extra: &str) -> Server {
    Server::start_with(Options {
        extra_config: jwt_config(&format!("jwks_file = {:?}", key_file("jwks.json")), extra),
        ..Options::default()
    })
}

/// GET `path` with `token`: the status and the JSON body.
async fn get(s: &Server, path: &str, token: &str) -> (u16, Value) {
    let r = http()
        .get(s.http(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = http().post(s.http(path)).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_are_accepted_on_every_front() {
    let s = file_server("");
    for (alg, token) in [
        ("RS256", rs256(&claims("alice", &[]))),
        ("ES256", es256(&claims("alice", &[]))),
        ("HS256", hs256(&claims("alice", &[]))),
    ] {
        let (st, v) = get(&s, "/api/assistants", &token).await;
        assert_eq!(st, 200, "{alg}: {v}");
        let (st, v) = post(
            &s,
            "/api/assistants/chat/invoke",
            Some(&token),
            json!({"content": "hello"}),
        )
        .await;
        assert_eq!(st, 200, "{alg}: {v}");
        let (st, v) = get(&s, "/v1/models", &token).await;
        assert_eq!(st, 200, "{alg}: {v}");
    }
    // The user is the `sub`: alice sees her three conversations, bob none.
    let (_, list) = get(&s, "/api/conversations", &rs256(&claims("alice", &[]))).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");
    let (_, list) = get(&s, "/api/conversations", &es256(&claims("bob", &[]))).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // WebSocket: the upgrade's header, or an `auth` frame.
    let t = rs256(&claims("alice", &[]));
    let mut ws = Client::connect_with(&s, &[("authorization", &format!("Bearer {t}"))])
        .await
        .expect("connect");
    ws.create("chat", "over the socket").await;
    let mut ws = Client::connect(&s).await;
    assert_eq!(
        ws.err(json!({"type": "send", "assistant": "chat", "content": "x"}))
            .await,
        "unauthorized"
    );
    let ack = ws
        .ok(json!({"type": "auth", "token": es256(&claims("alice", &[]))}))
        .await;
    assert_eq!(ack["user"], "alice", "{ack}");
    ws.create("chat", "after an auth frame").await;
    assert_eq!(
        ws.err(json!({"type": "auth", "token": rs256(&claims("bob", &[]))}))
            .await,
        "forbidden"
    );
    let mut ws = Client::connect(&s).await;
    let expired = rs256(&json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() - 600}));
    assert_eq!(
        ws.err(json!({"type": "auth", "token": expired})).await,
        "unauthorized"
    );
    let refused =
        Client::connect_with(&s, &[("authorization", &format!("Bearer {expired}"))]).await;
    assert!(refused.is_err(), "an expired token opened a socket");

    // AG-UI without a token, and with one.
    let input = json!({"threadId": "jwt-thread-1", "runId": "r1", "state": {}, "tools": [],
                       "context": [], "forwardedProps": {},
                       "messages": [{"id": "m1", "role": "user", "content": "hi"}]});
    let (st, v) = post(&s, "/agui/chat", None, input.clone()).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let r = http()
        .post(s.http("/agui/chat"))
        .bearer_auth(hs256(&claims("alice", &[])))
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("RUN_FINISHED"), "{text}");
    // The server log never holds a token.
    let log = s.stderr_log.lock().unwrap().join("\n");
    assert!(
        !log.contains(&t) && !log.contains(&expired),
        "a token was logged"
    );
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_with_a_clear_401() {
    let s = file_server("");
    let good = claims("alice", &[]);
    let other_rsa = EncodingKey::from_rsa_pem(&read("rsa_other.pem")).unwrap();
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let hs_key = EncodingKey::from_secret(&read("hs256.secret"));
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(good.to_string().as_bytes())
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&read("rsa_pub.pem")),
        &good,
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong signature",
            sign(Algorithm::RS256, "rsa-1", &other_rsa, &good),
            "signature",
        ),
        ("expired", rs256(&expired), "expired"),
        ("wrong issuer", rs256(&wrong_iss), "issuer"),
        ("wrong audience", es256(&wrong_aud), "audience"),
        ("no exp", hs256(&no_exp), "exp"),
        (
            "unknown kid",
            sign(Algorithm::HS256, "nope", &hs_key, &good),
            "kid",
        ),
        ("alg none", alg_none, "not a JWT"),
        ("HS256 against an RS256 key", confused, "algorithm"),
        ("not a JWT", "pk_plain_token".to_string(), "not a JWT"),
    ];
    for (what, token, says) in cases {
        for path in ["/api/conversations", "/v1/models"] {
            let (st, v) = get(&s, path, &token).await;
            assert_eq!(st, 401, "{what} on {path}: {v}");
            let msg = if path == "/v1/models" {
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            } else {
                assert_eq!(v["error"]["code"], "unauthorized", "{what}: {v}");
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(msg.contains(says), "{what} on {path}: {msg}");
        }
    }
    // Nothing was created by any of them.
    let (_, list) = get(&s, "/api/conversations", &rs256(&good)).await;
    assert_eq!(list["items"], json!([]), "{list}");
}

#[tokio::test]
async fn roles_decide_who_may_use_a_restricted_assistant() {
    let s = file_server("[auth.jwt.assistant_roles]\nchat = [\"finance\", \"admin\"]\n");
    let clerk = rs256(&claims("carol", &["sales"]));
    let finance = rs256(&claims("dave", &["staff", "finance"]));

    // To a user without the role, the assistant does not exist.
    let (_, list) = get(&s, "/api/assistants", &clerk).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(!ids.contains(&"chat") && ids.contains(&"brief"), "{ids:?}");
    let (st, v) = get(&s, "/api/assistants/chat", &clerk).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_assistant")),
        "{v}"
    );
    let (st, v) = post(
        &s,
        "/api/assistants/chat/invoke",
        Some(&clerk),
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_assistant")),
        "{v}"
    );
    let (st, v) = post(
        &s,
        "/api/conversations",
        Some(&clerk),
        json!({"assistant": "chat", "content": "hi"}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_assistant")),
        "{v}"
    );
    let (_, models) = get(&s, "/v1/models", &clerk).await;
    assert!(!models.to_string().contains("\"chat\""), "{models}");
    let mut ws = Client::connect_with(&s, &[("authorization", &format!("Bearer {clerk}"))])
        .await
        .expect("connect");
    assert_eq!(
        ws.err(json!({"type": "send", "assistant": "chat", "content": "x"}))
            .await,
        "unknown_assistant"
    );
    let (_, mine) = get(&s, "/api/conversations", &clerk).await;
    assert_eq!(
        mine["items"],
        json!([]),
        "refusals created conversations: {mine}"
    );

    // With the role, and for assistants not listed, everything works.
    let (st, v) = get(&s, "/api/assistants/chat", &finance).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &s,
        "/api/assistants/chat/invoke",
        Some(&finance),
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &s,
        "/api/assistants/brief/invoke",
        Some(&clerk),
        json!({"content": "hi"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// A tiny HTTP server answering every request with the current JWKS; counts requests.
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(doc: String) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer { addr, doc, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_cached_and_refetched_for_a_new_kid_at_a_bounded_rate() {
    let all: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    let only = |kid: &str| {
        let keys: Vec<Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kid"] == kid)
            .cloned()
            .collect();
        json!({ "keys": keys }).to_string()
    };
    let jwks = JwksServer::start(only("rsa-1")).await;
    let s = Server::start_with(Options {
        extra_config: jwt_config(
            &format!(
                "jwks_url = \"http://{}/jwks.json\"\nmin_refresh_seconds = 2",
                jwks.addr
            ),
            "",
        ),
        ..Options::default()
    });
    let t = rs256(&claims("alice", &[]));
    for _ in 0..5 {
        assert_eq!(get(&s, "/api/conversations", &t).await.0, 200);
    }
    assert_eq!(jwks.hits(), 1, "the key set is cached");

    // The issuer rotates in a new key: a token naming it makes the server fetch again
    // (once the minimum interval since the last fetch has passed).
    *jwks.doc.lock().unwrap() = only("ec-1");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (st, v) = get(&s, "/api/conversations", &es256(&claims("alice", &[]))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(jwks.hits(), 2);

    // A flood of made-up kids costs at most one more fetch per interval.
    let hs_key = EncodingKey::from_secret(&read("hs256.secret"));
    for i in 0..20 {
        let token = sign(
            Algorithm::HS256,
            &format!("made-up-{i}"),
            &hs_key,
            &claims("alice", &[]),
        );
        assert_eq!(get(&s, "/api/conversations", &token).await.0, 401);
    }
    assert!(jwks.hits() <= 3, "{} fetches", jwks.hits());
    // The rotated-out key is gone once the set was refetched.
    let (st, _) = get(&s, "/api/conversations", &t).await;
    assert_eq!(st, 401);
}
