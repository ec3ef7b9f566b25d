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

    /// Whether an attempt for `user` from `address` may be looked at now; if it may, it counts
    /// as a failure from now on, until [`LoginGuard::succeeded`] says otherwise. Checked and
    /// counted in one step: attempts made at once wait their turn as if made one after another.
    pub fn begin(&mut self, user: &str, address: &str, now: Instant) -> Result<(), Backoff> {
        for (key, free) in Self::keys(user, address) {
            if let Some(f) = self.failures.get(&key) {
                let wait =
                    if now.duration_since(f.last) >= FORGET_AFTER { Duration::ZERO } else { wait_for(f.count, free) };
                let ready = f.last + wait;
                if now < ready {
                    return Err(Backoff { key, retry_after: ready - now });
                }
            }
        }
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
        Ok(())
    }

    /// A wrong password: the attempt stays counted, and the wait runs from now (the password's
    /// hash took its time).
    pub fn failed(&mut self, user: &str, address: &str, now: Instant) {
        for (key, _) in Self::keys(user, address) {
            if let Some(f) = self.failures.get_mut(&key) {
                f.last = f.last.max(now);
            }
        }
    }

    /// A right password: the user's failures are forgotten, and the address's count loses this
    /// attempt only (one known password does not buy guesses at others).
    pub fn succeeded(&mut self, user: &str, address: &str) {
        self.failures.remove(&format!("user {user}"));
        if let Some(f) = self.failures.get_mut(&format!("address {address}")) {
            f.count = f.count.saturating_sub(1);
        }
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
            assert!(g.begin("ann", "10.0.0.1", t0).is_ok());
            g.failed("ann", "10.0.0.1", t0);
        }
        let b = g.begin("ann", "10.0.0.1", t0).unwrap_err();
        assert_eq!((b.key.as_str(), b.retry_after), ("user ann", Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.begin("ann", "10.0.0.1", t1).is_ok());
        g.failed("ann", "10.0.0.1", t1);
        assert_eq!(g.begin("ann", "10.0.0.1", t1).unwrap_err().retry_after, Duration::from_secs(2));
        // Another user from the same address is not held up by ann's failures (yet); bob's right
        // password forgets bob's attempt, not ann's.
        assert!(g.begin("bob", "10.0.0.1", t1).is_ok());
        g.succeeded("bob", "10.0.0.1");
        assert!(g.begin("ann", "10.0.0.1", t1 + Duration::from_secs(2)).is_ok());
        g.succeeded("ann", "10.0.0.1");
        assert!(g.begin("ann", "10.0.0.1", t1 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn an_address_guessing_many_users_backs_off_and_the_cap_holds() {
        let mut g = LoginGuard::default();
        let t0 = Instant::now();
        for i in 0..FREE_PER_ADDRESS {
            g.begin(&format!("u{i}"), "10.0.0.9", t0).unwrap();
            g.failed(&format!("u{i}"), "10.0.0.9", t0);
        }
        let b = g.begin("someone-else", "10.0.0.9", t0).unwrap_err();
        assert_eq!(b.key, "address 10.0.0.9");
        for i in 0..40u64 {
            g.begin("x", "10.0.0.9", t0 + MAX_WAIT * (i as u32 + 1)).unwrap();
        }
        let last = t0 + MAX_WAIT * 40;
        assert_eq!(g.begin("y", "10.0.0.9", last).unwrap_err().retry_after, MAX_WAIT);
        // Guesses a day at the cap: about 96, where a bucket of 50/s gave millions.
        assert!(Duration::from_secs(86_400).as_secs() / MAX_WAIT.as_secs() < 100);
        assert!(g.begin("y", "10.0.0.9", last + FORGET_AFTER).is_ok());
    }

    #[test]
    fn attempts_made_at_once_are_counted_before_any_answer() {
        // Many guesses sent together: only the free ones are looked at, whatever their answers.
        let mut g = LoginGuard::default();
        let t0 = Instant::now();
        let looked_at = (0..100).filter(|_| g.begin("ann", "10.0.0.2", t0).is_ok()).count();
        assert_eq!(looked_at, FREE_PER_USER as usize);
    }
}
