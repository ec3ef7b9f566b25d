//! Built-in alerting, for users without Prometheus: the same kinds of rules as the shipped
//! Prometheus rules file, evaluated by the daemon.

use crate::{validate_name, Millis, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A guest kernel panicked (value 1).
    VmCrashed,
    /// A VM's CPU use, as a share of its vCPUs (0..1).
    VmCpuHigh,
    /// Share of time a VM's vCPUs waited for a host CPU (0..1).
    VmCpuReadyHigh,
    /// A disk's average time per operation, seconds.
    DiskLatencyHigh,
    /// A pool's used share of its file system (0..1).
    PoolNearlyFull,
    /// The host's used share of memory (0..1).
    HostMemoryHigh,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    pub kind: AlertKind,
    /// Fires when the value is above this.
    pub threshold: f64,
    /// ... for at least this long.
    #[serde(default)]
    pub for_secs: u64,
}

impl AlertRule {
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        validate_name(&format!("{field}.name"), &self.name)?;
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(ValidationError::new(format!("{field}.threshold"), "must be a number of at least 0"));
        }
        if self.for_secs > 86_400 {
            return Err(ValidationError::new(format!("{field}.for_secs"), "must be at most 86400"));
        }
        Ok(())
    }

    /// The rules a daemon has when its config names none (the thresholds of the Prometheus file).
    pub fn defaults() -> Vec<AlertRule> {
        let r = |name: &str, kind, threshold, for_secs| AlertRule { name: name.into(), kind, threshold, for_secs };
        vec![
            r("vm-crashed", AlertKind::VmCrashed, 0.5, 0),
            r("vm-cpu-high", AlertKind::VmCpuHigh, 0.9, 300),
            r("vm-cpu-ready-high", AlertKind::VmCpuReadyHigh, 0.1, 300),
            r("disk-latency-high", AlertKind::DiskLatencyHigh, 0.05, 300),
            r("pool-nearly-full", AlertKind::PoolNearlyFull, 0.9, 600),
            r("host-memory-high", AlertKind::HostMemoryHigh, 0.9, 300),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// An alert of one rule on one target (`vms/NAME`, `vms/NAME/disks/ID`, `pools/NAME`, `host`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Alert {
    pub rule: String,
    pub kind: AlertKind,
    pub target: String,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    pub since: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_validate() {
        let r: AlertRule =
            serde_json::from_str(r#"{"name":"busy","kind":"vm-cpu-high","threshold":0.5,"for_secs":2}"#).unwrap();
        assert_eq!(r.validate("rules[0]"), Ok(()));
        let bad = AlertRule { threshold: -1.0, ..r.clone() };
        assert_eq!(bad.validate("rules[0]").unwrap_err().field, "rules[0].threshold");
        assert!(serde_json::from_str::<AlertRule>(r#"{"name":"x","kind":"nope","threshold":1}"#).is_err());
        assert!(AlertRule::defaults().iter().all(|r| r.validate("r").is_ok()));
    }
}
