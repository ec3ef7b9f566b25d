//! Taking a backup of a VM: every disk frozen at one instant and read into the repository,
//! only its changed chunks when the disk's change map (a persistent dirty bitmap in its qcow2)
//! covers everything since the VM's last backup there, else all of it, the reason said.
//!
//! Change maps: each backup starts recording a bitmap named after itself
//! (`oxvirt-backup-<id>`) at its instant, and those before it stop recording then. A backup
//! that succeeded removes every older one; one that failed leaves them, so the changes since
//! the last good backup are always the union of the bitmaps left, as long as that backup's
//! own is among them. A running VM is read through its QEMU (the frozen image's old data kept
//! in a local scratch image, so the guest never waits for the repository), a stopped one through
//! `qemu-nbd`.

use super::{blocking, Backups};
use crate::tasks::TaskHandle;
use crate::{now_millis, ControlError};
use oxvirt_backup::nbd::{self, NbdClient};
use oxvirt_backup::{back_up_disk, BackupIndex, DiskIndex, DiskOutcome, DiskRead, Progress, Repo, CHUNK_SIZE};
use oxvirt_hypervisor::ops::{BackupDisk, CHANGES_BITMAP};
use oxvirt_hypervisor::Instance;
use oxvirt_model::{BackupRequest, DiskFormat, DiskSpec, Task, Vm, VmState};
use oxvirt_storage::image_export::{ExportOptions, ImageExport};
use oxvirt_storage::qemu_img::{self, BitmapOp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The prefix of the change maps oxvirt keeps in a disk's qcow2.
pub(crate) const BITMAP_PREFIX: &str = "oxvirt-backup-";
/// Connections each disk is read through at once.
const READERS: usize = 2;

/// A bitmap of a disk as either path reports it.
struct DiskBitmap {
    name: String,
    /// Not to be trusted (QEMU stopped without saving it).
    broken: bool,
}

/// What one disk's backup will do.
struct DiskPlan {
    disk: DiskSpec,
    size: u64,
    /// Keeps change maps (a qcow2 volume of a directory pool).
    tracked: bool,
    /// The bitmaps whose union is the changes to read; empty: read everything.
    since: Vec<String>,
    /// Why everything is read when the last backup could have been built on.
    full_reason: Option<String>,
    previous: Option<DiskIndex>,
    bitmaps: Vec<DiskBitmap>,
}

/// How one disk is reached while it is read.
#[derive(Clone)]
struct Source {
    socket: PathBuf,
    export: String,
    changes: bool,
}

impl Backups {
    /// Backs VM `name` up into repository `req.repo`: a task (`vm.backup`).
    pub async fn backup_vm(&self, name: &str, req: BackupRequest) -> Result<Task, ControlError> {
        req.validate()?;
        let (_, repo) = self.open(&req.repo)?;
        let vm = self.ctl.vms().get_vm(name)?;
        check_state(&vm)?;
        if let (Some(h), Some(me)) = (&vm.host, self.ctl.hosts().host_name()) {
            if *h != me {
                return Err(ControlError::Conflict(format!(
                    "VM {name} belongs to host {h}: its backups are taken there (ask that host's API)"
                )));
            }
        }
        let op = self.ctl.inner.slot(name).op.clone();
        let guard = tokio::time::timeout(crate::vms::lifecycle::BUSY_GRACE, op.lock_owned())
            .await
            .map_err(|_| crate::vms::busy(name))?;
        let task = self.ctl.inner.tasks.create("vm.backup", &format!("vms/{name}"))?;
        let snapshot = task.snapshot();
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let r = me.take(&name, &req.repo, repo, &task).await;
            drop(guard);
            task.finish_with(r.map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    async fn take(&self, name: &str, repo_name: &str, repo: Repo, task: &TaskHandle) -> Result<String, ControlError> {
        let begun = Instant::now();
        let vm = self.ctl.vms().get_vm(name)?;
        check_state(&vm)?;
        let live = vm.status.state != VmState::Stopped;
        let resolved = self.ctl.storage().resolve_disks(&vm.id, &vm.spec)?;
        let last = {
            let (r, vm_name) = (repo.clone(), name.to_string());
            blocking(move || Ok(r.indexes(Some(&vm_name))?.pop())).await?
        };
        let taken_at = now_millis();
        let id = oxvirt_backup::new_id(name, taken_at);
        let new_bitmap = format!("{BITMAP_PREFIX}{id}");
        let work = self.work_dir(&vm.id)?;
        task.progress(2, &format!("freezing {} disk(s)", resolved.disks.len()));

        let instance = if live { Some(self.ctl.vms().instance(name)?) } else { None };
        let mut plans = Vec::new();
        let tracking = match &instance {
            Some(i) => {
                let ids: Vec<String> = resolved.disks.iter().map(|d| d.id.clone()).collect();
                i.backup().tracking(&ids).await?
            }
            None => Vec::new(),
        };
        for (n, d) in resolved.disks.iter().enumerate() {
            let (size, bitmaps) = match tracking.get(n) {
                Some(t) => (
                    t.size,
                    t.bitmaps.iter().map(|b| DiskBitmap { name: b.name.clone(), broken: b.inconsistent }).collect(),
                ),
                None => {
                    let info = qemu_img::info(Path::new(&d.path), Some(d.format)).await?;
                    let b = info.bitmaps().into_iter().map(|b| DiskBitmap { name: b.name, broken: b.in_use }).collect();
                    (info.virtual_size, b)
                }
            };
            plans.push(plan_disk(d.clone(), size, bitmaps, last.as_ref(), repo_name, name));
        }
        // Broken change maps go now: nothing can be built on them.
        for p in &plans {
            for b in p.bitmaps.iter().filter(|b| b.broken && b.name.starts_with(BITMAP_PREFIX)) {
                self.remove_bitmap(instance.as_deref(), &p.disk, &b.name).await;
            }
        }

        let sources;
        let mut exports = Vec::new();
        let live_disks: Vec<BackupDisk>;
        if let Some(i) = &instance {
            live_disks = plans
                .iter()
                .map(|p| BackupDisk {
                    disk_id: p.disk.id.clone(),
                    size: p.size,
                    scratch: work.join(format!("scratch-{}.qcow2", p.disk.id)),
                    new_bitmap: p.tracked.then(|| new_bitmap.clone()),
                    since: p.since.clone(),
                    granularity: CHUNK_SIZE,
                })
                .collect();
            let socket = work.join("nbd.sock");
            let _ = std::fs::remove_file(&socket);
            let listener = std::os::unix::net::UnixListener::bind(&socket)
                .map_err(|e| ControlError::Failed(format!("bind {}: {e}", socket.display())))?;
            i.backup().begin_backup(&live_disks, listener).await?;
            sources = plans
                .iter()
                .map(|p| Source { socket: socket.clone(), export: p.disk.id.clone(), changes: !p.since.is_empty() })
                .collect::<Vec<_>>();
        } else {
            live_disks = Vec::new();
            let mut s = Vec::new();
            for p in &plans {
                match self.serve_stopped(p, &work, &new_bitmap).await {
                    Ok((export, source)) => {
                        exports.push(export);
                        s.push(source);
                    }
                    Err(e) => {
                        drop(exports);
                        self.after_stopped(&plans).await;
                        return Err(e);
                    }
                }
            }
            sources = s;
        }

        // Declared to garbage collection until the index is written.
        let lease = repo.begin_writing(&id)?;
        let read = self.read_all(&repo, &plans, &sources, task).await;

        // The disks are let go of whatever happened; the change maps stay.
        if let Some(i) = &instance {
            let _ = i.backup().end_backup(&live_disks).await;
        }
        drop(exports);
        if instance.is_none() {
            self.after_stopped(&plans).await;
        }
        let outcomes = read?;

        let full = plans.iter().any(|p| p.since.is_empty());
        let reasons: Vec<String> = plans.iter().filter_map(|p| p.full_reason.clone()).collect();
        let index = BackupIndex {
            full,
            full_reason: (full && !reasons.is_empty()).then(|| reasons.join("; ")),
            parent: last.as_ref().filter(|_| plans.iter().any(|p| !p.since.is_empty())).map(|l| l.id.clone()),
            vm_spec: serde_json::to_value(&vm.spec).unwrap_or_default(),
            read_bytes: outcomes.iter().map(|o| o.read_bytes).sum(),
            new_chunks: outcomes.iter().map(|o| o.new_chunks).sum(),
            new_bytes: outcomes.iter().map(|o| o.new_bytes).sum(),
            disks: outcomes.into_iter().map(|o| o.index).collect(),
            duration_ms: begun.elapsed().as_millis() as u64,
            ..BackupIndex::new(&id, name, taken_at)
        };
        {
            let (r, i) = (repo.clone(), index.clone());
            blocking(move || Ok(r.write_index(&i)?)).await?;
        }
        drop(lease);
        // Recorded: the older change maps are no longer needed.
        for p in plans.iter().filter(|p| p.tracked) {
            for b in p.bitmaps.iter().filter(|b| b.name.starts_with(BITMAP_PREFIX) && b.name != new_bitmap) {
                self.remove_bitmap(instance.as_deref(), &p.disk, &b.name).await;
            }
        }
        let _ = std::fs::remove_dir(&work);
        let how = if index.full {
            format!("full ({})", index.full_reason.clone().unwrap_or_else(|| "asked".into()))
        } else {
            format!("changes since {}", index.parent.clone().unwrap_or_default())
        };
        Ok(format!(
            "backup {id} in {repo_name}: {how}; read {} MiB, stored {} new chunk(s), {} KiB, in {} ms",
            index.read_bytes >> 20,
            index.new_chunks,
            index.new_bytes >> 10,
            index.duration_ms
        ))
    }

    /// A directory of root's for one VM's backup: scratch images and sockets.
    fn work_dir(&self, vm_id: &str) -> Result<PathBuf, ControlError> {
        let dir = self.ctl.inner.config.data_dir.join("backup-work").join(vm_id);
        std::fs::create_dir_all(&dir).map_err(|e| ControlError::Failed(format!("make {}: {e}", dir.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.parent().unwrap_or(&dir), std::fs::Permissions::from_mode(0o700));
        Ok(dir)
    }

    /// Serves one disk of a stopped VM with `qemu-nbd`: with its changes as a bitmap of their
    /// own when incremental; a tracked disk gets the next backup's change map first.
    async fn serve_stopped(
        &self,
        p: &DiskPlan,
        work: &Path,
        new_bitmap: &str,
    ) -> Result<(ImageExport, Source), ControlError> {
        let path = PathBuf::from(&p.disk.path);
        if p.tracked {
            qemu_img::bitmap(&path, new_bitmap, BitmapOp::Add { granularity: CHUNK_SIZE, disabled: false }).await?;
        }
        if !p.since.is_empty() {
            qemu_img::bitmap(&path, CHANGES_BITMAP, BitmapOp::Add { granularity: CHUNK_SIZE, disabled: true }).await?;
            qemu_img::bitmap(&path, CHANGES_BITMAP, BitmapOp::Merge { sources: &p.since }).await?;
        }
        let socket = work.join(format!("{}.sock", p.disk.id));
        let (image, sock, export, format, changes) =
            (path.clone(), socket.clone(), p.disk.id.clone(), p.disk.format, !p.since.is_empty());
        let served = blocking(move || {
            let o = ExportOptions {
                format: format.as_str(),
                writable: false,
                bitmap: changes.then_some(CHANGES_BITMAP),
                connections: READERS as u32 + 1,
            };
            Ok(ImageExport::start(&image, &sock, &export, &o)?)
        })
        .await?;
        Ok((served, Source { socket, export: p.disk.id.clone(), changes }))
    }

    /// After a stopped VM's disks were served, whatever happened: the changes' bitmap goes
    /// (the change maps stay).
    async fn after_stopped(&self, plans: &[DiskPlan]) {
        for p in plans.iter().filter(|p| !p.since.is_empty()) {
            let _ = qemu_img::bitmap(Path::new(&p.disk.path), CHANGES_BITMAP, BitmapOp::Remove).await;
        }
    }

    async fn remove_bitmap(&self, instance: Option<&dyn Instance>, disk: &DiskSpec, name: &str) {
        let r = match instance {
            Some(i) => i.backup().remove_bitmap(&disk.id, name).await.map_err(|e| e.to_string()),
            None => qemu_img::bitmap(Path::new(&disk.path), name, BitmapOp::Remove).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::warn!(disk = %disk.id, bitmap = name, "removing a change map: {e}");
        }
    }

    /// Reads every disk into the repository, the task's progress following the bytes read.
    async fn read_all(
        &self,
        repo: &Repo,
        plans: &[DiskPlan],
        sources: &[Source],
        task: &TaskHandle,
    ) -> Result<Vec<DiskOutcome>, ControlError> {
        let progress = Arc::new(Progress::default());
        let total = Arc::new(AtomicU64::new(0));
        let jobs: Vec<(String, u64, Option<DiskIndex>, Source)> = plans
            .iter()
            .zip(sources)
            .map(|(p, s)| {
                (p.disk.id.clone(), p.size, if p.since.is_empty() { None } else { p.previous.clone() }, s.clone())
            })
            .collect();
        let (r, pr, tot) = (repo.clone(), progress.clone(), total.clone());
        let work = move || -> Result<Vec<DiskOutcome>, ControlError> {
            // First what each disk needs read, so the progress has a total.
            let mut marks = Vec::new();
            for (_, _, previous, s) in &jobs {
                let ctx = if s.changes { nbd::dirty_bitmap(CHANGES_BITMAP) } else { nbd::ALLOCATION.to_string() };
                let mut probe = NbdClient::connect(&s.socket, &s.export, &[&ctx]).map_err(failed)?;
                let read = if previous.is_some() {
                    nbd::chunks_where(&mut probe, &ctx, CHUNK_SIZE, 1, true)
                } else {
                    nbd::chunks_where(&mut probe, &ctx, CHUNK_SIZE, nbd::STATE_ZERO, false)
                }
                .map_err(failed)?;
                probe.disconnect();
                tot.fetch_add(read.iter().filter(|r| **r).count() as u64 * CHUNK_SIZE, Ordering::Relaxed);
                marks.push(read);
            }
            let mut out = Vec::new();
            for ((id, size, previous, s), read) in jobs.iter().zip(marks) {
                let connect = || NbdClient::connect(&s.socket, &s.export, &[]);
                let plan = DiskRead { id, size: *size, read: &read, previous: previous.as_ref() };
                out.push(back_up_disk(&connect, &r, plan, READERS, &pr).map_err(failed)?);
            }
            Ok(out)
        };
        super::blocking_reporting(work, || {
            let (done, all) = (progress.done.load(Ordering::Relaxed), total.load(Ordering::Relaxed).max(1));
            let pct = (5 + done.min(all) * 90 / all) as u8;
            task.progress(pct, &format!("read {} of {} MiB", done >> 20, all >> 20));
        })
        .await
    }
}

fn failed(e: impl std::fmt::Display) -> ControlError {
    ControlError::Failed(format!("backup: {e}"))
}

fn check_state(vm: &Vm) -> Result<(), ControlError> {
    match vm.status.state {
        VmState::Running | VmState::Paused | VmState::Stopped => {}
        s => {
            return Err(ControlError::Conflict(format!(
                "VM {} is {}: a backup needs it running, paused or stopped",
                vm.spec.name,
                s.as_str()
            )))
        }
    }
    if vm.spec.disks.is_empty() {
        return Err(ControlError::Conflict(format!("VM {} has no disks to back up", vm.spec.name)));
    }
    Ok(())
}

/// Whether disk `d` can be read by its changes since `last` (and which bitmaps hold them), or
/// must be read whole, and why.
fn plan_disk(
    d: DiskSpec,
    size: u64,
    bitmaps: Vec<DiskBitmap>,
    last: Option<&BackupIndex>,
    repo: &str,
    vm: &str,
) -> DiskPlan {
    let tracked = d.volume.is_some() && d.nbd.is_none() && d.format == DiskFormat::Qcow2;
    let previous = last.and_then(|l| l.disks.iter().find(|x| x.id == d.id)).cloned();
    let ours: Vec<&DiskBitmap> = bitmaps.iter().filter(|b| b.name.starts_with(BITMAP_PREFIX)).collect();
    let why_full = match (last, &previous) {
        (None, _) => Some(format!("the first backup of VM {vm} in repository {repo}")),
        _ if d.volume.is_none() => {
            Some(format!("disk {} is a host-path image: oxvirt keeps change maps only in volumes it made", d.id))
        }
        _ if d.nbd.is_some() => Some(format!("disk {} is on an nbd pool, which keeps no change map", d.id)),
        _ if d.format != DiskFormat::Qcow2 => Some(format!("disk {} is raw: only qcow2 volumes keep a change map", d.id)),
        (Some(l), None) => Some(format!("disk {} is not in backup {}", d.id, l.id)),
        (Some(l), Some(p)) if p.size != size => Some(format!("disk {} changed size since backup {}", d.id, l.id)),
        (Some(l), _) if ours.iter().any(|b| b.broken) => Some(format!(
            "disk {}'s change map was not saved when its QEMU last stopped (a crash or a kill): the changes since backup {} are unknown",
            d.id, l.id
        )),
        (Some(l), _) if !ours.iter().any(|b| b.name == format!("{BITMAP_PREFIX}{}", l.id)) => Some(format!(
            "disk {} has no change map since backup {} (removed, or the disk was restored or replaced)",
            d.id, l.id
        )),
        _ => None,
    };
    let since = if why_full.is_none() { ours.iter().map(|b| b.name.clone()).collect() } else { Vec::new() };
    DiskPlan { disk: d, size, tracked, since, full_reason: why_full, previous, bitmaps }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(id: &str, disks: &[(&str, u64)]) -> BackupIndex {
        let disks = disks.iter().map(|(d, s)| DiskIndex { id: (*d).into(), size: *s, chunks: vec![] }).collect();
        BackupIndex { disks, ..BackupIndex::new(id, "web", 1) }
    }

    fn volume(id: &str, format: DiskFormat) -> DiskSpec {
        serde_json::from_value(serde_json::json!({ "id": id, "volume": "p/v", "format": format.as_str() })).unwrap()
    }

    fn bm(name: &str, broken: bool) -> DiskBitmap {
        DiskBitmap { name: name.into(), broken }
    }

    #[test]
    fn a_disk_is_read_by_its_changes_only_when_they_are_known() {
        let last = index("web-1", &[("disk0", 1 << 30)]);
        let q = || volume("disk0", DiskFormat::Qcow2);
        let ok = plan_disk(
            q(),
            1 << 30,
            vec![bm("oxvirt-backup-web-1", false), bm("oxvirt-backup-web-2", false), bm("mine", false)],
            Some(&last),
            "r",
            "web",
        );
        assert_eq!(ok.since, ["oxvirt-backup-web-1", "oxvirt-backup-web-2"], "the union of oxvirt's maps, no other");
        assert!(ok.full_reason.is_none() && ok.tracked);

        let cases = [
            (plan_disk(q(), 1 << 30, vec![], None, "r", "web"), "first backup"),
            (plan_disk(volume("disk0", DiskFormat::Raw), 1 << 30, vec![], Some(&last), "r", "web"), "raw"),
            (plan_disk(q(), 2 << 30, vec![bm("oxvirt-backup-web-1", false)], Some(&last), "r", "web"), "changed size"),
            (plan_disk(q(), 1 << 30, vec![bm("oxvirt-backup-web-1", true)], Some(&last), "r", "web"), "not saved"),
            (
                plan_disk(q(), 1 << 30, vec![bm("oxvirt-backup-web-0", false)], Some(&last), "r", "web"),
                "no change map since backup web-1",
            ),
            (plan_disk(volume("disk1", DiskFormat::Qcow2), 1 << 30, vec![], Some(&last), "r", "web"), "not in backup"),
        ];
        for (p, why) in cases {
            assert!(p.since.is_empty(), "{why}");
            let reason = p.full_reason.unwrap_or_default();
            assert!(reason.contains(why), "{reason} should say {why}");
        }
        let mut host = q();
        host.volume = None;
        host.path = "/srv/img.qcow2".into();
        let p = plan_disk(host, 1 << 30, vec![], Some(&last), "r", "web");
        assert!(!p.tracked && p.full_reason.unwrap_or_default().contains("host-path"));
    }
}
