//! Browser end-to-end tests: the demo page (`GET /`, `static/`) in headless Chromium, driven
//! through chromedriver (WebDriver) against the real `parley` binary, clicking like a person.
//!
//! Each test starts its own server (`common::Server`), its own chromedriver on a free port and its
//! own browser with a fresh profile; [`Browser`]'s `Drop` ends the WebDriver session and kills
//! chromedriver and every browser process it started, also when the test panics.
//!
//! Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`); `scripts/test`
//! installs them. When they are missing the tests fail (they never skip silently).
//!
//! Waits are event-driven: a JavaScript condition is polled every 50 ms until it holds, with a
//! bounded timeout; on a timeout the panic message shows what the page displayed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::*;

/// How long one UI step may take.
pub const UI_WAIT: Duration = Duration::from_secs(10);
/// Longer bound for the end of a deliberately slow stream (`[llm.slow]`, 40 ms per token).
const SLOW_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// The flags Chromium needs here: headless, no sandbox (root in a container), and no background
/// networking (the machine has no internet).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-extensions",
    "--password-store=basic",
    "--force-device-scale-factor=1",
    "--lang=en-US",
    "--window-size=1280,800",
    // The page then turns its animations off: screenshots are the same from run to run.
    "--force-prefers-reduced-motion",
];

/// Chromium flags that make the page see `prefers-color-scheme: dark`.
pub const DARK_MODE: &[&str] = &[
    "--force-dark-mode",
    "--blink-settings=preferredColorScheme=0",
];

pub const ENTER: &str = "\u{E007}";
/// Ctrl+A, then release the modifier (WebDriver key codes).
const SELECT_ALL: &str = "\u{E009}a\u{E000}";

// ================================================================================ the browser

