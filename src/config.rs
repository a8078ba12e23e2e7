//! The one typed configuration (DESIGN invariant 10): embedded defaults < `config.toml` <
//! environment (`PARLEY_*`) < command line. No other module reads the environment, except that
//! LLM API keys are read from the variable a provider's `api_key_env` names, through
//! [`LlmConfig::api_key`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::assistant::model::ToolSpec;

/// The repository's `config.toml`, compiled into the binary: the embedded defaults.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../config.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub assistants: AssistantsConfig,
    #[serde(default)]
    pub llm: BTreeMap<String, LlmConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Tools shared by every assistant (an assistant's own `tools` win on a name clash).
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
    /// Cluster mode (CONTRACT §9): absent = a single node.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: several nodes sharing one PostgreSQL and one NATS (`src/cluster/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://127.0.0.1:4222`
    pub nats_url: String,
    /// This node's name, unique in the cluster (default: hostname-pid).
    #[serde(default)]
    pub node_id: Option<String>,
    /// How long a node's ownership of a conversation lasts unless renewed (renewed every third
    /// of it); a dead node's conversations move after this long.
    #[serde(default = "d_lease_seconds")]
    pub lease_seconds: f64,
}

fn d_lease_seconds() -> f64 {
    10.0
}

impl ClusterConfig {
    /// The configured node id, or `hostname-pid`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| {
                    h.trim()
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                        .collect::<String>()
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.lease_seconds)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest WebSocket frame or HTTP body accepted, in bytes.
    #[serde(default = "d_max_frame")]
    pub max_frame_bytes: usize,
    /// Longest message `content`, in characters.
    #[serde(default = "d_max_message")]
    pub max_message_chars: usize,
    /// Largest `args` object, in bytes of JSON.
    #[serde(default = "d_max_args")]
    pub max_args_bytes: usize,
    /// Conversations one socket may be subscribed to at once.
    #[serde(default = "d_max_subs")]
    pub max_subscriptions_per_socket: usize,
    /// Events buffered for one socket before it is closed as too slow.
    #[serde(default = "d_outbound")]
    pub socket_outbound_buffer: usize,
    /// Runs active at once across the server.
    #[serde(default = "d_max_runs")]
    pub max_concurrent_runs: usize,
    /// Synchronous invocations at once; more are refused with `rate_limited`.
    #[serde(default = "d_max_sync")]
    pub max_concurrent_invokes: usize,
    /// Default and cap of `timeoutSeconds` for synchronous invocation.
    #[serde(default = "d_invoke_timeout")]
    pub invoke_timeout_seconds: u64,
    #[serde(default = "d_invoke_timeout_max")]
    pub invoke_timeout_max_seconds: u64,
    /// Default `sessionTimeout` (idle seconds before an actor leaves memory).
    #[serde(default = "d_session_timeout")]
    pub session_timeout_seconds: u64,
    /// Node executions allowed in one run unless the assistant says otherwise.
    #[serde(default = "d_max_steps")]
    pub max_steps: u32,
    /// Seconds between WebSocket pings; a socket silent for 3 intervals is closed.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_seconds: u64,
    /// Seconds between SSE comment lines on an idle `text/event-stream` response.
    #[serde(default = "d_heartbeat")]
    pub sse_heartbeat_seconds: u64,
    /// New conversations per user per minute (0 = unlimited).
    #[serde(default)]
    pub conversations_per_minute: u32,
    /// Messages per user per minute (0 = unlimited).
    #[serde(default)]
    pub messages_per_minute: u32,
    /// Failed WebSocket authentications per client address per minute; past it, that address's
    /// authentications are refused with `rate_limited` until the quota has room (0 = unlimited).
    #[serde(default = "d_auth_failures")]
    pub auth_failures_per_minute: u32,
    /// Bytes written to all WebSockets and not yet read by their clients; past it, the socket
    /// with the most unread bytes is closed with 4008 (0 = no bound).
    #[serde(default = "d_unread_total")]
    pub max_unread_bytes_total: u64,
}

fn d_auth_failures() -> u32 {
    10
}
fn d_unread_total() -> u64 {
    256 * 1024 * 1024
}

