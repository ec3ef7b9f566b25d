//! Snapshots: internal qcow2 snapshots of a volume, and of all of a VM's volumes at once.
//!
//! With the VM running, snapshots are taken through QMP — for a VM, in one `transaction`, so all
//! its disks are caught at the same instant (crash-consistent, disk only). Reverting rewrites the
//! disks and so needs the VM stopped.

use crate::vms::busy;
use crate::{now_millis, ControlError};
use oxvirt_model::{parse_volume_ref, validate_name, DiskFormat, Volume, VolumeSnapshot};
use oxvirt_storage::qemu_img::{self, SnapshotOp};
use oxvirt_store::StoreExt;

crate::service! {
    /// A VM's disk snapshots and live I/O limits.
    Snapshots, snapshots
}

impl Snapshots {
    fn snapshot_target(&self, pool: &str, name: &str) -> Result<(Volume, std::path::PathBuf), ControlError> {
        let (vol, _) = self.ctl.storage().volume_rec(pool, name)?;
        self.ctl.storage().volume_here(&vol)?;
        if vol.format != DiskFormat::Qcow2 {
            return Err(ControlError::invalid(
                "volume",
                format!("{} is raw: only qcow2 volumes have snapshots", vol.reference()),
            ));
        }
        let file = self.ctl.storage().volume_file(&self.ctl.storage().pool_rec(pool)?, name, vol.format)?;
        Ok((vol, file))
    }

    fn record_snapshots(&self, vol: &Volume, f: impl Fn(&mut Vec<VolumeSnapshot>)) -> Result<Volume, ControlError> {
        let v = self.ctl.inner.store.update_record::<Volume>(&vol.reference(), |v| f(&mut v.snapshots))?;
        v.ok_or_else(|| ControlError::NotFound { kind: "volume", name: vol.reference() })
    }

    /// The VM lock to hold while touching a volume a VM uses (none when it is free).
    fn lock_user(&self, vol: &Volume) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, ControlError> {
        match &vol.attached_to {
            Some(vm) => self.ctl.inner.slot(vm).op.clone().try_lock_owned().map(Some).map_err(|_| busy(vm)),
            None => Ok(None),
        }
    }

    pub async fn snapshot_volume(&self, pool: &str, name: &str, snap: &str) -> Result<Volume, ControlError> {
        validate_name("name", snap)?;
        let (vol, file) = self.snapshot_target(pool, name)?;
        if vol.snapshots.iter().any(|s| s.name == snap) {
            return Err(ControlError::Exists(oxvirt_model::ValidationError::new(
                "name",
                format!("snapshot {snap} exists already"),
            )));
        }
        let _guard = self.lock_user(&vol)?;
        self.take_snapshot(&vol, &file, snap).await?;
        let s = VolumeSnapshot { name: snap.to_string(), created_at: now_millis() };
        self.record_snapshots(&vol, |list| list.push(s.clone()))
    }

    pub async fn revert_volume(&self, pool: &str, name: &str, snap: &str) -> Result<Volume, ControlError> {
        let (vol, file) = self.snapshot_target(pool, name)?;
        if !vol.snapshots.iter().any(|s| s.name == snap) {
            return Err(ControlError::NotFound { kind: "snapshot", name: format!("{}@{snap}", vol.reference()) });
        }
        let _guard = self.lock_user(&vol)?;
        if self.ctl.storage().running_disk(&vol)?.is_some() {
            return Err(ControlError::Conflict(format!(
                "volume {} is in use by a running VM: stop it to revert",
                vol.reference()
            )));
        }
        self.apply_snapshot(&vol, &file, snap).await?;
        Ok(vol)
    }

    pub async fn delete_volume_snapshot(&self, pool: &str, name: &str, snap: &str) -> Result<Volume, ControlError> {
        let (vol, file) = self.snapshot_target(pool, name)?;
        if !vol.snapshots.iter().any(|s| s.name == snap) {
            return Err(ControlError::NotFound { kind: "snapshot", name: format!("{}@{snap}", vol.reference()) });
        }
        let _guard = self.lock_user(&vol)?;
        match self.ctl.storage().running_disk(&vol)? {
            Some((instance, id)) => {
                instance.disks().delete_snapshot(&id, snap).await?;
            }
            None => qemu_img::snapshot(SnapshotOp::Delete, &file, snap).await?,
        }
        self.record_snapshots(&vol, |list| list.retain(|s| s.name != snap))
    }

