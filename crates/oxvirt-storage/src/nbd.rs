//! The export daemon of an `nbd` pool: one qemu-storage-daemon that serves the pool's volumes
//! over NBD on a Unix socket. oxvirt starts it, finds it again after its own restart (pidfile and
//! command line), and starts it again when it dies; VMs ride that out with QEMU's NBD reconnect.
//! It runs as oxvirt's system user [`NBD_USER`], not root: the volumes it serves (files oxvirt
//! made) are given to that user when they are exported.

use crate::StorageError;
use oxvirt_model::DiskFormat;
use oxvirt_qemu::commands::{block, nbd, run};
use oxvirt_qemu::process::{self, Pidfd};
use oxvirt_qemu::qmp::Qmp;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const PROGRAM: &str = "qemu-storage-daemon";

/// The system user export daemons run as.
pub const NBD_USER: &str = "oxvirt-nbd";

/// The export daemons' user, made on first use.
pub fn nbd_user() -> Result<(u32, u32), StorageError> {
    oxvirt_qemu::identity::system_user(NBD_USER, "oxvirt NBD export daemons")
        .map_err(|e| StorageError::io(format!("system user {NBD_USER}"), e))
}

pub struct ExportDaemon {
    dir: PathBuf,
    qmp: Arc<Qmp>,
    pidfd: Pidfd,
    /// The user it runs as (its volumes are that user's), if not root.
    run_as: Option<(u32, u32)>,
}

fn qerr(e: impl std::fmt::Display) -> StorageError {
    StorageError::QemuImg { op: "export daemon".into(), message: e.to_string() }
}

/// Node names stay short (QEMU allows 31 characters; volume names may have 63): a hash of the name.
fn node_tag(name: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}
fn file_node(name: &str) -> String {
    format!("f{}", node_tag(name))
}
fn format_node(name: &str) -> String {
    format!("v{}", node_tag(name))
}

impl ExportDaemon {
    /// The NBD socket of the daemon whose runtime directory is `dir`.
    pub fn socket(dir: &Path) -> PathBuf {
        dir.join("nbd.sock")
    }

    fn pidfile(dir: &Path) -> PathBuf {
        dir.join("qsd.pid")
    }

    fn monitor(dir: &Path) -> PathBuf {
        dir.join("qmp.sock")
    }

