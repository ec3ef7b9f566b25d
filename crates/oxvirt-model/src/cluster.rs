//! The cluster's placement and rebalancing policy (`cluster/policy` in the store), which the
//! leader follows, and the hosts' records (`hosts/<name>`).

use crate::ValidationError;

/// How new VMs are placed and how rebalancing moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// Even out load: the host with most room.
    #[default]
    Spread,
    /// Consolidate: the fullest host a VM fits on (whole hosts stay free).
    Pack,
}

/// Whether the leader rebalances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RebalanceMode {
    /// Never (a plan is still shown on request).
    #[default]
    Off,
    /// The leader performs its plan every `interval_secs`.
    Auto,
}

fn default_max_migrations() -> u32 {
    2
}
fn default_threshold() -> u32 {
    20
}
fn default_interval() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicy {
    #[serde(default)]
    pub strategy: PlacementStrategy,
    #[serde(default)]
    pub rebalance: RebalanceMode,
    /// Most migrations running at once in the cluster (rebalancing starts no more).
    #[serde(default = "default_max_migrations")]
    #[schemars(range(min = 1, max = 16))]
    pub max_migrations: u32,
    /// Spread: rebalance when the most and least loaded hosts differ by more than this many
    /// percent of a host.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub threshold_percent: u32,
    /// How often the leader looks, in seconds.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 86_400))]
    pub interval_secs: u64,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            strategy: PlacementStrategy::default(),
            rebalance: RebalanceMode::default(),
            max_migrations: default_max_migrations(),
            threshold_percent: default_threshold(),
            interval_secs: default_interval(),
        }
    }
}

impl ClusterPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=16).contains(&self.max_migrations) {
            return Err(ValidationError::new("max_migrations", "must be 1..16"));
        }
        if !(1..=100).contains(&self.threshold_percent) {
            return Err(ValidationError::new("threshold_percent", "must be 1..100"));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(ValidationError::new("interval_secs", "must be 1..86400"));
        }
        Ok(())
    }
}

/// Body of `PUT /cluster/hosts/{host}/maintenance`: in maintenance a host takes no new VMs and
/// its running VMs are migrated away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub on: bool,
}

/// A host of the cluster, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostRecord {
    pub name: String,
    /// Where its API answers (HTTPS).
    pub address: String,
    pub cpus: u32,
    pub memory: u64,
    pub joined_at: u64,
    /// In maintenance: no new VMs, its VMs drained away.
    #[serde(default)]
    pub maintenance: bool,
    /// What it reaches, as its daemon last saw (each reconcile round): storage pools, networks
    /// (and host bridges, as `bridge:NAME`), and its CPU pressure (share of time runnable tasks
    /// waited for a CPU, last 10 s).
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub cpu_pressure: f64,
    /// Its live migrations go over TLS (store.migration_tls_dir): it migrates only to and from
    /// hosts that do too.
    #[serde(default)]
    pub migration_tls: bool,
}

impl HostRecord {
    /// The host part of its address (`10.0.0.1` of `10.0.0.1:8443`, `::1` of `[::1]:8443`).
    pub fn address_host(&self) -> &str {
        self.address.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rules() {
        let p: ClusterPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, ClusterPolicy::default());
        assert_eq!((p.strategy, p.rebalance, p.max_migrations), (PlacementStrategy::Spread, RebalanceMode::Off, 2));
        assert_eq!(p.validate(), Ok(()));
        for (json, field) in [
            (r#"{"max_migrations":0}"#, "max_migrations"),
            (r#"{"threshold_percent":101}"#, "threshold_percent"),
            (r#"{"interval_secs":0}"#, "interval_secs"),
        ] {
            let p: ClusterPolicy = serde_json::from_str(json).unwrap();
            assert_eq!(p.validate().unwrap_err().field, field);
        }
        assert!(serde_json::from_str::<ClusterPolicy>(r#"{"strategy":"random"}"#).is_err());
    }
}
