//! Per-user rate limits (governor): new conversations per minute and messages per minute.
//! A refusal is `rate_limited` and changes nothing; a zero in the config means no limit.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

#[cfg(test)]
mod tests {
    use super::*;

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
