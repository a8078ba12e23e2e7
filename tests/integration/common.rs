//! Shared helpers: start the real `parley` binary on an ephemeral port with a temp data dir,
//! and talk to it with a real WebSocket client and a real HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/assistants")
}

/// A running server process.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: tempfile::TempDir,
    pub config: PathBuf,
    pub stderr_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub struct Options {
    pub assistants: PathBuf,
    /// Lines added to the `[server]` table.
    pub server_config: String,
    /// Tables appended to the config file.
    pub extra_config: String,
    /// The data directory (default: `db` in the server's temp dir).
    pub data_dir: Option<PathBuf>,
    /// Lines added to the `[storage]` table (e.g. `backend = "postgres"`).
    pub storage_config: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            assistants: fixtures(),
            server_config: String::new(),
            extra_config: String::new(),
            data_dir: None,
            storage_config: String::new(),
        }
    }
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Options::default())
    }

    pub fn start_with(o: Options) -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let config = data.path().join("config.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n\n[storage]\ndata_dir = {:?}\n{}\n\n[assistants]\ndir = {:?}\n\n[llm.default]\nprovider = \"builtin\"\npace_ms = 0\n\n[llm.slow]\nprovider = \"builtin\"\npace_ms = 40\n\n[llm.broken]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"none\"\nmax_retries = 0\ntimeout_seconds = 2\n{}\n",
            o.server_config,
            o.data_dir.clone().unwrap_or_else(|| data.path().join("db")),
            o.storage_config,
            o.assistants,
            o.extra_config
        );
        std::fs::write(&config, text).expect("write config");
        Self::spawn(data, config)
    }

    fn spawn(data: tempfile::TempDir, config: PathBuf) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // `TEST_SERVER_LOG=info,parley::store=trace` shows a test server's commits, say.
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start parley");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(t) = tx.take() {
                        let _ = t.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            data,
            config,
            stderr_log: log,
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Kill -9 and start again on the same data dir and config (a new port).
    pub fn crash_and_restart(mut self) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn()
    }

    /// SIGTERM, wait for a clean exit, start again.
    pub fn restart(mut self) -> Server {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "clean shutdown exits 0, got {status:?}");
        self.respawn()
    }
}

impl Server {
    /// Starts a server again on a data dir and config of a stopped one.
    pub fn spawn_again(data: tempfile::TempDir, config: PathBuf) -> Server {
        Self::spawn(data, config)
    }

    fn respawn(mut self) -> Server {
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("tempdir"));
        Self::spawn(data, self.config.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- server log ----");
            for line in self
                .stderr_log
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default()
            {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client with helpers to send frames and wait for answers.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames received but not yet consumed.
    pub backlog: Vec<Value>,
}

pub const WAIT: Duration = Duration::from_secs(15);

impl Client {
    pub async fn connect(server: &Server) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("ws connect");
        Client {
            ws,
            next_id: 1,
            backlog: Vec::new(),
        }
    }

    /// Connect with extra upgrade-request headers (Authorization, Origin).
    pub async fn connect_with(
        server: &Server,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = server.ws_url().into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            next_id: 1,
            backlog: Vec::new(),
        })
    }

    /// Read frames until the server closes; returns (frames, close code if any).
    pub async fn read_until_closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = std::mem::take(&mut self.backlog);
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Ok(v) = serde_json::from_str(&t) {
                        frames.push(v);
                    }
                }
                Ok(Some(Ok(Message::Close(c)))) => return (frames, c.map(|c| u16::from(c.code))),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return (frames, None),
                Err(_) => panic!("the server did not close the socket"),
            }
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("ws send");
    }

    /// Send a frame with a fresh id; returns the id.
    pub async fn frame(&mut self, mut v: Value) -> String {
        let id = format!("f{}-{}", self.next_id, uuid::Uuid::now_v7());
        self.next_id += 1;
        v["id"] = json!(id);
        self.send_raw(&v.to_string()).await;
        id
    }

    async fn recv(&mut self) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.ok()??;
            match m.ok()? {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame, from the backlog first; `None` when the socket ended (or stayed silent
    /// past the wait limit).
    pub async fn next_frame(&mut self) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        self.recv().await
    }

    /// The next frame matching `pred` (others are kept in the backlog).
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        loop {
            let v = self.recv().await.unwrap_or_else(|| {
                panic!("socket ended while waiting; backlog: {:?}", self.backlog)
            });
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// The ack or error answering frame `id`.
    pub async fn reply(&mut self, id: &str) -> Value {
        let id = id.to_string();
        self.wait_for(move |v| v["id"] == json!(id) && (v["type"] == "ack" || v["type"] == "error"))
            .await
    }

    /// Send and expect an ack.
    pub async fn ok(&mut self, v: Value) -> Value {
        let id = self.frame(v).await;
        let r = self.reply(&id).await;
        assert_eq!(r["type"], "ack", "expected an ack, got {r}");
        r
    }

    /// Start a conversation with its first message; returns the conversation id.
    pub async fn create(&mut self, assistant: &str, content: &str) -> String {
        let ack = self
            .ok(json!({"type": "send", "assistant": assistant, "content": content}))
            .await;
        ack["conversationId"]
            .as_str()
            .expect("conversationId")
            .to_string()
    }

    /// Send and expect an error; returns its code.
    pub async fn err(&mut self, v: Value) -> String {
        let id = self.frame(v).await;
        let r = self.reply(&id).await;
        assert_eq!(r["type"], "error", "expected an error, got {r}");
        r["code"].as_str().unwrap_or_default().to_string()
    }

    /// Every event of `conv` up to and including the first that matches `until`.
    pub async fn events_until(&mut self, conv: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let c = conv.to_string();
            let v = self
                .wait_for(move |v| v["type"] == "event" && v["conversationId"] == json!(c))
                .await;
            let stop = until(&v["event"]);
            out.push(v);
            if stop {
                return out;
            }
        }
    }

    /// Events up to the end of the current run segment.
    pub async fn run_events(&mut self, conv: &str) -> Vec<Value> {
        self.events_until(conv, |e| {
            e["type"] == "RUN_FINISHED" || e["type"] == "RUN_ERROR"
        })
        .await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drop the TCP connection without a close handshake.
    pub fn drop_abruptly(self) {
        drop(self);
    }
}

/// Event types of a list of frames.
pub fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["event"]["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Assistant text streamed in a list of frames.
pub fn assistant_text(frames: &[Value]) -> String {
    let mut assistant_ids = std::collections::HashSet::new();
    let mut text = String::new();
    for f in frames {
        let e = &f["event"];
        if e["type"] == "TEXT_MESSAGE_START" && e["role"] == "assistant" {
            assistant_ids.insert(e["messageId"].as_str().unwrap_or("").to_string());
        }
        if e["type"] == "TEXT_MESSAGE_CONTENT"
            && assistant_ids.contains(e["messageId"].as_str().unwrap_or(""))
        {
            text.push_str(e["delta"].as_str().unwrap_or(""));
        }
    }
    text
}

/// Seqs are 1, 2, 3 … with no gap from `first`.
pub fn assert_contiguous(frames: &[Value], first: u64) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f["seq"].as_u64(),
            Some(first + i as u64),
            "seq gap at {i}: {f}"
        );
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// GET a JSON document from the server.
pub async fn get_json(s: &Server, path: &str) -> Value {
    http()
        .get(s.http(path))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

/// The server's Prometheus text.
pub async fn metrics_text(s: &Server) -> String {
    http()
        .get(s.http("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}
