//! API tokens: HTTPS requests carry one. The store keeps only their SHA-256.

use crate::{now_millis, ControlError};
use oxvirt_model::{ApiToken, NewToken, ROOT};
use oxvirt_store::{Expect, StoreExt};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
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
/// The administrator token is made again (a new secret in its file) this long before it expires.
pub const ADMIN_RENEW_BEFORE_MS: u64 = 7 * 24 * 3600 * 1000;

/// What [`Controller::ensure_admin_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminToken {
    /// First start: made, and written to its file.
    Made,
    /// Close to its expiry: a new secret in its file (the old one is refused from now on).
    Renewed,
    /// Valid, or revoked on purpose (a revoked administrator token is not made again).
    Kept,
}

impl crate::Access {
    /// The administrator token, kept in `path` (root's, 0600): made at first start (no token
    /// recorded yet); like every token it expires ([`DEFAULT_TOKEN_TTL_MS`]), and it is made
    /// again with a new secret within [`ADMIN_RENEW_BEFORE_MS`] of its expiry (checked at start
    /// and each reconcile round), so that the file always holds one that works. One recorded
    /// before tokens expired gets an expiry, its secret unchanged.
    pub fn ensure_admin_token(&self, path: &Path) -> Result<AdminToken, ControlError> {
        let now = now_millis();
        let renew = match self.ctl.inner.store.get_record::<ApiToken>("admin")? {
            Some((t, rev)) if t.expires_at.is_none() => {
                self.ctl.inner.store.put_record(
                    "admin",
                    &ApiToken { expires_at: Some(now + DEFAULT_TOKEN_TTL_MS), ..t },
                    Expect::Revision(rev),
                )?;
                return Ok(AdminToken::Kept);
            }
            Some((t, _)) if t.expires_at.is_some_and(|e| e > now + ADMIN_RENEW_BEFORE_MS) => {
                return Ok(AdminToken::Kept)
            }
            Some((_, rev)) => Expect::Revision(rev),
            None if self.ctl.inner.store.list_records::<ApiToken>()?.is_empty() => Expect::Absent,
            None => return Ok(AdminToken::Kept),
        };
        let io = |e: std::io::Error| ControlError::Host(format!("admin token file {}: {e}", path.display()));
        let secret = format!("oxv_{}", random_secret().map_err(io)?);
        let token = ApiToken {
            id: "admin".into(),
            name: "administrator (made by oxvirtd, renewed before it expires)".into(),
            sha256: sha256_hex(&secret),
            role: String::new(),
            user: ROOT.into(),
            expires_at: Some(now + DEFAULT_TOKEN_TTL_MS),
            created_at: now,
        };
        // The new secret is written whole beside the file, recorded (expecting the record read:
        // another host of the cluster may renew it first), then renamed over the file.
        let tmp = path.with_extension("token.new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        writeln!(f, "{secret}").map_err(io)?;
        f.sync_all().map_err(io)?;
        let made = matches!(renew, Expect::Absent);
        if let Err(e) = self.ctl.inner.store.put_record(&token.id, &token, renew) {
            let _ = std::fs::remove_file(&tmp);
            let e = ControlError::from(e);
            // Another host of the cluster made or renewed it meanwhile (hosts started at one
            // moment on a fresh store): theirs stands, nothing is wrong.
            if e.is_lost_race() {
                tracing::info!("another host made or renewed the administrator API token first");
                return Ok(AdminToken::Kept);
            }
            return Err(e);
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if !made {
            tracing::info!(file = %path.display(), "renewed the administrator API token before it expires");
        }
        Ok(if made { AdminToken::Made } else { AdminToken::Renewed })
    }

    /// The token a bearer presented, if it is valid now: known, not expired, its user there.
    pub fn check_token(&self, presented: &str) -> Option<ApiToken> {
        let hash = sha256_hex(presented.trim());
        let tokens = self.ctl.inner.store.list_records::<ApiToken>().ok()?;
        let t = tokens.into_iter().map(|(t, _)| t).find(|t| constant_time_eq(t.sha256.as_bytes(), hash.as_bytes()))?;
        if t.expires_at.is_some_and(|e| e <= now_millis()) {
            return None;
        }
        if t.user != ROOT && self.ctl.inner.store.get_record::<oxvirt_model::User>(&t.user).ok()?.is_none() {
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
        self.ctl.inner.store.put_record(&token.id, &token, Expect::Absent)?;
        Ok(NewToken { token: ApiToken { sha256: String::new(), ..token }, secret })
    }

    /// Tokens (without their hashes): of one user, or all.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list_records::<ApiToken>()?
            .into_iter()
            .map(|(t, _)| ApiToken { sha256: String::new(), ..t })
            .filter(|t| user.is_none_or(|u| t.user == u))
            .collect())
    }

    pub fn get_token(&self, id: &str) -> Result<ApiToken, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<ApiToken>(id)?
            .map(|(t, _)| ApiToken { sha256: String::new(), ..t })
            .ok_or_else(|| ControlError::NotFound { kind: "token", name: id.into() })
    }