    /// Finds the daemon of `dir` if it runs, or starts it, as `run_as` (its runtime directory
    /// becomes that user's). `dir` is oxvirt's below `base` (its data directory).
    pub async fn start_or_adopt(
        dir: &Path,
        base: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<ExportDaemon, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io(format!("create {}", dir.display()), e))?;
        if let Some((uid, gid)) = run_as {
            let io = |e| StorageError::io(format!("give {} to the export daemon", dir.display()), e);
            oxvirt_qemu::identity::own(dir, uid, gid, 0o700).map_err(io)?;
            oxvirt_qemu::identity::reachable(dir, base).map_err(io)?;
        }
        let pidfile = Self::pidfile(dir);
        let running = process::read_pidfile(&pidfile)
            .map_err(qerr)?
            .filter(|pid| process::has_args(*pid, b"--pidfile", pidfile.as_os_str().as_encoded_bytes()));
        let pid = match running {
            Some(pid) => pid,
            None => {
                for p in [Self::socket(dir), Self::monitor(dir)] {
                    let _ = std::fs::remove_file(p);
                }
                let s = |p: PathBuf| p.to_string_lossy().replace(',', ",,");
                let args = vec![
                    "--nbd-server".to_string(),
                    format!("addr.type=unix,addr.path={}", s(Self::socket(dir))),
                    "--chardev".to_string(),
                    format!("socket,id=m0,path={},server=on,wait=off", s(Self::monitor(dir))),
                    "--monitor".to_string(),
                    "chardev=m0".to_string(),
                    "--pidfile".to_string(),
                    pidfile.to_string_lossy().into_owned(),
                    "--daemonize".to_string(),
                ];
                process::spawn_daemonized(PROGRAM, &args, &pidfile, run_as).await.map_err(qerr)?
            }
        };
        let pidfd = Pidfd::open(pid).map_err(qerr)?;
        let qmp = Qmp::connect(&Self::monitor(dir), Duration::from_secs(10)).await.map_err(qerr)?;
        Ok(ExportDaemon { dir: dir.to_path_buf(), qmp, pidfd, run_as })
    }

    pub fn nbd_socket(&self) -> PathBuf {
        Self::socket(&self.dir)
    }

    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    pub fn is_alive(&self) -> bool {
        !self.qmp.is_closed()
            && process::has_args(self.pid(), b"--pidfile", Self::pidfile(&self.dir).as_os_str().as_encoded_bytes())
    }

    async fn exports(&self) -> Result<Vec<String>, StorageError> {
        nbd::query_block_exports(&self.qmp).await.map_err(qerr)
    }

    /// Serves volume `name` (its image `file`) as the NBD export `name`; does nothing if it is served.
    /// `shared`: another export daemon serves the same (raw) image too, so it is opened without
    /// the image lock.
    pub async fn export(&self, name: &str, file: &Path, format: DiskFormat, shared: bool) -> Result<(), StorageError> {
        if self.exports().await?.iter().any(|e| e == name) {
            return Ok(());
        }
        if shared && format != DiskFormat::Raw {
            return Err(StorageError::Unsafe(format!(
                "{name}: only raw images may be served by several daemons at once"
            )));
        }
        if let Some((uid, gid)) = self.run_as {
            // A volume's image (oxvirt made it) is the export daemon's to open.
            let io = |e| StorageError::io(format!("give {} to the export daemon", file.display()), e);
            oxvirt_qemu::identity::own(file, uid, gid, 0o600).map_err(io)?;
            oxvirt_qemu::identity::reachable(file, file.parent().unwrap_or(file)).map_err(io)?;
        }
        let q = &self.qmp;
        let mut node = json!({ "driver": "file", "filename": file, "node-name": file_node(name) });
        if shared {
            node["locking"] = json!("off");
        }
        block::blockdev_add(q, node).await.map_err(qerr)?;
        let fmt = json!({ "driver": format.as_str(), "file": file_node(name), "node-name": format_node(name) });
        if let Err(e) = block::blockdev_add(q, fmt).await {
            let _ = block::blockdev_del(q, &file_node(name)).await;
            return Err(qerr(e));
        }
        if let Err(e) = nbd::block_export_add(q, name, &format_node(name), name, true).await {
            let _ = block::blockdev_del(q, &format_node(name)).await;
            let _ = block::blockdev_del(q, &file_node(name)).await;
            return Err(qerr(e));
        }
        Ok(())
    }

    /// Stops serving volume `name` and closes its image.
    pub async fn unexport(&self, name: &str) -> Result<(), StorageError> {
        if !self.exports().await?.iter().any(|e| e == name) {
            return Ok(());
        }
        nbd::block_export_del(&self.qmp, name, Duration::from_secs(10)).await.map_err(qerr)?;
        block::blockdev_del(&self.qmp, &format_node(name)).await.map_err(qerr)?;
        block::blockdev_del(&self.qmp, &file_node(name)).await.map_err(qerr)?;
        Ok(())
    }

    /// An internal snapshot of a served qcow2 volume, taken by the daemon that has it open.
    pub async fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), StorageError> {
        block::snapshot_internal(&self.qmp, &format_node(name), snapshot).await.map_err(qerr)?;
        Ok(())
    }

    pub async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), StorageError> {
        block::snapshot_delete_internal(&self.qmp, &format_node(name), snapshot).await.map_err(qerr)?;
        Ok(())
    }

    /// Ends the daemon (for tests and pool deletion).
    pub async fn stop(&self) {
        let _ = run::quit(&self.qmp, self.qmp.timeout).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pidfd.exited()).await;
        let _ = self.pidfd.signal(libc::SIGKILL);
    }

    /// Kills the daemon abruptly (for failure tests).
    pub fn kill(&self) {
        let _ = self.pidfd.signal(libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_a_volume_and_is_found_again() {
        let dir = tempfile::Builder::new().prefix("oxq").tempdir_in("/tmp").unwrap();
        // As an operator's data directory: passable by the export daemon's user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let img = dir.path().join("v1.qcow2");
        crate::qemu_img::create(&img, DiskFormat::Qcow2, Some(16 << 20), None).await.unwrap();
        let run = dir.path().join("run");
        let user = nbd_user().unwrap();
        let d = ExportDaemon::start_or_adopt(&run, dir.path(), Some(user)).await.unwrap();
        d.export("v1", &img, DiskFormat::Qcow2, false).await.unwrap();
        // Not root: the daemon runs as its own user, which the exported image now belongs to.
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
        assert!(uid_line.split_whitespace().skip(1).all(|u| u == user.0.to_string()), "{uid_line}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&img).unwrap().uid(), user.0);
        d.export("v1", &img, DiskFormat::Qcow2, false).await.unwrap();
        assert!(d.export("v2", &img, DiskFormat::Qcow2, true).await.is_err(), "qcow2 is never shared");
        // A client sees the export's size through NBD.
        let url = format!("nbd+unix:///v1?socket={}", d.nbd_socket().display());
        let info = crate::qemu_img::info(Path::new(&url), None).await.unwrap();
        assert_eq!(info.virtual_size, 16 << 20);
        // Found again by a new handle (as after an oxvirtd restart, whose QMP connection is gone).
        let pid = d.pid();
        drop(d);
        let again = ExportDaemon::start_or_adopt(&run, dir.path(), Some(user)).await.unwrap();
        assert_eq!(again.pid(), pid);
        again.unexport("v1").await.unwrap();
        assert!(again.exports().await.unwrap().is_empty());
        again.stop().await;
        assert!(!again.is_alive());
    }
}
