//! `nbd` pools: their export daemons (one per path), supervised, and the multipath proxies that
//! connect a VM's disk to a pool with several paths.

use crate::ControlError;
use oxvirt_model::{Pool, PoolKind, Volume};
use oxvirt_storage::nbd::{nbd_user, ExportDaemon};
use oxvirt_store::StoreExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

crate::service! {
    /// `nbd` pools' export daemons and the multipath proxies between them and a VM's QEMU.
    Nbd, nbd, state = nbd
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// The export daemons of `nbd` pools, by pool.
    pub export_daemons:
        tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<oxvirt_storage::nbd::ExportDaemon>>>,
}

fn daemon_key(pool: &str, path: u8) -> String {
    format!("{pool}#{path}")
}

impl Nbd {
    fn export_dir(&self, pool: &str, path: u8) -> PathBuf {
        self.ctl.inner.config.data_dir.join("nbd").join(pool).join(format!("path{path}"))
    }

    /// The running export daemons of an `nbd` pool, one per path: started (or found again) when
    /// needed, and started again when one died, each serving every volume of the pool.
    pub(crate) async fn export_daemons(&self, pool: &Pool) -> Result<Vec<Arc<ExportDaemon>>, ControlError> {
        let mut out = Vec::new();
        let shared = pool.spec.paths > 1;
        let mut daemons = self.state().export_daemons.lock().await;
        for path in 0..pool.spec.paths {
            let key = daemon_key(&pool.spec.name, path);
            if let Some(d) = daemons.get(&key).filter(|d| d.is_alive()) {
                out.push(d.clone());
                continue;
            }
            if daemons.contains_key(&key) {
                tracing::warn!(pool = %pool.spec.name, path, "export daemon died: starting it again");
            }
            let d = Arc::new(
                ExportDaemon::start_or_adopt(
                    &self.export_dir(&pool.spec.name, path),
                    &self.ctl.inner.config.data_dir,
                    Some(nbd_user()?),
                )
                .await?,
            );
            self.ctl.vms().share_socket(&d.nbd_socket());
            for (v, _) in self.ctl.inner.store.list_records_under::<Volume>(&format!("{}/", pool.spec.name))? {
                let served = match self.ctl.storage().volume_file(pool, &v.name, v.format) {
                    Ok(file) => d.export(&v.name, &file, v.format, shared).await.map_err(ControlError::from),
                    Err(e) => Err(e),
                };
                // One volume that cannot be served does not take the pool down.
                if let Err(e) = served {
                    tracing::error!(volume = %v.reference(), "cannot serve: {e}");
                }
            }
            daemons.insert(key, d.clone());
            out.push(d);
        }
        Ok(out)
    }

    pub(crate) async fn export_volume_everywhere(
        &self,
        pool: &Pool,
        vol: &Volume,
        file: &Path,
    ) -> Result<(), ControlError> {
        for d in self.export_daemons(pool).await? {
            d.export(&vol.name, file, vol.format, pool.spec.paths > 1).await?;
        }
        Ok(())
    }

    pub(crate) async fn stop_export_daemons(&self, pool: &str) {
        let mut daemons = self.state().export_daemons.lock().await;
        let keys: Vec<String> = daemons.keys().filter(|k| k.split('#').next() == Some(pool)).cloned().collect();
        for k in keys {
            if let Some(d) = daemons.remove(&k) {
                d.stop().await;
            }
        }
    }

    /// Keeps the export daemons of `nbd` pools running (called by the reconciler).
    pub(crate) async fn supervise_export_daemons(&self) {
        let Ok(pools) = self.ctl.inner.store.list_records::<Pool>() else { return };
        for (p, _) in pools.iter().filter(|(p, _)| p.spec.kind == PoolKind::Nbd) {
            if let Err(e) = self.export_daemons(p).await {
                tracing::error!(pool = %p.spec.name, "export daemon: {e}");
            }
        }
    }

    /// The socket a VM's disk connects to for a volume of `pool`: the export daemon's own, or,
    /// with several paths, the disk's multipath proxy.
    pub(crate) fn nbd_socket_for(&self, pool: &Pool, vm_id: &str, disk_id: &str) -> PathBuf {
        if pool.spec.paths > 1 {
            self.mpath_socket(vm_id, disk_id)
        } else {
            ExportDaemon::socket(&self.export_dir(&pool.spec.name, 0))
        }
    }

    /// A multipath proxy's socket: in a directory of the VM's own inside its (root's) run
    /// directory, the one place there the proxy, running as the VM's user, may write.
    fn mpath_socket(&self, vm_id: &str, disk_id: &str) -> PathBuf {
        self.ctl.inner.paths(vm_id).dir().join("mpath").join(format!("{disk_id}.sock"))
    }

    /// Makes sure what a VM's disks need is being served: export daemons, and multipath proxies.
    pub(crate) async fn prepare_storage(&self, vm_id: &str, spec: &oxvirt_model::VmSpec) -> Result<(), ControlError> {
        for (i, d) in spec.disks.iter().enumerate() {
            let Some(r) = &d.volume else { continue };
            let (pool, name) = oxvirt_model::parse_volume_ref(&format!("disks[{i}].volume"), r)?;
            let p = self.ctl.storage().pool_rec(&pool)?;
            if p.spec.kind != PoolKind::Nbd {
                continue;
            }
            let (vol, _) = self.ctl.storage().volume_rec(&pool, &name)?;
            self.ctl.storage().ensure_not_busy(&vol.reference())?;
            let file = self.ctl.storage().volume_file(&p, &name, vol.format)?;
            let daemons = self.export_daemons(&p).await?;
            for daemon in &daemons {
                daemon.export(&name, &file, vol.format, p.spec.paths > 1).await?;
            }
            if p.spec.paths > 1 {
                let disk_id = oxvirt_hypervisor::qemu::cmdline::disk_id(d, i);
                let upstream: Vec<PathBuf> = daemons.iter().map(|d| d.nbd_socket()).collect();
                let run_as = self.ctl.vms().run_as(&spec.name)?;
                self.ensure_mpath(vm_id, &disk_id, &upstream, run_as).await?;
            }
        }
        Ok(())
    }

