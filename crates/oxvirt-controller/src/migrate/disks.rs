//! Local disks during a migration: the target serves the empty copies it made over NBD, the
//! source mirrors each disk into them while the guest runs (writes blocking once in sync) and,
//! with the guest paused before the switch-over, finishes the mirrors so that the target has
//! every block before it runs the guest.

use crate::{ControlError, Controller};
use oxvirt_hypervisor::ops::MirrorJob;
use oxvirt_hypervisor::Instance;
use oxvirt_model::{parse_volume_ref, DiskFormat, VmSpec};
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
    addr.rsplit_once(':').ok_or_else(|| ControlError::Failed(format!("a bad NBD address {addr:?}")))
}

impl crate::Migrations {
    /// The VM's disks that live in a local pool (they must be copied), refusing those that
    /// cannot be (a linked clone's base is not copied along).
    pub(crate) fn local_disks(&self, spec: &VmSpec) -> Result<Vec<LocalDisk>, ControlError> {
        let mut out = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(r) = &d.volume else { continue };
            let field = format!("disks[{i}]");
            let (pool, name) = parse_volume_ref(&field, r)?;
            let p = self.ctl.storage().pool_rec(&pool)?;
            if p.spec.kind.is_shared() {
                continue;
            }
            let (vol, _) = self.ctl.storage().volume_rec(&pool, &name)?;
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
        self.ctl.storage().volume_file(&self.ctl.storage().pool_rec(&d.pool)?, &d.volume, d.format)
    }
}

/// Target: makes an empty copy of each disk, as big as the original.
pub(crate) async fn make_copies(c: &Controller, disks: &[LocalDisk]) -> Result<Vec<PathBuf>, ControlError> {
    let mut made = Vec::new();
    for d in disks {
        let file = c.migrations().local_disk_file(d)?;
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

/// Target: serves the copies, writable, on `listener` (an export per disk, named by its id);
/// with `tls`, only to clients with a certificate of the cluster's CA.
pub(crate) async fn serve(
    instance: &dyn Instance,
    listener: std::net::TcpListener,
    disks: &[LocalDisk],
    tls: bool,
) -> Result<(), ControlError> {
    let ids: Vec<String> = disks.iter().map(|d| d.id.clone()).collect();
    Ok(instance.migration().serve_disks(listener, &ids, tls).await?)
}

/// Target, once the VM is here: the exports go.
pub(crate) async fn stop_serving(instance: &dyn Instance) {
    if let Err(e) = instance.migration().stop_serving_disks().await {
        tracing::warn!("stop serving the disk copies: {e}");
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
        instance.migration().mirror_disk(&d.id, host, port, tls).await?;
    }
    Ok(())
}

/// The mirrors of these disks that still run.
async fn mirror_jobs(instance: &dyn Instance, disks: &[LocalDisk]) -> Result<Vec<MirrorJob>, ControlError> {
    let jobs = instance.migration().mirror_jobs().await?;
    Ok(jobs.into_iter().filter(|j| disks.iter().any(|d| d.id == j.disk_id)).collect())
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
            return Err(ControlError::Failed(
                "a disk mirror stopped before it was in sync (the target went away?)".into(),
            ));
        }
        let (done, total) = jobs.iter().fold((0, 0), |(a, b), j| (a + j.done, b + j.total));
        progress(done, total);
        if jobs.iter().all(|j| j.ready) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Source, guest paused before the switch-over: ends each mirror once it has written
/// everything (a mirror in sync that is ended completes its copy and leaves the guest on
/// its own disk).
pub(crate) async fn finish_mirrors(instance: &dyn Instance, disks: &[LocalDisk]) -> Result<(), ControlError> {
    let running = mirror_jobs(instance, disks).await?;
    if let Some(gone) = disks.iter().find(|d| !running.iter().any(|j| j.disk_id == d.id)) {
        return Err(ControlError::Failed(format!(
            "the mirror of disk {} ended before the switch-over (its copy on the target failed?)",
            gone.id
        )));
    }
    for d in disks {
        instance.migration().end_mirror(&d.id, false).await?;
    }
    for _ in 0..600 {
        if mirror_jobs(instance, disks).await?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ControlError::Failed("the disk mirrors did not finish within 6 s of the guest's pause".into()))
}

/// Source, when the migration failed: the mirrors and their connections go (the guest goes on
/// with its own disks, which the mirrors never changed).
pub(crate) async fn abandon_mirrors(instance: &dyn Instance, disks: &[LocalDisk]) {
    for d in disks {
        let _ = instance.migration().end_mirror(&d.id, true).await;
    }
    for _ in 0..100 {
        if mirror_jobs(instance, disks).await.map(|j| j.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in disks {
        let _ = instance.migration().drop_mirror_target(&d.id).await;
    }
}
