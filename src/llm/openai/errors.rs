//! Errors from the provider: what an error body says, how long to wait, and text about a
//! failure that is safe to show (no credentials in URLs, bounded quotes).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde_json::Value;

/// Longest provider message quoted in an error.
pub(super) const MAX_QUOTED: usize = 500;

/// What an error body says.
#[derive(Debug, Default)]
pub(super) struct ErrorDetail {
    message: Option<String>,
    code: Option<String>,
    kind: Option<String>,
    raw: String,
}

impl ErrorDetail {
    pub(super) fn parse(body: &str) -> Self {
        match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                let inner = v.get("error").cloned().unwrap_or(v);
                let mut d = Self::from_value(&inner);
                d.raw = clip(body.trim(), MAX_QUOTED);
                d
            }
            Err(_) => ErrorDetail {
                raw: clip(body.trim(), MAX_QUOTED),
                ..Default::default()
            },
        }
    }

    pub(super) fn from_value(v: &Value) -> Self {
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match v {
            Value::String(s) => ErrorDetail {
                message: Some(s.clone()),
                raw: clip(s, MAX_QUOTED),
                ..Default::default()
            },
            _ => ErrorDetail {
                message: text("message")
                    .or_else(|| text("detail"))
                    .or_else(|| text("error")),
                code: text("code"),
                kind: text("type"),
                raw: clip(&v.to_string(), MAX_QUOTED),
            },
        }
    }

    /// The provider's message, or the raw body.
    pub(super) fn describe_plain(&self) -> String {
        let mut s = match &self.message {
            Some(m) => clip(m, MAX_QUOTED),
            None if !self.raw.is_empty() => self.raw.clone(),
            None => "no details given".to_string(),
        };
        if let Some(c) = &self.code {
            if !s.contains(c.as_str()) {
                s.push_str(&format!(" [{c}]"));
            }
        }
        s
    }

    pub(super) fn describe(&self, status: StatusCode) -> String {
        format!("HTTP {}: {}", status, self.describe_plain())
    }

    fn all_text(&self) -> String {
        [
            self.message.as_deref(),
            self.code.as_deref(),
            self.kind.as_deref(),
            Some(self.raw.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
    }

    pub(super) fn is_model_not_found(&self) -> bool {
        let t = self.all_text();
        t.contains("model_not_found")
            || (t.contains("model")
                && (t.contains("not found")
                    || t.contains("does not exist")
                    || t.contains("unknown model")))
    }

    pub(super) fn is_quota(&self) -> bool {
        self.all_text().contains("insufficient_quota")
    }
}

pub(super) enum ReadError {
    Timeout,
    Transport(reqwest::Error),
}

/// Read at most `limit` bytes of a body, each chunk within `idle`.
pub(super) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(idle, resp.chunk()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Transport(e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => {
                buf.extend_from_slice(&b);
                if buf.len() >= limit {
                    buf.truncate(limit);
                    break;
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Seconds to wait from `retry-after-ms` or `Retry-After` (delta-seconds form).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    if let Some(ms) = num("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(1e9) / 1000.0));
    }
    num("retry-after").map(|s| Duration::from_secs_f64(s.min(1e9)))
}

/// An error and its sources, joined.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// The URL without user info or query (they may carry credentials).
pub(super) fn display_url(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

pub(super) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}
