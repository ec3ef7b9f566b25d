//! Cluster membership, when the store is etcd: this host's record (`hosts/<name>`), its presence
//! (`alive/<name>`, held by an etcd lease while the daemon lives) and its turn at leading; the
//! hosts as the API shows them; leaving, refused while the host still has VMs.

mod drain;
pub mod placement;

use crate::{now_millis, ControlError};
use oxvirt_model::{HostView, Vm};
use oxvirt_store::{ClusterSession, Expect, StoreExt};
use std::sync::Arc;

pub use oxvirt_model::HostRecord;

crate::service! {
    /// Cluster identity: membership, host records, maintenance, placement and rebalancing.
    Hosts, hosts, state = hosts
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// This daemon's cluster membership (etcd store only).
    pub membership: std::sync::Mutex<Option<std::sync::Arc<Membership>>>,
    /// When the leader last rebalanced.
    pub last_rebalance: std::sync::Mutex<Option<std::time::Instant>>,
}

/// This daemon's membership.
pub struct Membership {
    pub name: String,
    pub session: Box<dyn ClusterSession>,
}

impl Hosts {
    /// Joins the cluster: the host's record is written (or refreshed) and its presence held.
    pub fn join_cluster(
        &self,
        name: &str,
        address: &str,
        session: impl ClusterSession + 'static,
    ) -> Result<(), ControlError> {
        oxvirt_model::validate_name("cluster.host_name", name)?;
        let rec = HostRecord {
            name: name.into(),
            address: address.into(),
            cpus: self.ctl.inner.host.cpus,
            memory: self.ctl.inner.host.memory_bytes,
            joined_at: now_millis(),
            maintenance: false,
            pools: vec![],
            networks: vec![],
            cpu_pressure: 0.0,
            migration_tls: self.ctl.inner.config.migration_tls,
        };
        let key = format!("hosts/{name}");
        let joined = self.ctl.inner.store.get(&key)?.and_then(|e| serde_json::from_slice::<HostRecord>(&e.value).ok());
        let rec = HostRecord {
            joined_at: joined.as_ref().map(|j| j.joined_at).unwrap_or(rec.joined_at),
            maintenance: joined.is_some_and(|j| j.maintenance),
            ..rec
        };
        let rec = self.with_reach(rec);
        self.ctl.inner.store.put(&key, oxvirt_store::encode(&rec), Expect::Any)?;
        *crate::lock(&self.state().membership) =
            Some(Arc::new(Membership { name: name.into(), session: Box::new(session) }));
        self.ctl.inner.tasks.set_host(name);
        Ok(())
    }

