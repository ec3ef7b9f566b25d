//! Live migration of a running VM to another host of the cluster (QEMU pre-copy over TCP; disks
//! both hosts reach stay where they are, local ones are mirrored over NBD while the guest runs).

use crate::{validate_name, Millis, ValidationError};

fn default_downtime() -> u64 {
    100
}

/// What `POST /api/v1/vms/{name}/migrate` takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The target host.
    pub to: String,
    /// Longest pause of the guest at the switch-over, in ms (Proxmox's default: 100).
    #[serde(default = "default_downtime")]
    #[schemars(range(min = 1, max = 60_000))]
    pub downtime_ms: u64,
    /// Most bandwidth the migration may use, MiB/s (0: no limit).
    #[serde(default)]
    #[schemars(range(max = 100_000))]
    pub bandwidth_mibs: u64,
    /// Slow the guest's vCPUs down if its memory changes faster than it can be sent.
    #[serde(default)]
    pub auto_converge: bool,
    /// Switch to post-copy (run on the target, fetch memory on demand) when pre-copy lingers.
    #[serde(default)]
    pub postcopy: bool,
}

impl MigrateRequest {
    /// A migration to `to` with the defaults: 100 ms downtime at most, no bandwidth limit,
    /// pre-copy only.
    pub fn new(to: impl Into<String>) -> Self {
        MigrateRequest {
            to: to.into(),
            downtime_ms: default_downtime(),
            bandwidth_mibs: 0,
            auto_converge: false,
            postcopy: false,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("to", &self.to)?;
        if !(1..=60_000).contains(&self.downtime_ms) {
            return Err(ValidationError::new("downtime_ms", "must be 1..60000"));
        }
        if self.bandwidth_mibs > 100_000 {
            return Err(ValidationError::new("bandwidth_mibs", "must be at most 100000"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Asked for by the cluster's rebalancing (the leader): the source host is to start it.
    Asked,
    /// The source asked; the target is to start a QEMU waiting for the stream.
    Requested,
    /// The target waits at `uri`.
    Ready,
    /// Done: the VM runs on the target (which takes it over).
    Completed,
    /// Gave up: the VM runs on the source as before (the target removes what it started, then
    /// the record).
    Failed,
    /// The target could not get ready (it made nothing): the source gives up and removes the
    /// record.
    Refused,
}

/// A migration in progress, as both hosts see it in the store (`migrations/<vm>`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Migration {
    pub vm: String,
    pub source: String,
    pub target: String,
    pub state: MigrationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the target's QEMU serves the disks it receives (local disks, mirrored over NBD
    /// while the guest runs), `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
    /// Whether the source may switch to post-copy (the target must be able to take it).
    #[serde(default)]
    pub postcopy: bool,
    /// The end of the guest's console output on the source, handed over with the VM so that its
    /// console log goes on where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
    pub created_at: Millis,
}

impl Migration {
    /// A migration of `vm` from `source` to `target`, in `state`, created at `now`.
    pub fn new(vm: &str, source: &str, target: &str, state: MigrationState, now: Millis) -> Migration {
        Migration {
            vm: vm.into(),
            source: source.into(),
            target: target.into(),
            state,
            uri: None,
            error: None,
            nbd: None,
            postcopy: false,
            console: None,
            created_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_has_the_defaults_json_reads() {
        let parsed: MigrateRequest = serde_json::from_str(r#"{"to":"host-b"}"#).unwrap();
        assert_eq!(MigrateRequest::new("host-b"), parsed);
    }
}