fn d_max_frame() -> usize {
    256 * 1024
}
fn d_max_message() -> usize {
    32 * 1024
}
fn d_max_args() -> usize {
    64 * 1024
}
fn d_max_subs() -> usize {
    256
}
fn d_outbound() -> usize {
    4096
}
fn d_max_runs() -> usize {
    10_000
}
fn d_max_sync() -> usize {
    1024
}
fn d_invoke_timeout() -> u64 {
    60
}
fn d_invoke_timeout_max() -> u64 {
    600
}
fn d_session_timeout() -> u64 {
    3600
}
fn d_max_steps() -> u32 {
    1000
}
fn d_heartbeat() -> u64 {
    15
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where the redb file lives (`backend = "redb"`).
    pub data_dir: PathBuf,
    /// Which store: the embedded redb file (default) or a PostgreSQL database.
    #[serde(default)]
    pub backend: StorageBackend,
    /// `postgres://user@host:port/db` (`backend = "postgres"`; or `PARLEY_POSTGRES_URL`).
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL connections for reads (the writer has one more of its own).
    #[serde(default = "d_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL: groups the writer commits at once, each on its own connection (one
    /// group's statements run while another waits for its WAL flush; docs/postgres.md).
    #[serde(default = "d_writer_connections")]
    pub writer_connections: usize,
    /// Every PostgreSQL statement is cancelled after this long.
    #[serde(default = "d_statement_timeout")]
    pub statement_timeout_ms: u64,
    /// At start, how long to keep trying (with backoff) while PostgreSQL cannot be reached
    /// before failing; 0 tries once.
    #[serde(default = "d_connect_retry")]
    pub connect_retry_seconds: u64,
    /// PostgreSQL: keep the tables in this schema (created if missing) instead of the user's
    /// default one; lowercase letters, digits and `_`.
    #[serde(default)]
    pub schema: Option<String>,
    /// redb's page cache in MiB (memory the store may hold; redb's own default is 1 GiB).
    #[serde(default = "d_cache_mb")]
    pub cache_mb: u64,
    /// Days a finished conversation is kept after its last activity (fractions allowed);
    /// `0` keeps forever. An assistant's `retentionDays` overrides it.
    #[serde(default)]
    pub retention_days: f64,
    /// Whether the sweeper also deletes expired conversations paused at an interrupt.
    #[serde(default)]
    pub retention_sweeps_paused: bool,
    /// Seconds between sweeps.
    #[serde(default = "d_sweep_interval")]
    pub sweep_interval_seconds: u64,
    /// Conversations deleted per commit by the sweeper (small batches keep commits short).
    #[serde(default = "d_sweep_batch")]
    pub sweep_batch: usize,
}

fn d_pool_size() -> usize {
    16
}
fn d_writer_connections() -> usize {
    1
}
fn d_statement_timeout() -> u64 {
    10_000
}
fn d_connect_retry() -> u64 {
    30
}

/// The storage backend (CONTRACT §9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Redb,
    Postgres,
}

fn d_sweep_interval() -> u64 {
    60
}
fn d_sweep_batch() -> usize {
    64
}

fn d_cache_mb() -> u64 {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantsConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProviderKind {
    Builtin,
    Openai,
}

/// One `[llm.<name>]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub provider: LlmProviderKind,
    /// e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1` (Ollama).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (the key itself is never in the file).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Connecting, and reading an error answer, may take this long.
    #[serde(default = "d_llm_timeout")]
    pub timeout_seconds: u64,
    /// From sending a request to the first piece of the answer (response head included).
    /// Past it the attempt fails as a timeout and is retried like a connection error.
    #[serde(default = "d_llm_first_byte")]
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two chunks once the answer streams. Past it the call fails
    /// (never retried: part of the answer was already handed out).
    #[serde(default = "d_llm_stall")]
    pub stall_timeout_ms: u64,
    /// Longest a whole streamed answer may take (guards endless streams).
    #[serde(default = "d_llm_max_stream")]
    pub max_stream_ms: u64,
    /// Most characters of text, reasoning and tool arguments in one answer (guards endless
    /// streams that are fast).
    #[serde(default = "d_llm_max_output")]
    pub max_output_chars: usize,
    /// Consecutive failed requests (connection, timeout, 429, 5xx, unreadable stream) that open
    /// the circuit breaker. 0 turns the breaker off.
    #[serde(default = "d_llm_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long an open breaker fails calls at once before one probe request is let through.
    #[serde(default = "d_llm_breaker_cooldown")]
    pub breaker_cooldown_ms: u64,
    /// Requests in flight to this provider at once.
    #[serde(default = "d_llm_concurrency")]
    pub max_concurrency: usize,
    /// Retries on 429, 5xx and connection errors (never after tokens were streamed).
    #[serde(default = "d_llm_retries")]
    pub max_retries: u32,
    /// Ask for structured output with `response_format: json_schema` (else `json_object`).
    #[serde(default)]
    pub json_schema: bool,
    /// Built-in model only: milliseconds between streamed tokens (0 = as fast as possible).
    #[serde(default)]
    pub pace_ms: u64,
}

