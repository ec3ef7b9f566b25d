//! High availability: the VMs the cluster keeps at a state (HA resources, `ha/resources/<vm>`)
//! and the host groups they prefer (`ha/groups/<name>`).
//!
//! Records here (`mod.rs`); keeping each resource at its state on its own host, restarts
//! counted against `max_restarts` (`keep.rs`); fencing a host cut from the cluster, with the
//! watchdog (`fence.rs`); the leader recovering a lost host's VMs on others (`recover.rs`).
//! Every host keeps its own VMs: a resource is acted on by the host its
//! VM belongs to, as every other VM is.

mod fence;
mod keep;
mod moves;
mod recover;
mod run_lease;

/// What HA keeps between rounds (reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// One keeper round at a time (the reconcile round's and one an exit asked for).
    pub round: tokio::sync::Mutex<()>,
    pub fence: fence::FenceState,
    pub recover: recover::RecoverState,
}

use crate::{now_millis, ControlError};
use oxvirt_model::{HaGroup, HaGroupSpec, HaResource, HaResourceSpec, HaState, HaStatus, ValidationError, VmAction};
use oxvirt_store::{Expect, StoreError, StoreExt};

crate::service! {
    /// High availability: HA resources and groups, and keeping each resource at its state.
    Ha, ha, state = ha
}

impl Ha {
    /// Puts a VM under HA. Its VM and group must exist; the state is applied from now on.
    pub fn add_resource(&self, spec: HaResourceSpec) -> Result<HaResource, ControlError> {
        spec.validate()?;
        self.check_refs(&spec)?;
        let mut r = HaResource { spec, created_at: now_millis(), status: HaStatus::default() };
        r.status.problem = self.not_recoverable(&r.spec.vm).unwrap_or_default();
        match self.ctl.inner.store.put_record(&r.spec.vm, &r, Expect::Absent) {
            Ok(_) => Ok(r),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "vm",
                format!("VM {} is an HA resource already (`oxvirt ha set` changes it)", r.spec.vm),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes an HA resource's settings (its VM stays the same); what happened to it so far is kept.
    pub fn set_resource(&self, vm: &str, spec: HaResourceSpec) -> Result<HaResource, ControlError> {
        spec.validate()?;
        if spec.vm != vm {
            return Err(ControlError::invalid("vm", format!("is {vm} in the path and {} in the body", spec.vm)));
        }
        self.check_refs(&spec)?;
        let (mut r, rev) = self.resource_record(vm)?;
        if r.spec.state != spec.state {
            // A new state starts a new count of tries.
            r.status.restarts = 0;
            r.status.relocations = 0;
        }
        r.spec = spec;
        self.write(&r, rev)?;
        Ok(r)
    }

    pub fn get_resource(&self, vm: &str) -> Result<HaResource, ControlError> {
        Ok(self.with_run_lease(self.resource_record(vm)?.0))
    }

    pub fn list_resources(&self) -> Result<Vec<HaResource>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list_records::<HaResource>()?
            .into_iter()
            .map(|(r, _)| self.with_run_lease(r))
            .collect())
    }

    /// A resource as shown: with the host holding its run lease (read, never stored).
    fn with_run_lease(&self, mut r: HaResource) -> HaResource {
        r.status.run_lease = self.run_lease_holder(&r.spec.vm);
        r
    }

    /// Takes a VM out of HA; the VM itself stays as it is.
    pub fn remove_resource(&self, vm: &str) -> Result<(), ControlError> {
        let (_, rev) = self.resource_record(vm)?;
        let ops = vec![
            oxvirt_store::Op::Delete {
                key: <HaResource as oxvirt_store::Record>::key_of(vm),
                expect: Expect::Revision(rev),
            },
            run_lease::give_up(vm),
        ];
        self.ctl.inner.store.txn(ops).map_err(|e| match e {
            StoreError::Conflict { .. } => ControlError::Busy(format!("HA resource {vm} changed meanwhile; try again")),
            e => e.into(),
        })?;
        Ok(())
    }