    /// Takes a snapshot of one volume: through the QEMU that has it open, the export daemon of its
    /// nbd pool, or qemu-img when nobody has it open.
    async fn take_snapshot(&self, vol: &Volume, file: &std::path::Path, snap: &str) -> Result<(), ControlError> {
        let pool = self.ctl.storage().pool_rec(&vol.pool)?;
        if pool.spec.kind == oxvirt_model::PoolKind::Nbd {
            self.ctl.nbd().export_daemons(&pool).await?[0].snapshot(&vol.name, snap).await?;
            return Ok(());
        }
        match self.ctl.storage().running_disk(vol)? {
            Some((instance, id)) => {
                instance.disks().snapshot(&id, snap).await?;
            }
            None => qemu_img::snapshot(SnapshotOp::Create, file, snap).await?,
        }
        Ok(())
    }

    /// Deletes a snapshot of a volume no QEMU has open (nbd: through its export daemon).
    async fn drop_snapshot(&self, vol: &Volume, snap: &str) -> Result<(), ControlError> {
        let pool = self.ctl.storage().pool_rec(&vol.pool)?;
        if pool.spec.kind == oxvirt_model::PoolKind::Nbd {
            self.ctl.nbd().export_daemons(&pool).await?[0].delete_snapshot(&vol.name, snap).await?;
        } else {
            let file = self.ctl.storage().volume_file(&pool, &vol.name, vol.format)?;
            qemu_img::snapshot(SnapshotOp::Delete, &file, snap).await?;
        }
        Ok(())
    }

    /// Reverts one volume nobody runs on (an nbd pool's daemons let go of it meanwhile).
    async fn apply_snapshot(&self, vol: &Volume, file: &std::path::Path, snap: &str) -> Result<(), ControlError> {
        let pool = self.ctl.storage().pool_rec(&vol.pool)?;
        let apply = async { Ok(qemu_img::snapshot(SnapshotOp::Apply, file, snap).await?) };
        if pool.spec.kind == oxvirt_model::PoolKind::Nbd {
            self.ctl.nbd().with_unexported(&pool, vol, "reverting", apply).await
        } else {
            apply.await
        }
    }

    /// The volumes of a VM, in disk order; every disk must be a qcow2 volume.
    fn vm_volumes(&self, vm: &str) -> Result<Vec<(Volume, String)>, ControlError> {
        let v = self.ctl.vms().get_vm(vm)?;
        if v.spec.disks.is_empty() {
            return Err(ControlError::Conflict(format!("VM {vm} has no disks")));
        }
        let mut out = Vec::new();
        for (i, d) in v.spec.disks.iter().enumerate() {
            let Some(r) = &d.volume else {
                return Err(ControlError::invalid(
                    format!("disks[{i}]"),
                    "is a plain file, not a volume: only volumes have snapshots",
                ));
            };
            let (pool, name) = parse_volume_ref(&format!("disks[{i}].volume"), r)?;
            let (vol, _) = self.snapshot_target(&pool, &name)?;
            out.push((vol, oxvirt_hypervisor::qemu::cmdline::disk_id(d, i)));
        }
        Ok(out)
    }

