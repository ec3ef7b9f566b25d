//! Restoring a backup as a new VM: each disk becomes a new qcow2 volume of a directory pool,
//! written chunk by chunk (each checked against its digest) through `qemu-nbd`, several
//! connections at once; then the VM is created from the backed-up definition, stopped. A
//! restore that fails removes what it made. A backup's disk can also be exported as a qcow2 file.

use super::{blocking, Backups};
use crate::tasks::TaskHandle;
use crate::ControlError;
use oxvirt_backup::{restore_disk, BackupIndex, NbdClient, Progress, Repo};
use oxvirt_model::{ByteSize, DiskFormat, PoolKind, Privilege, RestoreRequest, Task, VmSpec, VolumeSpec};
use oxvirt_storage::host_paths::Want;
use oxvirt_storage::image_export::{ExportOptions, ImageExport};
use oxvirt_storage::qemu_img;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Connections each disk is written through at once.
const WRITERS: usize = 4;
/// A restore's work directory is `backup-work/<RESTORE_PREFIX><new VM>`; it lists the volumes
/// made so far in `MADE_FILE` (`pool/volume` lines), for a daemon that restarts to remove.
pub(crate) const RESTORE_PREFIX: &str = "restore-";
pub(crate) const MADE_FILE: &str = "made";

