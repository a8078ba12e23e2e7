//! `[auth] mode = "jwt"`: bearer JWTs verified against a JWKS (a file or a URL).
//!
//! Invariants:
//! - **The key decides the algorithm, never the token.** Each JWKS key gets one algorithm (its
//!   `alg`, else RS256 for RSA, ES256/ES384 by curve for EC, HS256 for `oct`); a token whose
//!   header names another is refused before its signature is looked at, so an HS256 token
//!   "signed" with an RSA public key, or `alg: none`, never verifies.
//! - **Every check or nothing**: signature, `exp` (required), `nbf`, `iss` and `aud` (required,
//!   the configured values), with `leeway_seconds` of clock skew; then the user claim must be a
//!   non-empty string.
//! - **Bounded key fetching.** The key set is cached; it is reloaded when older than
//!   `refresh_seconds`, and when a token names an unknown `kid`, but never more than once per
//!   `min_refresh_seconds` (a flood of made-up `kid`s costs one fetch), one fetch at a time, with
//!   a timeout and a size cap. A failed reload keeps the keys already known.
//! - **Tokens are never logged**; errors name the failed check, not the token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde_json::Value;

use crate::config::JwtConfig;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused (each becomes `401 unauthorized` with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error(
        "the bearer token is not a JWT with a supported algorithm (RS*, PS*, ES256, ES384, HS*)"
    )]
    Malformed,
    #[error("the token names a key (kid) that the JWKS does not hold")]
    UnknownKey,
    #[error("the token has no kid and the JWKS holds more than one key")]
    NoKeyId,
    #[error("the token's algorithm {token} is not its key's algorithm {key}")]
    AlgorithmMismatch { token: String, key: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer (iss) is not the configured one")]
    WrongIssuer,
    #[error("the token's audience (aud) does not include the configured one")]
    WrongAudience,
    #[error("the token lacks the required claim '{0}'")]
    MissingClaim(String),
    #[error("the token's claims are not valid JSON claims")]
    BadClaims,
    #[error("the signing keys could not be loaded; try again later")]
    KeysUnavailable,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub roles: Vec<String>,
}

/// Where the key set comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// One usable key.
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, std::sync::Arc<Key>>,
    /// Keys without a `kid` (usable by a token without one when it is the only key).
    all: Vec<std::sync::Arc<Key>>,
    loaded: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Verifies bearer JWTs; one per server, shared by every request.
pub struct JwtVerifier {
    cfg: JwtConfig,
    source: Source,
    keys: RwLock<KeySet>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl JwtVerifier {
    /// A verifier for `[auth.jwt]` (keys are loaded on first use).
    pub fn new(cfg: JwtConfig) -> Self {
        let source = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(f), _) => Source::File(f.clone()),
            (None, Some(u)) => Source::Url(u.clone()),
            // `Config::check` refuses this; an empty file name fails loudly at first use.
            (None, None) => Source::File(PathBuf::new()),
        };
        JwtVerifier {
            cfg,
            source,
            keys: RwLock::new(KeySet::default()),
            reload: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// The claims of a valid token, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let key = self.key_for(header.kid.as_deref()).await?;
        if header.alg != key.alg {
            return Err(JwtError::AlgorithmMismatch {
                token: format!("{:?}", header.alg),
                key: format!("{:?}", key.alg),
            });
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.cfg.leeway_seconds;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(map_error)?;
        self.claims(&data.claims)
    }

    fn claims(&self, claims: &Value) -> Result<Claims, JwtError> {
        let user = claim(claims, &self.cfg.user_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| JwtError::MissingClaim(self.cfg.user_claim.clone()))?;
        let roles = match claim(claims, &self.cfg.roles_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(Claims {
            user: user.to_string(),
            roles,
        })
    }

    /// The key a token names: from the cache, reloading when stale or when the `kid` is unknown.
    async fn key_for(&self, kid: Option<&str>) -> Result<std::sync::Arc<Key>, JwtError> {
        let refresh = Duration::from_secs(self.cfg.refresh_seconds);
        let stale = self
            .keys
            .read()
            .loaded
            .is_none_or(|t| t.elapsed() >= refresh);
        if stale {
            self.reload(false).await;
        }
        match self.lookup(kid) {
            Err(JwtError::UnknownKey) | Err(JwtError::KeysUnavailable) => {
                // A new key may have been published: reload (rate-limited) and look again.
                self.reload(true).await;
                self.lookup(kid)
            }
            other => other,
        }
    }

    fn lookup(&self, kid: Option<&str>) -> Result<std::sync::Arc<Key>, JwtError> {
        let ks = self.keys.read();
        if ks.loaded.is_none() {
            return Err(JwtError::KeysUnavailable);
        }
        match kid {
            Some(k) => ks.by_kid.get(k).cloned().ok_or(JwtError::UnknownKey),
            None if ks.all.len() == 1 => Ok(ks.all[0].clone()),
            None => Err(JwtError::NoKeyId),
        }
    }

    /// Reload the key set (one at a time; `forced` reloads respect `min_refresh_seconds`).
    async fn reload(&self, forced: bool) {
        let _one = self.reload.lock().await;
        let min = Duration::from_secs(self.cfg.min_refresh_seconds);
        let refresh = Duration::from_secs(self.cfg.refresh_seconds);
        {
            let ks = self.keys.read();
            let recent = ks.last_attempt.is_some_and(|t| t.elapsed() < min);
            let fresh = ks.loaded.is_some_and(|t| t.elapsed() < refresh);
            // Someone else reloaded while we waited, or we tried a moment ago.
            if recent || (!forced && fresh) {
                return;
            }
        }
        let fetched = self.fetch().await;
        let mut ks = self.keys.write();
        ks.last_attempt = Some(Instant::now());
        match fetched.and_then(|doc| parse_jwks(&doc)) {
            Ok((by_kid, all)) => {
                tracing::info!(keys = all.len(), "loaded the JWKS");
                ks.by_kid = by_kid;
                ks.all = all;
                ks.loaded = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "could not load the JWKS; keeping the keys known"),
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            Source::File(p) => {
                let bytes = tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!("{} is larger than 1 MiB", p.display()));
                }
                Ok(bytes)
            }
            Source::Url(u) => {
                use futures_util::StreamExt;
                let resp = self.http.get(u).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("{u} answered {}", resp.status()));
                }
                let mut body = Vec::new();
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!("{u} sent more than 1 MiB"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

type Parsed = (
    HashMap<String, std::sync::Arc<Key>>,
    Vec<std::sync::Arc<Key>>,
);

/// The usable keys of a JWKS document (keys it cannot use are skipped with a warning).
fn parse_jwks(doc: &[u8]) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut by_kid = HashMap::new();
    let mut all = Vec::new();
    for k in keys {
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        match key_of(k) {
            Ok(key) => {
                let key = std::sync::Arc::new(key);
                if let Some(kid) = kid {
                    by_kid.insert(kid, key.clone());
                }
                all.push(key);
            }
            Err(e) => tracing::warn!(
                kid = kid.as_deref().unwrap_or(""),
                "skipping a JWKS key: {e}"
            ),
        }
    }
    Ok((by_kid, all))
}

fn key_of(k: &Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|e| e.to_string())?;
    let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(a), _) => algorithm(a).ok_or_else(|| format!("unsupported alg {a:?}"))?,
        (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref c => return Err(format!("unsupported curve {c:?}")),
        },
        (None, AlgorithmParameters::OctetKey(_)) => Algorithm::HS256,
        (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Key { key, alg })
}

