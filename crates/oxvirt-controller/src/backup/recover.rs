//! At start: backups and restores this daemon was running when it died are undone on the
//! host's side. Their repositories need nothing (an index is written last, so an unfinished
//! backup is only chunks no index names, which garbage collection removes later); their VMs
//! do: a running QEMU still freezes its disks for a reader that is gone, a stopped VM's disks
//! may still be served by a `qemu-nbd` that holds them.

use super::restore::{MADE_FILE, RESTORE_PREFIX};
use super::Backups;
use oxvirt_hypervisor::ops::{BackupDisk, CHANGES_BITMAP};
use oxvirt_model::VmState;
use oxvirt_storage::qemu_img::{self, BitmapOp};
use oxvirt_store::StoreExt;
use std::path::Path;

impl Backups {
    pub(crate) async fn recover_interrupted(&self) {
        let root = self.ctl.inner.config.data_dir.join("backup-work");
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        let vms = self.ctl.vms().list_vms().unwrap_or_default();
        for e in entries.flatten() {
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            kill_helpers(&dir);
            if name.starts_with(RESTORE_PREFIX) {
                self.undo_restore(&dir).await;
            }
            if let Some(vm) = vms.iter().find(|v| v.id == name) {
                tracing::warn!(vm = %vm.spec.name, "a backup was interrupted (oxvirtd stopped): undoing it on the VM's side");
                for (r, _) in self.ctl.inner.store.list_records::<oxvirt_model::BackupRepo>().unwrap_or_default() {
                    if let Ok(repo) = self.open_record(&r) {
                        repo.drop_dead_leases(&vm.spec.name);
                    }
                }
                let Ok(resolved) = self.ctl.storage().resolve_disks(&vm.id, &vm.spec) else { continue };
                let running = vm.status.state != VmState::Stopped;
                match self.ctl.vms().instance(&vm.spec.name) {
                    Ok(i) if running => {
                        let disks: Vec<BackupDisk> = resolved
                            .disks
                            .iter()
                            .map(|d| BackupDisk {
                                disk_id: d.id.clone(),
                                size: 0,
                                scratch: dir.join(format!("scratch-{}.qcow2", d.id)),
                                new_bitmap: None,
                                since: Vec::new(),
                                granularity: oxvirt_backup::CHUNK_SIZE,
                            })
                            .collect();
                        let _ = i.backup().end_backup(&disks).await;
                    }
                    _ => {
                        for d in resolved.disks.iter().filter(|d| d.volume.is_some() && d.nbd.is_none()) {
                            let path = Path::new(&d.path);
                            let has =
                                qemu_img::info(path, Some(d.format)).await.map(|i| i.bitmaps()).unwrap_or_default();
                            if has.iter().any(|b| b.name == CHANGES_BITMAP) {
                                let _ = qemu_img::bitmap(path, CHANGES_BITMAP, BitmapOp::Remove).await;
                            }
                        }
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl Backups {
    /// An interrupted restore's volumes go (no VM was made of them: that is its last step).
    async fn undo_restore(&self, dir: &Path) {
        let made = std::fs::read_to_string(dir.join(MADE_FILE)).unwrap_or_default();
        for r in made.lines() {
            let Some((pool, volume)) = r.split_once('/') else { continue };
            tracing::warn!(pool, volume, "a restore was interrupted (oxvirtd stopped): removing the volume it made");
            if let Err(e) = self.ctl.storage().delete_volume(pool, volume).await {
                tracing::warn!(pool, volume, "{e}");
            }
        }
    }
}

/// Ends the `qemu-nbd`s serving from `dir` (their sockets are there).
fn kill_helpers(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-nbd") && cmd.contains(&needle) {
            // SIGTERM: it closes the image (and saves its bitmaps) on the way out.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
