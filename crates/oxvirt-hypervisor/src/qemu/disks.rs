//! [`DiskOps`] for QEMU: a disk's operations go to its format node (`<id>-fmt`).

use super::cmdline::format_node;
use super::QemuInstance;
use crate::ops::{DiskOps, DiskStats};
use crate::HvError;
use oxvirt_qemu::commands::block;

#[async_trait::async_trait]
impl DiskOps for QemuInstance {
    async fn snapshot(&self, disk_id: &str, name: &str) -> Result<(), HvError> {
        Ok(block::snapshot_internal(&self.qmp, &format_node(disk_id), name).await?)
    }

    async fn snapshot_all(&self, disk_ids: &[String], name: &str) -> Result<(), HvError> {
        let nodes: Vec<String> = disk_ids.iter().map(|d| format_node(d)).collect();
        Ok(block::snapshot_internal_all(&self.qmp, &nodes, name).await?)
    }

    async fn delete_snapshot(&self, disk_id: &str, name: &str) -> Result<(), HvError> {
        Ok(block::snapshot_delete_internal(&self.qmp, &format_node(disk_id), name).await?)
    }

    async fn resize(&self, disk_id: &str, size: u64) -> Result<(), HvError> {
        Ok(block::block_resize(&self.qmp, &format_node(disk_id), size).await?)
    }

    async fn disk_stats(&self) -> Result<Vec<DiskStats>, HvError> {
        Ok(block::query_blockstats(&self.qmp).await?)
    }
}
