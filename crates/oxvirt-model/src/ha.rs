//! High availability: the VMs the cluster keeps running (HA resources) and the host groups that
//! say where they may run and in which order of preference (as Proxmox VE's HA resources and
//! groups do).

use crate::{validate_name, Millis, ValidationError};

/// What the cluster keeps an HA VM at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaState {
    /// Kept running: started when stopped, restarted when it fails, recovered on another host
    /// when its host is lost.
    #[default]
    Started,
    /// Kept stopped.
    Stopped,
    /// Not managed (kept as configured, nothing is done to the VM).
    Disabled,
}

impl HaState {
    pub fn as_str(self) -> &'static str {
        match self {
            HaState::Started => "started",
            HaState::Stopped => "stopped",
            HaState::Disabled => "disabled",
        }
    }
}

fn default_max_restarts() -> u32 {
    1
}
fn default_max_relocations() -> u32 {
    1
}

/// Most restarts or relocations of one failure an HA resource may ask for.
pub const HA_MAX_TRIES: u32 = 10;
/// Highest priority of an HA resource or of a host in a group.
pub const HA_MAX_PRIORITY: u32 = 1000;

/// A VM under high availability.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaResourceSpec {
    /// The VM's name.
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub vm: String,
    /// The HA group whose hosts it prefers (any online host when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub group: Option<String>,
    /// Recovered before VMs of lower priority (0 to 1000).
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub priority: u32,
    /// Restarts on its own host after it failed there, before it is moved (0 to 10).
    #[serde(default = "default_max_restarts")]
    #[schemars(range(max = 10))]
    pub max_restarts: u32,
    /// Moves to another host after the restarts did not keep it running (0 to 10).
    #[serde(default = "default_max_relocations")]
    #[schemars(range(max = 10))]
    pub max_relocations: u32,
    #[serde(default)]
    pub state: HaState,
}

impl HaResourceSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("vm", &self.vm)?;
        if let Some(g) = &self.group {
            validate_name("group", g)?;
        }
        if self.priority > HA_MAX_PRIORITY {
            return Err(ValidationError::new("priority", format!("must be 0..{HA_MAX_PRIORITY}")));
        }
        for (field, v) in [("max_restarts", self.max_restarts), ("max_relocations", self.max_relocations)] {
            if v > HA_MAX_TRIES {
                return Err(ValidationError::new(field, format!("must be 0..{HA_MAX_TRIES}")));
            }
        }
        Ok(())
    }
}

/// One recovery of an HA VM: from the host it was lost on to where it runs again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HaRecovery {
    pub from: String,
    pub to: String,
    /// When it was asked to run on `to`.
    pub at: Millis,
    /// Why it moved.
    pub reason: String,
}

/// What happened to an HA resource so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HaStatus {
    /// Restarts on its host since it last ran steadily.
    #[serde(default)]
    pub restarts: u32,
    /// Moves to other hosts since it last ran steadily.
    #[serde(default)]
    pub relocations: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery: Option<HaRecovery>,
    /// Why it is not where its state says (empty when it is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
    /// The host that said it guards the VM (fences it when cut from the cluster): the leader
    /// recovers a lost host's VM only when that host said so, never one it may still run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarded_by: Option<String>,
    /// The host holding the VM's run lease in the cluster (the only one allowed to run it; the
    /// lease lapses with that host's own). Shown, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_lease: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HaResource {
    pub spec: HaResourceSpec,
    pub created_at: Millis,
    #[serde(default)]
    pub status: HaStatus,
}

/// A host of an HA group and how much it is preferred.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaGroupHost {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub host: String,
    /// Hosts of a higher priority are chosen first (0 to 1000).
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub priority: u32,
}

/// Most hosts in one HA group.
pub const HA_GROUP_MAX_HOSTS: usize = 64;

/// Hosts an HA VM prefers, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaGroupSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub hosts: Vec<HaGroupHost>,
    /// Its VMs run only on its hosts (else, when none of them can, on any other).
    #[serde(default)]
    pub restricted: bool,
    /// A recovered VM stays where it is when a host it prefers more comes back.
    #[serde(default)]
    pub nofailback: bool,
}

impl HaGroupSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.hosts.is_empty() || self.hosts.len() > HA_GROUP_MAX_HOSTS {
            return Err(ValidationError::new("hosts", format!("must name 1..{HA_GROUP_MAX_HOSTS} hosts")));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            validate_name(&format!("hosts[{i}].host"), &h.host)?;
            if h.priority > HA_MAX_PRIORITY {
                return Err(ValidationError::new(
                    format!("hosts[{i}].priority"),
                    format!("must be 0..{HA_MAX_PRIORITY}"),
                ));
            }
            if self.hosts[..i].iter().any(|o| o.host == h.host) {
                return Err(ValidationError::new(format!("hosts[{i}].host"), format!("{} is named twice", h.host)));
            }
        }
        Ok(())
    }

    /// The priority of `host` in this group; `None` when it is not a member.
    pub fn priority_of(&self, host: &str) -> Option<u32> {
        self.hosts.iter().find(|h| h.host == host).map(|h| h.priority)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HaGroup {
    pub spec: HaGroupSpec,
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(json: &str) -> Result<HaResourceSpec, String> {
        let spec: HaResourceSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_resource_takes_the_defaults_operators_expect() {
        let r = resource(r#"{"vm":"web"}"#).unwrap();
        assert_eq!(
            (r.state, r.priority, r.max_restarts, r.max_relocations, r.group),
            (HaState::Started, 0, 1, 1, None)
        );
    }

    #[test]
    fn bad_resources_name_the_field() {
        for (json, field) in [
            (r#"{"vm":"a b"}"#, "vm"),
            (r#"{"vm":"web","group":"-g"}"#, "group"),
            (r#"{"vm":"web","priority":1001}"#, "priority"),
            (r#"{"vm":"web","max_restarts":11}"#, "max_restarts"),
            (r#"{"vm":"web","max_relocations":99}"#, "max_relocations"),
            (r#"{"vm":"web","state":"running"}"#, "unknown variant"),
            (r#"{"vm":"web","host":"h1"}"#, "unknown field"),
        ] {
            let err = resource(json).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn a_group_names_each_host_once() {
        let g = |json: &str| -> Result<HaGroupSpec, String> {
            let spec: HaGroupSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
            spec.validate().map_err(|e| e.to_string())?;
            Ok(spec)
        };
        let ok = g(r#"{"name":"g","hosts":[{"host":"h1","priority":2},{"host":"h2"}]}"#).unwrap();
        assert_eq!((ok.priority_of("h1"), ok.priority_of("h2"), ok.priority_of("h3")), (Some(2), Some(0), None));
        for (json, field) in [
            (r#"{"name":"g","hosts":[]}"#, "hosts"),
            (r#"{"name":"g","hosts":[{"host":"h1"},{"host":"h1"}]}"#, "hosts[1].host"),
            (r#"{"name":"g","hosts":[{"host":"h 1"}]}"#, "hosts[0].host"),
            (r#"{"name":"g","hosts":[{"host":"h1","priority":5000}]}"#, "hosts[0].priority"),
        ] {
            let err = g(json).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }
}
