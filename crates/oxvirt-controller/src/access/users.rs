//! Local users (argon2id password hashes), their grants (the ACL) and the checks every request
//! goes through; logging in gives a token that expires.

use crate::{now_millis, ControlError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use oxvirt_model::{role_on, AclEntry, AclList, NewToken, Privilege, User, UserSpec, UserView, ValidationError, ROOT};
use oxvirt_store::{Expect, StoreExt};

/// How long a token from a login lives.
pub const LOGIN_TTL_MS: u64 = 8 * 3600 * 1000;

/// 16 random bytes from the kernel as a salt.
fn new_salt() -> Result<SaltString, ControlError> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| ControlError::Host(format!("random salt: {e}")))?;
    SaltString::encode_b64(&buf).map_err(|e| ControlError::Host(format!("salt: {e}")))
}

fn view(u: User) -> UserView {
    UserView { name: u.name, created_at: u.created_at }
}

impl super::Access {
    pub fn list_users(&self) -> Result<Vec<UserView>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<User>()?.into_iter().map(|(u, _)| view(u)).collect())
    }

    pub fn create_user(&self, spec: UserSpec) -> Result<UserView, ControlError> {
        spec.validate()?;
        let salt = new_salt()?;
        let hash = Argon2::default()
            .hash_password(spec.password.as_bytes(), &salt)
            .map_err(|e| ControlError::Host(format!("hash password: {e}")))?
            .to_string();
        let u = User { name: spec.name.clone(), password_hash: hash, created_at: now_millis() };
        match self.ctl.inner.store.put_record(&u.name, &u, Expect::Absent) {
            Ok(_) => Ok(view(u)),
            Err(oxvirt_store::StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("a user named {:?} already exists", spec.name),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a user, their grants and their tokens.
    pub fn delete_user(&self, name: &str) -> Result<(), ControlError> {
        let (_, rev) = self
            .ctl
            .inner
            .store
            .get_record::<User>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "user", name: name.into() })?;
        self.ctl.inner.store.delete_record::<User>(name, Expect::Revision(rev))?;
        let acl: Vec<AclEntry> = self.acl()?.into_iter().filter(|e| e.user != name).collect();
        self.ctl.inner.store.put_record("all", &AclList(acl), Expect::Any)?;
        for t in self.list_tokens(Some(name))? {
            let _ = self.revoke_token(&t.id);
        }
        Ok(())
    }

    /// Checks a password; any failure looks the same to the caller.
    pub fn verify_password(&self, user: &str, password: &str) -> bool {
        let Ok(Some((u, _))) = self.ctl.inner.store.get_record::<User>(user) else {
            // Same work as a real check, so timing does not tell which users exist.
            if let Ok(salt) = new_salt() {
                let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
            }
            return false;
        };
        PasswordHash::new(&u.password_hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    }

    /// A token for a user who gave the right password, valid for 8 hours. Failures slow down
    /// further attempts for that user name and from that address (`login_guard.rs`).
    pub fn login(&self, user: &str, password: &str, from: &str) -> Result<NewToken, ControlError> {
        let now = std::time::Instant::now();
        // The guard keeps names no longer than a user's can be.
        let user = &crate::access::audit::cut(user, 64);
        if let Err(b) = crate::lock(&self.state().login_guard).begin(user, from, now) {
            let secs = b.retry_after.as_secs().max(1);
            tracing::warn!(user, from, "login refused: {} is backing off for {secs} s after failed logins", b.key);
            return Err(ControlError::TooManyRequests {
                message: format!("too many failed logins ({}): try again in {secs} s", b.key),
                retry_after_secs: secs,
            });
        }
        if !self.verify_password(user, password) {
            // The wait runs from the refusal (the hash took its time).
            crate::lock(&self.state().login_guard).failed(user, from, std::time::Instant::now());
            tracing::warn!(user, from, "failed login");
            return Err(ControlError::Unauthorized("wrong user name or password".into()));
        }
        crate::lock(&self.state().login_guard).succeeded(user, from);
        self.create_token(user, "login", Some(LOGIN_TTL_MS))
    }

    pub fn acl(&self) -> Result<Vec<AclEntry>, ControlError> {
        Ok(self.ctl.inner.store.get_record::<AclList>("all")?.map(|(a, _)| a.0).unwrap_or_default())
    }

    /// Replaces all grants at once.
    pub fn set_acl(&self, acl: Vec<AclEntry>) -> Result<Vec<AclEntry>, ControlError> {
        for (i, e) in acl.iter().enumerate() {
            e.validate(&format!("[{i}]"))?;
            if e.user != ROOT && self.ctl.inner.store.get_record::<User>(&e.user)?.is_none() {
                return Err(ControlError::invalid(format!("[{i}].user"), format!("there is no user named {}", e.user)));
            }
        }
        self.ctl.inner.store.put_record("all", &AclList(acl.clone()), Expect::Any)?;
        Ok(acl)
    }

    /// Whether `user` may do what needs `privilege` on `resource`.
    pub fn authorize(&self, user: &str, privilege: Privilege, resource: &str) -> Result<(), ControlError> {
        if user == ROOT {
            return Ok(());
        }
        let acl = self.acl()?;
        let mut role = role_on(&acl, user, resource);
        // A VM in a project: a grant on the project counts, unless the VM has one of its own.
        if let Some(vm) = resource.strip_prefix("/vms/") {
            let own = acl.iter().any(|e| e.user == user && e.path == resource);
            let project = self.ctl.vms().get_vm(vm).ok().and_then(|v| v.spec.project);
            if let (false, Some(p)) = (own, project) {
                let path = format!("/projects/{p}");
                if let Some(e) = acl.iter().find(|e| e.user == user && e.path == path) {
                    role = Some(e.role);
                }
            }
        }
        if role.is_some_and(|r| r.allows(privilege)) {
            return Ok(());
        }
        Err(ControlError::Forbidden(format!(
            "user {user} may not {} {resource}: their role there is {}",
            match privilege {
                Privilege::Read => "read",
                Privilege::Operate => "operate",
                Privilege::Modify => "change",
                Privilege::Admin => "administer",
            },
            role.map(|r| format!("{r:?}").to_lowercase()).unwrap_or_else(|| "none".into())
        )))
    }
}