    /// Starts the multipath proxy of one disk unless it runs. It is not our child for long: it
    /// lives in its own session and outlives the daemon, as the VM does. With confined QEMUs it
    /// runs as the VM's own user (`run_as`), never as root: it serves that VM's disk only.
    async fn ensure_mpath(
        &self,
        vm_id: &str,
        disk_id: &str,
        upstream: &[PathBuf],
        run_as: Option<(u32, u32)>,
    ) -> Result<(), ControlError> {
        let dir = self.ctl.inner.paths(vm_id).dir().to_path_buf();
        let listen = self.mpath_socket(vm_id, disk_id);
        let sock_dir = listen.parent().unwrap_or(&dir).to_path_buf();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&sock_dir).map_err(|e| io(&sock_dir, e))?;
        if let Some((uid, gid)) = run_as {
            // The proxy makes its socket in a directory of the VM's own; the run directory
            // (its log and pid file) stays root's.
            oxvirt_hypervisor::qemu::confine::own(&sock_dir, uid, gid, 0o700).map_err(|e| io(&sock_dir, e))?;
            oxvirt_hypervisor::qemu::confine::reachable(&sock_dir, &self.ctl.inner.config.data_dir)
                .map_err(|e| io(&sock_dir, e))?;
        }
        let pidfile = dir.join(format!("mpath-{disk_id}.pid"));
        if let Some(pid) = running_proxy(&pidfile, &listen) {
            tracing::debug!(pid, "multipath proxy runs");
            return Ok(());
        }
        let exe = std::env::current_exe().map_err(|e| io(Path::new("oxvirtd"), e))?;
        let bin = exe.with_file_name("oxvirt-mpath");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("mpath-{disk_id}.log")))
            .map_err(|e| io(&dir, e))?;
        let log2 = log.try_clone().map_err(|e| io(&dir, e))?;
        let _ = std::fs::remove_file(&listen);
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg(&listen).args(upstream).stdin(std::process::Stdio::null()).stdout(log).stderr(log2).process_group(0);
        if let Some((uid, gid)) = run_as {
            // Supplementary groups are dropped with root.
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| io(&bin, e))?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(&pidfile, format!("{pid}\n")).map_err(|e| io(&pidfile, e))?;
        // Reaped here while the daemon lives; after that, by whoever inherits it.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        for _ in 0..100 {
            if listen.exists() {
                self.ctl.vms().share_socket(&listen);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ControlError::Failed(format!("the multipath proxy for disk {disk_id} did not start")))
    }

    /// Runs `work` on a volume's image with the pool's export daemons letting go of it (refused
    /// while a running VM uses the volume); the volume is served again afterwards, whatever happened.
    pub(crate) async fn with_unexported<T>(
        &self,
        pool: &Pool,
        vol: &Volume,
        what: &str,
        work: impl std::future::Future<Output = Result<T, ControlError>>,
    ) -> Result<T, ControlError> {
        if let Some(vm) = &vol.attached_to {
            if self.ctl.vms().get_vm(vm)?.status.state.has_process() {
                return Err(ControlError::Conflict(format!(
                    "{what} of volume {} needs VM {vm} stopped: it reaches the volume over NBD",
                    vol.reference()
                )));
            }
        }
        let daemons = self.export_daemons(pool).await?;
        let file = self.ctl.storage().volume_file(pool, &vol.name, vol.format)?;
        let shared = pool.spec.paths > 1;
        let mut unexported: Vec<Arc<ExportDaemon>> = Vec::new();
        for d in &daemons {
            if let Err(e) = d.unexport(&vol.name).await {
                // Serve it again where it was let go: nothing changed.
                for u in &unexported {
                    let _ = u.export(&vol.name, &file, vol.format, shared).await;
                }
                return Err(e.into());
            }
            unexported.push(d.clone());
        }
        let r = work.await;
        for d in &daemons {
            // A failure here does not undo the work; the volume is served again at the next start.
            if let Err(e) = d.export(&vol.name, &file, vol.format, shared).await {
                tracing::warn!(volume = %vol.reference(), "serving again after {what}: {e}");
            }
        }
        r
    }

    /// Ends the multipath proxies of a VM whose QEMU is gone.
    pub(crate) fn stop_mpaths(&self, vm_id: &str) {
        let dir = self.ctl.inner.paths(vm_id).dir().to_path_buf();
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(disk) = name.strip_prefix("mpath-").and_then(|n| n.strip_suffix(".pid")) else { continue };
            let listen = self.mpath_socket(vm_id, disk);
            if let Some(pid) = running_proxy(&e.path(), &listen) {
                // SAFETY: a signal to a process whose command line we just checked.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let _ = std::fs::remove_file(e.path());
            let _ = std::fs::remove_file(listen);
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> ControlError {
    ControlError::Storage(oxvirt_storage::StorageError::io(path.display().to_string(), e))
}

/// The pid of the proxy serving `listen`, if it runs.
fn running_proxy(pidfile: &Path, listen: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.get(1) == Some(&listen.as_os_str().as_encoded_bytes())).then_some(pid)
}
