//! Local disks during a migration: the target serves the empty copies it made over NBD, the
//! source mirrors each disk into them while the guest runs (`blockdev-mirror`, writes blocking
//! once in sync) and, with the guest paused before the switch-over, finishes the mirrors so that
//! the target has every block before it runs the guest.

use super::tls::{with_creds, End};
use crate::{ControlError, Controller};
use oxvirt_hypervisor::qemu::cmdline::format_node;
use oxvirt_hypervisor::Instance;
use oxvirt_model::{parse_volume_ref, DiskFormat, VmSpec};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// A local disk that moves with its VM.
pub(crate) struct LocalDisk {
    /// The disk's id (`diskN` unless named).
    pub id: String,
    pub pool: String,
    pub volume: String,
    pub format: DiskFormat,
    pub size: u64,
}

/// `host` and `port` of an NBD address `host:port`.
fn split_address(addr: &str) -> Result<(&str, &str), ControlError> {
    addr.rsplit_once(':').ok_or_else(|| ControlError::Conflict(format!("a bad NBD address {addr:?}")))
}

/// The node and job names of one disk's mirror on the source.
fn mirror_name(disk: &str) -> String {
    format!("migrate-{disk}")
}

impl Controller {
    /// The VM's disks that live in a local pool (they must be copied), refusing those that
    /// cannot be (a linked clone's base is not copied along).
    pub(crate) fn local_disks(&self, spec: &VmSpec) -> Result<Vec<LocalDisk>, ControlError> {
        let mut out = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(r) = &d.volume else { continue };
            let field = format!("disks[{i}]");
            let (pool, name) = parse_volume_ref(&field, r)?;
            let p = self.pool_rec(&pool)?;
            if p.spec.kind.is_shared() {
                continue;
            }
            let (vol, _) = self.volume_rec(&pool, &name)?;
            if let Some(base) = &vol.backing {
                return Err(ControlError::invalid(
                    field,
                    format!(
                        "volume {r} is a linked clone of {base}, which stays on this host: it cannot be copied alone"
                    ),
                ));
            }
            out.push(LocalDisk {
                id: oxvirt_hypervisor::qemu::cmdline::disk_id(d, i),
                pool,
                volume: name,
                format: vol.format,
                size: vol.size.0,
            });
        }
        Ok(out)
    }

    /// This host's file of a local disk (`volume_file` makes the pool's directory here if it
    /// is not here yet).
    pub(crate) fn local_disk_file(&self, d: &LocalDisk) -> Result<PathBuf, ControlError> {
        self.volume_file(&self.pool_rec(&d.pool)?, &d.volume, d.format)
    }
}

/// Target: makes an empty copy of each disk, as big as the original.
pub(crate) async fn make_copies(c: &Controller, disks: &[LocalDisk]) -> Result<Vec<PathBuf>, ControlError> {
    let mut made = Vec::new();
    for d in disks {
        let file = c.local_disk_file(d)?;
        if let Err(e) = oxvirt_storage::qemu_img::create(&file, d.format, Some(d.size), None).await {
            remove_copies(&made);
            return Err(e.into());
        }
        made.push(file);
    }
    Ok(made)
}

pub(crate) fn remove_copies(files: &[PathBuf]) {
    for f in files {
        if let Err(e) = std::fs::remove_file(f) {
            tracing::warn!(file = %f.display(), "cannot remove a disk copy: {e}");
        }
    }
}

/// Target: serves the copies, writable, on `host:port` (an export per disk, named by its id);
/// with `tls`, only to clients with a certificate of the cluster's CA.
pub(crate) async fn serve(
    instance: &dyn Instance,
    addr: &str,
    disks: &[LocalDisk],
    tls: bool,
) -> Result<(), ControlError> {
    let (host, port) = split_address(addr)?;
    // nbd-server-start takes the legacy address form (the data nested).
    let addr = json!({ "type": "inet", "data": { "host": host, "port": port } });
    instance.command("nbd-server-start", with_creds(json!({ "addr": addr }), tls, End::Target)).await?;
    for d in disks {
        let export = json!({
            "type": "nbd", "id": mirror_name(&d.id), "node-name": format_node(&d.id),
            "name": d.id, "writable": true,
        });
        instance.command("block-export-add", export).await?;
    }
    Ok(())
}

