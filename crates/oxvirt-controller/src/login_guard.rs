//! Password guessing is slowed down per user and per address: a few failures are free, each one
//! after that doubles the wait before the next attempt is even looked at (up to a cap), and a
//! success or a quiet spell forgets them. An attempt made too early is refused without hashing
//! anything, so a flood of guesses costs a map look-up each, and every backoff is logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Failures free of any wait, for one user name and for one address.
pub const FREE_PER_USER: u32 = 5;
pub const FREE_PER_ADDRESS: u32 = 20;
/// The longest wait between two attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);
/// Keys kept at most (stale ones are dropped first; past it, new keys start at the cap's wait).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct LoginGuard {
    failures: HashMap<String, Failures>,
}

/// Why an attempt is refused before its password is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Who is backing off: `user NAME` or `address A`.
    pub key: String,
    pub retry_after: Duration,
}

fn wait_for(count: u32, free: u32) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let exp = (count - free).min(20);
    Duration::from_secs(1u64 << exp).min(MAX_WAIT)
}

impl LoginGuard {
    fn keys(user: &str, address: &str) -> [(String, u32); 2] {
        [(format!("user {user}"), FREE_PER_USER), (format!("address {address}"), FREE_PER_ADDRESS)]
    }

    /// Whether an attempt for `user` from `address` may be looked at now.
    pub fn check(&mut self, user: &str, address: &str, now: Instant) -> Result<(), Backoff> {
        for (key, free) in Self::keys(user, address) {
            if let Some(f) = self.failures.get(&key) {
                let wait = wait_for(f.count, free);
                let ready = f.last + wait;
                if now < ready {
                    return Err(Backoff { key, retry_after: ready - now });
                }
            }
        }
        Ok(())
    }

    /// A wrong password: one more failure for the user and the address.
    pub fn failed(&mut self, user: &str, address: &str, now: Instant) {
        if self.failures.len() >= MAX_KEYS {
            self.failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        for (key, _) in Self::keys(user, address) {
            let full = self.failures.len() >= MAX_KEYS;
            let f = self.failures.entry(key).or_insert(Failures { count: if full { 64 } else { 0 }, last: now });
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// A right password: the user's failures are forgotten (the address's are not: one known
    /// password does not buy guesses at others).
    pub fn succeeded(&mut self, user: &str) {
        self.failures.remove(&format!("user {user}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_waits_double() {
        let mut g = LoginGuard::default();
        let t0 = Instant::now();
        for _ in 0..FREE_PER_USER {
            assert!(g.check("ann", "10.0.0.1", t0).is_ok());
            g.failed("ann", "10.0.0.1", t0);
        }
        let b = g.check("ann", "10.0.0.1", t0).unwrap_err();
        assert_eq!((b.key.as_str(), b.retry_after), ("user ann", Duration::from_secs(1)));
        assert!(g.check("ann", "10.0.0.1", t0 + Duration::from_secs(1)).is_ok());
        g.failed("ann", "10.0.0.1", t0 + Duration::from_secs(1));
        assert_eq!(
            g.check("ann", "10.0.0.1", t0 + Duration::from_secs(1)).unwrap_err().retry_after,
            Duration::from_secs(2)
        );
        // Another user from the same address is not held up by ann's failures (yet).
        assert!(g.check("bob", "10.0.0.1", t0 + Duration::from_secs(1)).is_ok());
        g.succeeded("ann");
        assert!(g.check("ann", "10.0.0.1", t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_address_guessing_many_users_backs_off_and_the_cap_holds() {
        let mut g = LoginGuard::default();
        let t0 = Instant::now();
        for i in 0..FREE_PER_ADDRESS {
            g.failed(&format!("u{i}"), "10.0.0.9", t0);
        }
        let b = g.check("someone-else", "10.0.0.9", t0).unwrap_err();
        assert_eq!(b.key, "address 10.0.0.9");
        for _ in 0..40 {
            g.failed("x", "10.0.0.9", t0);
        }
        assert_eq!(g.check("y", "10.0.0.9", t0).unwrap_err().retry_after, MAX_WAIT);
        // Guesses a day at the cap: about 96, where a bucket of 50/s gave millions.
        assert!(Duration::from_secs(86_400).as_secs() / MAX_WAIT.as_secs() < 100);
        assert!(g.check("y", "10.0.0.9", t0 + FORGET_AFTER + MAX_WAIT).is_ok());
    }
}