fn find_exe(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push("/usr/bin".into());
    for name in names {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A blocking HTTP request to chromedriver (used from `Drop`, where nothing async can run).
fn blocking_http(port: u16, method: &str, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

/// Pids of `root`'s descendants, and of processes whose command line names `marker` (the
/// browser's unique profile directory): everything this test's chromedriver started.
fn processes_of(root: u32, marker: &str) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "pid (comm) state ppid ..." — comm may contain spaces: split after the last ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent.insert(pid, ppid);
            }
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    for &pid in parent.keys() {
        let mut p = pid;
        for _ in 0..64 {
            match parent.get(&p) {
                Some(&pp) if pp == root => {
                    out.push(pid);
                    break;
                }
                Some(&pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out.retain(|&p| p != root);
    out
}

/// Headless Chromium on the demo page, through its own chromedriver.
pub struct Browser {
    pub wd: WebDriver,
    base: String,
    driver: Child,
    driver_port: u16,
    session: Option<String>,
    /// Holds the profile directory and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and Chromium and open the demo page of `server`.
    pub async fn open(server: &Server) -> Browser {
        let b = Self::launch(&format!("http://{}", server.addr)).await;
        b.goto("/").await;
        b
    }

    /// Like [`Browser::open`], with extra Chromium flags (e.g. [`DARK_MODE`]).
    pub async fn open_with(server: &Server, extra_args: &[&str]) -> Browser {
        let b = Self::launch_with(&format!("http://{}", server.addr), extra_args).await;
        b.goto("/").await;
        b
    }

    pub async fn launch(base: &str) -> Browser {
        Self::launch_with(base, &[]).await
    }

    pub async fn launch_with(base: &str, extra_args: &[&str]) -> Browser {
        let missing = || {
            panic!(
                "the browser tests need Chromium and chromedriver (Debian packages `chromium` and \
                 `chromium-driver`), and they are not installed: run `scripts/test`, which installs \
                 them, or `apt-get install chromium chromium-driver`"
            )
        };
        let chromium = find_exe(&["chromium", "chromium-browser"]).unwrap_or_else(missing);
        let chromedriver = find_exe(&["chromedriver"]).unwrap_or_else(missing);
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromedriver.log");

        // A free port can be taken between the probe and chromedriver's bind: retry.
        let mut attempt = 0;
        let (mut driver, port) = loop {
            attempt += 1;
            let port = free_port();
            let mut child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            if wait_driver_ready(&mut child, port).await {
                break (child, port);
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                attempt < 3,
                "chromedriver did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let caps = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let connect = builder.connect(&url);
        let wd = match tokio::time::timeout(Duration::from_secs(60), connect).await {
            Ok(Ok(wd)) => wd,
            other => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!(
                    "chromedriver could not start Chromium ({}): {:?}\nchromedriver log:\n{}",
                    chromium.display(),
                    other.map(|r| r.err()),
                    tail(&std::fs::read_to_string(&log).unwrap_or_default(), 4000)
                );
            }
        };
        let session = wd.session_id().await.ok().flatten();
        let b = Browser {
            wd,
            base: base.trim_end_matches('/').to_string(),
            driver,
            driver_port: port,
            session,
            dir,
        };
        b.set_viewport(1280, 800).await;
        b
    }

    pub async fn goto(&self, path: &str) {
        self.wd
            .goto(&format!("{}{}", self.base, path))
            .await
            .expect("load the page");
        self.wait("app.js to start", "return !!window.parleyApp")
            .await;
        self.js(WATCH_ERRORS).await;
        self.wait(
            "the assistants to load and the socket to open",
            "return !document.getElementById('assistant-select').disabled && \
             document.getElementById('conn-state').dataset.state === 'open'",
        )
        .await;
    }

    /// Fail if the page reported a problem since it loaded: a script error, an unhandled
    /// rejection, an error notification of the client or an error toast.
    pub async fn assert_no_errors(&self) {
        let errors = self
            .js("return window.__errors || ['the error watch is missing']")
            .await;
        assert_eq!(errors, json!([]), "the page reported errors");
    }

    /// Resize so that the page's viewport is `w`×`h` CSS pixels.
    pub async fn set_viewport(&self, w: u32, h: u32) {
        self.wd
            .set_window_size(w, h)
            .await
            .expect("set window size");
        let inner = self
            .js("return [window.innerWidth, window.innerHeight]")
            .await;
        let (iw, ih) = (
            inner[0].as_i64().unwrap_or(0),
            inner[1].as_i64().unwrap_or(0),
        );
        if iw != w as i64 || ih != h as i64 {
            let ww = (w as i64 + (w as i64 - iw)).max(1) as u32;
            let wh = (h as i64 + (h as i64 - ih)).max(1) as u32;
            self.wd
                .set_window_size(ww, wh)
                .await
                .expect("set window size");
        }
        let want = json!([w, h]);
        self.wait(
            &format!("a {w}x{h} viewport"),
            &format!("return JSON.stringify([window.innerWidth, window.innerHeight]) === '{want}'"),
        )
        .await;
    }

    /// Run a script (a function body: use `return`).
    pub async fn js(&self, script: &str) -> Value {
        self.wd
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.wd
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Poll `condition` (a function body returning a value) every 50 ms until it is truthy;
    /// returns that value.
    pub async fn wait(&self, what: &str, condition: &str) -> Value {
        self.wait_up_to(UI_WAIT, what, condition).await
    }

    pub async fn wait_up_to(&self, limit: Duration, what: &str, condition: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.wd.execute(condition, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            };
            if Instant::now() >= deadline {
                let page = self.describe().await;
                panic!("timed out after {limit:?} waiting for {what}\nlast value: {last}\n{page}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the page shows, for failure messages.
    pub async fn describe(&self) -> String {
        let script = "const q = (s) => { const e = document.querySelector(s); return e ? e.innerText : null; };\
            return JSON.stringify({url: location.href, conn: q('#conn-state'), toasts: q('#toasts'),\
              chat: q('#chat'), conversations: q('#conversation-list'), claim: q('#claim-status'),\
              banner: document.getElementById('server-banner').hidden ? null : q('#server-banner')}, null, 1)";
        match self.wd.execute(script, vec![]).await {
            Ok(Value::String(s)) => format!("the page: {s}"),
            Ok(v) => format!("the page: {v}"),
            Err(e) => format!("(cannot read the page: {e})"),
        }
    }

    /// Wait until `css` matches a displayed element and click it (a real WebDriver click).
    /// The page may redraw the element between finding and clicking it (the conversation list
    /// refreshes after each run): then it is found again, as a person would aim again.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + UI_WAIT;
        loop {
            self.wait_visible(css).await;
            let res = match self.wd.find(Locator::Css(css)).await {
                Ok(el) => el.click().await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => return,
                // Stale, or covered for a moment: aim again.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => panic!("cannot click {css}: {e}\n{}", self.describe().await),
            }
        }
    }

    pub async fn wait_visible(&self, css: &str) {
        let cond = format!(
            "const e = document.querySelector({}); return !!e && e.getClientRects().length > 0 && \
             getComputedStyle(e).visibility !== 'hidden';",
            json!(css)
        );
        self.wait(&format!("{css} to be visible"), &cond).await;
    }

    /// Click a field and type into it, like a person (`clear` empties it first).
    pub async fn type_into(&self, css: &str, text: &str, clear: bool) {
        self.wait_visible(css).await;
        let el = self.wd.find(Locator::Css(css)).await.expect("element");
        el.click().await.expect("focus the field");
        if clear {
            el.clear().await.expect("clear the field");
        }
        el.send_keys(text).await.expect("type");
    }

    /// Type a message into the composer and press Enter.
    pub async fn send_message(&self, text: &str) {
        self.type_into("[data-testid=message-input]", text, true)
            .await;
        let el = self
            .wd
            .find(Locator::Css("[data-testid=message-input]"))
            .await
            .unwrap();
        el.send_keys(ENTER).await.expect("press Enter");
    }

    pub async fn select_assistant(&self, id: &str) {
        let sel = self
            .wd
            .find(Locator::Css("[data-testid=assistant-select]"))
            .await
            .expect("assistant select");
        sel.select_by_value(id).await.expect("choose the assistant");
        self.wait(
            &format!("assistant {id} to be selected"),
            &format!(
                "return window.parleyApp.state.assistant && window.parleyApp.state.assistant.id === {}",
                json!(id)
            ),
        )
        .await;
    }

    pub async fn text_of(&self, css: &str) -> String {
        let v = self
            .js_with(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
                vec![json!(css)],
            )
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    pub async fn conversation_id(&self) -> String {
        self.wait(
            "the page to know its conversation",
            "return window.parleyApp.client.conversationId",
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
    }

    /// Wait until the current run is over: no active run, nothing streaming, no step running.
    pub async fn wait_idle(&self, limit: Duration) {
        self.wait_up_to(
            limit,
            "the run to end",
            "return !window.parleyApp.state.running && \
               document.getElementById('stop-button').hidden && \
               !document.querySelector('#chat .message.streaming, #chat .step.running')",
        )
        .await;
    }

    /// The chat's messages as shown: `{id, role, text}` in order. An assistant message is shown
    /// as rendered Markdown; its text is the source it was rendered from (`data-source`).
    pub async fn dom_messages(&self) -> Vec<Value> {
        let v = self
            .js(
                "return Array.from(document.querySelectorAll('#chat .message')).map((m) => ({\
                   id: m.dataset.messageId,\
                   role: m.classList.contains('message-user') ? 'user' : 'assistant',\
                   text: (b => b.dataset.source !== undefined ? b.dataset.source : b.textContent)(m.querySelector('.bubble'))}))",
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Save a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.wd.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

async fn wait_driver_ready(child: &mut Child, port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/status");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited (e.g. the port was taken)
        }
        if let Ok(r) = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask chromedriver to quit the browser (nothing async can run here, so plain HTTP)…
        if let Some(id) = &self.session {
            let _ = blocking_http(self.driver_port, "DELETE", &format!("/session/{id}"));
        }
        // …then kill whatever is left of what it started, and chromedriver itself, by pid.
        let marker = self.dir.path().to_string_lossy().to_string();
        let pids = processes_of(self.driver.id(), &marker);
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(|p| p.to_string()))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ================================================================================ helpers

async fn get_json(s: &Server, path: &str) -> (u16, Value) {
    let r = http().get(s.http(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The stored messages of a conversation, oldest first: `{id, role, text}`.
pub async fn stored_messages(s: &Server, conv: &str) -> Vec<Value> {
    let (st, v) = get_json(s, &format!("/api/conversations/{conv}/messages?limit=100")).await;
    assert_eq!(st, 200, "{v}");
    let mut items: Vec<Value> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| json!({"id": m["id"], "role": m["role"], "text": m["content"]}))
        .collect();
    items.reverse();
    items
}

pub async fn conversation_status(s: &Server, conv: &str) -> String {
    let (_, v) = get_json(s, &format!("/api/conversations/{conv}")).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

/// Wait (polling the HTTP API) until the conversation has `status`.
pub async fn wait_status(s: &Server, conv: &str, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = conversation_status(s, conv).await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "conversation {conv} is '{now}', expected '{status}'"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The chat shows every stored message exactly once, in order, with the same text; and the
/// page reported no error on the way.
pub async fn assert_chat_matches_store(b: &Browser, s: &Server, conv: &str) {
    b.assert_no_errors().await;
    let shown = b.dom_messages().await;
    let stored = stored_messages(s, conv).await;
    assert!(!stored.is_empty(), "nothing stored for {conv}");
    assert_eq!(
        shown, stored,
        "the chat must show each stored message exactly once\nshown:  {shown:#?}\nstored: {stored:#?}"
    );
}

/// Where the browser tests write their screenshots: `target/screenshots/` on every run (look
/// at them there), and the committed `docs/screenshots/` only when `PARLEY_UPDATE_SCREENSHOTS=1`
/// asks for it, so that running the tests does not leave the checkout modified.
pub fn screenshots_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if std::env::var_os("PARLEY_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        root.join("docs/screenshots")
    } else {
        root.join("target/screenshots")
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!(
            "cannot create the screenshot directory {}: {e}",
            dir.display()
        );
    }
    dir
}

/// Collects what the page reports as going wrong (see `Browser::assert_no_errors`).
const WATCH_ERRORS: &str = "window.__errors = [];\
    window.addEventListener('error', (e) => window.__errors.push('script: ' + e.message));\
    window.addEventListener('unhandledrejection', (e) =>\
      window.__errors.push('unhandled rejection: ' + ((e.reason && e.reason.message) || e.reason)));\
    window.parleyApp.client.on('error', (e) => window.__errors.push('client: ' + (e && e.code) + ' ' + (e && e.message)));\
    new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes)\
      if (n.classList && n.classList.contains('toast-error')) window.__errors.push('toast: ' + n.textContent); })\
      .observe(document.getElementById('toasts'), {childList: true});\
    return true;";

/// Records every value the connection pill shows (a MutationObserver on `data-state`).
const WATCH_CONN: &str = "window.__connStates = [document.getElementById('conn-state').dataset.state];\
    new MutationObserver(() => {\
      const s = document.getElementById('conn-state').dataset.state;\
      if (window.__connStates[window.__connStates.length - 1] !== s) window.__connStates.push(s);\
    }).observe(document.getElementById('conn-state'), {attributes: true, attributeFilter: ['data-state']});\
    return true;";

// ================================================================================ tests

/// (a) Pick an assistant, see its welcome message and prologues, click a prologue: the reply
/// streams in and the node progress shows.
#[tokio::test]
async fn prologue_streams_reply_and_progress() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("chat").await;

    b.wait_visible("[data-testid=welcome]").await;
    assert_eq!(
        b.text_of("[data-testid=welcome]").await,
        "Hello! Ask me anything."
    );
    assert_eq!(b.text_of("#empty-title").await, "Chat");
    let prologues = b
        .js("return Array.from(document.querySelectorAll('[data-testid=prologue]')).map(e => e.innerText)")
        .await;
    assert_eq!(prologues, json!(["What can you do?"]));
    assert!(
        b.js("return document.querySelectorAll('#chat .message').length")
            .await
            == json!(0)
    );

    // Count the text updates of assistant bubbles: a streamed reply grows in several steps.
    b.js("window.__growth = 0; new MutationObserver((ms) => { for (const m of ms) {\
            const bubble = m.target.parentElement && m.target.parentElement.closest('.message-assistant');\
            if (m.type === 'characterData' && bubble) window.__growth++; } })\
          .observe(document.getElementById('chat'), {subtree: true, characterData: true}); return true;")
        .await;
    b.click("[data-testid=prologue]").await;

    b.wait(
        "the prologue as the user's message",
        "const m = document.querySelector('[data-testid=message-user]'); return m && m.innerText === 'What can you do?'",
    )
    .await;
    b.wait(
        "the assistant's reply",
        "const m = document.querySelector('[data-testid=message-assistant]'); return m && m.innerText.length > 0",
    )
    .await;
    b.wait(
        "node progress",
        "const p = document.querySelector('[data-testid=step-progress]'); return p && !!p.querySelector('.step[data-step=answer]') && p.textContent.includes('Answer')",
    )
    .await;
    b.wait_idle(UI_WAIT).await;

    let growth = b.js("return window.__growth").await.as_u64().unwrap();
    assert!(
        growth > 3,
        "the reply was streamed in steps (saw {growth} updates)"
    );
    let steps = b
        .js("return Array.from(document.querySelectorAll('[data-testid=step-progress] .step')).map(e => [e.dataset.step, e.className])")
        .await;
    let answer = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "answer")
        .unwrap_or_else(|| panic!("the llm node shows in the progress: {steps}"));
    assert!(answer[1].as_str().unwrap().contains("done"), "{steps}");
    // The welcome screen gives way to the chat.
    assert_eq!(
        b.js("return document.getElementById('empty-state').hidden")
            .await,
        json!(true)
    );

    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    assert_chat_matches_store(&b, &s, &conv).await;
    // The new conversation is listed, titled by its first message.
    b.wait(
        "the conversation in the list",
        "return Array.from(document.querySelectorAll('[data-testid=conversation-item]')).some(e => e.innerText.includes('What can you do?'))",
    )
    .await;
}

/// (b) An Action in Conversation card: edit its data, press Approve, the run goes on and the
/// reply shows; the card records the answer and cannot be answered twice.
#[tokio::test]
async fn approval_card_answered_with_its_button() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("approval").await;
    b.send_message("a new laptop").await;

    b.wait_visible("[data-testid=action-card]").await;
    assert!(b
        .text_of("[data-testid=action-card]")
        .await
        .contains("Approve 'a new laptop'?"));
    let buttons = b
        .js("return Array.from(document.querySelectorAll('[data-testid=action-card] [data-testid=action-button]')).map(e => e.dataset.action)")
        .await;
    assert_eq!(buttons, json!(["approve", "reject"]));
    // The step is shown as waiting while the card is open.
    b.wait(
        "the waiting step",
        "return !!document.querySelector('[data-testid=step-progress] .step.waiting[data-step=confirm]')",
    )
    .await;

    // The node is editable: its data shows as form fields (a number field for the amount);
    // change the amount, then approve.
    assert_eq!(
        b.js("const f = document.querySelector('[data-testid=action-card] [data-testid=data-form]');              return f && [f.querySelector('[name=request]').value, f.querySelector('[name=amount]').type]")
            .await,
        json!(["a new laptop", "number"])
    );
    b.type_into("[data-testid=action-card] [name=amount]", "43", true)
        .await;
    b.click("[data-testid=action-card] [data-action=approve]")
        .await;

    b.wait(
        "the reply after approval",
        "return Array.from(document.querySelectorAll('[data-testid=message-assistant]')).some(m => m.innerText === 'Approved: a new laptop (43)')",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    let card = b
        .js("const c = document.querySelector('[data-testid=action-card]'); return {answered: c.classList.contains('answered'),\
             status: c.querySelector('.action-card-status').innerText,\
             chosen: c.querySelector('.chosen') && c.querySelector('.chosen').dataset.action,\
             disabled: Array.from(c.querySelectorAll('button')).every(b => b.disabled)}")
        .await;
    assert_eq!(
        card,
        json!({"answered": true, "status": "Answered: Approve", "chosen": "approve", "disabled": true})
    );
    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    assert_chat_matches_store(&b, &s, &conv).await;
}

/// (c) Action in Page: the assistant fills the sample claim form on the page, the person checks
/// it, corrects the purpose and presses Submit; the run resumes with the form's values and ends.
/// Also takes the README screenshots (desktop and phone) while the approval card is open.
#[tokio::test]
async fn page_action_fills_claim_form_and_submit_resumes() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("expense_demo").await;
    b.wait_visible("[data-testid=welcome]").await;
    assert_eq!(
        b.text_of("[data-testid=welcome]").await,
        "Hi! Tell me what you spent and I will prepare the claim."
    );
    // The input args form comes from the assistant's inputArgs.
    assert_eq!(
        b.js("const s = document.getElementById('arg-department'); return s.options[s.selectedIndex].text")
            .await,
        json!("sales")
    );
    b.click("[data-testid=prologue]").await;

    b.wait_visible("[data-testid=action-card]").await;
    b.wait(
        "the drafted claim",
        "const m = document.querySelector('[data-testid=message-assistant]'); return m && !m.classList.contains('streaming') && m.innerText.length > 20",
    )
    .await;
    let card = b.text_of("[data-testid=action-card]").await;
    assert!(
        card.contains("File this claim?") && card.contains("42.5") && card.contains("EUR"),
        "{card}"
    );

    // Screenshots for the docs: a conversation with a reply and an action card. (No focused
    // field: a blinking caret would make every run's PNG differ.)
    b.js("document.activeElement && document.activeElement.blur(); return true")
        .await;
    b.screenshot(&screenshots_dir().join("desktop.png")).await;
    b.set_viewport(390, 844).await;
    b.wait(
        "the phone layout",
        "return matchMedia('(max-width: 859px)').matches",
    )
    .await;
    b.js("const c = document.getElementById('chat'); c.scrollTop = c.scrollHeight; return true")
        .await;
    b.screenshot(&screenshots_dir().join("phone.png")).await;
    b.set_viewport(1280, 800).await;

    b.click("[data-testid=action-card] [data-action=approve]")
        .await;

    // The page action fills the form and waits for Submit.
    b.wait_visible("[data-testid=page-action-note]").await;
    b.wait_visible("#claim-waiting").await;
    let form = b
        .js("const f = document.getElementById('claim-form').elements;\
             return {department: f.department.value, amount: f.amount.value, currency: f.currency.value, purpose: f.purpose.value}")
        .await;
    assert_eq!(form["department"], "sales", "{form}");
    assert_eq!(form["amount"], "42.5", "{form}");
    assert_eq!(form["currency"], "EUR", "{form}");
    assert!(
        !form["purpose"].as_str().unwrap().is_empty(),
        "the purpose is filled: {form}"
    );
    assert!(b
        .text_of("[data-testid=page-action-note]")
        .await
        .contains("Check the claim form and press Submit."));

    // The person corrects the purpose and submits.
    b.type_into("#claim-purpose", "Airport taxi for the Berlin fair", true)
        .await;
    b.click("[data-testid=claim-submit]").await;

    b.wait(
        "the reply with the submitted values",
        "return Array.from(document.querySelectorAll('[data-testid=message-assistant]')).some(m =>\
           m.innerText === 'Claim filed: 42.5 EUR for Airport taxi for the Berlin fair (sales).')",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    assert_eq!(b.text_of("#claim-status").await, "Sent to the assistant ✓");
    assert!(b
        .text_of("[data-testid=page-action-note]")
        .await
        .contains("Done on the page"));
    assert_eq!(
        b.js("return document.getElementById('claim-waiting').hidden")
            .await,
        json!(true)
    );
    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    assert_chat_matches_store(&b, &s, &conv).await;

    // The page action was answered exactly once, with the form's values.
    let (_, ev) = get_json(&s, &format!("/api/conversations/{conv}/events")).await;
    let fills: Vec<&Value> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["event"])
        .filter(|e| e["type"] == "STEP_FINISHED" && e["stepName"] == "fill")
        .collect();
    assert_eq!(fills.len(), 1, "{fills:?}");
    assert_eq!(
        fills[0]["output"]["value"]["purpose"],
        "Airport taxi for the Berlin fair"
    );
}

/// On a phone the side panels are drawers: the page action opens the one with the claim form,
/// Submit closes it so the reply shows, and the conversation list is behind the menu button.
#[tokio::test]
async fn phone_layout_page_action_in_a_drawer() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.set_viewport(390, 844).await;
    b.select_assistant("expense_demo").await;
    b.click("[data-testid=prologue]").await;
    b.click("[data-testid=action-card] [data-action=approve]")
        .await;

    b.wait(
        "the drawer with the filled form",
        "return document.getElementById('panel').classList.contains('open') && \
         !document.getElementById('claim-waiting').hidden && \
         document.getElementById('claim-purpose').value !== ''",
    )
    .await;
    b.click("[data-testid=claim-submit]").await;
    b.wait(
        "the drawer to close",
        "return !document.getElementById('panel').classList.contains('open') && document.getElementById('scrim').hidden",
    )
    .await;
    b.wait(
        "the reply",
        "return Array.from(document.querySelectorAll('[data-testid=message-assistant]')).some(m =>\
           m.innerText === 'Claim filed: 42.5 EUR for a taxi to the airport (sales).')",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    let conv = b.conversation_id().await;

    // The conversation list is in the menu drawer; picking a conversation closes it.
    b.click("#sidebar-toggle").await;
    let item = format!("[data-testid=conversation-item][data-id='{conv}'] .conv-open");
    b.click(&item).await;
    b.wait(
        "the menu drawer to close",
        "return !document.getElementById('sidebar').classList.contains('open')",
    )
    .await;
    wait_status(&s, &conv, "completed", UI_WAIT).await;
    b.wait(
        "the reopened history",
        "const m = document.querySelectorAll('#chat .message'); return m.length === 3 && !m[2].classList.contains('streaming')",
    )
    .await;
    assert_chat_matches_store(&b, &s, &conv).await;
}

/// (d) The stop button cancels a slow stream: the chat says "Stopped", the partial reply stays.
#[tokio::test]
async fn stop_button_cancels_a_slow_stream() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("slow").await;
    b.send_message("the history of trains").await;

    b.wait(
        "the reply to start streaming",
        "const m = document.querySelector('[data-testid=message-assistant].streaming'); return m && m.innerText.length > 0",
    )
    .await;
    b.click("[data-testid=stop-button]").await;

    let err = b
        .wait(
            "the run to show as stopped",
            "const e = document.querySelector('[data-testid=run-error]'); return e && {code: e.dataset.code, text: e.innerText}",
        )
        .await;
    assert_eq!(err, json!({"code": "cancelled", "text": "Stopped"}));
    b.wait_idle(UI_WAIT).await;
    b.wait_visible("[data-testid=send-button]").await;
    let stopped = b
        .js("return !!document.querySelector('[data-testid=step-progress] .step.stopped[data-step=answer]')")
        .await;
    assert_eq!(stopped, json!(true), "the step shows as stopped");

    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "cancelled", UI_WAIT).await;
    // The partial text is kept, and is what the chat shows.
    assert_chat_matches_store(&b, &s, &conv).await;
    let msgs = stored_messages(&s, &conv).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(!msgs[1]["text"].as_str().unwrap().is_empty());
}

/// (e) New conversation; reopening the old one from the list shows its history (also after a
/// reload); rename and delete from the list.
#[tokio::test]
async fn conversations_reopen_rename_delete() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("chat").await;

    b.send_message("First question about invoices").await;
    b.wait_visible("[data-testid=message-assistant]").await;
    b.wait_idle(UI_WAIT).await;
    let first = b.conversation_id().await;
    wait_status(&s, &first, "completed", UI_WAIT).await;
    let first_msgs = b.dom_messages().await;
    assert_eq!(first_msgs.len(), 2);

    // New conversation: the chat is empty again with the welcome message.
    b.click("[data-testid=new-conversation]").await;
    b.wait_visible("[data-testid=welcome]").await;
    assert_eq!(
        b.js("return document.querySelectorAll('#chat .message').length")
            .await,
        json!(0)
    );
    assert_eq!(b.text_of("#chat-title").await, "New conversation");
    b.send_message("Second question about refunds").await;
    b.wait_visible("[data-testid=message-assistant]").await;
    b.wait_idle(UI_WAIT).await;
    let second = b.conversation_id().await;
    assert_ne!(first, second);
    wait_status(&s, &second, "completed", UI_WAIT).await;

    let item = |id: &str| format!("[data-testid=conversation-item][data-id='{id}']");
    b.wait_visible(&item(&first)).await;
    b.wait_visible(&item(&second)).await;
    assert_eq!(
        b.js("return document.querySelectorAll('[data-testid=conversation-item]').length")
            .await,
        json!(2)
    );

    // Reopen the first conversation from the list: its whole history, nothing of the second.
    b.click(&format!("{} .conv-open", item(&first))).await;
    b.wait(
        "the old conversation's history",
        "const m = Array.from(document.querySelectorAll('#chat .message')); return m.length === 2 && m[0].innerText === 'First question about invoices' && !m[1].classList.contains('streaming')",
    )
    .await;
    assert_eq!(b.conversation_id().await, first);
    assert_eq!(b.dom_messages().await, first_msgs);
    assert_chat_matches_store(&b, &s, &first).await;
    assert!(b.text_of("#chat-title").await.starts_with("First question"));

    // Rename it from the list.
    b.click(&format!("{} [data-testid=rename-button]", item(&first)))
        .await;
    // The field opens focused with the old title selected: type over it and press Enter.
    b.wait(
        "the rename field to have the focus",
        "return document.activeElement && document.activeElement.dataset.testid === 'rename-input'",
    )
    .await;
    let input =
        b.wd.find(Locator::Css("[data-testid=rename-input]"))
            .await
            .unwrap();
    input
        .send_keys(&format!("{SELECT_ALL}Invoices chat{ENTER}"))
        .await
        .unwrap();
    b.wait(
        "the new title in the list",
        &format!(
            "const e = document.querySelector(\"{} .conv-title\"); return e && e.innerText === 'Invoices chat'",
            item(&first)
        ),
    )
    .await;
    assert_eq!(b.text_of("#chat-title").await, "Invoices chat");
    let (_, rec) = get_json(&s, &format!("/api/conversations/{first}")).await;
    assert_eq!(rec["title"], "Invoices chat");

    // A reload comes back to the same conversation, with its history and title.
    b.wd.refresh().await.expect("reload");
    b.wait(
        "the history after a reload",
        "return !!window.parleyApp && document.querySelectorAll('#chat .message').length === 2 && \
         document.getElementById('conn-state').dataset.state === 'open'",
    )
    .await;
    b.wait(
        "the title after a reload",
        "return document.getElementById('chat-title').innerText === 'Invoices chat'",
    )
    .await;
    b.js(WATCH_ERRORS).await;
    assert_chat_matches_store(&b, &s, &first).await;

    // Delete the second conversation from the list (confirming the dialog).
    b.click(&format!("{} [data-testid=delete-button]", item(&second)))
        .await;
    let deadline = Instant::now() + UI_WAIT;
    loop {
        match b.wd.accept_alert().await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no confirm dialog: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
    b.wait(
        "the deleted conversation to leave the list",
        &format!(
            "return !document.querySelector(\"{}\") && document.querySelectorAll('[data-testid=conversation-item]').length === 1",
            item(&second)
        ),
    )
    .await;
    let (st, _) = get_json(&s, &format!("/api/conversations/{second}")).await;
    assert_eq!(st, 404, "deleted on the server");
    // The open conversation is untouched.
    assert_eq!(b.conversation_id().await, first);
    assert_chat_matches_store(&b, &s, &first).await;
}

/// (f) A dropped socket during a slow stream: the pill goes reconnecting → open, the missed
/// events are replayed, and the chat ends with every message exactly once. A message typed while
/// the socket is down is stored once too.
#[tokio::test]
async fn dropped_socket_reconnects_without_losing_or_doubling() {
    let s = Server::start();
    let b = Browser::open(&s).await;
    b.select_assistant("slow").await;
    b.send_message("the history of bridges").await;
    b.wait(
        "the reply to start streaming",
        "const m = document.querySelector('[data-testid=message-assistant].streaming'); return m && m.innerText.length > 0",
    )
    .await;

    b.js(WATCH_CONN).await;
    b.js("window.parleyApp.client.socket.close(); return true")
        .await;
    let states = b
        .wait(
            "the pill to go reconnecting → open",
            "const s = window.__connStates; const r = s.indexOf('reconnecting');\
             return r >= 0 && s.indexOf('open', r) > r && document.getElementById('conn-state').dataset.state === 'open' && s",
        )
        .await;
    assert_eq!(states, json!(["open", "reconnecting", "open"]));

    let conv = b.conversation_id().await;
    wait_status(&s, &conv, "completed", SLOW_WAIT).await;
    b.wait_idle(SLOW_WAIT).await;
    assert_chat_matches_store(&b, &s, &conv).await;

    // Drop the socket again and send at once: the message waits for the new socket and is
    // stored exactly once.
    b.js(WATCH_CONN).await;
    b.js("window.parleyApp.client.socket.close(); return true")
        .await;
    b.send_message("and tunnels").await;
    b.wait(
        "the pill to go reconnecting → open",
        "const s = window.__connStates; const r = s.indexOf('reconnecting');\
         return r >= 0 && s.indexOf('open', r) > r",
    )
    .await;
    b.wait_up_to(
        SLOW_WAIT,
        "the second reply",
        "return document.querySelectorAll('[data-testid=message-assistant]').length === 2",
    )
    .await;
    wait_status(&s, &conv, "completed", SLOW_WAIT).await;
    b.wait_idle(SLOW_WAIT).await;
    assert_chat_matches_store(&b, &s, &conv).await;
    let msgs = stored_messages(&s, &conv).await;
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert_eq!(msgs[2]["text"], "and tunnels");
}

/// Token auth: the page takes the token from the URL fragment, drops it from the address bar,
/// sends it as a header on HTTP and as the first frame on the socket — never in a URL.
#[tokio::test]
async fn token_auth_uses_an_auth_frame_not_the_url() {
    let token = "pk_browser_test_token_0123456789";
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let s = Server::start_with(Options {
        extra_config: format!(
            "\n[auth]\nmode = \"token\"\n\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{hash}\"\n"
        ),
        ..Options::default()
    });
    // Without a token the API refuses.
    let (st, _) = get_json(&s, "/api/assistants").await;
    assert_eq!(st, 401);

    let b = Browser::launch(&format!("http://{}", s.addr)).await;
    b.goto(&format!("/#token={token}")).await;
    let url = b.js("return location.href").await;
    assert!(
        !url.as_str().unwrap().contains(token),
        "the token is removed from the address bar: {url}"
    );
    let ws_url = b.js("return window.parleyApp.client.url").await;
    assert!(!ws_url.as_str().unwrap().contains(token), "{ws_url}");

    b.select_assistant("chat").await;
    b.send_message("Hello with a token").await;
    b.wait_visible("[data-testid=message-assistant]").await;
    b.wait_idle(UI_WAIT).await;
    let conv = b.conversation_id().await;
    // The conversation belongs to the token's user.
    let r = http()
        .get(s.http(&format!("/api/conversations/{conv}/messages?limit=100")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let msgs: Value = r.json().await.unwrap();
    assert_eq!(msgs["items"].as_array().unwrap().len(), 2, "{msgs}");
    let shown = b.dom_messages().await;
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["text"], "Hello with a token");

    // A dropped socket authenticates again after reconnecting.
    b.js(WATCH_CONN).await;
    b.js("window.parleyApp.client.socket.close(); return true")
        .await;
    b.wait(
        "the socket to come back",
        "const s = window.__connStates; const r = s.indexOf('reconnecting'); return r >= 0 && s.indexOf('open', r) > r",
    )
    .await;
    b.send_message("Still me?").await;
    b.wait(
        "the second reply",
        "return document.querySelectorAll('[data-testid=message-assistant]').length === 2",
    )
    .await;
    b.wait_idle(UI_WAIT).await;
    b.assert_no_errors().await;
    let log = s.stderr_log.lock().unwrap().join("\n");
    assert!(
        !log.contains(token),
        "the token never reaches the server log"
    );
}
