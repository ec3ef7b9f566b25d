//! Cluster membership, when the store is etcd: this host's record (`hosts/<name>`), its presence
//! (`alive/<name>`, held by an etcd lease while the daemon lives) and its turn at leading; the
//! hosts as the API shows them; leaving, refused while the host still has VMs.

use crate::{now_millis, ControlError, Controller};
use oxvirt_model::Vm;
use oxvirt_store::{Expect, Session};
use std::sync::Arc;

/// A host of the cluster, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
}

/// A host as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: HostRecord,
    /// Its daemon holds its lease now.
    pub online: bool,
    pub leader: bool,
    pub vms: usize,
}

/// This daemon's membership.
pub struct Membership {
    pub name: String,
    pub session: Session,
}

impl Controller {
    /// Joins the cluster: the host's record is written (or refreshed) and its presence held.
    pub fn join_cluster(&self, name: &str, address: &str, session: Session) -> Result<(), ControlError> {
        oxvirt_model::validate_name("cluster.host_name", name)?;
        let rec = HostRecord {
            name: name.into(),
            address: address.into(),
            cpus: self.inner.host.cpus,
            memory: self.inner.host.memory_bytes,
            joined_at: now_millis(),
            maintenance: false,
        };
        let key = format!("hosts/{name}");
        let joined = self.inner.store.get(&key)?.and_then(|e| serde_json::from_slice::<HostRecord>(&e.value).ok());
        let rec = HostRecord {
            joined_at: joined.as_ref().map(|j| j.joined_at).unwrap_or(rec.joined_at),
            maintenance: joined.is_some_and(|j| j.maintenance),
            ..rec
        };
        self.inner.store.put(&key, oxvirt_store::encode(&rec), Expect::Any)?;
        *crate::lock(&self.inner.membership) = Some(Arc::new(Membership { name: name.into(), session }));
        Ok(())
    }

    /// The hosts whose daemons hold their lease now.
    pub(crate) fn alive_hosts(&self) -> Result<Vec<String>, ControlError> {
        Ok(self
            .inner
            .store
            .list("alive/")?
            .into_iter()
            .map(|e| e.key.trim_start_matches("alive/").to_string())
            .collect())
    }

    pub(crate) fn host_records(&self) -> Result<Vec<HostRecord>, ControlError> {
        Ok(self.inner.store.list("hosts/")?.into_iter().filter_map(|e| serde_json::from_slice(&e.value).ok()).collect())
    }