/// Target, once the VM is here: the exports go.
pub(crate) async fn stop_serving(instance: &dyn Instance) {
    if let Err(e) = instance.command("nbd-server-stop", Value::Null).await {
        tracing::warn!("nbd-server-stop: {e}");
    }
}

/// Source: connects to the target's exports (with `tls`, checking the target's certificate and
/// showing this host's) and mirrors each disk into its copy.
pub(crate) async fn start_mirrors(
    instance: &dyn Instance,
    nbd: &str,
    disks: &[LocalDisk],
    tls: bool,
) -> Result<(), ControlError> {
    let (host, port) = split_address(nbd)?;
    for d in disks {
        let name = mirror_name(&d.id);
        let node = json!({
            "driver": "nbd", "node-name": name, "export": d.id,
            "server": { "type": "inet", "host": host, "port": port },
        });
        let node = with_creds(node, tls, End::Source);
        instance.command("blockdev-add", node).await?;
        let job = json!({
            "job-id": name, "device": format_node(&d.id), "target": name, "sync": "full",
            "copy-mode": "write-blocking", "auto-dismiss": true,
        });
        instance.command("blockdev-mirror", job).await?;
    }
    Ok(())
}

/// Our mirror jobs as QEMU reports them: (job id, ready, bytes done, bytes to do).
async fn mirror_jobs(
    instance: &dyn Instance,
    disks: &[LocalDisk],
) -> Result<Vec<(String, bool, u64, u64)>, ControlError> {
    let ours: Vec<String> = disks.iter().map(|d| mirror_name(&d.id)).collect();
    let jobs: Value = instance.command("query-block-jobs", Value::Null).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            let id = j["device"].as_str()?.to_string();
            ours.contains(&id).then(|| {
                (
                    id,
                    j["ready"].as_bool().unwrap_or(false),
                    j["offset"].as_u64().unwrap_or(0),
                    j["len"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect())
}

/// Source: waits until every mirror is in sync, reporting (done, total) bytes as it goes.
pub(crate) async fn wait_in_sync(
    instance: &dyn Instance,
    disks: &[LocalDisk],
    mut progress: impl FnMut(u64, u64),
) -> Result<(), ControlError> {
    loop {
        let jobs = mirror_jobs(instance, disks).await?;
        if jobs.len() < disks.len() {
            return Err(ControlError::Conflict(
                "a disk mirror stopped before it was in sync (the target went away?)".into(),
            ));
        }
        let (done, total) = jobs.iter().fold((0, 0), |(a, b), j| (a + j.2, b + j.3));
        progress(done, total);
        if jobs.iter().all(|j| j.1) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Source, guest paused before the switch-over: ends each mirror once it has written
/// everything (a mirror in sync that is cancelled completes its copy and leaves the guest on
/// its own disk).
pub(crate) async fn finish_mirrors(instance: &dyn Instance, disks: &[LocalDisk]) -> Result<(), ControlError> {
    for d in disks {
        instance.command("block-job-cancel", json!({ "device": mirror_name(&d.id) })).await?;
    }
    for _ in 0..600 {
        if mirror_jobs(instance, disks).await?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ControlError::Conflict("the disk mirrors did not finish within 6 s of the guest's pause".into()))
}

/// Source, when the migration failed: the mirrors and their connections go (the guest goes on
/// with its own disks, which the mirrors never changed).
pub(crate) async fn abandon_mirrors(instance: &dyn Instance, disks: &[LocalDisk]) {
    for d in disks {
        let _ = instance.command("block-job-cancel", json!({ "device": mirror_name(&d.id), "force": true })).await;
    }
    for _ in 0..100 {
        if mirror_jobs(instance, disks).await.map(|j| j.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in disks {
        let _ = instance.command("blockdev-del", json!({ "node-name": mirror_name(&d.id) })).await;
    }
}
