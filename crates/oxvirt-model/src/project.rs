//! Projects (tenants): a VM may belong to one, and a project's quotas cap what its VMs may hold
//! together (as Incus projects' limits do).

use crate::{validate_name, ByteSize, Millis, ValidationError};

/// Limits of a project; a limit left out is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Virtual size of the volumes its VMs use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub quotas: Quotas,
}

impl ProjectSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Project {
    pub spec: ProjectSpec,
    pub created_at: Millis,
}

/// What a project's VMs hold, against its quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Usage {
    pub vms: u32,
    pub vcpus: u32,
    pub memory: u64,
    pub storage: u64,
}

impl Usage {
    /// The first quota this usage breaks, as (field, message).
    pub fn exceeds(&self, q: &Quotas) -> Option<(&'static str, String)> {
        type Check = (&'static str, Option<u64>, u64, fn(u64) -> String);
        let checks: [Check; 4] = [
            ("vms", q.vms.map(u64::from), u64::from(self.vms), |v| v.to_string()),
            ("vcpus", q.vcpus.map(u64::from), u64::from(self.vcpus), |v| v.to_string()),
            ("memory", q.memory.map(|m| m.0), self.memory, |v| ByteSize(v).to_string()),
            ("storage", q.storage.map(|m| m.0), self.storage, |v| ByteSize(v).to_string()),
        ];
        checks.into_iter().find(|(_, limit, used, _)| limit.is_some_and(|l| *used > l)).map(|(f, limit, used, show)| {
            (f, format!("would use {} of a quota of {}", show(used), show(limit.unwrap_or(0))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_quota_broken_is_named() {
        let q = Quotas { vms: Some(2), vcpus: Some(4), memory: Some(ByteSize(1 << 30)), storage: None };
        let u = Usage { vms: 2, vcpus: 5, memory: 2 << 30, storage: 1 << 40 };
        let (f, m) = u.exceeds(&q).unwrap();
        assert_eq!(f, "vcpus");
        assert!(m.contains("5 of a quota of 4"), "{m}");
        assert_eq!(Usage { vms: 2, vcpus: 4, memory: 1 << 30, storage: 1 << 40 }.exceeds(&q), None);
    }
}