fn d_llm_timeout() -> u64 {
    120
}
fn d_llm_first_byte() -> u64 {
    60_000
}
fn d_llm_stall() -> u64 {
    30_000
}
fn d_llm_max_stream() -> u64 {
    600_000
}
fn d_llm_max_output() -> usize {
    400_000
}
fn d_llm_breaker_threshold() -> u32 {
    5
}
fn d_llm_breaker_cooldown() -> u64 {
    30_000
}
fn d_llm_concurrency() -> usize {
    16
}
fn d_llm_retries() -> u32 {
    3
}

impl LlmConfig {
    /// A section with every optional setting at its default.
    pub fn new(provider: LlmProviderKind) -> Self {
        LlmConfig {
            provider,
            base_url: None,
            model: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            timeout_seconds: d_llm_timeout(),
            first_byte_timeout_ms: d_llm_first_byte(),
            stall_timeout_ms: d_llm_stall(),
            max_stream_ms: d_llm_max_stream(),
            max_output_chars: d_llm_max_output(),
            breaker_threshold: d_llm_breaker_threshold(),
            breaker_cooldown_ms: d_llm_breaker_cooldown(),
            max_concurrency: d_llm_concurrency(),
            max_retries: d_llm_retries(),
            json_schema: false,
            pace_ms: 0,
        }
    }

    /// The API key, read from the environment variable named by `api_key_env`.
    pub fn api_key(&self) -> Option<String> {
        self.api_key_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .filter(|k| !k.is_empty())
    }
}

/// How callers are identified (`[auth] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone is the user `local`; only loopback listen addresses are allowed.
    #[default]
    None,
    /// Bearer tokens mapped to user ids.
    Token,
    /// Bearer JWTs verified against a JWKS (`[auth.jwt]`).
    Jwt,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Token hashes: `[[auth.tokens]] user = "alice", sha256 = "…"`.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// Origins allowed to open the WebSocket and (if set) to make CORS requests.
    /// Empty: same-origin pages only.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Who may read `GET /metrics`: `open` (anyone) or `token` (an authenticated caller).
    /// Default: `token` when `mode` authenticates callers, else `open`.
    #[serde(default)]
    pub metrics: Option<MetricsAccess>,
    /// `[auth.jwt]`: required when `mode = "jwt"`.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// `[auth.jwt]`: how bearer JWTs are verified (`src/gateway/auth/jwt.rs`, docs/operations.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS file (`{"keys": [...]}`), re-read every `refresh_seconds`. One of this and
    /// `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`http(s)://…`), fetched on first use, every `refresh_seconds`, and when a
    /// token names an unknown `kid` (at most once per `min_refresh_seconds`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud` (one of the token's audiences).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "d_jwt_leeway")]
    pub leeway_seconds: u64,
    /// The claim that names the user (a dotted path such as `ext.uid` reaches into objects).
    #[serde(default = "d_jwt_user_claim")]
    pub user_claim: String,
    /// The claim that lists the user's roles: an array of strings or a space-separated string
    /// (a dotted path such as `realm_access.roles` reaches into objects).
    #[serde(default = "d_jwt_roles_claim")]
    pub roles_claim: String,
    #[serde(default = "d_jwt_refresh")]
    pub refresh_seconds: u64,
    #[serde(default = "d_jwt_min_refresh")]
    pub min_refresh_seconds: u64,
    /// Assistants only some roles may use: `expense_claim = ["finance", "admin"]`. An assistant
    /// not listed is open to every authenticated user; one listed is invisible (`404
    /// unknown_assistant`) to a user holding none of its roles.
    #[serde(default)]
    pub assistant_roles: BTreeMap<String, Vec<String>>,
}

fn d_jwt_leeway() -> u64 {
    30
}
fn d_jwt_user_claim() -> String {
    "sub".into()
}
fn d_jwt_roles_claim() -> String {
    "roles".into()
}
fn d_jwt_refresh() -> u64 {
    300
}
fn d_jwt_min_refresh() -> u64 {
    10
}

