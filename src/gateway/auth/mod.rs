//! Who is calling: `auth.mode = "none"` makes everyone the user `local`; `"token"` maps bearer
//! tokens (stored as SHA-256 hashes in the config) to user ids; `"jwt"` verifies bearer JWTs
//! against a JWKS ([`jwt`]) and takes the user id and roles from their claims.
//!
//! - **HTTP**: a handler that serves a user takes [`User`] as a parameter. `User` is an actix-web
//!   extractor, so the handler only runs once the request is authenticated; otherwise the answer
//!   is `401` with the `unauthorized` error body (the same for a missing and an unknown token,
//!   so a caller learns nothing about which tokens exist; a JWT's message names the failed
//!   check). Handlers that serve anyone (the demo page, health, info, the OpenAPI document)
//!   simply do not take one.
//! - **WebSocket**: the upgrade checks the `Origin` first ([`origin_allowed`], `403`), then
//!   the optional header ([`Authenticator::authenticate_optional`]): without one, the socket may
//!   authenticate with an `auth` frame ([`Authenticator::user_for_token`]).
//! - **Assistants by role** (JWT mode): `[auth.jwt.assistant_roles]` lists the roles that may
//!   use an assistant; to anyone else it does not exist ([`User::may_use`]: `404
//!   unknown_assistant`, like an unknown id).
//!
//! Tokens are compared as SHA-256 hashes in constant time; the config never holds a token.
//! No token is ever logged.

pub mod jwt;

use std::sync::Arc;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMode};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::GatewayState;
use crate::services::Services;

/// The user of a request or socket: the user id and (JWT mode) the token's roles.
///
/// As a handler parameter it is the authenticated caller (see the module doc); extraction uses
/// the app's [`GatewayState`]'s [`Authenticator`] (or an `Arc<Authenticator>` registered as app data,
/// for an app without services, such as the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String, pub Vec<String>);

impl User {
    /// A user with no roles (modes `none` and `token`).
    pub fn named(name: impl Into<String>) -> User {
        User(name.into(), Vec::new())
    }

    /// Whether this user may see and use `assistant` (`[auth.jwt.assistant_roles]`; always in
    /// modes `none` and `token`).
    pub fn may_use(&self, cfg: &AuthConfig, assistant: &str) -> bool {
        if cfg.mode != AuthMode::Jwt {
            return true;
        }
        match cfg
            .jwt
            .as_ref()
            .and_then(|j| j.assistant_roles.get(assistant))
        {
            None => true,
            Some(allowed) => self.1.iter().any(|r| allowed.contains(r)),
        }
    }
}

/// The assistant `id`, if it exists and `user` may use it (else it does not exist for them).
pub fn assistant_for(
    svc: &Services,
    user: &User,
    id: &str,
) -> Option<Arc<crate::assistant::Assistant>> {
    svc.catalog
        .get(id)
        .filter(|_| user.may_use(&svc.config.auth, id))
}

impl FromRequest for User {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<User, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authenticator(req);
        let header = bearer(req).map(str::to_string);
        Box::pin(async move {
            match auth {
                Some(a) => a.authenticate(header.as_deref()).await,
                None => {
                    tracing::error!("no auth configuration registered with the app");
                    Err(ApiError::internal("the server has no auth configuration"))
                }
            }
        })
    }
}

/// The authenticator of the app that serves `req`.
fn authenticator(req: &HttpRequest) -> Option<Arc<Authenticator>> {
    req.app_data::<web::Data<GatewayState>>()
        .map(|gw| gw.auth.clone())
        .or_else(|| req.app_data::<Arc<Authenticator>>().cloned())
}

pub const LOCAL_USER: &str = "local";

/// The `[auth]` section at work: tokens, or a JWT verifier with its cached keys.
pub struct Authenticator {
    cfg: AuthConfig,
    jwt: Option<jwt::JwtVerifier>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Self {
        let jwt = match (cfg.mode, &cfg.jwt) {
            (AuthMode::Jwt, Some(j)) => Some(jwt::JwtVerifier::new(j.clone())),
            _ => None,
        };
        Authenticator {
            cfg: cfg.clone(),
            jwt,
        }
    }