    /// Revokes a token: the next request with it is refused.
    pub fn revoke_token(&self, id: &str) -> Result<(), ControlError> {
        self.get_token(id)?;
        self.ctl.inner.store.delete_record::<ApiToken>(id, Expect::Any)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Controller;

    fn controller(dir: &Path) -> Controller {
        let store = std::sync::Arc::new(oxvirt_store::SqliteStore::open(&dir.join("store.db")).unwrap());
        let hv: std::sync::Arc<dyn oxvirt_hypervisor::Hypervisor> = oxvirt_hypervisor::fake::FakeHypervisor::new();
        Controller::new(store, hv, crate::ControllerConfig::new(dir)).unwrap()
    }

    /// Hosts that start at one moment on a fresh store all start: one makes the administrator
    /// token, the others find it made (a lost compare-and-swap is not an error).
    #[test]
    fn hosts_starting_at_once_make_one_admin_token_and_all_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(oxvirt_store::SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hosts: Vec<_> = (0..8)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let host = dir.path().join(format!("host-{i}"));
                std::fs::create_dir_all(&host).unwrap();
                std::thread::spawn(move || {
                    let hv: std::sync::Arc<dyn oxvirt_hypervisor::Hypervisor> =
                        oxvirt_hypervisor::fake::FakeHypervisor::new();
                    let c = Controller::new(store, hv, crate::ControllerConfig::new(&host)).unwrap();
                    barrier.wait();
                    c.access().ensure_admin_token(&host.join("admin.token"))
                })
            })
            .collect();
        let made: Vec<AdminToken> = hosts.into_iter().map(|h| h.join().unwrap().expect("every host starts")).collect();
        assert_eq!(made.iter().filter(|m| **m == AdminToken::Made).count(), 1, "{made:?}");
    }

    #[test]
    fn the_admin_token_expires_and_is_renewed_in_its_file_before_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let (c, file) = (controller(dir.path()), dir.path().join("admin.token"));
        let read = || std::fs::read_to_string(&file).unwrap().trim().to_string();
        assert_eq!(c.access().ensure_admin_token(&file).unwrap(), AdminToken::Made);
        let first = read();
        let t = c.access().check_token(&first).expect("valid");
        assert!(t.expires_at.unwrap() >= now_millis() + DEFAULT_TOKEN_TTL_MS - 60_000);
        assert_eq!(c.access().ensure_admin_token(&file).unwrap(), AdminToken::Kept);
        assert_eq!(read(), first);
        // Six days from its expiry: a new secret in the file, the old one refused.
        c.inner
            .store
            .update_record::<ApiToken>("admin", |t| t.expires_at = Some(now_millis() + 6 * 24 * 3600 * 1000))
            .unwrap();
        assert_eq!(c.access().ensure_admin_token(&file).unwrap(), AdminToken::Renewed);
        let second = read();
        assert_ne!(second, first);
        assert!(c.access().check_token(&first).is_none());
        assert!(c.access().check_token(&second).is_some());
        // Recorded without an expiry (an older oxvirtd): it gets one, its secret unchanged.
        c.inner.store.update_record::<ApiToken>("admin", |t| t.expires_at = None).unwrap();
        assert_eq!(c.access().ensure_admin_token(&file).unwrap(), AdminToken::Kept);
        assert!(c.access().check_token(&second).unwrap().expires_at.is_some());
        // Revoked on purpose (other tokens exist): not made again.
        c.access().create_token(ROOT, "ops", None).unwrap();
        c.access().revoke_token("admin").unwrap();
        assert_eq!(c.access().ensure_admin_token(&file).unwrap(), AdminToken::Kept);
        assert!(c.access().check_token(&second).is_none());
    }

    #[test]
    fn equality_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(random_secret().unwrap().len(), 64);
    }
}
