//! Integration tests of `http` tools against a tiny HTTP/1.1 server on 127.0.0.1:0.
//!
//! The server (plain tokio, one request per connection) answers:
//! `/echo` with a JSON description of the request it got (method, query, headers, JSON body);
//! `/text` with plain text; `/status/N` with status N; `/sleep` after 30 s (noting when the
//! client hangs up first); `/big` and `/big-chunked` with 2 MiB, with and without a length;
//! `/redirect-*` with redirects to the same host, to itself, and to another host name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley::assistant::model::{HttpTool, ToolKind, ToolSpec};
use parley::engine::{ToolCallCtx, ToolRunner};
use parley::template::Templates;
use parley::tools::Tools;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const KEY: &str = "run-1:fetch:3";

#[derive(Default)]
struct ServerState {
    /// `/sleep` requests whose client hung up before the answer.
    hung_up: AtomicUsize,
    hung_up_notify: Notify,
}

struct Server {
    addr: String,
    state: Arc<ServerState>,
}

async fn start_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(ServerState::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let _ = handle(sock, st).await;
            });
        }
    });
    Server { addr, state }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
    }))
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

async fn redirect(sock: &mut TcpStream, location: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await?;
    sock.shutdown().await
}

async fn handle(mut sock: TcpStream, st: Arc<ServerState>) -> std::io::Result<()> {
    let Some(req) = read_request(&mut sock).await? else {
        return Ok(());
    };
    match req.path.as_str() {
        "/echo" => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let out = json!({
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": req.headers,
                "body": body,
            });
            respond(
                &mut sock,
                "200 OK",
                "application/json",
                out.to_string().as_bytes(),
            )
            .await
        }
        "/text" => respond(&mut sock, "200 OK", "text/plain", b"plain words").await,
        "/status/404" => {
            respond(
                &mut sock,
                "404 Not Found",
                "text/plain",
                format!("no such city: {}", req.query).as_bytes(),
            )
            .await
        }
        "/status/500" => {
            // A careless server quoting the credentials it got.
            let auth = req
                .headers
                .get("authorization")
                .cloned()
                .unwrap_or_default();
            respond(
                &mut sock,
                "500 Internal Server Error",
                "text/plain",
                format!("database exploded\n\nwhile serving {auth}").as_bytes(),
            )
            .await
        }
        "/sleep" => {
            let mut byte = [0u8; 1];
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    respond(&mut sock, "200 OK", "application/json", b"{\"late\":true}").await
                }
                r = sock.read(&mut byte) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        st.hung_up.fetch_add(1, Ordering::SeqCst);
                        st.hung_up_notify.notify_waiters();
                    }
                    Ok(())
                }
            }
        }
        "/big" => {
            let body = vec![b'a'; 2 << 20];
            respond(&mut sock, "200 OK", "text/plain", &body).await
        }
        "/big-chunked" => {
            // No length: the body ends when the connection closes.
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
            )
            .await?;
            let piece = vec![b' '; 64 << 10];
            for _ in 0..32 {
                sock.write_all(&piece).await?;
            }
            sock.shutdown().await
        }
        "/redirect-here" => redirect(&mut sock, "/echo?redirected=1").await,
        "/redirect-loop" => redirect(&mut sock, "/redirect-loop").await,
        "/redirect-away" => {
            // Same server under another name: a different host as far as the client knows.
            let port = req
                .headers
                .get("host")
                .and_then(|h| h.rsplit(':').next())
                .unwrap_or("1")
                .to_string();
            redirect(&mut sock, &format!("http://localhost:{port}/echo")).await
        }
        _ => respond(&mut sock, "404 Not Found", "text/plain", b"").await,
    }
}

fn http_tool(
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Option<Value>,
    timeout_seconds: Option<u64>,
) -> ToolSpec {
    ToolSpec {
        description: None,
        parameters: None,
        confirm: false,
        kind: ToolKind::Http(HttpTool {
            method: method.to_string(),
            url,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
            timeout_seconds,
        }),
    }
}

fn state() -> Value {
    json!({"start": {"userInput": "rain & wind", "token": "tok-s3cr3t-value", "days": 3}})
}

async fn call_with(
    tools: &Tools,
    templates: &Templates,
    spec: &ToolSpec,
    args: Value,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let state = state();
    let ctx = ToolCallCtx {
        templates,
        state: &state,
        idempotency_key: KEY.to_string(),
        cancel,
    };
    tools.call("weather", spec, args, ctx).await
}

async fn call(spec: &ToolSpec, args: Value) -> Result<Value, String> {
    let tools = Tools::new().unwrap();
    call_with(
        &tools,
        &Templates::new(),
        spec,
        args,
        &CancellationToken::new(),
    )
    .await
}

