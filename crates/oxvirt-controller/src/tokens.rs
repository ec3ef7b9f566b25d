//! API tokens: HTTPS requests carry one. The store keeps only their SHA-256.

use crate::{now_millis, ControlError, Controller};
use oxvirt_model::{ApiToken, NewToken, ROOT};
use oxvirt_store::{Expect, StoreExt};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes from the kernel, as hex.
fn random_secret() -> Result<String, std::io::Error> {
    let mut buf = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a token lives when its maker does not say: 90 days.
pub const DEFAULT_TOKEN_TTL_MS: u64 = 90 * 24 * 3600 * 1000;

impl Controller {
    /// At first start (no token recorded yet): makes the administrator token and writes it to
    /// `path` (mode 0600). Returns whether it made one.
    pub fn ensure_admin_token(&self, path: &Path) -> Result<bool, ControlError> {
        if !self.inner.store.list_records::<ApiToken>()?.is_empty() {
            return Ok(false);
        }
        let io = |e: std::io::Error| ControlError::Conflict(format!("admin token file {}: {e}", path.display()));
        let secret = format!("oxv_{}", random_secret().map_err(io)?);
        let token = ApiToken {
            id: "admin".into(),
            name: "administrator (made at first start)".into(),
            sha256: sha256_hex(&secret),
            role: String::new(),
            user: ROOT.into(),
            expires_at: None,
            created_at: now_millis(),
        };
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        writeln!(f, "{secret}").map_err(io)?;
        f.sync_all().map_err(io)?;
        self.inner.store.put_record(&token.id, &token, Expect::Absent)?;
        Ok(true)
    }

    /// The token a bearer presented, if it is valid now: known, not expired, its user there.
    pub fn check_token(&self, presented: &str) -> Option<ApiToken> {
        let hash = sha256_hex(presented.trim());
        let tokens = self.inner.store.list_records::<ApiToken>().ok()?;
        let t = tokens.into_iter().map(|(t, _)| t).find(|t| constant_time_eq(t.sha256.as_bytes(), hash.as_bytes()))?;
        if t.expires_at.is_some_and(|e| e <= now_millis()) {
            return None;
        }
        if t.user != ROOT && self.inner.store.get_record::<oxvirt_model::User>(&t.user).ok()?.is_none() {
            return None;
        }
        Some(t)
    }

    /// A new token acting as `user`, expiring after `ttl_ms` ([`DEFAULT_TOKEN_TTL_MS`] if none); the secret is shown once, here.
    pub fn create_token(&self, user: &str, name: &str, ttl_ms: Option<u64>) -> Result<NewToken, ControlError> {
        if name.is_empty() || name.len() > 200 || name.contains(['\n', '\r', '\0']) {
            return Err(ControlError::invalid("name", "must be one line of 1 to 200 bytes"));
        }
        // Every token expires: 90 days unless asked otherwise.
        let ttl_ms = Some(ttl_ms.unwrap_or(DEFAULT_TOKEN_TTL_MS));
        if let Some(t) = ttl_ms {
            if t == 0 || t > 366 * 24 * 3600 * 1000 {
                return Err(ControlError::invalid("expires_in_secs", "must be 1 second to 366 days"));
            }
        }
        let io = |e: std::io::Error| ControlError::Host(format!("random token: {e}"));
        let secret = format!("oxv_{}", random_secret().map_err(io)?);
        let id = random_secret().map_err(io)?[..16].to_string();
        let now = now_millis();
        let token = ApiToken {
            id,
            name: name.into(),
            sha256: sha256_hex(&secret),
            role: String::new(),
            user: user.into(),
            expires_at: ttl_ms.map(|t| now + t),
            created_at: now,
        };
        self.inner.store.put_record(&token.id, &token, Expect::Absent)?;
        Ok(NewToken { token: ApiToken { sha256: String::new(), ..token }, secret })
    }

    /// Tokens (without their hashes): of one user, or all.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>, ControlError> {
        Ok(self
            .inner
            .store
            .list_records::<ApiToken>()?
            .into_iter()
            .map(|(t, _)| ApiToken { sha256: String::new(), ..t })
            .filter(|t| user.is_none_or(|u| t.user == u))
            .collect())
    }

    pub fn get_token(&self, id: &str) -> Result<ApiToken, ControlError> {
        self.inner
            .store
            .get_record::<ApiToken>(id)?
            .map(|(t, _)| ApiToken { sha256: String::new(), ..t })
            .ok_or_else(|| ControlError::NotFound { kind: "token", name: id.into() })
    }

    /// Revokes a token: the next request with it is refused.
    pub fn revoke_token(&self, id: &str) -> Result<(), ControlError> {
        self.get_token(id)?;
        self.inner.store.delete_record::<ApiToken>(id, Expect::Any)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(random_secret().unwrap().len(), 64);
    }
}
