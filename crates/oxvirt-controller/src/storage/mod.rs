//! Storage pools and volumes: records in the store, files through `oxvirt-storage`.
//!
//! A new file is made before its record is written (the file step refuses to overwrite), and the
//! record is removed only after its file: no operation loses a volume, and a failure leaves at
//! worst an unreferenced file, never a record without its data.

pub(crate) mod nbd;
pub(crate) mod snapshots;

pub use nbd::Nbd;
pub use snapshots::Snapshots;

use crate::{lock, now_millis, ControlError};
use oxvirt_model::{
    parse_volume_ref, ByteSize, CloneRequest, DiskFormat, ExportRequest, ImportRequest, NbdSource, Pool, PoolKind,
    PoolSpec, PoolUsage, PoolView, Task, ValidationError, Vm, Volume, VolumeSpec,
};
use oxvirt_storage::host_paths::Want;
use oxvirt_storage::{paths, qemu_img, usage};
use oxvirt_store::{encode, Expect, Op, StoreError, StoreExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

crate::service! {
    /// Pools and volumes: records in the store, files through `oxvirt-storage`.
    Storage, storage, state = storage
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// Volumes a task is working on (`pool/name`).
    pub busy_volumes: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A running guest and the id of one of its disks.
pub(crate) type RunningDisk = (Arc<dyn oxvirt_hypervisor::Instance>, String);

pub(crate) fn volume_key(pool: &str, name: &str) -> String {
    format!("{pool}/{name}")
}

impl Storage {
    // ---- pools ----

    /// A pool's directory is a host path: only an administrator names one (see `references.rs`).
    pub async fn create_pool(&self, caller: &str, mut spec: PoolSpec) -> Result<Pool, ControlError> {
        spec.validate()?;
        let me = self.ctl.hosts().host_name();
        let resolved = self.ctl.access().host_path_string(caller, "path", spec.path_on(me.as_deref()), Want::Dir)?;
        match me.as_deref().and_then(|h| spec.host_paths.get_mut(h)) {
            Some(p) => *p = resolved,
            None => spec.path = resolved,
        }
        for (host, p) in &spec.host_paths {
            if Some(host.as_str()) != me.as_deref() {
                // Another host's directory is checked by syntax here (the model) and used only there.
                oxvirt_model::validate_host_path(&format!("host_paths.{host}"), p)?;
            }
        }
        let dir = Path::new(spec.path_on(me.as_deref()));
        if self
            .ctl
            .inner
            .store
            .list_records::<Pool>()?
            .iter()
            .any(|(p, _)| Path::new(p.spec.path_on(me.as_deref())) == dir)
        {
            return Err(ControlError::invalid("path", format!("{} is already a pool's directory", dir.display())));
        }
        if dir.starts_with(self.ctl.inner.config.data_dir.join("run")) {
            return Err(ControlError::invalid("path", "must not be inside oxvirt's runtime directory"));
        }
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ControlError::invalid("path", format!("{} exists and is not a directory", dir.display())))
            }
            Err(_) => oxvirt_hypervisor::qemu::confine::make_passable_dirs(dir)
                .map_err(|e| ControlError::invalid("path", format!("cannot create {}: {e}", dir.display())))?,
        }
        let pool = Pool { spec, created_at: now_millis() };
        self.ctl.inner.store.put_record(&pool.spec.name, &pool, Expect::Absent).map_err(|e| match e {
            StoreError::Conflict { .. } => ControlError::Exists(ValidationError::new(
                "name",
                format!("a pool named {:?} already exists", pool.spec.name),
            )),
            e => e.into(),
        })?;
        if pool.spec.kind == PoolKind::Nbd {
            if let Err(e) = self.ctl.nbd().export_daemons(&pool).await {
                let _ = self.ctl.inner.store.delete_record::<Pool>(&pool.spec.name, Expect::Any);
                return Err(e);
            }
        }
        Ok(pool)
    }

    pub(crate) fn pool_rec(&self, name: &str) -> Result<Pool, ControlError> {
        self.pool(name)
    }

    fn pool(&self, name: &str) -> Result<Pool, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<Pool>(name)?
            .map(|(p, _)| p)
            .ok_or_else(|| ControlError::NotFound { kind: "pool", name: name.to_string() })
    }

    fn pool_usage(&self, pool: &Pool) -> Result<PoolUsage, ControlError> {
        // A local pool of a cluster has its directory on a host once a volume of its is there.
        let dir = self.pool_dir(pool);
        let (size, used, free) = if dir.exists() { usage::filesystem(&dir)? } else { (0, 0, 0) };
        let vols = self.ctl.inner.store.list_records_under::<Volume>(&format!("{}/", pool.spec.name))?;
        let mut u = PoolUsage { size, used, free, volumes: vols.len(), ..Default::default() };
        for (v, _) in &vols {
            u.provisioned += v.size.0;
            if let Ok(p) = self.volume_file(pool, &v.name, v.format) {
                u.allocated += usage::allocated(&p);
            }
        }
        Ok(u)
    }

    pub fn get_pool(&self, name: &str) -> Result<PoolView, ControlError> {
        let pool = self.pool(name)?;
        let usage = self.pool_usage(&pool)?;
        Ok(PoolView { pool, usage })
    }

    pub fn list_pools(&self) -> Result<Vec<PoolView>, ControlError> {
        self.ctl
            .inner
            .store
            .list_records::<Pool>()?
            .into_iter()
            .map(|(pool, _)| Ok(PoolView { usage: self.pool_usage(&pool)?, pool }))
            .collect()
    }

    /// Deletes an empty pool's record; its directory stays.
    pub async fn delete_pool(&self, name: &str) -> Result<(), ControlError> {
        let (_, rev) = self
            .ctl
            .inner
            .store
            .get_record::<Pool>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "pool", name: name.into() })?;
        let n = self.ctl.inner.store.list_records_under::<Volume>(&format!("{name}/"))?.len();
        if n > 0 {
            return Err(ControlError::InUse(format!("pool {name} still has {n} volume(s): delete them first")));
        }
        self.ctl.inner.store.delete_record::<Pool>(name, Expect::Revision(rev))?;
        self.ctl.nbd().stop_export_daemons(name).await;
        Ok(())
    }

    // ---- volumes ----

    /// The pool's directory on this host.
    pub(crate) fn pool_dir(&self, pool: &Pool) -> PathBuf {
        PathBuf::from(pool.spec.path_on(self.ctl.hosts().host_name().as_deref()))
    }

    pub(crate) fn volume_file(&self, pool: &Pool, name: &str, format: DiskFormat) -> Result<PathBuf, ControlError> {
        let dir = self.pool_dir(pool);
        // Checked on the host that uses it (a pool made elsewhere, or before these rules, too).
        self.ctl.inner.host_paths.check(
            &format!("pools/{}.path", pool.spec.name),
            &dir.to_string_lossy(),
            Want::Dir,
        )?;
        // A local pool of a cluster gets its directory on a host with its first volume there
        // (a shared one must be mounted: its directory is never made here).
        if pool.spec.kind == PoolKind::Dir && !dir.exists() {
            oxvirt_hypervisor::qemu::confine::make_passable_dirs(&dir)
                .map_err(|e| ControlError::Host(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(paths::volume_file(&dir, name, format)?)
    }

    /// Where a new volume of `pool` lives: in a cluster, a local pool's volumes are on this host.
    fn volume_host(&self, pool: &Pool) -> Option<String> {
        self.ctl.hosts().host_name().filter(|_| !pool.spec.kind.is_shared())
    }

    /// In a cluster: the host that holds `spec`'s volumes in local pools (a VM runs where its
    /// local disks are), refusing volumes on two hosts or elsewhere than `host` (the VM's).
    pub(crate) fn local_volumes_host(
        &self,
        spec: &oxvirt_model::VmSpec,
        host: Option<&str>,
    ) -> Result<Option<String>, ControlError> {
        let mut found: Option<String> = host.map(str::to_string);
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(r) = &d.volume else { continue };
            let field = format!("disks[{i}].volume");
            let (pool, name) = parse_volume_ref(&field, r)?;
            let Some((vol, _)) = self.ctl.inner.store.get_record::<Volume>(&volume_key(&pool, &name))? else {
                continue;
            };
            let Some(at) = vol.host else { continue };
            match &found {
                Some(h) if *h != at => {
                    return Err(ControlError::invalid(
                        field,
                        format!("volume {r} is on host {at} (a local pool), and the VM on {h}: a VM runs where its local disks are"),
                    ))
                }
                _ => found = Some(at),
            }
        }
        Ok(found.filter(|_| self.ctl.hosts().host_name().is_some()))
    }

    /// Refuses to change a volume that lives on another host of the cluster.
    pub(crate) fn volume_here(&self, vol: &Volume) -> Result<(), ControlError> {
        match (&vol.host, self.ctl.hosts().host_name()) {
            (Some(h), Some(me)) if *h != me => Err(ControlError::Conflict(format!(
                "volume {} is on host {h} (a local pool): ask that host",
                vol.reference()
            ))),
            _ => Ok(()),
        }
    }

    pub fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, ControlError> {
        self.volume_rec(pool, name).map(|(v, _)| v)
    }

    pub(crate) fn volume_rec(&self, pool: &str, name: &str) -> Result<(Volume, u64), ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<Volume>(&volume_key(pool, name))?
            .ok_or_else(|| ControlError::NotFound { kind: "volume", name: volume_key(pool, name) })
    }

    pub fn list_volumes(&self, pool: &str) -> Result<Vec<Volume>, ControlError> {
        self.pool(pool)?;
        Ok(self
            .ctl
            .inner
            .store
            .list_records_under::<Volume>(&format!("{pool}/"))?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Refuses a new volume of `size` that would take the pool past its over-commit ratio.
    fn check_room(&self, pool: &Pool, size: u64) -> Result<(), ControlError> {
        let u = self.pool_usage(pool)?;
        let allowed = (u.size as f64 * pool.spec.overcommit) as u64;
        if u.provisioned.saturating_add(size) > allowed {
            return Err(ControlError::invalid(
                "size",
                format!(
                    "pool {} would be over-committed: {} provisioned + {} asked > {} allowed ({}x its {})",
                    pool.spec.name,
                    ByteSize(u.provisioned),
                    ByteSize(size),
                    ByteSize(allowed),
                    pool.spec.overcommit,
                    ByteSize(u.size)
                ),
            ));
        }
        Ok(())
    }

    /// Records a volume whose file is already made; removes the file when the record cannot be
    /// written (e.g. a volume of that name appeared meanwhile).
    fn record_new_volume(&self, vol: Volume, file: &Path) -> Result<Volume, ControlError> {
        match self.ctl.inner.store.put_record(&vol.reference(), &vol, Expect::Absent) {
            Ok(_) => Ok(vol),
            Err(e) => {
                let _ = std::fs::remove_file(file);
                Err(match e {
                    StoreError::Conflict { .. } => ControlError::Exists(ValidationError::new(
                        "name",
                        format!("a volume named {:?} already exists in pool {}", vol.name, vol.pool),
                    )),
                    e => e.into(),
                })
            }
        }
    }

    fn check_new_volume_name(&self, pool: &str, name: &str) -> Result<(), ControlError> {
        oxvirt_model::validate_name("name", name)?;
        self.ensure_not_busy(&volume_key(pool, name))?;
        if self.ctl.inner.store.get_record::<Volume>(&volume_key(pool, name))?.is_some() {
            return Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("a volume named {name:?} already exists in pool {pool}"),
            )));
        }
        Ok(())
    }

    /// A new empty volume (thin: a qcow2 takes almost nothing until written).
    pub async fn create_volume(&self, pool: &str, spec: VolumeSpec) -> Result<Volume, ControlError> {
        spec.validate()?;
        let pool = self.pool(pool)?;
        let size = spec.size.ok_or_else(|| ControlError::invalid("size", "is required"))?;
        check_multipath_format(&pool, spec.format)?;
        self.check_new_volume_name(&pool.spec.name, &spec.name)?;
        let _hold = self.hold(&[volume_key(&pool.spec.name, &spec.name)])?;
        self.check_room(&pool, size.0)?;
        let file = self.volume_file(&pool, &spec.name, spec.format)?;
        qemu_img::create(&file, spec.format, Some(size.0), None).await?;
        let vol = Volume {
            pool: pool.spec.name.clone(),
            name: spec.name,
            format: spec.format,
            size,
            backing: None,
            attached_to: None,
            snapshots: Vec::new(),
            created_at: now_millis(),
            host: self.volume_host(&pool),
        };
        let vol = self.record_new_volume(vol, &file)?;
        self.serve_new_volume(&pool, &vol, &file).await?;
        Ok(vol)
    }

    /// An `nbd` pool serves a new volume at once; if it cannot, the volume is taken back whole.
    async fn serve_new_volume(&self, pool: &Pool, vol: &Volume, file: &Path) -> Result<(), ControlError> {
        if pool.spec.kind != PoolKind::Nbd {
            return Ok(());
        }
        let served = self.ctl.nbd().export_volume_everywhere(pool, vol, file).await;
        if let Err(e) = served {
            let _ = self.ctl.inner.store.delete_record::<Volume>(&vol.reference(), Expect::Any);
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a volume: refused while a VM uses it or a linked clone is based on it.
    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ControlError> {
        let (vol, rev) = self.volume_rec(pool, name)?;
        self.volume_here(&vol)?;
        if let Some(vm) = &vol.attached_to {
            return Err(ControlError::InUse(format!(
                "volume {} is attached to VM {vm}: detach it first",
                vol.reference()
            )));
        }
        let me = vol.reference();
        if let Some((clone, _)) = self
            .ctl
            .inner
            .store
            .list_records::<Volume>()?
            .into_iter()
            .find(|(v, _)| v.backing.as_deref() == Some(me.as_str()))
        {
            return Err(ControlError::InUse(format!(
                "volume {me} is the base of linked clone {}: delete that first",
                clone.reference()
            )));
        }
        let _hold = self.hold(std::slice::from_ref(&me))?;
        let p = self.pool(pool)?;
        let file = self.volume_file(&p, name, vol.format)?;
        // The record goes first, compare-and-swap: a VM that claimed the volume meanwhile makes
        // this fail with nothing changed. After it, at worst an unreferenced file is left.
        self.ctl.inner.store.delete_record::<Volume>(&me, Expect::Revision(rev)).map_err(|e| match e {
            StoreError::Conflict { .. } => ControlError::Busy(format!("volume {me} changed meanwhile; try again")),
            e => e.into(),
        })?;
        if p.spec.kind == PoolKind::Nbd {
            match self.ctl.nbd().export_daemons(&p).await {
                Ok(daemons) => {
                    for d in daemons {
                        if let Err(e) = d.unexport(name).await {
                            tracing::warn!(volume = %me, "unexport: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!(volume = %me, "unexport: {e}"),
            }
        }
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(oxvirt_storage::StorageError::io(format!("delete {}", file.display()), e).into()),
        }
    }

    /// Grows a volume; when a running VM uses it, live, so the guest sees the new size.
    pub async fn resize_volume(&self, pool: &str, name: &str, size: ByteSize) -> Result<Volume, ControlError> {
        let (vol, _) = self.volume_rec(pool, name)?;
        self.volume_here(&vol)?;
        if size.0 <= vol.size.0 {
            return Err(ControlError::invalid(
                "size",
                format!("must be larger than the current {} (volumes only grow)", vol.size),
            ));
        }
        if !size.0.is_multiple_of(512) {
            return Err(ControlError::invalid("size", "must be a multiple of 512 bytes"));
        }
        let p = self.pool(pool)?;
        self.check_room(&p, size.0 - vol.size.0)?;
        let _hold = self.hold(&[vol.reference()])?;
        let file = self.volume_file(&p, name, vol.format)?;
        if p.spec.kind == PoolKind::Nbd {
            let grow = async { Ok(qemu_img::resize(&file, vol.format, size.0).await?) };
            self.ctl.nbd().with_unexported(&p, &vol, "resizing", grow).await?;
        } else {
            match self.running_disk(&vol)? {
                Some((instance, disk_id)) => {
                    instance.disks().resize(&disk_id, size.0).await?;
                }
                None => qemu_img::resize(&file, vol.format, size.0).await?,
            }
        }
        let updated = self.ctl.inner.store.update_record::<Volume>(&vol.reference(), |v| v.size = size)?;
        updated.ok_or_else(|| ControlError::NotFound { kind: "volume", name: vol.reference() })
    }

    /// The running guest that has this volume attached, and the disk's id in it.
    pub(crate) fn running_disk(&self, vol: &Volume) -> Result<Option<RunningDisk>, ControlError> {
        let Some(vm_name) = &vol.attached_to else { return Ok(None) };
        let vm = self.ctl.vms().get_vm(vm_name)?;
        if !vm.status.state.has_process() {
            return Ok(None);
        }
        let me = vol.reference();
        let (i, d) = vm
            .spec
            .disks
            .iter()
            .enumerate()
            .find(|(_, d)| d.volume.as_deref() == Some(me.as_str()))
            .ok_or_else(|| ControlError::Conflict(format!("VM {vm_name} does not list volume {me}")))?;
        let instance = self.ctl.vms().instance(vm_name)?;
        Ok(Some((instance, oxvirt_hypervisor::qemu::cmdline::disk_id(d, i))))
    }

    pub(crate) fn ensure_not_busy(&self, volume: &str) -> Result<(), ControlError> {
        if lock(&self.state().busy_volumes).contains(volume) {
            return Err(ControlError::Busy(format!("volume {volume} is busy with a task; try again when it ends")));
        }
        Ok(())
    }

    /// Marks volumes busy for a task's life.
    fn hold(&self, volumes: &[String]) -> Result<VolumeHold, ControlError> {
        let mut busy = lock(&self.state().busy_volumes);
        if let Some(v) = volumes.iter().find(|v| busy.contains(*v)) {
            return Err(ControlError::Busy(format!("volume {v} is busy with a task; try again when it ends")));
        }
        busy.extend(volumes.iter().cloned());
        Ok(VolumeHold { storage: self.clone(), volumes: volumes.to_vec() })
    }

    /// A linked clone (instant) or a full clone (a task).
    /// `caller` needs the right to change the pool the copy goes to, too.
    pub async fn clone_volume(
        &self,
        caller: &str,
        pool: &str,
        name: &str,
        req: CloneRequest,
    ) -> Result<(Option<Volume>, Option<Task>), ControlError> {
        let (src, _) = self.volume_rec(pool, name)?;
        self.volume_here(&src)?;
        let src_pool = self.pool(pool)?;
        if let Some(dst) = req.pool.as_deref().filter(|d| *d != pool) {
            self.ctl
                .access()
                .authorize(caller, oxvirt_model::Privilege::Modify, &format!("/pools/{dst}"))
                .map_err(|e| crate::access::references::named("pool", e))?;
        }
        let dst_pool = self.pool(req.pool.as_deref().unwrap_or(pool))?;
        if req.linked && (src_pool.spec.kind == PoolKind::Nbd || dst_pool.spec.kind == PoolKind::Nbd) {
            return Err(ControlError::invalid(
                "linked",
                "volumes in nbd pools have no linked clones (their export daemon writes the base): use a full clone",
            ));
        }
        if !req.linked {
            check_multipath_format(&dst_pool, src.format)?;
        }
        self.check_new_volume_name(&dst_pool.spec.name, &req.name)?;
        self.check_room(&dst_pool, src.size.0)?;
        let src_file = self.volume_file(&self.pool(pool)?, name, src.format)?;
        let dst_format = if req.linked { DiskFormat::Qcow2 } else { src.format };
        let dst_file = self.volume_file(&dst_pool, &req.name, dst_format)?;
        let new = Volume {
            pool: dst_pool.spec.name.clone(),
            name: req.name.clone(),
            format: dst_format,
            size: src.size,
            backing: req.linked.then(|| src.reference()),
            attached_to: None,
            snapshots: Vec::new(),
            created_at: now_millis(),
            host: self.volume_host(&dst_pool),
        };
        if req.linked {
            if src.attached_to.is_some() {
                return Err(ControlError::InUse(format!(
                    "volume {} is attached to a VM: a linked clone needs a base nobody writes to (a template)",
                    src.reference()
                )));
            }
            let _hold = self.hold(&[new.reference()])?;
            qemu_img::create(&dst_file, DiskFormat::Qcow2, None, Some((&src_file, src.format))).await?;
            return Ok((Some(self.record_new_volume(new, &dst_file)?), None));
        }
        let hold = self.hold(&[src.reference(), new.reference()])?;
        let task = self.ctl.inner.tasks.create("volume.clone", &format!("volumes/{}", new.reference()))?;
        let snap = task.snapshot();
        let me = self.clone();
        let src_format = src.format.as_str().to_string();
        tokio::spawn(async move {
            let _hold = hold;
            let copy = me.copy_image(&task, &src_file, Some(&src_format), &dst_file, dst_format);
            // A source in an nbd pool is let go by its export daemons while it is read.
            let r = if src_pool.spec.kind == PoolKind::Nbd {
                me.ctl.nbd().with_unexported(&src_pool, &src, "cloning", copy).await
            } else {
                copy.await
            };
            let r = match r.and_then(|_| me.record_new_volume(new, &dst_file)) {
                Ok(v) => me.serve_new_volume(&dst_pool, &v, &dst_file).await,
                Err(e) => Err(e),
            };
            task.finish(r.map_err(|e| e.to_string()));
        });
        Ok((None, Some(snap)))
    }

    /// Imports an image file (qcow2, raw, vmdk) as a new volume, as a task with progress.
    /// The source is a host path: only an administrator names one (see `references.rs`).
    pub async fn import_volume(&self, caller: &str, pool: &str, req: ImportRequest) -> Result<Task, ControlError> {
        let pool = self.pool(pool)?;
        self.check_new_volume_name(&pool.spec.name, &req.name)?;
        oxvirt_model::validate_host_path("source", &req.source)?;
        let source = self.ctl.access().host_path(caller, "source", &req.source, Want::File)?;
        if let Some(f) = &req.source_format {
            if !["qcow2", "raw", "vmdk"].contains(&f.as_str()) {
                return Err(ControlError::invalid("source_format", "must be qcow2, raw or vmdk"));
            }
        }
        let info = qemu_img::info(&source, None)
            .await
            .map_err(|e| ControlError::invalid("source", format!("not a readable image: {e}")))?;
        if let Some(f) = &req.source_format {
            if f != &info.format {
                return Err(ControlError::invalid("source_format", format!("the file is {}, not {f}", info.format)));
            }
        }
        let others = info.other_files(&source);
        if !others.is_empty() {
            return Err(ControlError::invalid(
                "source",
                format!("refers to other files ({}): import a standalone image", others.join(", ")),
            ));
        }
        self.check_room(&pool, info.virtual_size)?;
        check_multipath_format(&pool, req.format)?;
        let dst = self.volume_file(&pool, &req.name, req.format)?;
        let pool = pool.clone();
        let new = Volume {
            pool: pool.spec.name.clone(),
            name: req.name.clone(),
            format: req.format,
            size: ByteSize(info.virtual_size),
            backing: None,
            attached_to: None,
            snapshots: Vec::new(),
            created_at: now_millis(),
            host: self.volume_host(&pool),
        };
        let hold = self.hold(&[new.reference()])?;
        let task = self.ctl.inner.tasks.create("volume.import", &format!("volumes/{}", new.reference()))?;
        let snap = task.snapshot();
        let me = self.clone();
        tokio::spawn(async move {
            let _hold = hold;
            let r = me.copy_image(&task, &source, Some(&info.format), &dst, new.format).await;
            let r = match r.and_then(|_| me.record_new_volume(new, &dst)) {
                Ok(v) => me.serve_new_volume(&pool, &v, &dst).await,
                Err(e) => Err(e),
            };
            task.finish(r.map_err(|e| e.to_string()));
        });
        Ok(snap)
    }

    /// Exports a volume to a new file on the host, as a task with progress.
    /// The destination is a host path: only an administrator names one (see `references.rs`).
    pub async fn export_volume(
        &self,
        caller: &str,
        pool: &str,
        name: &str,
        req: ExportRequest,
    ) -> Result<Task, ControlError> {
        let (vol, _) = self.volume_rec(pool, name)?;
        self.volume_here(&vol)?;
        oxvirt_model::validate_host_path("destination", &req.destination)?;
        let dest = self.ctl.access().host_path(caller, "destination", &req.destination, Want::NewFile)?;
        if self.running_disk(&vol)?.is_some() {
            return Err(ControlError::Conflict(format!(
                "volume {} is in use by a running VM: stop it or snapshot first",
                vol.reference()
            )));
        }
        let p = self.pool(pool)?;
        let src = self.volume_file(&p, name, vol.format)?;
        let hold = self.hold(&[vol.reference()])?;
        let task = self.ctl.inner.tasks.create("volume.export", &format!("volumes/{}", vol.reference()))?;
        let snap = task.snapshot();
        let me = self.clone();
        tokio::spawn(async move {
            let _hold = hold;
            let copy = me.copy_image(&task, &src, Some(vol.format.as_str()), &dest, req.format);
            // An nbd pool's export daemons let go of the image while it is read.
            let r = if p.spec.kind == PoolKind::Nbd {
                me.ctl.nbd().with_unexported(&p, &vol, "exporting", copy).await
            } else {
                copy.await
            };
            task.finish(r.map_err(|e| e.to_string()));
        });
        Ok(snap)
    }

    async fn copy_image(
        &self,
        task: &crate::tasks::TaskHandle,
        src: &Path,
        src_format: Option<&str>,
        dst: &Path,
        dst_format: DiskFormat,
    ) -> Result<(), ControlError> {
        task.progress(1, "copying");
        // `DELETE /tasks/{id}` sets the task's own flag; qemu-img is stopped when it is set.
        let r = qemu_img::convert(
            src,
            src_format,
            dst,
            dst_format,
            |p| task.progress(p.min(99), "copying"),
            task.cancel_flag(),
        )
        .await;
        Ok(r?)
    }

    // ---- VMs' disks ----

    /// The VM spec QEMU gets: volumes resolved to their files and formats.
    pub(crate) fn resolve_disks(
        &self,
        vm_id: &str,
        spec: &oxvirt_model::VmSpec,
    ) -> Result<oxvirt_model::VmSpec, ControlError> {
        let mut s = spec.clone();
        // Host paths are checked again each time QEMU gets them: a record made before a root was
        // taken out of the configuration (or before these rules) cannot reach the host.
        let hp = &self.ctl.inner.host_paths;
        if let Some(k) = &s.kernel {
            hp.check("kernel.kernel", &k.kernel, Want::File)?;
            if let Some(i) = &k.initrd {
                hp.check("kernel.initrd", i, Want::File)?;
            }
        }
        for (i, d) in s.disks.iter_mut().enumerate() {
            if d.id.is_empty() {
                d.id = format!("disk{i}");
            }
            if d.is_host_path() {
                let resolved = hp.check(&format!("disks[{i}].path"), &d.path, Want::File)?;
                d.path = resolved.to_string_lossy().into_owned();
                self.ctl.access().check_image_chain(&format!("disks[{i}].path"), d)?;
            }
            if let Some(r) = &d.volume {
                let (pool, name) = parse_volume_ref(&format!("disks[{i}].volume"), r)?;
                let (vol, _) = self.volume_rec(&pool, &name)?;
                let p = self.pool(&pool)?;
                d.path = self.volume_file(&p, &name, vol.format)?.to_string_lossy().into_owned();
                d.format = vol.format;
                if p.spec.kind == PoolKind::Nbd {
                    let socket = self.ctl.nbd().nbd_socket_for(&p, vm_id, &d.id).to_string_lossy().into_owned();
                    d.nbd = Some(NbdSource { socket, export: name });
                }
            }
        }
        Ok(s)
    }

    /// Store operations that give the volumes `spec` names to VM `vm` and take back those it no
    /// longer names; part of the same transaction as the VM's record.
    pub(crate) fn volume_claims(
        &self,
        vm: &str,
        old: Option<&oxvirt_model::VmSpec>,
        new: Option<&oxvirt_model::VmSpec>,
    ) -> Result<Vec<Op>, ControlError> {
        let refs = |s: Option<&oxvirt_model::VmSpec>| -> Vec<String> {
            s.map(|s| s.disks.iter().filter_map(|d| d.volume.clone()).collect()).unwrap_or_default()
        };
        let (before, after) = (refs(old), refs(new));
        let mut ops = Vec::new();
        for (i, r) in after.iter().enumerate() {
            if before.contains(r) {
                continue;
            }
            if after[..i].contains(r) {
                return Err(ControlError::invalid("disks", format!("volume {r} is listed twice")));
            }
            let field = format!("disks[{i}].volume");
            let (pool, name) = parse_volume_ref(&field, r)?;
            let (mut vol, rev) = self
                .ctl
                .inner
                .store
                .get_record::<Volume>(&volume_key(&pool, &name))?
                .ok_or_else(|| ControlError::invalid(field.clone(), format!("volume {r} does not exist")))?;
            if let Some(other) = &vol.attached_to {
                if other != vm {
                    return Err(ControlError::InUse(format!("volume {r} is attached to VM {other}")));
                }
            }
            self.ensure_not_busy(r)?;
            vol.attached_to = Some(vm.to_string());
            ops.push(Op::Put {
                key: <Volume as oxvirt_store::Record>::key_of(r),
                value: encode(&vol),
                expect: Expect::Revision(rev),
            });
        }
        for r in before.iter().filter(|r| !after.contains(r)) {
            if let Some((mut vol, rev)) = self.ctl.inner.store.get_record::<Volume>(r)? {
                if vol.attached_to.as_deref() == Some(vm) {
                    vol.attached_to = None;
                    ops.push(Op::Put {
                        key: <Volume as oxvirt_store::Record>::key_of(r),
                        value: encode(&vol),
                        expect: Expect::Revision(rev),
                    });
                }
            }
        }
        Ok(ops)
    }

    /// Writes a VM record together with its volumes' claims and its NICs' leases, or nothing.
    pub(crate) fn write_vm_with_claims(
        &self,
        vm: &Vm,
        expect: Expect,
        old: Option<&oxvirt_model::VmSpec>,
    ) -> Result<(), ControlError> {
        self.write_vm_with(vm, expect, old, vec![])
    }

    /// The same, with `extra` operations in the transaction.
    pub(crate) fn write_vm_with(
        &self,
        vm: &Vm,
        expect: Expect,
        old: Option<&oxvirt_model::VmSpec>,
        extra: Vec<Op>,
    ) -> Result<(), ControlError> {
        // The VM's own key first: a conflict on it is the one reported (a VM of that name exists,
        // or it changed meanwhile), whatever else the transaction would have found.
        let mut ops =
            vec![Op::Put { key: <Vm as oxvirt_store::Record>::key_of(&vm.spec.name), value: encode(vm), expect }];
        ops.extend(extra);
        ops.extend(self.volume_claims(&vm.spec.name, old, Some(&vm.spec))?);
        ops.extend(self.ctl.ipam().lease_ops(&vm.spec.name, old, Some(&vm.spec)));
        ops.extend(self.ctl.ipam().mac_ops(&vm.spec.name, old, Some(&vm.spec)));
        self.ctl.inner.store.txn(ops)?;
        for n in crate::Ipam::networks_touched(old, Some(&vm.spec)) {
            self.ctl.networks().sync_dhcp(&n);
        }
        Ok(())
    }
}

fn check_multipath_format(pool: &Pool, format: DiskFormat) -> Result<(), ControlError> {
    if pool.spec.paths > 1 && format != DiskFormat::Raw {
        return Err(ControlError::invalid(
            "format",
            format!(
                "pool {} has {} paths: its volumes must be raw, the one format several servers may share",
                pool.spec.name, pool.spec.paths
            ),
        ));
    }
    Ok(())
}

/// Volumes held busy by a task; released when dropped.
pub(crate) struct VolumeHold {
    storage: Storage,
    volumes: Vec<String>,
}

impl Drop for VolumeHold {
    fn drop(&mut self) {
        let mut busy = lock(&self.storage.state().busy_volumes);
        for v in &self.volumes {
            busy.remove(v);
        }
    }
}