fn algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A claim by a dotted path (`realm_access.roles`); a claim whose own name holds a dot wins.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

fn map_error(e: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.into_kind() {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::InvalidAudience => JwtError::WrongAudience,
        K::MissingRequiredClaim(c) => JwtError::MissingClaim(c),
        K::Json(_) | K::Utf8(_) => JwtError::BadClaims,
        K::InvalidAlgorithm => JwtError::AlgorithmMismatch {
            token: "?".into(),
            key: "?".into(),
        },
        _ => JwtError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(dir: &std::path::Path, jwks: &Value) -> JwtVerifier {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        JwtVerifier::new(JwtConfig {
            jwks_file: Some(path),
            jwks_url: None,
            issuer: "https://issuer.test".into(),
            audience: "parley".into(),
            leeway_seconds: 5,
            user_claim: "sub".into(),
            roles_claim: "realm_access.roles".into(),
            refresh_seconds: 300,
            min_refresh_seconds: 0,
            assistant_roles: Default::default(),
        })
    }

    fn hs(secret: &[u8], kid: &str, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn oct(kid: &str, secret: &[u8]) -> Value {
        use base64::Engine as _;
        json!({"kty": "oct", "kid": kid, "alg": "HS256",
               "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
    }

    #[tokio::test]
    async fn hs256_claims_roles_by_path_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(
            dir.path(),
            &json!({"keys": [oct("k1", b"0123456789abcdef0123456789abcdef")]}),
        );
        let secret = b"0123456789abcdef0123456789abcdef";
        let good = json!({"sub": "alice", "iss": "https://issuer.test", "aud": "parley",
                          "exp": now() + 60, "realm_access": {"roles": ["finance", 3]}});
        assert_eq!(
            v.verify(&hs(secret, "k1", &good)).await,
            Ok(Claims {
                user: "alice".into(),
                roles: vec!["finance".into()]
            })
        );
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 60);
        assert_eq!(
            v.verify(&hs(secret, "k1", &expired)).await,
            Err(JwtError::Expired)
        );
        let mut within_leeway = good.clone();
        within_leeway["exp"] = json!(now() - 2);
        assert!(v.verify(&hs(secret, "k1", &within_leeway)).await.is_ok());
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&hs(secret, "k1", &no_exp)).await,
            Err(JwtError::MissingClaim("exp".into()))
        );
        let mut no_sub = good.clone();
        no_sub["sub"] = json!("");
        assert_eq!(
            v.verify(&hs(secret, "k1", &no_sub)).await,
            Err(JwtError::MissingClaim("sub".into()))
        );
        assert_eq!(
            v.verify(&hs(b"another secret, 32 bytes long!!!", "k1", &good))
                .await,
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            v.verify(&hs(secret, "k9", &good)).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(v.verify("not.a.jwt").await, Err(JwtError::Malformed));
    }

    #[tokio::test]
    async fn a_new_kid_is_found_by_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(
            dir.path(),
            &json!({"keys": [oct("k1", b"first secret, thirty-two bytes!!")]}),
        );
        let claims =
            json!({"sub": "bob", "iss": "https://issuer.test", "aud": "parley", "exp": now() + 60});
        assert!(v
            .verify(&hs(b"first secret, thirty-two bytes!!", "k1", &claims))
            .await
            .is_ok());
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [oct("k2", b"second secret, thirty-two bytes!")]}).to_string(),
        )
        .unwrap();
        let t = hs(b"second secret, thirty-two bytes!", "k2", &claims);
        assert_eq!(v.verify(&t).await.map(|c| c.user), Ok("bob".to_string()));
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let (by_kid, all) = parse_jwks(
            json!({"keys": [{"kty": "weird", "kid": "x"}, oct("ok", b"s"),
                            {"kty": "oct", "kid": "enc", "use": "enc", "k": "AA"}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!((by_kid.len(), all.len()), (1, 1));
        assert!(by_kid.contains_key("ok"));
        assert!(parse_jwks(b"[]").is_err());
    }
}
