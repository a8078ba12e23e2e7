//! Idempotency keys (CONTRACT §6): an `Idempotency-Key` on an HTTP `POST`, and the frame `id`
//! of a WebSocket `send` or `resume`, follow one rule.
//!
//! - The same key from the same user on the same route with the same request gets the first
//!   answer again (status and body, or the bytes of the original `ack`), and the request is
//!   not applied again.
//! - The same key with a different request is refused with `idempotency_key_reused` (422).
//! - A request still being applied under a key answers `conversation_busy` to a concurrent
//!   retry of the same key (it is neither applied twice nor lost; retry later).
//! - Only accepted answers are remembered: a refusal changed nothing, so a retry is applied
//!   afresh (a `409 conversation_busy` retried later may then succeed).
//!
//! Keys are scoped by (user, route, key): a request is identified by its route (method and
//! path, or `ws`) and a SHA-256 fingerprint of its body (HTTP: the body bytes; WebSocket: the
//! frame without its `id`, keys sorted, so field order does not matter). Entries live 24 hours;
//! the map is bounded (the oldest entries go first).
//!
//! # Across restarts
//!
//! This map is the fast path. A `send` or `resume` accepted under a key also stores the key
//! (scoped key, fingerprint, conversation and run ids; `store::IdempotencyRecord`) in the same
//! commit as the message or answer it guards; a key this map does not know is looked up in the
//! store before the request is applied, and a stored one is answered from its record. `cancel`
//! and a `POST /api/conversations` without a message are remembered in memory only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a key is remembered (CONTRACT §6).
pub const TTL: Duration = Duration::from_secs(24 * 3600);
const CAPACITY: usize = 100_000;

/// A request's identity under its key.
pub type Fingerprint = [u8; 32];

/// The fingerprint of a request body (HTTP).
pub fn fingerprint_bytes(body: &[u8]) -> Fingerprint {
    Sha256::digest(body).into()
}

/// The fingerprint of a WebSocket frame: the frame without `id`, object keys sorted.
pub fn fingerprint_frame(frame: &Value) -> Fingerprint {
    fn canonical(v: &Value, out: &mut Vec<u8>, top: bool) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().filter(|k| !(top && *k == "id")).collect();
                keys.sort();
                out.push(b'{');
                for k in keys {
                    out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                    out.push(b':');
                    canonical(&m[k.as_str()], out, false);
                    out.push(b',');
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for x in a {
                    canonical(x, out, false);
                    out.push(b',');
                }
                out.push(b']');
            }
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
    }
    let mut out = Vec::new();
    canonical(frame, &mut out, true);
    fingerprint_bytes(&out)
}

/// What a request under a key should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is new: apply the request, then [`Idempotency::finish`] or
    /// [`Idempotency::release`].
    New,
    /// Answered before: send this again (HTTP status and body text, or the ack's JSON text).
    Replay { status: u16, body: String },
    /// Used before with a different request.
    Reused,
    /// The same request is being applied right now.
    InProgress,
}

enum Slot {
    Pending(Fingerprint),
    Done {
        fingerprint: Fingerprint,
        status: u16,
        body: Box<str>,
    },
}

/// The keys of recent requests (see the module doc).
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<str>, Slot>,
    order: VecDeque<(Instant, Arc<str>)>,
}

/// The fingerprint as stored (hex).
pub fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// The scoped key as stored: user, route and key in one string (see [`key_of`]).
pub fn scoped_key(user: &str, route: &str, key: &str) -> String {
    key_of(user, route, key)
}

/// One string, unambiguous whatever the parts hold: each part's length, then the part.
fn key_of(user: &str, route: &str, key: &str) -> String {
    format!("{}:{user}{}:{route}{key}", user.len(), route.len())
}

impl Idempotency {
    /// Look a key up and, when it is new, reserve it for this request.
    pub fn claim(&self, user: &str, route: &str, key: &str, fp: Fingerprint) -> Claim {
        let k = key_of(user, route, key);
        let mut g = self.inner.lock();
        g.expire();
        match g.map.get(k.as_str()) {
            Some(Slot::Done {
                fingerprint,
                status,
                body,
            }) if *fingerprint == fp => Claim::Replay {
                status: *status,
                body: body.to_string(),
            },
            Some(Slot::Pending(f)) if *f == fp => Claim::InProgress,
            Some(_) => Claim::Reused,
            None => {
                let key: Arc<str> = Arc::from(k);
                g.map.insert(key.clone(), Slot::Pending(fp));
                g.order.push_back((Instant::now(), key));
                g.bound();
                Claim::New
            }
        }
    }

    /// Remember the answer of a request claimed with [`Claim::New`].
    pub fn finish(
        &self,
        user: &str,
        route: &str,
        key: &str,
        fp: Fingerprint,
        status: u16,
        body: &str,
    ) {
        let k = key_of(user, route, key);
        let mut g = self.inner.lock();
        if let Some(slot) = g.map.get_mut(k.as_str()) {
            *slot = Slot::Done {
                fingerprint: fp,
                status,
                body: Box::from(body),
            };
        }
    }

    /// Forget a claimed key whose request was refused (nothing was applied).
    pub fn release(&self, user: &str, route: &str, key: &str) {
        let k = key_of(user, route, key);
        let mut g = self.inner.lock();
        if matches!(g.map.get(k.as_str()), Some(Slot::Pending(_))) {
            g.map.remove(k.as_str());
        }
    }
}

impl Inner {
    fn expire(&mut self) {
        while let Some((t, _)) = self.order.front() {
            if t.elapsed() < TTL {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
    }

    fn bound(&mut self) {
        while self.map.len() > CAPACITY {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_request_replays_different_request_is_refused() {
        let d = Idempotency::default();
        let a = fingerprint_bytes(b"{\"content\":\"a\"}");
        let b = fingerprint_bytes(b"{\"content\":\"b\"}");
        assert_eq!(d.claim("u", "r", "k", a), Claim::New);
        assert_eq!(d.claim("u", "r", "k", a), Claim::InProgress);
        assert_eq!(d.claim("u", "r", "k", b), Claim::Reused);
        d.finish("u", "r", "k", a, 202, "{}");
        assert_eq!(
            d.claim("u", "r", "k", a),
            Claim::Replay {
                status: 202,
                body: "{}".into()
            }
        );
        assert_eq!(d.claim("u", "r", "k", b), Claim::Reused);
        // Other users and routes have their own keys; parts do not run into each other.
        assert_eq!(d.claim("v", "r", "k", b), Claim::New);
        assert_eq!(d.claim("u", "r2", "k", b), Claim::New);
        assert_eq!(d.claim("u", "rk", "", a), Claim::New);
    }

    #[test]
    fn a_released_key_can_be_used_again() {
        let d = Idempotency::default();
        let a = fingerprint_bytes(b"x");
        assert_eq!(d.claim("u", "r", "k", a), Claim::New);
        d.release("u", "r", "k");
        assert_eq!(d.claim("u", "r", "k", fingerprint_bytes(b"y")), Claim::New);
    }

    #[test]
    fn frames_are_compared_without_id_and_key_order() {
        let a = json!({"type":"send","id":"1","content":"x","args":{"a":1,"b":2}});
        let b = json!({"args":{"b":2,"a":1},"content":"x","id":"2","type":"send"});
        let c = json!({"type":"send","id":"1","content":"y","args":{"a":1,"b":2}});
        assert_eq!(fingerprint_frame(&a), fingerprint_frame(&b));
        assert_ne!(fingerprint_frame(&a), fingerprint_frame(&c));
    }
}
