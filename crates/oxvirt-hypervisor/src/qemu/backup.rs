//! [`BackupOps`] for QEMU. A disk is frozen by "image fleecing": a scratch qcow2 whose backing
//! is the disk's format node gets the old data of every cluster the guest overwrites
//! (`blockdev-backup` sync `none`), so the scratch node reads as the disk did at the instant; it
//! is what the NBD export serves. The scratch file is made and opened here (root's) and reaches
//! QEMU, which may run as another user, as a descriptor in an fd set.

use super::cmdline::format_node;
use super::QemuInstance;
use crate::ops::{BackupDisk, BackupOps, DiskTracking, CHANGES_BITMAP};
use crate::HvError;
use oxvirt_qemu::commands::backup::{self, Action};
use oxvirt_qemu::commands::{block, devices, nbd};
use serde_json::json;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const NBD_LISTENER: &str = "oxv-backup-listener";

fn scratch_node(disk_id: &str) -> String {
    format!("{disk_id}-backup")
}

fn job_id(disk_id: &str) -> String {
    format!("backup-{disk_id}")
}

fn fdset_opaque(disk_id: &str) -> String {
    format!("backup-{disk_id}")
}

impl QemuInstance {
    /// Makes the scratch image of `d` and adds it as a node over the disk's format node.
    async fn add_scratch(&self, d: &BackupDisk) -> Result<(), HvError> {
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536"])
            .arg(&d.scratch)
            .arg(d.size.to_string())
            .output()
            .await
            .map_err(|e| HvError::io("run qemu-img", e))?;
        if !out.status.success() {
            return Err(HvError::Refused(format!(
                "the scratch image {}: {}",
                d.scratch.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&d.scratch)
            .map_err(|e| HvError::io(format!("open {}", d.scratch.display()), e))?;
        let set = devices::add_fd(&self.qmp, &fdset_opaque(&d.disk_id), file.as_raw_fd()).await?;
        let node = json!({
            "driver": "qcow2", "node-name": scratch_node(&d.disk_id),
            "file": { "driver": "file", "filename": format!("/dev/fdset/{set}") },
            "backing": format_node(&d.disk_id),
        });
        Ok(block::blockdev_add(&self.qmp, node).await?)
    }

    async fn drop_scratch_fdsets(&self, disk_id: &str) {
        if let Ok(sets) = devices::fdsets_marked(&self.qmp, &fdset_opaque(disk_id)).await {
            for id in sets {
                let _ = devices::remove_fd(&self.qmp, id).await;
            }
        }
    }

    /// Waits until job `id` is gone (a cancelled job ends at its next step).
    async fn job_gone(&self, id: &str, within: Duration) {
        let begun = Instant::now();
        while begun.elapsed() < within {
            match block::query_block_jobs(&self.qmp).await {
                Ok(jobs) if jobs.iter().any(|j| j.id == id) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl BackupOps for QemuInstance {
    async fn tracking(&self, disk_ids: &[String]) -> Result<Vec<DiskTracking>, HvError> {
        let nodes = backup::query_named_block_nodes(&self.qmp).await?;
        disk_ids
            .iter()
            .map(|id| {
                let fmt = format_node(id);
                let n = nodes
                    .iter()
                    .find(|n| n.node == fmt)
                    .ok_or_else(|| HvError::Refused(format!("disk {id} has no node {fmt}")))?;
                Ok(DiskTracking {
                    disk_id: id.clone(),
                    size: n.virtual_size,
                    can_track: n.format == "qcow2",
                    bitmaps: n.bitmaps.clone(),
                })
            })
            .collect()
    }

    async fn begin_backup(
        &self,
        disks: &[BackupDisk],
        listener: std::os::unix::net::UnixListener,
    ) -> Result<(), HvError> {
        let begun = async {
            for d in disks {
                self.add_scratch(d).await?;
            }
            let mut actions = Vec::new();
            for d in disks {
                let fmt = format_node(&d.disk_id);
                actions.push(Action::CopyBeforeWrite {
                    job_id: job_id(&d.disk_id),
                    source: fmt.clone(),
                    target: scratch_node(&d.disk_id),
                });
                if let Some(name) = &d.new_bitmap {
                    actions.push(Action::AddBitmap {
                        node: fmt.clone(),
                        name: name.clone(),
                        persistent: true,
                        disabled: false,
                        granularity: d.granularity,
                    });
                }
                if !d.since.is_empty() {
                    actions.push(Action::AddBitmap {
                        node: fmt.clone(),
                        name: CHANGES_BITMAP.into(),
                        persistent: false,
                        disabled: true,
                        granularity: d.granularity,
                    });
                    actions.push(Action::Merge {
                        node: fmt.clone(),
                        target: CHANGES_BITMAP.into(),
                        sources: d.since.clone(),
                    });
                    for b in &d.since {
                        actions.push(Action::Disable { node: fmt.clone(), name: b.clone() });
                    }
                }
            }
            backup::transaction(&self.qmp, &actions).await?;
            devices::getfd(&self.qmp, NBD_LISTENER, listener.as_raw_fd()).await?;
            nbd::nbd_server_start_on_fd(&self.qmp, NBD_LISTENER, None).await?;
            for d in disks {
                let bitmap = (!d.since.is_empty()).then_some(CHANGES_BITMAP);
                nbd::block_export_add_with_bitmap(
                    &self.qmp,
                    &job_id(&d.disk_id),
                    &scratch_node(&d.disk_id),
                    &d.disk_id,
                    bitmap,
                )
                .await?;
            }
            Ok::<(), HvError>(())
        }
        .await;
        drop(listener);
        if let Err(e) = begun {
            let _ = self.end_backup(disks).await;
            // The transaction may have added the new bitmaps: a backup that never began leaves none.
            for d in disks {
                if let Some(name) = &d.new_bitmap {
                    let _ = backup::bitmap_remove(&self.qmp, &format_node(&d.disk_id), name).await;
                }
            }
            return Err(e);
        }
        Ok(())
    }

    async fn end_backup(&self, disks: &[BackupDisk]) -> Result<(), HvError> {
        for d in disks {
            let _ = nbd::block_export_del(&self.qmp, &job_id(&d.disk_id), Duration::from_secs(5)).await;
        }
        let _ = nbd::nbd_server_stop(&self.qmp).await;
        for d in disks {
            if block::block_job_cancel(&self.qmp, &job_id(&d.disk_id), true).await.is_ok() {
                self.job_gone(&job_id(&d.disk_id), Duration::from_secs(30)).await;
            }
            let _ = block::blockdev_del(&self.qmp, &scratch_node(&d.disk_id)).await;
            self.drop_scratch_fdsets(&d.disk_id).await;
            // (Absent when the backup read everything: the error is ignored.)
            let _ = backup::bitmap_remove(&self.qmp, &format_node(&d.disk_id), CHANGES_BITMAP).await;
            let _ = std::fs::remove_file(&d.scratch);
        }
        Ok(())
    }

    async fn remove_bitmap(&self, disk_id: &str, name: &str) -> Result<(), HvError> {
        Ok(backup::bitmap_remove(&self.qmp, &format_node(disk_id), name).await?)
    }
}
