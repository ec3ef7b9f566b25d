//! Adding, removing and changing a VM's NICs; a running q35 VM gets them hot-plugged, and a
//! NIC's security groups and bandwidth limits change live.

use super::{links, shaping};
use crate::vms::busy;
use crate::ControlError;
use oxvirt_hypervisor::qemu::cmdline::tap_name;
use oxvirt_model::{MachineType, NicSpec, NicUpdate, Vm};
use oxvirt_store::{Expect, StoreExt};
use std::time::Duration;

/// How long the guest gets to release an unplugged NIC.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn nic_index(vm: &Vm, nic_id: &str) -> Result<usize, ControlError> {
    vm.spec
        .nics
        .iter()
        .position(|n| n.id == nic_id)
        .ok_or_else(|| ControlError::NotFound { kind: "NIC", name: format!("{}/{nic_id}", vm.spec.name) })
}

impl crate::Networks {
    /// Adds a NIC to a VM; a running VM gets it at once (hot-plug).
    pub async fn attach_nic(&self, caller: &str, vm: &str, nic: NicSpec) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let (current, rev) =
            self.ctl.inner.store.get_record::<Vm>(vm)?.ok_or_else(|| ControlError::vm_not_found(vm))?;
        let running = current.status.state.has_process();
        if running && current.spec.machine == MachineType::Microvm {
            return Err(ControlError::Conflict("a running microvm VM cannot hot-plug NICs: stop it first".into()));
        }
        let mut spec = current.spec.clone();
        spec.nics.push(nic);
        let index = spec.nics.len() - 1;
        self.ctl.access().check_references(caller, Some(&current.spec), &mut spec)?;
        self.ctl.ipam().prepare_nics(&current.id, vm, &mut spec, Some(&current.spec))?;
        let new = Vm { spec, ..current.clone() };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&current.spec))?;
        if running && new.spec.nics[index].has_tap() {
            let plugged = async {
                let (mtu, on_switch) = self.make_nic_tap(&new.id, &new.spec, index, new.uid).await?;
                let mut with_mtu = new.spec.clone();
                with_mtu.nics[index].mtu = Some(mtu);
                with_mtu.nics[index].no_offloads = on_switch;
                self.refresh_firewall().await?;
                self.ctl.vms().instance(vm)?.hotplug_nic(&new.id, &with_mtu, index).await?;
                Ok::<(), ControlError>(())
            }
            .await;
            if let Err(e) = plugged {
                self.remove_nic_tap(&new.id, &new.spec.nics[index]);
                if let Some((now, rev2)) = self.ctl.inner.store.get_record::<Vm>(vm)? {
                    let undone = Vm { spec: current.spec.clone(), ..now.clone() };
                    self.ctl.storage().write_vm_with_claims(&undone, Expect::Revision(rev2), Some(&now.spec))?;
                }
                let _ = self.refresh_firewall().await;
                return Err(e);
            }
        } else if running {
            return self.undo_attach(
                vm,
                &current,
                "a running VM hot-plugs only NICs with a host device (bridged or network)",
            );
        }
        self.ctl.vms().get_vm(vm)
    }

    fn undo_attach(&self, vm: &str, before: &Vm, why: &str) -> Result<Vm, ControlError> {
        if let Some((now, rev)) = self.ctl.inner.store.get_record::<Vm>(vm)? {
            let undone = Vm { spec: before.spec.clone(), ..now.clone() };
            self.ctl.storage().write_vm_with_claims(&undone, Expect::Revision(rev), Some(&now.spec))?;
        }
        Err(ControlError::Conflict(why.into()))
    }

    /// Removes a NIC; a running VM's guest is asked to release it first.
    pub async fn detach_nic(&self, vm: &str, nic_id: &str) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let current = self.ctl.vms().get_vm(vm)?;
        let index = nic_index(&current, nic_id)?;
        let nic = current.spec.nics[index].clone();
        if current.status.state.has_process() {
            if current.spec.machine == MachineType::Microvm {
                return Err(ControlError::Conflict("a running microvm VM cannot unplug NICs: stop it first".into()));
            }
            self.ctl.vms().instance(vm)?.unplug_nic(&nic, UNPLUG_TIMEOUT).await?;
            self.remove_nic_tap(&current.id, &nic);
        }
        let (now, rev) = self.ctl.inner.store.get_record::<Vm>(vm)?.ok_or_else(|| ControlError::vm_not_found(vm))?;
        let mut spec = now.spec.clone();
        spec.nics.retain(|n| n.id != nic_id);
        let new = Vm { spec, ..now.clone() };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&now.spec))?;
        self.refresh_firewall().await?;
        Ok(new)
    }

    /// Changes a NIC's security groups or bandwidth limits; live when the VM runs.
    pub async fn update_nic(
        &self,
        caller: &str,
        vm: &str,
        nic_id: &str,
        update: NicUpdate,
    ) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let (current, rev) =
            self.ctl.inner.store.get_record::<Vm>(vm)?.ok_or_else(|| ControlError::vm_not_found(vm))?;
        let index = nic_index(&current, nic_id)?;
        let mut spec = current.spec.clone();
        if let Some(g) = update.security_groups {
            spec.nics[index].security_groups = g;
        }
        if let Some(q) = update.qos {
            spec.nics[index].qos = q;
        }
        self.ctl.access().check_references(caller, Some(&current.spec), &mut spec)?;
        self.ctl.ipam().prepare_nics(&current.id, vm, &mut spec, Some(&current.spec))?;
        let new = Vm { spec, ..current.clone() };
        self.ctl.storage().write_vm_with_claims(&new, Expect::Revision(rev), Some(&current.spec))?;
        let nic = &new.spec.nics[index];
        let tap = tap_name(&new.id, nic.slot());
        if links::exists(&tap) {
            let mtu = links::mtu_of(&tap).unwrap_or(1500);
            if !nic.qos.is_unlimited() {
                self.record_ifb(&tap, &new.id)?;
            }
            shaping::apply(&tap, &nic.qos, mtu).await?;
            self.refresh_firewall().await?;
        }
        Ok(new)
    }
}