#[tokio::test]
async fn get_renders_url_from_args_and_state() {
    let srv = start_server().await;
    let url = format!(
        "http://{}/echo?city={{{{ args.city | urlencode }}}}&q={{{{ start.userInput | urlencode }}}}&n={{{{ start.days }}}}",
        srv.addr
    );
    let spec = http_tool("get", url.clone(), &[], None, None);
    // Once through a registered (compiled) template, once through the fallback.
    let mut templates = Templates::new();
    templates.register(&url).unwrap();
    let tools = Tools::new().unwrap();
    let cancel = CancellationToken::new();
    for t in [&templates, &Templates::new()] {
        let r = call_with(&tools, t, &spec, json!({"city": "São Paulo"}), &cancel)
            .await
            .unwrap();
        assert_eq!(r["method"], json!("GET"));
        assert_eq!(
            r["query"],
            json!("city=S%C3%A3o%20Paulo&q=rain%20%26%20wind&n=3")
        );
        assert_eq!(r["headers"]["idempotency-key"], json!(KEY));
        assert!(r["headers"].get("content-type").is_none(), "{r}");
        assert_eq!(r["body"], Value::Null);
    }
}

#[tokio::test]
async fn post_body_keeps_json_types() {
    let srv = start_server().await;
    let body = json!({
        "city": "{{ args.city }}",
        "days": "{{ args.days }}",
        "ratio": "{{ args.ratio }}",
        "tags": "{{ args.tags }}",
        "stay": "{{ start.days * 2 }}",
        "note": "for: {{ start.userInput }}",
        "fixed": true,
        "nested": {"list": ["{{ args.days }}", "x"]}
    });
    let spec = http_tool(
        "POST",
        format!("http://{}/echo", srv.addr),
        &[],
        Some(body),
        None,
    );
    let r = call(
        &spec,
        json!({"city": "Oslo", "days": 3, "ratio": 0.5, "tags": ["a", "b"]}),
    )
    .await
    .unwrap();
    assert_eq!(r["method"], json!("POST"));
    assert_eq!(
        r["body"],
        json!({
            "city": "Oslo", "days": 3, "ratio": 0.5, "tags": ["a", "b"], "stay": 6,
            "note": "for: rain & wind", "fixed": true, "nested": {"list": [3, "x"]}
        })
    );
    assert!(r["body"]["days"].is_i64());
    assert_eq!(r["headers"]["content-type"], json!("application/json"));
    assert_eq!(r["headers"]["idempotency-key"], json!(KEY));
}

#[tokio::test]
async fn headers_are_rendered() {
    let srv = start_server().await;
    let spec = http_tool(
        "PUT",
        format!("http://{}/echo", srv.addr),
        &[
            ("Authorization", "Bearer {{ start.token }}"),
            ("X-City", "{{ args.city }}"),
            ("X-Static", "plain"),
            ("Content-Type", "application/vnd.weather+json"),
            // The runner's own key wins over one a tool sets.
            ("Idempotency-Key", "mine"),
        ],
        Some(json!({"a": 1})),
        None,
    );
    let r = call(&spec, json!({"city": "Oslo"})).await.unwrap();
    let h = &r["headers"];
    assert_eq!(r["method"], json!("PUT"));
    assert_eq!(h["authorization"], json!("Bearer tok-s3cr3t-value"));
    assert_eq!(h["x-city"], json!("Oslo"));
    assert_eq!(h["x-static"], json!("plain"));
    assert_eq!(h["content-type"], json!("application/vnd.weather+json"));
    assert_eq!(h["idempotency-key"], json!(KEY));
    assert!(h["user-agent"].as_str().unwrap().starts_with("parley/"));
}

#[tokio::test]
async fn non_json_response_is_wrapped() {
    let srv = start_server().await;
    let spec = http_tool("GET", format!("http://{}/text", srv.addr), &[], None, None);
    let r = call(&spec, json!({})).await.unwrap();
    assert_eq!(r, json!({"status": 200, "text": "plain words"}));
}

#[tokio::test]
async fn error_statuses_fail_with_a_readable_message() {
    let srv = start_server().await;
    let spec = http_tool(
        "GET",
        format!("http://{}/status/404?city={{{{ args.city }}}}", srv.addr),
        &[],
        None,
        None,
    );
    let e = call(&spec, json!({"city": "Atlantis"})).await.unwrap_err();
    assert!(
        e.starts_with(&format!(
            "HTTP 404 Not Found from {}: no such city: city=Atlantis",
            srv.addr
        )),
        "{e}"
    );

    let spec = http_tool(
        "POST",
        format!("http://{}/status/500", srv.addr),
        &[("Authorization", "Bearer {{ start.token }}")],
        None,
        None,
    );
    let e = call(&spec, json!({})).await.unwrap_err();
    assert!(
        e.starts_with(&format!(
            "HTTP 500 Internal Server Error from {}: database exploded while serving",
            srv.addr
        )),
        "{e}"
    );
    assert!(!e.contains("s3cr3t"), "a header value leaked: {e}");
    assert!(e.contains("try again later"), "{e}");
}

