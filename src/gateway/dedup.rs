//! Frame-id idempotency: a `send` or `resume` retried with the same frame `id` (after a
//! reconnect, say) gets the original `ack` and is not applied again.
//!
//! Keyed by (user, frame id); clients must use unique ids (`parley.js` uses UUIDs). Entries live
//! ten minutes; the map is bounded (the oldest entries go first). In memory only: a retry that
//! crosses a server restart is applied again (documented in `docs/protocol.md`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(600);
const CAPACITY: usize = 100_000;

/// One entry per acknowledged frame, kept small: the key is one shared allocation and the ack
/// is kept as the JSON text that was sent (a `Value` object costs ~1 KiB more).
#[derive(Default)]
pub struct FrameAcks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<str>, Box<str>>,
    order: VecDeque<(Instant, Arc<str>)>,
}

/// The key of a user's frame id: the user's length and name, then the id's kind and text (one
/// string, unambiguous whatever the name holds).
fn key_of(user: &str, id: &Value) -> Option<String> {
    match id {
        Value::String(s) if !s.is_empty() => Some(format!("{}:{user}s:{s}", user.len())),
        Value::Number(n) => Some(format!("{}:{user}n:{n}", user.len())),
        _ => None,
    }
}

impl FrameAcks {
    /// The ack already given to this user's frame id (its JSON text), if any.
    pub fn get(&self, user: &str, id: &Value) -> Option<String> {
        let k = key_of(user, id)?;
        let mut g = self.inner.lock();
        g.expire();
        g.map.get(k.as_str()).map(|a| a.to_string())
    }

    /// Remember the ack given to a frame (its JSON text).
    pub fn put(&self, user: &str, id: &Value, ack: &str) {
        let Some(k) = key_of(user, id) else { return };
        let mut g = self.inner.lock();
        g.expire();
        let key: Arc<str> = Arc::from(k);
        if g.map.insert(key.clone(), Box::from(ack)).is_none() {
            g.order.push_back((Instant::now(), key));
        }
        while g.map.len() > CAPACITY {
            match g.order.pop_front() {
                Some((_, old)) => {
                    g.map.remove(&old);
                }
                None => break,
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remembers_per_user() {
        let d = FrameAcks::default();
        d.put("a", &json!("x"), r#"{"runId":"1"}"#);
        assert_eq!(d.get("a", &json!("x")).as_deref(), Some(r#"{"runId":"1"}"#));
        assert_eq!(d.get("b", &json!("x")), None);
        assert_eq!(d.get("a", &json!(null)), None);
        d.put("a", &json!(7), "1");
        assert_eq!(d.get("a", &json!(7)).as_deref(), Some("1"));
        assert_eq!(d.get("a", &json!("7")), None);
        // Users and ids do not run into each other.
        d.put("as:b", &json!("c"), "2");
        assert_eq!(d.get("a", &json!("bs:c")), None);
        assert_eq!(d.get("as:b", &json!("c")).as_deref(), Some("2"));
    }
}