    /// The user a bearer token (a configured token, or a JWT) belongs to.
    pub async fn user_for_token(&self, token: &str) -> Result<User, ApiError> {
        match self.cfg.mode {
            AuthMode::None => Ok(User::named(LOCAL_USER)),
            AuthMode::Token => user_for_token(&self.cfg, token).ok_or_else(unauthorized),
            AuthMode::Jwt => {
                let Some(v) = &self.jwt else {
                    return Err(ApiError::internal("auth.mode = \"jwt\" without [auth.jwt]"));
                };
                match v.verify(token).await {
                    Ok(c) => Ok(User(c.user, c.roles)),
                    Err(jwt::JwtError::KeysUnavailable) => Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        jwt::JwtError::KeysUnavailable.to_string(),
                    )),
                    Err(e) => Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        format!("invalid bearer token: {e}"),
                    )),
                }
            }
        }
    }

    /// The user of an HTTP request's `Authorization` header, or `unauthorized` (what the
    /// [`User`] extractor does; handlers take a `User` rather than call this).
    async fn authenticate(&self, header: Option<&str>) -> Result<User, ApiError> {
        match (self.cfg.mode, header) {
            (AuthMode::None, _) => Ok(User::named(LOCAL_USER)),
            (_, None) => Err(unauthorized()),
            (_, Some(t)) => self.user_for_token(t).await,
        }
    }

    /// The user of a request if it carries credentials (`Ok(None)` when auth is on and the
    /// request has no header: a WebSocket may still authenticate with its first frame).
    pub async fn authenticate_optional(&self, req: &HttpRequest) -> Result<Option<User>, ApiError> {
        match (self.cfg.mode, bearer(req)) {
            (AuthMode::None, _) => Ok(Some(User::named(LOCAL_USER))),
            (_, None) => Ok(None),
            (_, Some(t)) => self.user_for_token(t).await.map(Some),
        }
    }
}

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

/// The user a configured token belongs to (`[auth] mode = "token"`).
pub fn user_for_token(cfg: &AuthConfig, token: &str) -> Option<User> {
    let h = hash_token(token);
    cfg.tokens
        .iter()
        .find(|t| constant_time_eq(t.sha256.to_ascii_lowercase().as_bytes(), h.as_bytes()))
        .map(|t| User::named(t.user.clone()))
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

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
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
            metrics: None,
            jwt: None,
        };
        assert_eq!(user_for_token(&cfg, &t), Some(User::named("alice")));
        assert_eq!(user_for_token(&cfg, "pk_wrong"), None);
        assert_ne!(new_token(), t);
    }

    /// An app with one route that needs a user, answering with the user's name.
    async fn call(cfg: AuthConfig, header: Option<&str>) -> (u16, String, Option<String>) {
        use actix_web::{test, App, HttpResponse};
        let app = test::init_service(
            App::new()
                .app_data(Arc::new(Authenticator::new(&cfg)))
                .route(
                    "/me",
                    web::get().to(|u: User| async move { HttpResponse::Ok().body(u.0) }),
                ),
        )
        .await;
        let mut req = test::TestRequest::get().uri("/me");
        if let Some(h) = header {
            req = req.insert_header(("Authorization", h));
        }
        let resp = test::call_service(&app, req.to_request()).await;
        let status = resp.status().as_u16();
        let ty = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = test::read_body(resp).await;
        (status, String::from_utf8(body.to_vec()).unwrap(), ty)
    }

    fn token_mode(token: &str) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Token,
            tokens: vec![TokenEntry {
                user: "alice".into(),
                sha256: hash_token(token),
            }],
            allowed_origins: vec![],
            metrics: None,
            jwt: None,
        }
    }

    const UNAUTHORIZED: &str = r#"{"error":{"code":"unauthorized","message":"missing or unknown bearer token (send 'Authorization: Bearer <token>')"}}"#;

    #[actix_web::test]
    async fn extractor_refuses_missing_and_unknown_tokens() {
        let t = new_token();
        for header in [
            None,
            Some("Bearer pk_wrong".to_string()),
            Some(format!("Basic {t}")),
            Some("Bearer ".to_string()),
        ] {
            let (status, body, ty) = call(token_mode(&t), header.as_deref()).await;
            assert_eq!(status, 401, "{header:?}");
            assert_eq!(body, UNAUTHORIZED, "{header:?}");
            assert_eq!(ty.as_deref(), Some("application/json"));
        }
    }

    #[actix_web::test]
    async fn extractor_accepts_known_tokens() {
        let t = new_token();
        for header in [format!("Bearer {t}"), format!("bearer {t}  ")] {
            let (status, body, _) = call(token_mode(&t), Some(&header)).await;
            assert_eq!((status, body.as_str()), (200, "alice"), "{header}");
        }
    }

    #[actix_web::test]
    async fn extractor_in_anonymous_mode_is_the_local_user() {
        for header in [None, Some("Bearer whatever")] {
            let (status, body, _) = call(AuthConfig::default(), header).await;
            assert_eq!((status, body.as_str()), (200, LOCAL_USER));
        }
    }

    #[actix_web::test]
    async fn extractor_without_configuration_is_an_internal_error() {
        use actix_web::{test, App, HttpResponse};
        let app = test::init_service(App::new().route(
            "/me",
            web::get().to(|u: User| async move { HttpResponse::Ok().body(u.0) }),
        ))
        .await;
        let resp = test::call_service(&app, test::TestRequest::get().uri("/me").to_request()).await;
        assert_eq!(resp.status().as_u16(), 500);
    }
}
