//! API tokens: HTTPS requests carry one. The store keeps only their SHA-256.

use crate::{now_millis, ControlError, Controller};
use oxvirt_model::ApiToken;
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
            role: "admin".into(),
            created_at: now_millis(),
        };
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        writeln!(f, "{secret}").map_err(io)?;
        f.sync_all().map_err(io)?;
        self.inner.store.put_record(&token.id, &token, Expect::Absent)?;
        Ok(true)
    }

    /// The token a bearer presented, if it is valid.
    pub fn check_token(&self, presented: &str) -> Option<ApiToken> {
        let hash = sha256_hex(presented.trim());
        let tokens = self.inner.store.list_records::<ApiToken>().ok()?;
        tokens.into_iter().map(|(t, _)| t).find(|t| constant_time_eq(t.sha256.as_bytes(), hash.as_bytes()))
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