    pub fn add_group(&self, spec: HaGroupSpec) -> Result<HaGroup, ControlError> {
        spec.validate()?;
        let g = HaGroup { spec, created_at: now_millis() };
        match self.ctl.inner.store.put_record(&g.spec.name, &g, Expect::Absent) {
            Ok(_) => Ok(g),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("an HA group named {:?} already exists", g.spec.name),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn get_group(&self, name: &str) -> Result<HaGroup, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<HaGroup>(name)?
            .map(|(g, _)| g)
            .ok_or_else(|| ControlError::NotFound { kind: "HA group", name: name.into() })
    }

    pub fn list_groups(&self) -> Result<Vec<HaGroup>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<HaGroup>()?.into_iter().map(|(g, _)| g).collect())
    }

    /// Deletes an HA group no resource names.
    pub fn remove_group(&self, name: &str) -> Result<(), ControlError> {
        self.get_group(name)?;
        let users: Vec<String> = self
            .list_resources()?
            .into_iter()
            .filter(|r| r.spec.group.as_deref() == Some(name))
            .map(|r| r.spec.vm)
            .collect();
        if !users.is_empty() {
            return Err(ControlError::InUse(format!(
                "HA group {name} is the group of HA resource(s) {}: change or remove them first",
                users.join(", ")
            )));
        }
        self.ctl.inner.store.delete_record::<HaGroup>(name, Expect::Any)?;
        Ok(())
    }

    /// A user's action on a VM changes its HA state as an operator means it (as Proxmox VE's
    /// `qm stop` of an HA VM asks HA to stop it): stopping a started one makes it `stopped`,
    /// starting a stopped one makes it `started`; the keeper would undo the action otherwise.
    pub(crate) fn follow_user_action(&self, vm: &str, action: VmAction) -> Result<(), ControlError> {
        let Some((mut r, rev)) = self.ctl.inner.store.get_record::<HaResource>(vm)? else { return Ok(()) };
        let state = match (action, r.spec.state) {
            (VmAction::Stop | VmAction::Kill, HaState::Started) => HaState::Stopped,
            (VmAction::Start, HaState::Stopped) => HaState::Started,
            _ => return Ok(()),
        };
        tracing::info!(vm, state = state.as_str(), "HA state follows the user's {}", action.as_str());
        r.spec.state = state;
        r.status.restarts = 0;
        r.status.relocations = 0;
        self.write(&r, rev)
    }

    fn resource_record(&self, vm: &str) -> Result<(HaResource, u64), ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<HaResource>(vm)?
            .ok_or_else(|| ControlError::NotFound { kind: "HA resource", name: vm.into() })
    }

    fn write(&self, r: &HaResource, rev: u64) -> Result<(), ControlError> {
        self.ctl.inner.store.put_record(&r.spec.vm, r, Expect::Revision(rev)).map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ControlError::Busy(format!("HA resource {} changed meanwhile; try again", r.spec.vm))
            }
            e => e.into(),
        })?;
        Ok(())
    }

    /// The VM and the group a resource names exist.
    fn check_refs(&self, spec: &HaResourceSpec) -> Result<(), ControlError> {
        if self.ctl.inner.store.get_record::<oxvirt_model::Vm>(&spec.vm)?.is_none() {
            return Err(ControlError::invalid("vm", format!("there is no VM named {}", spec.vm)));
        }
        if let Some(g) = &spec.group {
            if self.ctl.inner.store.get_record::<HaGroup>(g)?.is_none() {
                return Err(ControlError::invalid("group", format!("there is no HA group named {g}")));
            }
        }
        Ok(())
    }

    /// Why VM `vm` could not run on another host, if it could not: a disk on one host only.
    fn not_recoverable(&self, vm: &str) -> Option<String> {
        let vm = self.ctl.vms().get_vm(vm).ok()?;
        let disks = self.ctl.storage().local_volumes_host(&oxvirt_model::VmSpec { host: None, ..vm.spec }, None);
        match disks {
            Ok(Some(host)) => Some(format!(
                "not recoverable on another host: its disks are on host {host}'s local storage (HA needs shared storage)"
            )),
            _ => None,
        }
    }
}

/// What `/metrics` shows of HA on this host.
#[derive(Debug, Clone, Default)]
pub struct HaFigures {
    /// HA resources by their state (`started`, `stopped`, `disabled`), cluster-wide.
    pub resources: Vec<(&'static str, u64)>,
    /// HA resources with a problem (left off, not recoverable).
    pub with_problems: u64,
    /// This host fenced itself and is still cut from the cluster.
    pub fenced: bool,
    /// Hosts the leader counts as lost now (0 on other hosts).
    pub hosts_lost: u64,
    /// VMs this host recovered from lost hosts as leader, since it started.
    pub recoveries: u64,
}

impl Ha {
    pub fn figures(&self) -> HaFigures {
        let all = self.list_resources().unwrap_or_default();
        let count = |s: HaState| all.iter().filter(|r| r.spec.state == s).count() as u64;
        HaFigures {
            resources: [HaState::Started, HaState::Stopped, HaState::Disabled].map(|s| (s.as_str(), count(s))).to_vec(),
            with_problems: all.iter().filter(|r| !r.status.problem.is_empty()).count() as u64,
            fenced: self.fenced(),
            hosts_lost: crate::lock(&self.state().recover.lost).len() as u64,
            recoveries: self.state().recover.recoveries.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
