//! [`MigrationOps`] for QEMU: QMP's migration commands, the built-in NBD server for the
//! target's disk copies, and `blockdev-mirror` into them on the source.

use super::cmdline::{format_node, TLS_CLIENT_CREDS, TLS_SERVER_CREDS};
use super::QemuInstance;
use crate::ops::{MigrationInfo, MigrationOps, MirrorJob, SendOptions, StreamEnd};
use crate::HvError;
use oxvirt_qemu::commands::{block, devices, migration, nbd};
use serde_json::json;

/// The name of the listening socket the target's NBD server is handed.
const NBD_LISTENER: &str = "oxv-nbd-listener";

/// The node and job names of one disk's mirror on the source.
fn mirror_name(disk_id: &str) -> String {
    format!("migrate-{disk_id}")
}

fn creds(end: StreamEnd) -> &'static str {
    match end {
        StreamEnd::Source => TLS_CLIENT_CREDS,
        StreamEnd::Target => TLS_SERVER_CREDS,
    }
}

#[async_trait::async_trait]
impl MigrationOps for QemuInstance {
    async fn use_tls(&self, end: StreamEnd) -> Result<(), HvError> {
        let dir = self.migration_tls.as_ref().ok_or_else(|| {
            HvError::Unsupported("migration over TLS: this host has no store.migration_tls_dir".into())
        })?;
        let id = creds(end);
        // One an earlier migration left (it did not end cleanly) goes first.
        let _ = migration::object_del(&self.qmp, id).await;
        // A confined QEMU reads a copy made its own, removed once read: no QEMU holds the key
        // but while it migrates, and none on disk.
        let copy = match self.run_as {
            Some((uid, gid)) => Some(super::handoff::copy_tls(dir, &self.run_dir.join("tls"), uid, gid)?),
            None => None,
        };
        let from = copy.as_deref().unwrap_or(dir);
        let added = migration::tls_creds_add(&self.qmp, id, &from.to_string_lossy(), end == StreamEnd::Target).await;
        if let Some(c) = &copy {
            let _ = std::fs::remove_dir_all(c);
        }
        added.map_err(|e| {
            HvError::Unsupported(format!("migration over TLS: the credentials in {}: {e}", dir.display()))
        })?;
        let p = migration::Parameters { tls_creds: Some(id.into()), ..Default::default() };
        Ok(migration::migrate_set_parameters(&self.qmp, &p).await?)
    }

    async fn drop_tls(&self, end: StreamEnd) -> Result<(), HvError> {
        // An empty name: no TLS (QEMU's way to unset it).
        let p = migration::Parameters { tls_creds: Some(String::new()), ..Default::default() };
        migration::migrate_set_parameters(&self.qmp, &p).await?;
        Ok(migration::object_del(&self.qmp, creds(end)).await?)
    }

    async fn listen(&self, uri: &str) -> Result<(), HvError> {
        self.hold_console().await?;
        Ok(migration::migrate_incoming(&self.qmp, uri).await?)
    }

    async fn prepare_to_receive(&self, postcopy: bool, hold_disks: bool) -> Result<(), HvError> {
        use migration::Capability::*;
        let caps = [(PostcopyRam, postcopy), (LateBlockActivate, hold_disks)];
        Ok(migration::migrate_set_capabilities(&self.qmp, &caps).await?)
    }

    async fn serve_disks(
        &self,
        listener: std::net::TcpListener,
        disk_ids: &[String],
        tls: bool,
    ) -> Result<(), HvError> {
        let tls = tls.then(|| creds(StreamEnd::Target));
        use std::os::fd::AsRawFd;
        devices::getfd(&self.qmp, NBD_LISTENER, listener.as_raw_fd()).await?;
        drop(listener);
        nbd::nbd_server_start_on_fd(&self.qmp, NBD_LISTENER, tls).await?;
        for id in disk_ids {
            nbd::block_export_add(&self.qmp, &mirror_name(id), &format_node(id), id, true).await?;
        }
        Ok(())
    }

    async fn stop_serving_disks(&self) -> Result<(), HvError> {
        Ok(nbd::nbd_server_stop(&self.qmp).await?)
    }

    async fn mirror_disk(&self, disk_id: &str, host: &str, port: &str, tls: bool) -> Result<(), HvError> {
        let name = mirror_name(disk_id);
        let mut node = json!({
            "driver": "nbd", "node-name": name, "export": disk_id,
            "server": { "type": "inet", "host": host, "port": port },
        });
        if tls {
            node["tls-creds"] = json!(creds(StreamEnd::Source));
        }
        block::blockdev_add(&self.qmp, node).await?;
        Ok(block::blockdev_mirror(&self.qmp, &name, &format_node(disk_id), &name).await?)
    }

    async fn mirror_jobs(&self) -> Result<Vec<MirrorJob>, HvError> {
        let jobs = block::query_block_jobs(&self.qmp).await?;
        Ok(jobs
            .into_iter()
            .filter_map(|j| {
                let disk_id = j.id.strip_prefix("migrate-")?.to_string();
                Some(MirrorJob { disk_id, ready: j.ready, done: j.offset, total: j.len })
            })
            .collect())
    }

    async fn end_mirror(&self, disk_id: &str, abandon: bool) -> Result<(), HvError> {
        Ok(block::block_job_cancel(&self.qmp, &mirror_name(disk_id), abandon).await?)
    }

    async fn drop_mirror_target(&self, disk_id: &str) -> Result<(), HvError> {
        Ok(block::blockdev_del(&self.qmp, &mirror_name(disk_id)).await?)
    }

    async fn send(&self, uri: &str, o: &SendOptions) -> Result<(), HvError> {
        use migration::Capability::*;
        let caps = [
            (AutoConverge, o.auto_converge),
            (PostcopyRam, o.postcopy),
            (PauseBeforeSwitchover, o.pause_before_switchover),
            (Events, true),
        ];
        migration::migrate_set_capabilities(&self.qmp, &caps).await?;
        // Every parameter is set each time: QEMU keeps those of an earlier migration (a slow one
        // that failed would otherwise throttle the next).
        let bandwidth = if o.max_bandwidth > 0 { o.max_bandwidth } else { 1 << 40 };
        let p = migration::Parameters {
            downtime_limit_ms: Some(o.downtime_ms),
            max_bandwidth: Some(bandwidth),
            tls_creds: None,
        };
        migration::migrate_set_parameters(&self.qmp, &p).await?;
        Ok(migration::migrate(&self.qmp, uri).await?)
    }

    async fn migration_info(&self) -> Result<MigrationInfo, HvError> {
        Ok(migration::query_migrate(&self.qmp).await?)
    }

    async fn continue_switchover(&self) -> Result<(), HvError> {
        Ok(migration::migrate_continue(&self.qmp).await?)
    }

    async fn start_postcopy(&self) -> Result<(), HvError> {
        Ok(migration::migrate_start_postcopy(&self.qmp).await?)
    }

    async fn cancel(&self) -> Result<(), HvError> {
        Ok(migration::migrate_cancel(&self.qmp).await?)
    }
}
