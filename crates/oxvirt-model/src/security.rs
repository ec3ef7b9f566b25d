//! Users, roles and access control lists (as Proxmox ACLs): a role granted to a user on a path
//! (`/`, `/vms`, `/vms/NAME`, `/pools/NAME`, `/networks/NAME`, `/security-groups/NAME`) holds
//! there and below, and the most specific grant wins.

use crate::{validate_name, Millis, ValidationError};

/// What a request needs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Look.
    Read,
    /// Run: start, stop, console, balloon.
    Operate,
    /// Create, change, delete.
    Modify,
    /// Users, grants, the host's policy, the audit log.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Administrator,
    /// Look, run VMs, change resources.
    Operator,
    /// Look only.
    Auditor,
    /// Nothing: takes away what a grant higher up gives.
    None,
}

impl Role {
    pub fn allows(self, p: Privilege) -> bool {
        match self {
            Role::Administrator => true,
            Role::Operator => p <= Privilege::Modify,
            Role::Auditor => p == Privilege::Read,
            Role::None => false,
        }
    }
}

/// The built-in superuser: the administrator token and the Unix socket act as it.
pub const ROOT: &str = "root";

/// A local user as stored: the password only as an argon2id hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub created_at: Millis,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct UserView {
    pub name: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 10, max = 1024))]
    pub password: String,
}

impl UserSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.name == ROOT {
            return Err(ValidationError::new("name", "root is built in"));
        }
        validate_password(&self.password)
    }
}

pub fn validate_password(p: &str) -> Result<(), ValidationError> {
    if p.chars().count() < 10 || p.len() > 1024 {
        return Err(ValidationError::new("password", "must be 10 to 1024 characters"));
    }
    Ok(())
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    pub path: String,
    pub user: String,
    pub role: Role,
}

/// All grants, stored as one record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct AclList(pub Vec<AclEntry>);

/// Collections a grant may name, alone or with one of their resources.
pub const ACL_COLLECTIONS: &[&str] =
    &["vms", "pools", "networks", "security-groups", "projects", "backup-repos", "templates"];

impl AclEntry {
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        validate_name(&format!("{field}.user"), &self.user)?;
        let parts: Vec<&str> = self.path.split('/').skip(1).filter(|p| !p.is_empty()).collect();
        let ok = self.path.starts_with('/')
            && !self.path.contains("//")
            && (self.path == "/" || !self.path.ends_with('/'))
            && match parts.as_slice() {
                [] => self.path == "/",
                [c] => ACL_COLLECTIONS.contains(c),
                [c, n] => ACL_COLLECTIONS.contains(c) && validate_name("n", n).is_ok(),
                _ => false,
            };
        if !ok {
            return Err(ValidationError::new(
                format!("{field}.path"),
                "must be /, /vms, /vms/NAME, /pools/NAME, /networks/NAME, /security-groups/NAME or /projects/NAME",
            ));
        }
        Ok(())
    }
}

/// Whether a grant on `acl_path` covers `resource` (itself or below it).
pub fn covers(acl_path: &str, resource: &str) -> bool {
    acl_path == "/" || resource == acl_path || resource.starts_with(&format!("{acl_path}/"))
}

/// The role `user` has on `resource`: the most specific grant that covers it.
pub fn role_on(acl: &[AclEntry], user: &str, resource: &str) -> Option<Role> {
    if user == ROOT {
        return Some(Role::Administrator);
    }
    acl.iter().filter(|e| e.user == user && covers(&e.path, resource)).max_by_key(|e| e.path.len()).map(|e| e.role)
}

/// Who made a request, as the audit log and the checks see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Principal {
    pub user: String,
    /// The token it came with (none on the Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    pub time: Millis,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `socket` or the peer's address.
    pub from: String,
    pub method: String,
    pub path: String,
    /// The resource the request was about (`/vms/web`).
    pub resource: String,
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(path: &str, user: &str, role: Role) -> AclEntry {
        AclEntry { path: path.into(), user: user.into(), role }
    }

    #[test]
    fn the_most_specific_grant_wins() {
        let acl = vec![
            grant("/", "ann", Role::Auditor),
            grant("/vms/web", "ann", Role::Operator),
            grant("/vms/db", "ann", Role::None),
        ];
        assert_eq!(role_on(&acl, "ann", "/pools/local"), Some(Role::Auditor));
        assert_eq!(role_on(&acl, "ann", "/vms/web"), Some(Role::Operator));
        assert_eq!(role_on(&acl, "ann", "/vms/webby"), Some(Role::Auditor), "a prefix of a name is not a parent");
        assert_eq!(role_on(&acl, "ann", "/vms/db"), Some(Role::None));
        assert_eq!(role_on(&acl, "bob", "/vms/web"), None);
        assert_eq!(role_on(&acl, ROOT, "/anything"), Some(Role::Administrator));
        assert!(Role::Operator.allows(Privilege::Operate) && !Role::Operator.allows(Privilege::Admin));
        assert!(!Role::Auditor.allows(Privilege::Operate));
    }

    #[test]
    fn acl_paths_are_checked() {
        for ok in ["/", "/vms", "/vms/web", "/pools/local", "/networks/lan", "/security-groups/web"] {
            assert!(grant(ok, "ann", Role::Auditor).validate("acl[0]").is_ok(), "{ok}");
        }
        for bad in ["", "vms", "/vms/", "/vms//x", "/vms/web/disks", "/etc/passwd", "/vms/../x", "/vms/Bad Name"] {
            assert_eq!(grant(bad, "ann", Role::Auditor).validate("acl[0]").unwrap_err().field, "acl[0].path", "{bad}");
        }
        assert!(UserSpec { name: "root".into(), password: "0123456789".into() }.validate().is_err());
        assert_eq!(UserSpec { name: "ann".into(), password: "short".into() }.validate().unwrap_err().field, "password");
    }
}