#[tokio::test]
async fn timeout_fails_quickly() {
    let srv = start_server().await;
    let spec = http_tool(
        "GET",
        format!("http://{}/sleep", srv.addr),
        &[],
        None,
        Some(1),
    );
    let t0 = Instant::now();
    let e = call(&spec, json!({})).await.unwrap_err();
    assert!(e.starts_with("timed out after 1 s"), "{e}");
    assert!(e.contains(&srv.addr), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn oversize_responses_are_refused() {
    let srv = start_server().await;
    for path in ["big", "big-chunked"] {
        let spec = http_tool(
            "GET",
            format!("http://{}/{path}", srv.addr),
            &[],
            None,
            Some(10),
        );
        let e = call(&spec, json!({})).await.unwrap_err();
        assert!(
            e.contains("is larger than 1 MiB and was refused"),
            "{path}: {e}"
        );
    }
    // A smaller limit applies to ordinary answers too.
    let tools = Tools::new().unwrap().with_max_response_bytes(5);
    let spec = http_tool("GET", format!("http://{}/text", srv.addr), &[], None, None);
    let e = call_with(
        &tools,
        &Templates::new(),
        &spec,
        json!({}),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("larger than 5 bytes"), "{e}");
}

#[tokio::test]
async fn cancel_aborts_the_request() {
    let srv = start_server().await;
    let spec = http_tool("GET", format!("http://{}/sleep", srv.addr), &[], None, None);
    let tools = Tools::new().unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let hung_up = srv.state.hung_up_notify.notified();
    let t0 = Instant::now();
    let e = call_with(&tools, &Templates::new(), &spec, json!({}), &cancel)
        .await
        .unwrap_err();
    assert_eq!(e, "cancelled");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The connection was really dropped, not left running.
    if srv.state.hung_up.load(Ordering::SeqCst) == 0 {
        tokio::time::timeout(Duration::from_secs(5), hung_up)
            .await
            .expect("the server never saw the client hang up");
    }
    assert_eq!(srv.state.hung_up.load(Ordering::SeqCst), 1);

    // Already cancelled: nothing is sent.
    let e = call_with(&tools, &Templates::new(), &spec, json!({}), &cancel)
        .await
        .unwrap_err();
    assert_eq!(e, "cancelled");
}

#[tokio::test]
async fn connection_errors_are_clear() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let spec = http_tool(
        "GET",
        format!("http://{addr}/echo?key=hidden-{{{{ args.k }}}}"),
        &[("Authorization", "Bearer {{ start.token }}")],
        None,
        Some(5),
    );
    let e = call(&spec, json!({"k": "x"})).await.unwrap_err();
    assert!(
        e.starts_with(&format!("could not connect to {addr}: ")),
        "{e}"
    );
    assert!(!e.contains("hidden"), "the query leaked: {e}");
    assert!(!e.contains("s3cr3t"), "a header leaked: {e}");
}

#[tokio::test]
async fn bad_definitions_fail_clearly() {
    let spec = http_tool("GET", "ftp://example.com/x".into(), &[], None, None);
    let e = call(&spec, json!({})).await.unwrap_err();
    assert!(e.contains("http:// or https://"), "{e}");

    let spec = http_tool("GET", "{{ args.url }}".into(), &[], None, None);
    let e = call(&spec, json!({"url": "not a url"})).await.unwrap_err();
    assert!(e.contains("gave an invalid URL"), "{e}");

    let spec = http_tool(
        "GET",
        "http://127.0.0.1:9/".into(),
        &[("X-Bad", "{{ args.v }}")],
        None,
        None,
    );
    let e = call(&spec, json!({"v": "a\nb"})).await.unwrap_err();
    assert!(e.contains("header 'X-Bad'"), "{e}");
    assert!(!e.contains("a\nb"), "{e}");
}

#[tokio::test]
async fn redirects_stay_on_the_same_host() {
    let srv = start_server().await;
    let headers = [("X-Api-Key", "{{ start.token }}")];
    let spec = http_tool(
        "GET",
        format!("http://{}/redirect-here", srv.addr),
        &headers,
        None,
        None,
    );
    let r = call(&spec, json!({})).await.unwrap();
    assert_eq!(r["query"], json!("redirected=1"));
    assert_eq!(r["headers"]["x-api-key"], json!("tok-s3cr3t-value"));

    let spec = http_tool(
        "GET",
        format!("http://{}/redirect-away", srv.addr),
        &headers,
        None,
        None,
    );
    let e = call(&spec, json!({})).await.unwrap_err();
    let port = srv.addr.rsplit(':').next().unwrap();
    assert!(
        e.starts_with(&format!(
            "HTTP 302 Found from {}: redirects to another host (localhost:{port}), which is not followed",
            srv.addr
        )),
        "{e}"
    );

    let spec = http_tool(
        "GET",
        format!("http://{}/redirect-loop", srv.addr),
        &headers,
        None,
        None,
    );
    let e = call(&spec, json!({})).await.unwrap_err();
    assert_eq!(e, format!("GET {} redirected too many times", srv.addr));
}
