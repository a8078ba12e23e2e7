//! Rate limits (governor). A refusal is `rate_limited` and changes nothing; a zero in the
//! config means no limit.
//!
//! - [`UserLimits`]: per user, new conversations per minute and messages per minute.
//! - [`AuthThrottle`]: per client address, failed WebSocket authentications per minute (a
//!   wrong `auth` frame or a wrong bearer token on the upgrade). Once an address has failed
//!   more often than that, its authentications are refused with `rate_limited` *before* the
//!   token is looked at, until the quota has room again: guessing tokens gets no answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorCode};

pub struct UserLimits {
    conversations: Option<DefaultKeyedRateLimiter<String>>,
    messages: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

fn limiter(per_minute: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

impl UserLimits {
    pub fn new(cfg: &ServerConfig) -> Self {
        UserLimits {
            conversations: limiter(cfg.conversations_per_minute),
            messages: limiter(cfg.messages_per_minute),
            checks: AtomicU64::new(0),
        }
    }

    fn check(
        &self,
        l: &Option<DefaultKeyedRateLimiter<String>>,
        user: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some(l) = l else { return Ok(()) };
        // Forget idle users now and then, so the map stays small.
        if self.checks.fetch_add(1, Relaxed) % 4096 == 4095 {
            l.retain_recent();
        }
        l.check_key(&user.to_string()).map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!("too many {what} per minute for this user; wait a moment and try again"),
            )
        })
    }

    /// A new conversation is about to be created for `user`.
    pub fn new_conversation(&self, user: &str) -> Result<(), ApiError> {
        self.check(&self.conversations, user, "new conversations")
    }

    /// `user` sends a message.
    pub fn message(&self, user: &str) -> Result<(), ApiError> {
        self.check(&self.messages, user, "messages")
    }
}

/// Failed authentications per client address (see the module doc).
pub struct AuthThrottle {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over their quota, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Addresses remembered as blocked at most (the oldest blocks are dropped first past it).
const MAX_BLOCKED: usize = 100_000;

impl AuthThrottle {
    pub fn new(failures_per_minute: u32) -> Self {
        AuthThrottle {
            failures: NonZeroU32::new(failures_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// May `ip` try to authenticate now? Checked before the token is.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else { return Ok(()) };
        let mut g = self.blocked.lock();
        let Some(until) = g.get(&ip).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            g.remove(&ip);
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "too many failed authentications from this address; retry in {} s",
                (until - now).as_secs().max(1)
            ),
        ))
    }

    /// `ip` failed to authenticate.
    pub fn failed(&self, ip: Option<IpAddr>) {
        let (Some(l), Some(ip)) = (&self.failures, ip) else {
            return;
        };
        if let Err(not_until) = l.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut g = self.blocked.lock();
            if g.len() >= MAX_BLOCKED {
                let now = Instant::now();
                g.retain(|_, t| *t > now);
                l.retain_recent();
            }
            if g.len() < MAX_BLOCKED {
                g.insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_authentications_block_an_address_not_others() {
        let t = AuthThrottle::new(2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        t.failed(a);
        t.failed(a);
        assert!(t.admit(a).is_ok(), "within the quota");
        t.failed(a);
        let e = t.admit(a).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.message.contains("retry in"), "{}", e.message);
        assert!(t.admit(b).is_ok());
        assert!(t.admit(None).is_ok());
        let off = AuthThrottle::new(0);
        for _ in 0..10 {
            off.failed(a);
        }
        assert!(off.admit(a).is_ok(), "0 = no limit");
    }

    #[test]
    fn limits_per_user() {
        let mut cfg = crate::config::Config::embedded().server;
        cfg.messages_per_minute = 2;
        let l = UserLimits::new(&cfg);
        assert!(l.message("a").is_ok());
        assert!(l.message("a").is_ok());
        assert_eq!(l.message("a").unwrap_err().code, ErrorCode::RateLimited);
        assert!(l.message("b").is_ok());
        assert!(l.new_conversation("a").is_ok(), "0 = unlimited");
    }
}