impl Backups {
    /// Restores backup `id` of repository `repo` as the new VM `req.name`, its disks volumes of
    /// pool `req.pool`: a task (`backup.restore`).
    pub async fn restore(&self, caller: &str, repo: &str, id: &str, req: RestoreRequest) -> Result<Task, ControlError> {
        req.validate()?;
        let (_, r) = self.open(repo)?;
        let index = {
            let (r, id) = (r.clone(), id.to_string());
            blocking(move || Ok(r.index(&id)?)).await?
        };
        self.ctl.access().authorize(caller, Privilege::Modify, &format!("/pools/{}", req.pool))?;
        let pool = self.ctl.storage().pool_rec(&req.pool)?;
        if pool.spec.kind == PoolKind::Nbd {
            return Err(ControlError::invalid(
                "pool",
                "must be a directory pool: restores write the images themselves",
            ));
        }
        let spec = restored_spec(&index, &req)?;
        // Whoever may make VMs (of the backed-up VM's project, if it had one) may restore one.
        let resource = spec.project.as_ref().map(|p| format!("/projects/{p}")).unwrap_or_else(|| "/vms".into());
        self.ctl.access().authorize(caller, Privilege::Modify, &resource)?;
        if self.ctl.vms().get_vm(&req.name).is_ok() {
            return Err(ControlError::Exists(oxvirt_model::ValidationError::new(
                "name",
                format!("a VM named {:?} already exists", req.name),
            )));
        }
        let task = self.ctl.inner.tasks.create("backup.restore", &format!("vms/{}", req.name))?;
        let snapshot = task.snapshot();
        let (me, caller) = (self.clone(), caller.to_string());
        tokio::spawn(async move {
            let r = me.run_restore(&caller, r, index, req, spec, &task).await;
            task.finish_with(r.map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    async fn run_restore(
        &self,
        caller: &str,
        repo: Repo,
        index: BackupIndex,
        req: RestoreRequest,
        spec: VmSpec,
        task: &TaskHandle,
    ) -> Result<String, ControlError> {
        let begun = Instant::now();
        let mut made: Vec<String> = Vec::new();
        let r = self.write_disks(&repo, &index, &req, task, &mut made).await;
        let r = match r {
            Ok(bytes) => self.ctl.vms().create_vm(caller, spec).map(|_| bytes),
            Err(e) => Err(e),
        };
        if r.is_err() {
            for v in &made {
                if let Err(e) = self.ctl.storage().delete_volume(&req.pool, v).await {
                    tracing::warn!(pool = %req.pool, volume = %v, "undoing a failed restore: {e}");
                }
            }
        }
        // Made whole, or undone: nothing for a restarting daemon to undo.
        let _ = std::fs::remove_dir_all(self.restore_dir(&req.name));
        let bytes = r?;
        let secs = begun.elapsed().as_secs_f64().max(0.001);
        Ok(format!(
            "VM {} restored from {} ({} disk(s), {} MiB written in {:.1} s, {:.0} MiB/s)",
            req.name,
            index.id,
            index.disks.len(),
            bytes >> 20,
            secs,
            (bytes >> 20) as f64 / secs
        ))
    }

    fn restore_dir(&self, vm: &str) -> std::path::PathBuf {
        self.ctl.inner.config.data_dir.join("backup-work").join(format!("{RESTORE_PREFIX}{vm}"))
    }

    /// Makes and writes one volume per disk; `made` names those made so far.
    async fn write_disks(
        &self,
        repo: &Repo,
        index: &BackupIndex,
        req: &RestoreRequest,
        task: &TaskHandle,
        made: &mut Vec<String>,
    ) -> Result<u64, ControlError> {
        let pool = self.ctl.storage().pool_rec(&req.pool)?;
        let work = self.restore_dir(&req.name);
        std::fs::create_dir_all(&work).map_err(|e| ControlError::Failed(format!("make {}: {e}", work.display())))?;
        let total: u64 = index.disks.iter().map(|d| d.chunks.iter().flatten().count() as u64).sum::<u64>()
            * oxvirt_backup::CHUNK_SIZE;
        let progress = Arc::new(Progress::default());
        for d in &index.disks {
            let name = volume_name(&req.name, &d.id);
            let size = d.size.div_ceil(512) * 512;
            self.ctl
                .storage()
                .create_volume(
                    &req.pool,
                    VolumeSpec { name: name.clone(), size: Some(ByteSize(size)), format: DiskFormat::Qcow2 },
                )
                .await?;
            made.push(name.clone());
            let list: String = made.iter().map(|v| format!("{}/{v}\n", req.pool)).collect();
            std::fs::write(work.join(MADE_FILE), list).map_err(|e| ControlError::Failed(format!("restore: {e}")))?;
            let file = self.ctl.storage().volume_file(&pool, &name, DiskFormat::Qcow2)?;
            let (r, disk, sock, pr) = (repo.clone(), d.clone(), work.join(format!("{}.sock", d.id)), progress.clone());
            super::blocking_reporting(
                move || write_image(&file, &sock, &r, &disk, &pr),
                || {
                    let done = progress.done.load(Ordering::Relaxed);
                    let pct = (done.min(total) * 95 / total.max(1)) as u8;
                    task.progress(pct, &format!("wrote {} of {} MiB", done >> 20, total >> 20));
                },
            )
            .await?;
        }
        Ok(progress.done.load(Ordering::Relaxed))
    }
}

impl Backups {
    /// Writes one disk of backup `id` to a new qcow2 file on the host (only an administrator
    /// may name one): a task (`backup.export`). The file appears whole or not at all.
    pub async fn export(
        &self,
        caller: &str,
        repo: &str,
        id: &str,
        req: oxvirt_model::BackupExportRequest,
    ) -> Result<Task, ControlError> {
        let dest = self.ctl.access().host_path(caller, "destination", &req.destination, Want::NewFile)?;
        let (_, r) = self.open(repo)?;
        let index = {
            let (r, id) = (r.clone(), id.to_string());
            blocking(move || Ok(r.index(&id)?)).await?
        };
        let disk_id = req.disk.unwrap_or_else(|| "disk0".into());
        let Some(disk) = index.disks.iter().find(|d| d.id == disk_id).cloned() else {
            return Err(ControlError::invalid("disk", format!("backup {id} has no disk {disk_id}")));
        };
        let task = self.ctl.inner.tasks.create("backup.export", &format!("backup-repos/{repo}"))?;
        let snapshot = task.snapshot();
        let work = self.ctl.inner.config.data_dir.join("backup-work").join(format!("export-{}", index.id));
        tokio::spawn(async move {
            let partial = oxvirt_storage::paths::partial_file(&dest);
            let _ = std::fs::remove_file(&partial);
            let made = qemu_img::create(&partial, DiskFormat::Qcow2, Some(disk.size.div_ceil(512) * 512), None).await;
            let progress = Arc::new(Progress::default());
            let r = match made {
                Err(e) => Err(ControlError::from(e)),
                Ok(()) => {
                    let (file, pr, w) = (partial.clone(), progress.clone(), work.clone());
                    blocking(move || {
                        std::fs::create_dir_all(&w).map_err(|e| ControlError::Failed(format!("export: {e}")))?;
                        write_image(&file, &w.join("export.sock"), &r, &disk, &pr)
                    })
                    .await
                }
            };
            let _ = std::fs::remove_dir_all(&work);
            let r = r.and_then(|()| {
                oxvirt_storage::paths::rename_no_replace(&partial, &dest)
                    .map_err(|e| ControlError::Failed(format!("export: {} appeared meanwhile: {e}", dest.display())))
            });
            if r.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            let bytes = progress.done.load(Ordering::Relaxed);
            task.finish_with(
                r.map(|()| {
                    format!(
                        "disk {disk_id} of {} written to {} ({} MiB of data)",
                        index.id,
                        dest.display(),
                        bytes >> 20
                    )
                })
                .map_err(|e| e.to_string()),
            );
        });
        Ok(snapshot)
    }
}

/// Writes backed-up `disk` into the fresh qcow2 image `file` (served by `qemu-nbd` on
/// `socket` meanwhile), `WRITERS` connections at once.
fn write_image(
    file: &std::path::Path,
    socket: &std::path::Path,
    repo: &Repo,
    disk: &oxvirt_backup::DiskIndex,
    progress: &Progress,
) -> Result<(), ControlError> {
    let o = ExportOptions { format: "qcow2", writable: true, bitmap: None, connections: WRITERS as u32 };
    let export = ImageExport::start(file, socket, "disk", &o)?;
    let connect = || NbdClient::connect(export.socket(), export.name(), &[]);
    restore_disk(&connect, repo, disk, WRITERS, progress)
        .map_err(|e| ControlError::Failed(format!("writing disk {}: {e}", disk.id)))
}

fn volume_name(vm: &str, disk: &str) -> String {
    format!("{vm}-{disk}")
}

/// The new VM's spec: the backed-up one, renamed, its disks the new volumes, its NICs with new
/// MAC and IP addresses (the original may still run), on no host in particular.
fn restored_spec(index: &BackupIndex, req: &RestoreRequest) -> Result<VmSpec, ControlError> {
    let mut spec: VmSpec = serde_json::from_value(index.vm_spec.clone())
        .map_err(|e| ControlError::Failed(format!("backup {}: its VM definition is unreadable: {e}", index.id)))?;
    spec.name = req.name.clone();
    spec.host = None;
    for n in &mut spec.nics {
        n.mac = None;
        n.ip = None;
    }
    for (i, d) in spec.disks.iter_mut().enumerate() {
        if d.id.is_empty() {
            d.id = format!("disk{i}");
        }
        if !index.disks.iter().any(|x| x.id == d.id) {
            return Err(ControlError::Failed(format!("backup {} has no disk {}", index.id, d.id)));
        }
        d.volume = Some(format!("{}/{}", req.pool, volume_name(&req.name, &d.id)));
        d.path = String::new();
        d.format = DiskFormat::Qcow2;
    }
    for v in spec.disks.iter().filter_map(|d| d.volume.as_deref()) {
        oxvirt_model::validate_name("name", v.rsplit('/').next().unwrap_or_default()).map_err(|_| {
            ControlError::invalid("name", format!("{v} would not be a valid volume name: choose a shorter VM name"))
        })?;
    }
    Ok(spec)
}
