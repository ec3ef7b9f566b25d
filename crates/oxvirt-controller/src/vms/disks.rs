//! Attaching and detaching a VM's disks, hot-plugged when it runs.

use crate::vms::{assign_disk_ids, busy};
use crate::ControlError;
use oxvirt_model::{DiskSpec, MachineType, Vm};
use oxvirt_store::{Expect, StoreExt};
use std::time::Duration;

/// How long the guest gets to release an unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

impl crate::Vms {
    /// Adds a disk to a VM; a running VM gets it at once (hot-plug).
    pub async fn attach_disk(&self, caller: &str, vm: &str, disk: DiskSpec) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let (current, rev) =
            self.ctl.inner.store.get_record::<Vm>(vm)?.ok_or_else(|| ControlError::vm_not_found(vm))?;
        let running = current.status.state.has_process();
        if running && current.spec.machine == MachineType::Microvm {
            return Err(ControlError::Conflict("a running microvm VM cannot hot-plug disks: stop it first".into()));
        }
        let mut spec = current.spec.clone();
        spec.disks.push(disk);
        assign_disk_ids(&mut spec);
        spec.validate()?;
        self.ctl.access().check_references(caller, Some(&current.spec), &mut spec)?;
        self.ctl.storage().local_volumes_host(&spec, current.host.as_deref())?;
        self.ctl.projects().check_quota(&spec)?;
        let index = spec.disks.len() - 1;
        let new = Vm { spec, ..current.clone() };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&current.spec))?;
        if running {
            let plugged = async {
                self.ctl.nbd().prepare_storage(&new.id, &new.spec).await?;
                let resolved = self.ctl.storage().resolve_disks(&new.id, &new.spec)?;
                self.instance(vm)?.hotplug_disk(&resolved.disks[index]).await?;
                Ok::<(), ControlError>(())
            }
            .await;
            if let Err(e) = plugged {
                // Undo the definition (only it: the status may have moved meanwhile); the volume
                // is let go in the same transaction.
                if let Some((now, rev2)) = self.ctl.inner.store.get_record::<Vm>(vm)? {
                    let undone = Vm { spec: current.spec.clone(), ..now.clone() };
                    self.ctl.storage().write_vm_with_claims(&undone, Expect::Revision(rev2), Some(&now.spec))?;
                }
                return Err(e);
            }
        }
        self.get_vm(vm)
    }

    /// Removes a disk from a VM; a running VM's guest is asked to release it first.
    pub async fn detach_disk(&self, vm: &str, disk_id: &str) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let current = self.get_vm(vm)?;
        let index = disk_index(&current, disk_id)?;
        if current.status.state.has_process() {
            if current.spec.machine == MachineType::Microvm {
                return Err(ControlError::Conflict("a running microvm VM cannot unplug disks: stop it first".into()));
            }
            self.instance(vm)?.unplug_disk(disk_id, UNPLUG_TIMEOUT).await?;
        }
        let (now, rev) = self.ctl.inner.store.get_record::<Vm>(vm)?.ok_or_else(|| ControlError::vm_not_found(vm))?;
        let mut spec = now.spec.clone();
        spec.disks.remove(index);
        let new = Vm { spec, ..now.clone() };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&now.spec))?;
        Ok(new)
    }
}

/// Where the disk with this id is in the VM's list.
pub(crate) fn disk_index(vm: &Vm, disk_id: &str) -> Result<usize, ControlError> {
    vm.spec
        .disks
        .iter()
        .position(|d| d.id == disk_id)
        .ok_or_else(|| ControlError::NotFound { kind: "disk", name: format!("{}/{disk_id}", vm.spec.name) })
}
