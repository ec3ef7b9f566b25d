//! VM records: create, change, delete, read. Validation against the host happens here; the
//! rules a spec follows on its own are in the model.

pub(crate) mod confine;
mod console;
pub(crate) mod disks;
pub(crate) mod lifecycle;
mod reconcile;

use crate::cluster::placement::PLACEMENT_COUNTER;
use crate::{now_millis, ControlError};
use oxvirt_model::{ByteSize, DesiredState, Event, ValidationError, Vm, VmSpec, VmState, VmStatus, VmUpdate};
use oxvirt_store::{Expect, Record, StoreError, StoreExt};
use std::path::Path;

crate::service! {
    /// VM records and their lifecycle: create, change, delete, start/stop actions and the per-guest event watcher, re-adoption after a restart, consoles, disk attach and detach.
    Vms, vms, state = vms
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// Every VM record is in this oxvirtd's JSON form, so a list may send records as stored
    /// (set at start once older records are rewritten; on a store this daemon alone writes).
    pub records_canonical: std::sync::atomic::AtomicBool,
}

impl Vms {
    /// The host's rules: files exist, the VM fits the host.
    fn check_against_host(&self, spec: &VmSpec) -> Result<(), ControlError> {
        let host = &self.ctl.inner.host;
        if spec.cpus > host.cpus {
            return Err(ControlError::invalid("cpus", format!("must be at most the host's {} CPUs", host.cpus)));
        }
        if host.memory_bytes > 0 && spec.memory.0 > host.memory_bytes {
            return Err(ControlError::invalid(
                "memory",
                format!("must be at most the host's memory ({})", ByteSize(host.memory_bytes)),
            ));
        }
        let mut files: Vec<(String, &str)> = Vec::new();
        if let Some(k) = &spec.kernel {
            files.push(("kernel.kernel".into(), &k.kernel));
            if let Some(i) = &k.initrd {
                files.push(("kernel.initrd".into(), i));
            }
        }
        for (i, d) in spec.disks.iter().enumerate() {
            if d.volume.is_none() {
                files.push((format!("disks[{i}].path"), &d.path));
            }
        }
        for (field, path) in files {
            match std::fs::metadata(Path::new(path)) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(ControlError::invalid(field, format!("{path} is not a regular file"))),
                Err(_) => return Err(ControlError::invalid(field, format!("file {path} does not exist"))),
            }
        }
        Ok(())
    }

    /// Creates a VM record (stopped). Nothing is changed when any rule fails.
    /// `caller` needs the right to use everything the spec names (see `references.rs`).
    pub fn create_vm(&self, caller: &str, spec: VmSpec) -> Result<Vm, ControlError> {
        self.create(caller, spec, false)
    }

    /// Creates a VM its caller starts at once: one made from a template takes a VM restored
    /// from it in its warm pool, when one is ready (its start then only resumes it).
    pub fn create_vm_to_start(&self, caller: &str, spec: VmSpec) -> Result<Vm, ControlError> {
        self.create(caller, spec, true)
    }

    fn create(&self, caller: &str, mut spec: VmSpec, to_start: bool) -> Result<Vm, ControlError> {
        spec.normalize();
        // A VM made from a template has its shape (its kernel is the template's, not a host
        // path the caller names).
        let template = self.ctl.templates().claim_for(caller, &mut spec)?;
        spec.validate()?;
        let kernel = if template.is_some() { spec.kernel.take() } else { None };
        self.ctl.access().check_references(caller, None, &mut spec)?;
        if kernel.is_some() {
            spec.kernel = kernel;
        }
        self.check_against_host(&spec)?;
        // (A VM of that name is found by the write, whose first expectation is that its key is
        // absent: one read of the store fewer per create.)
        let warm = match (&spec.template, to_start) {
            (Some(t), true) => self.ctl.templates().take_warm(t),
            _ => None,
        };
        let id = warm.as_ref().map(|m| m.id.clone()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let uid = warm.as_ref().and_then(|m| m.uid);
        let written = self.write_new(caller, spec, id, uid, template);
        match written {
            Ok(vm) => {
                if let Some(m) = warm {
                    self.ctl.templates().hold_for_start(m);
                }
                let now = vm.created_at;
                self.ctl.inner.emit(Event::VmLifecycle {
                    vm: vm.spec.name.clone(),
                    action: "created".into(),
                    time: now,
                });
                Ok(vm)
            }
            Err(e) => {
                if let Some(m) = warm {
                    self.ctl.templates().give_back(m);
                }
                Err(e)
            }
        }
    }

    /// Writes a new VM's record (its NICs and disks given their ids, placed, within its quota).
    /// `template`: the claim on its template's record (see `claim_for`), made again for
    /// `caller` when another create from that template wrote the record first.
    fn write_new(
        &self,
        caller: &str,
        mut spec: VmSpec,
        id: String,
        uid: Option<u32>,
        mut template: Option<oxvirt_store::Op>,
    ) -> Result<Vm, ControlError> {
        self.ctl.ipam().prepare_nics(&id, &spec.name.clone(), &mut spec, None)?;
        assign_disk_ids(&mut spec);
        self.ctl.projects().check_quota(&spec)?;
        // In a cluster, placements are serialized: each one's transaction expects the placement
        // counter it read, so two hosts placing at once never both spend the same room (the
        // loser places again, seeing the winner's VM).
        let mut tries = 0;
        let vm = loop {
            let counter = self.ctl.hosts().placement_counter()?;
            let placed = self.ctl.hosts().place_vm(&spec)?;
            let now = now_millis();
            let vm = Vm {
                id: id.clone(),
                uid,
                host: placed.as_ref().map(|p| p.0.clone()),
                host_reason: placed.as_ref().map(|p| p.1.clone()),
                spec: spec.clone(),
                desired: DesiredState::Stopped,
                status: VmStatus {
                    state: VmState::Stopped,
                    changed_at: now,
                    reason: "created".into(),
                    ..Default::default()
                },
                created_at: now,
            };
            // (A VM of that name fails the write: its key must be absent.)
            let extra = counter.into_iter().chain(template.clone()).collect();
            match self.ctl.storage().write_vm_with(&vm, Expect::Absent, None, extra) {
                Ok(()) => break vm,
                Err(ControlError::Store(StoreError::Conflict { key, .. })) if key.starts_with("vms/") => {
                    return Err(exists(&vm.spec.name))
                }
                Err(ControlError::Store(StoreError::Conflict { key, .. }))
                    if key.ends_with(PLACEMENT_COUNTER) && tries < 10 =>
                {
                    tries += 1;
                }
                // Creates from one template each rewrite its record: one that lost to another
                // claims it again (a removal meanwhile makes that fail).
                Err(ControlError::Store(StoreError::Conflict { key, .. }))
                    if key.starts_with(<oxvirt_model::Template as oxvirt_store::Record>::PREFIX) && tries < 20 =>
                {
                    tries += 1;
                    template = self.ctl.templates().claim_for(caller, &mut spec)?;
                }
                Err(ControlError::Store(StoreError::Conflict { key, .. })) => {
                    return Err(ControlError::Busy(format!("{key} changed meanwhile; try again")))
                }
                Err(e) => return Err(e),
            }
        };
        Ok(vm)
    }

    /// Rewrites VM records an older oxvirtd wrote (fields it did not know are added with their
    /// defaults) in this one's form, then lets lists send records as stored. Only on a store no
    /// other daemon writes (SQLite: one daemon per data dir); in a cluster, hosts of another
    /// version may write at any time, and lists decode every record.
    pub fn canonicalize_records(&self) {
        if self.ctl.hosts().host_name().is_some() {
            return;
        }
        let entries = match self.ctl.inner.store.list(Vm::PREFIX) {
            Ok(e) => e,
            Err(e) => return tracing::warn!("VM records: {e}"),
        };
        for e in entries {
            let canonical = match serde_json::from_slice::<Vm>(&e.value) {
                Ok(vm) => oxvirt_store::encode(&vm),
                Err(err) => return tracing::warn!("VM record {}: {err}", e.key),
            };
            if canonical != e.value {
                if let Err(err) = self.ctl.inner.store.put(&e.key, canonical, Expect::Revision(e.revision)) {
                    return tracing::warn!("VM record {}: {err}", e.key);
                }
            }
        }
        self.state().records_canonical.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Every VM as a JSON array, the records as stored (no decoding, no encoding), when they
    /// are known to be in this oxvirtd's form; `None` when they must be decoded.
    pub fn list_vms_json(&self) -> Result<Option<Vec<u8>>, ControlError> {
        if !self.state().records_canonical.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        let entries = self.ctl.inner.store.list(Vm::PREFIX)?;
        let mut out = Vec::with_capacity(entries.iter().map(|e| e.value.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.value);
        }
        out.push(b']');
        Ok(Some(out))
    }

    pub fn get_vm(&self, name: &str) -> Result<Vm, ControlError> {
        self.ctl.inner.store.get_record::<Vm>(name)?.map(|(v, _)| v).ok_or_else(|| ControlError::vm_not_found(name))
    }

    pub fn list_vms(&self) -> Result<Vec<Vm>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<Vm>()?.into_iter().map(|(v, _)| v).collect())
    }

    /// Changes a stopped VM's definition.
    pub fn update_vm(&self, caller: &str, name: &str, update: &VmUpdate) -> Result<Vm, ControlError> {
        let slot = self.ctl.inner.slot(name);
        let _op = slot.op.try_lock().map_err(|_| busy(name))?;
        let (vm, rev) = self.ctl.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        if vm.status.state != VmState::Stopped {
            return Err(ControlError::Conflict(format!(
                "VM {name} is {}: stop it before changing its definition",
                vm.status.state.as_str()
            )));
        }
        let mut spec = update.apply(&vm.spec);
        spec.normalize();
        spec.validate()?;
        self.ctl.access().check_references(caller, Some(&vm.spec), &mut spec)?;
        self.check_against_host(&spec)?;
        self.ctl.ipam().prepare_nics(&vm.id, name, &mut spec, Some(&vm.spec))?;
        assign_disk_ids(&mut spec);
        self.ctl.storage().local_volumes_host(&spec, vm.host.as_deref())?;
        self.ctl.projects().check_quota(&spec)?;
        let old = vm.spec.clone();
        let new = Vm { spec, ..vm };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&old)).map_err(|e| match e {
            ControlError::Store(StoreError::Conflict { .. }) => busy(name),
            e => e,
        })?;
        Ok(new)
    }

    /// Deletes a stopped VM: its record and its runtime files. Its disks are the user's and stay.
    pub fn delete_vm(&self, name: &str) -> Result<(), ControlError> {
        let slot = self.ctl.inner.slot(name);
        let _op = slot.op.try_lock().map_err(|_| busy(name))?;
        let (vm, rev) = self.ctl.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        if vm.status.state != VmState::Stopped {
            return Err(ControlError::Conflict(format!(
                "VM {name} is {}: stop it before deleting it",
                vm.status.state.as_str()
            )));
        }
        // The VM's volumes are let go in the same transaction; they stay, with their data.
        if self.ctl.inner.store.get_record::<oxvirt_model::HaResource>(name)?.is_some() {
            return Err(ha_resource(name));
        }
        let mut ops = self.ctl.storage().volume_claims(name, Some(&vm.spec), None)?;
        // (And none made meanwhile: the delete expects its HA record absent.)
        ops.push(oxvirt_store::Op::Delete {
            key: <oxvirt_model::HaResource as oxvirt_store::Record>::key_of(name),
            expect: Expect::Absent,
        });
        ops.extend(self.ctl.ipam().lease_ops(name, Some(&vm.spec), None));
        ops.extend(self.ctl.ipam().mac_ops(name, Some(&vm.spec), None));
        ops.push(oxvirt_store::Op::Delete {
            key: <Vm as oxvirt_store::Record>::key_of(name),
            expect: Expect::Revision(rev),
        });
        self.ctl.inner.store.txn(ops).map_err(|e| match e {
            StoreError::Conflict { key, .. }
                if key.starts_with(<oxvirt_model::HaResource as oxvirt_store::Record>::PREFIX) =>
            {
                ha_resource(name)
            }
            StoreError::Conflict { .. } => busy(name),
            e => e.into(),
        })?;
        for n in crate::Ipam::networks_touched(Some(&vm.spec), None) {
            self.ctl.networks().sync_dhcp(&n);
        }
        let _ = std::fs::remove_dir_all(self.ctl.inner.paths(&vm.id).dir());
        // The slot (its lock) stays: a task still waiting on it must not race a new VM of this name.
        self.ctl.inner.emit(Event::VmLifecycle { vm: name.to_string(), action: "deleted".into(), time: now_millis() });
        Ok(())
    }
}

fn ha_resource(name: &str) -> ControlError {
    ControlError::InUse(format!("VM {name} is an HA resource: `oxvirt ha remove {name}` first"))
}

fn exists(name: &str) -> ControlError {
    ControlError::Exists(ValidationError::new("name", format!("a VM named {name:?} already exists")))
}

/// Gives every disk without an id the first free `diskN`.
pub(crate) fn assign_disk_ids(spec: &mut VmSpec) {
    for i in 0..spec.disks.len() {
        if spec.disks[i].id.is_empty() {
            let id =
                (0..).map(|n| format!("disk{n}")).find(|c| !spec.disks.iter().any(|d| &d.id == c)).unwrap_or_default();
            spec.disks[i].id = id;
        }
    }
}

pub(crate) fn busy(name: &str) -> ControlError {
    ControlError::Busy(format!("another operation is in progress on VM {name}; try again when it ends"))
}
