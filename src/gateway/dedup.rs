//! Frame-id idempotency: a `send` or `resume` retried with the same frame `id` (after a
//! reconnect, say) gets the original `ack` and is not applied again.
//!
//! Keyed by (user, frame id); clients must use unique ids (`parley.js` uses UUIDs). Entries live
//! ten minutes; the map is bounded (the oldest entries go first). In memory only: a retry that
//! crosses a server restart is applied again (documented in `docs/protocol.md`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(600);
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct FrameAcks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(String, String), Value>,
    order: VecDeque<(Instant, (String, String))>,
}

fn key_of(id: &Value) -> Option<String> {
    match id {
        Value::String(s) if !s.is_empty() => Some(format!("s:{s}")),
        Value::Number(n) => Some(format!("n:{n}")),
        _ => None,
    }
}

impl FrameAcks {
    /// The ack already given to this user's frame id, if any.
    pub fn get(&self, user: &str, id: &Value) -> Option<Value> {
        let k = key_of(id)?;
        let mut g = self.inner.lock();
        g.expire();
        g.map.get(&(user.to_string(), k)).cloned()
    }

    /// Remember the ack given to a frame.
    pub fn put(&self, user: &str, id: &Value, ack: Value) {
        let Some(k) = key_of(id) else { return };
        let mut g = self.inner.lock();
        g.expire();
        let key = (user.to_string(), k);
        if g.map.insert(key.clone(), ack).is_none() {
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
        d.put("a", &json!("x"), json!({"runId": "1"}));
        assert_eq!(d.get("a", &json!("x")), Some(json!({"runId": "1"})));
        assert_eq!(d.get("b", &json!("x")), None);
        assert_eq!(d.get("a", &json!(null)), None);
        d.put("a", &json!(7), json!(1));
        assert_eq!(d.get("a", &json!(7)), Some(json!(1)));
        assert_eq!(d.get("a", &json!("7")), None);
    }
}
