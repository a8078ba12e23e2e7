//! The tool runner: executes the `http` and `builtin` tools of CONTRACT §1 for the engine.
//!
//! [`Tools`] implements [`crate::engine::ToolRunner`]. `page` tools never reach it (the engine
//! pauses the run for them, as it does for tools with `confirm`); if one does, the call fails.
//!
//! - `http` tools ([`http`]): a templated request; the result is the response's JSON, or
//!   `{"status": code, "text": body}` when the response is not JSON. Templates see
//!   `{"args": <the call's args>, ...<the state's top-level keys>}`, so both `{{ args.city }}`
//!   and `{{ start.userInput }}` work (a node named `args` is shadowed by the call's args).
//!   Values interpolated into a URL should be escaped with `{{ args.city | urlencode }}`
//!   (MiniJinja's filter, like Jinja's, leaves `/` as it is).
//! - `builtin` tools ([`builtin`]): `echo`, `calculator`, `clock`, `lookup`, offline.
//!
//! **At-least-once.** A node that was in flight when the server stopped runs again after the
//! restart, with the same `Idempotency-Key` header (`runId:nodeId:attempt`). Endpoints that
//! change things should use it to deduplicate.

pub mod builtin;
pub mod http;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::assistant::model::{ToolKind, ToolSpec};
use crate::engine::{ToolCallCtx, ToolRunner};

pub use http::DEFAULT_TIMEOUT_SECONDS;

/// Redirects an `http` tool follows (same host only).
pub const MAX_REDIRECTS: usize = 5;

/// Largest response body an `http` tool accepts (1 MiB).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Runs `http` and `builtin` tools. Cheap to share behind an `Arc`; one serves the server.
#[derive(Debug, Clone)]
pub struct Tools {
    client: reqwest::Client,
    max_response_bytes: usize,
}

impl Tools {
    /// A runner with its own HTTP client (fails only if the TLS backend cannot start).
    ///
    /// The client follows at most [`MAX_REDIRECTS`] redirects, and only to the same host and
    /// port: a tool's headers often carry credentials, and a redirect elsewhere would hand them
    /// to another server. A redirect it does not follow fails the call, naming the new host.
    pub fn new() -> Result<Self, reqwest::Error> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().first().is_none_or(|first| {
                first.host_str() == attempt.url().host_str()
                    && first.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if same_origin {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .build()?;
        Ok(Self::with_client(client))
    }

    /// A runner using the given client (its own timeouts apply on top of each tool's).
    pub fn with_client(client: reqwest::Client) -> Self {
        Tools {
            client,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }

    /// Changes the response size limit (default [`MAX_RESPONSE_BYTES`]).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }
}

#[async_trait]
impl ToolRunner for Tools {
    async fn call(
        &self,
        name: &str,
        spec: &ToolSpec,
        args: Value,
        ctx: ToolCallCtx<'_>,
    ) -> Result<Value, String> {
        match &spec.kind {
            ToolKind::Http(tool) => {
                http::call(
                    &self.client,
                    self.max_response_bytes,
                    name,
                    tool,
                    args,
                    &ctx,
                )
                .await
            }
            ToolKind::Builtin { function, data } => {
                tracing::debug!(tool = name, function = %function, "builtin tool call");
                builtin::call(function, args, data.as_ref())
            }
            ToolKind::Page { .. } => Err("page tools are executed by the page".into()),
        }
    }
}

/// The template context of a tool call: the state's top-level keys plus `args`.
pub fn template_context(args: &Value, state: &Value) -> Value {
    let mut ctx = match state {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    ctx.insert("args".to_string(), args.clone());
    Value::Object(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Templates;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    // Built in Rust: `ToolSpec` does not deserialize while it combines `deny_unknown_fields`
    // with a flattened `kind` (serde reports "unknown field `kind`").
    fn spec(kind: ToolKind) -> ToolSpec {
        ToolSpec {
            description: None,
            parameters: None,
            confirm: false,
            kind,
        }
    }

    fn builtin(function: &str, data: Option<Value>) -> ToolSpec {
        spec(ToolKind::Builtin {
            function: function.into(),
            data,
        })
    }

    async fn run(spec: &ToolSpec, args: Value) -> Result<Value, String> {
        let tools = Tools::new().unwrap();
        let templates = Templates::new();
        let state = json!({"start": {"userInput": "hi"}});
        let cancel = CancellationToken::new();
        let ctx = ToolCallCtx {
            templates: &templates,
            state: &state,
            idempotency_key: "r:n:1".into(),
            cancel: &cancel,
        };
        tools.call("t", spec, args, ctx).await
    }

    #[tokio::test]
    async fn dispatches_builtins() {
        let echo = builtin("echo", None);
        assert_eq!(run(&echo, json!({"x": 1})).await.unwrap(), json!({"x": 1}));
        let calc = builtin("calculator", None);
        assert_eq!(
            run(&calc, json!({"expression": "6*7"})).await.unwrap()["result"],
            json!(42)
        );
        let lookup = builtin("lookup", Some(json!({"Oslo": "Norway"})));
        assert_eq!(
            run(&lookup, json!({"key": "oslo"})).await.unwrap()["value"],
            json!("Norway")
        );
        let clock = builtin("clock", None);
        assert!(run(&clock, json!({})).await.unwrap()["unix"].is_i64());
    }

    #[tokio::test]
    async fn page_tools_are_refused() {
        let page = spec(ToolKind::Page {
            action: Some("fill".into()),
        });
        assert_eq!(
            run(&page, json!({})).await.unwrap_err(),
            "page tools are executed by the page"
        );
    }

    #[test]
    fn context_merges_state_and_args() {
        let c = template_context(&json!({"a": 1}), &json!({"start": {"x": 2}, "args": "old"}));
        assert_eq!(c, json!({"start": {"x": 2}, "args": {"a": 1}}));
        let c = template_context(&json!(null), &json!(null));
        assert_eq!(c, json!({"args": null}));
    }

    #[test]
    fn urlencode_filter_is_available() {
        let t = Templates::new();
        let c = template_context(&json!({"q": "a b&c/é"}), &json!({}));
        assert_eq!(
            t.render_text("https://x/?q={{ args.q | urlencode }}", &c)
                .unwrap(),
            "https://x/?q=a%20b%26c/%C3%A9"
        );
    }
}