    pub(crate) fn host_record(&self, name: &str) -> Result<Option<HostRecord>, ControlError> {
        Ok(self.inner.store.get(&format!("hosts/{name}"))?.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// A host a VM may be sent to (named in `field`): known, online, not in maintenance.
    pub(crate) fn usable_host(&self, field: &str, name: &str) -> Result<HostRecord, ControlError> {
        let rec = self
            .host_record(name)?
            .ok_or_else(|| ControlError::invalid(field, format!("there is no host named {name} in the cluster")))?;
        if self.inner.store.get(&format!("alive/{name}"))?.is_none() {
            return Err(ControlError::invalid(field, format!("host {name} is offline")));
        }
        if rec.maintenance {
            return Err(ControlError::invalid(field, format!("host {name} is in maintenance")));
        }
        Ok(rec)
    }

    /// This host's name in the cluster (None on a single host).
    pub fn host_name(&self) -> Option<String> {
        crate::lock(&self.inner.membership).as_ref().map(|m| m.name.clone())
    }

    pub async fn cluster_hosts(&self) -> Result<Vec<HostView>, ControlError> {
        let Some(m) = crate::lock(&self.inner.membership).clone() else {
            return Err(ControlError::Conflict(
                "this host is not in a cluster (the store is SQLite): see [store] in oxvirtd.toml".into(),
            ));
        };
        let leader = m.session.leader().await;
        let alive = self.alive_hosts()?;
        let vms = self.list_vms()?;
        Ok(self
            .host_records()?
            .into_iter()
            .map(|h| HostView {
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
        let vm = self.get_vm(name)?;
        if self.check_local(&vm).is_ok() {
            return self.vm_action(name, oxvirt_model::VmAction::Start).map(Some);
        }
        self.set_desired(name, oxvirt_model::DesiredState::Running)?;
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

    /// Where a new VM goes: the host it asks for (which must be online), or the scheduler's pick
    /// among the online hosts (spread, under the host policy's over-commit ratios). `None` on a
    /// single host.
    pub(crate) fn place_vm(&self, spec: &oxvirt_model::VmSpec) -> Result<Option<(String, String)>, ControlError> {
        let Some(me) = self.host_name() else {
            if spec.host.is_some() {
                return Err(ControlError::invalid("host", "this host is not in a cluster"));
            }
            return Ok(None);
        };
        if let Some(h) = &spec.host {
            self.usable_host("host", h)?;
            return Ok(Some((h.clone(), "asked for".into())));
        }
        let alive = self.alive_hosts()?;
        let records = self.host_records()?;
        let vms = self.list_vms()?;
        let policy = self.host_policy()?;
        let hosts: Vec<oxvirt_scheduler::Host> = records
            .iter()
            .map(|r| {
                let mine = vms.iter().filter(|v| v.host.as_deref() == Some(r.name.as_str()));
                oxvirt_scheduler::Host {
                    name: r.name.clone(),
                    cpus: r.cpus,
                    memory: r.memory,
                    used_vcpus: mine.clone().map(|v| v.spec.cpus).sum(),
                    used_memory: mine.map(|v| v.spec.memory.0).sum(),
                    pools: vec![],
                    networks: vec![],
                    online: alive.contains(&r.name),
                    maintenance: r.maintenance,
                    cpu_pressure: 0.0,
                }
            })
            .collect();
        let cluster = oxvirt_scheduler::Cluster::new(
            hosts,
            oxvirt_scheduler::Policy {
                strategy: oxvirt_scheduler::Strategy::Spread,
                cpu_overcommit: policy.cpu_overcommit,
                memory_overcommit: policy.memory_overcommit,
            },
        );
        let request = oxvirt_scheduler::Request {
            name: spec.name.clone(),
            vcpus: spec.cpus,
            memory: spec.memory.0,
            ..Default::default()
        };
        match cluster.choose(&request) {
            Ok(d) => Ok(Some((d.host, format!("placed by {me}'s scheduler: {}", d.reason)))),
            Err(e) => Err(ControlError::Conflict(e.to_string())),
        }
    }

    /// Puts a host in maintenance (or takes it out): in maintenance it gets no new VMs, and its
    /// running VMs are migrated away, each to the scheduler's pick among the others (a task per
    /// VM on this host, which must be the host drained). Returns the tasks.
    pub fn set_maintenance(&self, name: &str, on: bool) -> Result<Vec<oxvirt_model::Task>, ControlError> {
        let mut rec =
            self.host_record(name)?.ok_or_else(|| ControlError::NotFound { kind: "host", name: name.into() })?;
        if on && self.host_name().as_deref() != Some(name) {
            return Err(ControlError::Conflict(format!("drain host {name} through its own API (it migrates its VMs)")));
        }
        rec.maintenance = on;
        self.inner.store.put(&format!("hosts/{name}"), oxvirt_store::encode(&rec), Expect::Any)?;
        if !on {
            return Ok(vec![]);
        }
        let mut tasks = Vec::new();
        for vm in self.list_vms()?.into_iter().filter(|v| v.host.as_deref() == Some(name)) {
            if vm.status.state != oxvirt_model::VmState::Running {
                continue;
            }
            let spec = oxvirt_model::VmSpec { host: None, ..vm.spec.clone() };
            let (to, _) = self.place_vm(&spec)?.ok_or_else(|| ControlError::Conflict("not in a cluster".into()))?;
            let req = oxvirt_model::MigrateRequest {
                to,
                downtime_ms: 100,
                bandwidth_mibs: 0,
                auto_converge: true,
                postcopy: false,
            };
            tasks.push(self.migrate_vm(&vm.spec.name, req)?);
        }
        Ok(tasks)
    }

    /// Takes a host out of the cluster's records; refused while VMs are on it.
    pub fn leave_cluster(&self, name: &str) -> Result<(), ControlError> {
        let on: Vec<String> =
            self.list_vms()?.into_iter().filter(|v| v.host.as_deref() == Some(name)).map(|v| v.spec.name).collect();
        if !on.is_empty() {
            return Err(ControlError::Conflict(format!(
                "host {name} still has VM(s) {}: move or delete them first",
                on.join(", ")
            )));
        }
        let key = format!("hosts/{name}");
        if self.inner.store.get(&key)?.is_none() {
            return Err(ControlError::NotFound { kind: "host", name: name.into() });
        }
        self.inner.store.delete(&key, Expect::Any)?;
        Ok(())
    }
}