    /// The hosts whose daemons hold their lease now.
    pub(crate) fn alive_hosts(&self) -> Result<Vec<String>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list("alive/")?
            .into_iter()
            .map(|e| e.key.trim_start_matches("alive/").to_string())
            .collect())
    }

    pub(crate) fn host_records(&self) -> Result<Vec<HostRecord>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list("hosts/")?
            .into_iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect())
    }

    pub(crate) fn host_record(&self, name: &str) -> Result<Option<HostRecord>, ControlError> {
        Ok(self.ctl.inner.store.get(&format!("hosts/{name}"))?.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// A host a VM may be sent to (named in `field`): known, online, not in maintenance.
    pub(crate) fn usable_host(&self, field: &str, name: &str) -> Result<HostRecord, ControlError> {
        let rec = self
            .host_record(name)?
            .ok_or_else(|| ControlError::invalid(field, format!("there is no host named {name} in the cluster")))?;
        if self.ctl.inner.store.get(&format!("alive/{name}"))?.is_none() {
            return Err(ControlError::invalid(field, format!("host {name} is offline")));
        }
        if rec.maintenance {
            return Err(ControlError::invalid(field, format!("host {name} is in maintenance")));
        }
        Ok(rec)
    }

    /// The store key of a record of this host's own (a device it made, its resource policy): in a
    /// cluster under the host's name, so that hosts sharing the store keep theirs apart.
    pub(crate) fn local_key(&self, name: &str) -> String {
        match self.host_name() {
            Some(h) => format!("{h}/{name}"),
            None => name.to_string(),
        }
    }

    /// This host's name in the cluster (None on a single host).
    pub fn host_name(&self) -> Option<String> {
        crate::lock(&self.state().membership).as_ref().map(|m| m.name.clone())
    }

    pub async fn cluster_hosts(&self) -> Result<Vec<HostView>, ControlError> {
        let Some(m) = crate::lock(&self.state().membership).clone() else {
            return Err(ControlError::Conflict(
                "this host is not in a cluster (the store is SQLite): see [store] in oxvirtd.toml".into(),
            ));
        };
        let leader = m.session.leader().await;
        let alive = self.alive_hosts()?;
        let vms = self.ctl.vms().list_vms()?;
        let fenced = self.ctl.ha().fenced_hosts()?;
        Ok(self
            .host_records()?
            .into_iter()
            .map(|h| HostView {
                fenced: fenced.contains(&h.name),
                online: alive.contains(&h.name),
                leader: leader.as_deref() == Some(h.name.as_str()),
                vms: vms.iter().filter(|v: &&Vm| v.host.as_deref() == Some(h.name.as_str())).count(),
                host: h,
            })
            .collect())
    }

    /// Starts a VM where it belongs: here as a task, or (another host's VM) by asking for it in the
    /// store, where its host's reconciler picks it up.
    pub fn start_where_it_belongs(&self, name: &str) -> Result<Option<oxvirt_model::Task>, ControlError> {
        let vm = self.ctl.vms().get_vm(name)?;
        if self.check_local(&vm).is_ok() {
            return self.ctl.vms().vm_action(name, oxvirt_model::VmAction::Start).map(Some);
        }
        self.ctl.vms().set_desired(name, oxvirt_model::DesiredState::Running)?;
        Ok(None)
    }

    /// Refuses to run a VM that belongs to another host of the cluster (its host runs it).
    pub(crate) fn check_local(&self, vm: &Vm) -> Result<(), ControlError> {
        match (&vm.host, self.host_name()) {
            (Some(h), Some(me)) if *h != me => Err(ControlError::Conflict(format!(
                "VM {} belongs to host {h}: ask that host (oxvirt cluster hosts shows its address)",
                vm.spec.name
            ))),
            _ => Ok(()),
        }
    }

    /// This host's record with what it reaches now.
    fn with_reach(&self, rec: HostRecord) -> HostRecord {
        let pools = self
            .ctl
            .inner
            .store
            .list_records::<oxvirt_model::Pool>()
            .unwrap_or_default()
            .into_iter()
            .filter(|(p, _)| {
                // A local pool's directory is made where it is needed; a shared one must be
                // mounted here.
                p.spec.kind != oxvirt_model::PoolKind::SharedDir
                    || std::path::Path::new(p.spec.path_on(Some(&rec.name))).is_dir()
            })
            .map(|(p, _)| p.spec.name)
            .collect();
        let mut networks: Vec<String> = self
            .ctl
            .inner
            .store
            .list_records::<oxvirt_model::Network>()
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| {
                // oxvirt makes its networks on any host; a bridged one needs the operator's bridge.
                n.spec.kind != oxvirt_model::NetworkKind::Bridged
                    || crate::network::links::is_bridge(&crate::network::bridge_of(n))
            })
            .map(|(n, _)| n.spec.name)
            .collect();
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            for e in dir.flatten() {
                if e.path().join("bridge").exists() {
                    networks.push(format!("bridge:{}", e.file_name().to_string_lossy()));
                }
            }
        }
        networks.sort();
        HostRecord { pools, networks, cpu_pressure: cpu_pressure(), ..rec }
    }

    /// Each reconcile round: this host's record says what it reaches now (written when changed).
    pub(crate) fn refresh_host_record(&self) {
        let Some(me) = self.host_name() else { return };
        let Ok(Some(rec)) = self.host_record(&me) else { return };
        let fresh = self.with_reach(rec.clone());
        let changed = fresh.pools != rec.pools
            || fresh.networks != rec.networks
            || (fresh.cpu_pressure - rec.cpu_pressure).abs() > 0.05;
        if changed {
            if let Err(e) = self.ctl.inner.store.put(&format!("hosts/{me}"), oxvirt_store::encode(&fresh), Expect::Any)
            {
                tracing::warn!("cannot refresh this host's record: {e}");
            }
        }
    }

    /// Takes a host out of the cluster's records; refused while VMs are on it.
    pub fn leave_cluster(&self, name: &str) -> Result<(), ControlError> {
        let on: Vec<String> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v| v.host.as_deref() == Some(name))
            .map(|v| v.spec.name)
            .collect();
        if !on.is_empty() {
            return Err(ControlError::InUse(format!(
                "host {name} still has VM(s) {}: move or delete them first",
                on.join(", ")
            )));
        }
        let key = format!("hosts/{name}");
        if self.ctl.inner.store.get(&key)?.is_none() {
            return Err(ControlError::NotFound { kind: "host", name: name.into() });
        }
        self.ctl.inner.store.delete(&key, Expect::Any)?;
        Ok(())
    }
}

/// The host's CPU pressure (PSI `some avg10`, as a share), 0 where the kernel has no PSI.
fn cpu_pressure() -> f64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("some"))?;
            let v = line.split_whitespace().find_map(|w| w.strip_prefix("avg10="))?;
            v.parse::<f64>().ok()
        })
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
        .unwrap_or(0.0)
}
