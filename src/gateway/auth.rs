//! Who is calling: `auth.mode = "none"` makes everyone the user `local`; `"token"` maps bearer
//! tokens (stored as SHA-256 hashes in the config) to user ids.

use actix_web::HttpRequest;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMode};
use crate::error::{ApiError, ErrorCode};

/// The user of a request or socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

pub const LOCAL_USER: &str = "local";

/// SHA-256 of a token, lowercase hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token (URL-safe, 32 bytes of entropy).
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    format!("pk_{}", hex::encode(bytes))
}

/// The user a token belongs to.
pub fn user_for_token(cfg: &AuthConfig, token: &str) -> Option<User> {
    let h = hash_token(token);
    cfg.tokens
        .iter()
        .find(|t| constant_time_eq(t.sha256.to_ascii_lowercase().as_bytes(), h.as_bytes()))
        .map(|t| User(t.user.clone()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "missing or unknown bearer token (send 'Authorization: Bearer <token>')",
    )
}

/// The user of an HTTP request, or `unauthorized`.
pub fn authenticate(cfg: &AuthConfig, req: &HttpRequest) -> Result<User, ApiError> {
    match cfg.mode {
        AuthMode::None => Ok(User(LOCAL_USER.to_string())),
        AuthMode::Token => bearer(req)
            .and_then(|t| user_for_token(cfg, t))
            .ok_or_else(unauthorized),
    }
}

/// The user of a request if it carries credentials (`Ok(None)` when token auth is on and the
/// request has no header: a WebSocket may still authenticate with its first frame).
pub fn authenticate_optional(
    cfg: &AuthConfig,
    req: &HttpRequest,
) -> Result<Option<User>, ApiError> {
    match cfg.mode {
        AuthMode::None => Ok(Some(User(LOCAL_USER.to_string()))),
        AuthMode::Token => match bearer(req) {
            None => Ok(None),
            Some(t) => user_for_token(cfg, t).map(Some).ok_or_else(unauthorized),
        },
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// WebSocket `Origin` check: same host, or listed in `allowed_origins`. Requests without an
/// `Origin` header (programs, not browsers) pass.
pub fn origin_allowed(cfg: &AuthConfig, req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if cfg.allowed_origins.iter().any(|o| o == origin || o == "*") {
        return true;
    }
    let host = req.connection_info().host().to_string();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenEntry;

    #[test]
    fn tokens_map_to_users() {
        let t = new_token();
        let cfg = AuthConfig {
            mode: AuthMode::Token,
            tokens: vec![TokenEntry {
                user: "alice".into(),
                sha256: hash_token(&t),
            }],
            allowed_origins: vec![],
        };
        assert_eq!(user_for_token(&cfg, &t), Some(User("alice".into())));
        assert_eq!(user_for_token(&cfg, "pk_wrong"), None);
        assert_ne!(new_token(), t);
    }
}