/// `[auth] metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    Open,
    Token,
}

impl AuthConfig {
    /// Who may read `/metrics`, with the default applied.
    pub fn metrics_access(&self) -> MetricsAccess {
        self.metrics.unwrap_or(match self.mode {
            AuthMode::None => MetricsAccess::Open,
            _ => MetricsAccess::Token,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub user: String,
    pub sha256: String,
}

/// Overrides from the environment and the command line (already merged by the caller: a
/// command-line flag wins over its environment variable; clap does this with `env = ...`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub assistants_dir: Option<PathBuf>,
    pub storage_backend: Option<StorageBackend>,
    pub postgres_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The embedded defaults alone.
    pub fn embedded() -> Self {
        // The embedded file is part of the binary and covered by a test; it always parses.
        toml::from_str(EMBEDDED_DEFAULTS).unwrap_or_else(|e| panic!("embedded config.toml: {e}"))
    }

    /// Load: embedded defaults, then `file` (if given) merged over them, then overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut base: toml::Value =
            toml::from_str(EMBEDDED_DEFAULTS).map_err(|e| ConfigError::Parse {
                path: "<embedded>".into(),
                message: e.to_string(),
            })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let top: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut base, top);
        }
        let mut cfg: Config = base
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: file.map_or("<embedded>".into(), |p| p.display().to_string()),
                message: e.to_string(),
            })?;
        if let Some(l) = &overrides.listen {
            cfg.server.listen = l.clone();
        }
        if let Some(d) = &overrides.data_dir {
            cfg.storage.data_dir = d.clone();
        }
        if let Some(d) = &overrides.assistants_dir {
            cfg.assistants.dir = d.clone();
        }
        if let Some(b) = overrides.storage_backend {
            cfg.storage.backend = b;
        }
        if let Some(u) = &overrides.postgres_url {
            cfg.storage.url = Some(u.clone());
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks that span fields.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.storage.backend == StorageBackend::Postgres && self.storage.url.is_none() {
            return Err(ConfigError::Invalid(
                "storage.backend = \"postgres\" needs storage.url (or PARLEY_POSTGRES_URL)".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            if self.storage.backend != StorageBackend::Postgres {
                return Err(ConfigError::Invalid(
                    "[cluster] needs storage.backend = \"postgres\" (every node shares one database)"
                        .into(),
                ));
            }
            if !(c.lease_seconds.is_finite() && (0.5..=3600.0).contains(&c.lease_seconds)) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.lease_seconds = {} must be between 0.5 and 3600",
                    c.lease_seconds
                )));
            }
            let id = c.node_id();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(ConfigError::Invalid(format!(
                    "cluster.node_id {id:?}: use letters, digits, - and _"
                )));
            }
        }
        let addr: SocketAddr = self.server.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.listen '{}' is not an address like 127.0.0.1:8080",
                self.server.listen
            ))
        })?;
        if self.auth.mode == AuthMode::None && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "auth.mode = \"none\" only allows a loopback listen address, not {addr}; \
                 set [auth] mode = \"token\" to listen on other interfaces"
            )));
        }
        if self.auth.mode == AuthMode::Token && self.auth.tokens.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.mode = \"token\" needs at least one [[auth.tokens]] entry (see `parley token new USER`)".into(),
            ));
        }
        if self.auth.mode == AuthMode::Jwt {
            let jwt = self.auth.jwt.as_ref().ok_or_else(|| {
                ConfigError::Invalid("auth.mode = \"jwt\" needs an [auth.jwt] section".into())
            })?;
            if jwt.jwks_file.is_some() == jwt.jwks_url.is_some() {
                return Err(ConfigError::Invalid(
                    "[auth.jwt] needs exactly one of jwks_file and jwks_url".into(),
                ));
            }
            if jwt.issuer.is_empty() || jwt.audience.is_empty() {
                return Err(ConfigError::Invalid(
                    "[auth.jwt] issuer and audience must not be empty".into(),
                ));
            }
        }
        if !self.llm.contains_key("default") {
            return Err(ConfigError::Invalid(
                "an [llm.default] section is required".into(),
            ));
        }
        for (name, l) in &self.llm {
            if l.provider == LlmProviderKind::Openai && l.base_url.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[llm.{name}] uses provider \"openai\" and needs base_url"
                )));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // `check` validated it.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// Deep-merge TOML tables: `over` wins.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
