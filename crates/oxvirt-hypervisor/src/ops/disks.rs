//! A running guest's disks: internal snapshots, resizing, I/O figures.

use crate::HvError;

pub use oxvirt_qemu::commands::block::DiskStats;

#[async_trait::async_trait]
pub trait DiskOps: Send + Sync {
    /// Takes internal snapshot `name` of disk `disk_id` (a qcow2 image).
    async fn snapshot(&self, disk_id: &str, name: &str) -> Result<(), HvError>;
    /// Takes snapshot `name` of every disk in `disk_ids` at one instant, or of none.
    async fn snapshot_all(&self, disk_ids: &[String], name: &str) -> Result<(), HvError>;
    async fn delete_snapshot(&self, disk_id: &str, name: &str) -> Result<(), HvError>;
    /// Makes disk `disk_id` `size` bytes large; the guest sees it at once.
    async fn resize(&self, disk_id: &str, size: u64) -> Result<(), HvError>;
    /// The I/O figures of each disk, by disk id.
    async fn disk_stats(&self) -> Result<Vec<DiskStats>, HvError>;
}