    /// Snapshots all of a VM's disks at one instant.
    pub async fn snapshot_vm(&self, vm: &str, snap: &str) -> Result<Vec<Volume>, ControlError> {
        validate_name("name", snap)?;
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let vols = self.vm_volumes(vm)?;
        if let Some((v, _)) = vols.iter().find(|(v, _)| v.snapshots.iter().any(|s| s.name == snap)) {
            return Err(ControlError::Exists(oxvirt_model::ValidationError::new(
                "name",
                format!("volume {} has a snapshot {snap} already", v.reference()),
            )));
        }
        let running = self.ctl.vms().get_vm(vm)?.status.state.has_process();
        let mut nbd = Vec::new();
        let mut local = Vec::new();
        for (v, id) in &vols {
            if self.ctl.storage().pool_rec(&v.pool)?.spec.kind == oxvirt_model::PoolKind::Nbd {
                nbd.push(v.clone());
            } else {
                local.push((v.clone(), id.clone()));
            }
        }
        if running {
            let instance = self.ctl.vms().instance(vm)?;
            // Disks served over NBD are snapshotted by their export daemon, outside QEMU's
            // transaction: the vCPUs are paused meanwhile, so all disks show one instant.
            let pause = !nbd.is_empty() && self.ctl.vms().get_vm(vm)?.status.state == oxvirt_model::VmState::Running;
            if pause {
                instance.pause().await?;
            }
            let result = async {
                if !local.is_empty() {
                    let ids: Vec<String> = local.iter().map(|(_, id)| id.clone()).collect();
                    instance.disks().snapshot_all(&ids, snap).await?;
                }
                let mut taken: Vec<&Volume> = Vec::new();
                for v in &nbd {
                    let file =
                        self.ctl.storage().volume_file(&self.ctl.storage().pool_rec(&v.pool)?, &v.name, v.format)?;
                    if let Err(e) = self.take_snapshot(v, &file, snap).await {
                        // All or nothing: take back what this snapshot already made.
                        for (_, id) in &local {
                            let _ = instance.disks().delete_snapshot(id, snap).await;
                        }
                        for t in &taken {
                            let _ = self.drop_snapshot(t, snap).await;
                        }
                        return Err(e);
                    }
                    taken.push(v);
                }
                Ok::<(), ControlError>(())
            }
            .await;
            if pause {
                instance.resume().await?;
            }
            result?;
        } else {
            let mut done: Vec<Volume> = Vec::new();
            for (v, _) in &vols {
                let file = self.ctl.storage().volume_file(&self.ctl.storage().pool_rec(&v.pool)?, &v.name, v.format)?;
                if let Err(e) = self.take_snapshot(v, &file, snap).await {
                    // All or nothing: take back the ones already made.
                    for d in &done {
                        let _ = self.drop_snapshot(d, snap).await;
                    }
                    return Err(e);
                }
                done.push(v.clone());
            }
        }
        let s = VolumeSnapshot { name: snap.to_string(), created_at: now_millis() };
        vols.iter().map(|(v, _)| self.record_snapshots(v, |l| l.push(s.clone()))).collect()
    }

    /// Reverts all of a stopped VM's disks to a snapshot.
    pub async fn revert_vm(&self, vm: &str, snap: &str) -> Result<Vec<Volume>, ControlError> {
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        if self.ctl.vms().get_vm(vm)?.status.state.has_process() {
            return Err(ControlError::Conflict(format!("VM {vm} is running: stop it to revert")));
        }
        let vols = self.vm_volumes(vm)?;
        if let Some((v, _)) = vols.iter().find(|(v, _)| !v.snapshots.iter().any(|s| s.name == snap)) {
            return Err(ControlError::NotFound { kind: "snapshot", name: format!("{}@{snap}", v.reference()) });
        }
        for (v, _) in &vols {
            let file = self.ctl.storage().volume_file(&self.ctl.storage().pool_rec(&v.pool)?, &v.name, v.format)?;
            self.apply_snapshot(v, &file, snap).await?;
        }
        Ok(vols.into_iter().map(|(v, _)| v).collect())
    }

    pub async fn delete_vm_snapshot(&self, vm: &str, snap: &str) -> Result<Vec<Volume>, ControlError> {
        let vols = self.vm_volumes(vm)?;
        let mut out = Vec::new();
        for (v, _) in vols {
            if v.snapshots.iter().any(|s| s.name == snap) {
                out.push(self.delete_volume_snapshot(&v.pool, &v.name, snap).await?);
            }
        }
        if out.is_empty() {
            return Err(ControlError::NotFound { kind: "snapshot", name: format!("{vm}@{snap}") });
        }
        Ok(out)
    }
}

impl Snapshots {
    /// Sets a disk's I/O limits: recorded in the VM's spec, and applied at once when it runs.
    pub async fn set_disk_qos(
        &self,
        vm: &str,
        disk: &str,
        qos: oxvirt_model::DiskQos,
    ) -> Result<oxvirt_model::Vm, ControlError> {
        qos.validate("qos")?;
        let _guard = self.ctl.inner.slot(vm).op.clone().try_lock_owned().map_err(|_| busy(vm))?;
        let current = self.ctl.vms().get_vm(vm)?;
        let index = crate::vms::disks::disk_index(&current, disk)?;
        if current.status.state.has_process() {
            self.ctl.vms().instance(vm)?.set_disk_qos(disk, &qos).await?;
        }
        let q = if qos.is_unlimited() { None } else { Some(qos) };
        let updated = self.ctl.inner.store.update_record::<oxvirt_model::Vm>(vm, |v| {
            if let Some(d) = v.spec.disks.get_mut(index) {
                d.qos = q.clone();
            }
        })?;
        updated.ok_or_else(|| ControlError::vm_not_found(vm))
    }
}
