//! Backups of a running guest's disks: what each disk tracks (its dirty bitmaps), freezing
//! several disks at one instant for a reader while the guest runs on (its old data copied to a
//! local scratch image before it is overwritten, so the guest never waits for the backup's
//! reader), serving the frozen disks over NBD, and letting go of them.

use crate::HvError;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub use oxvirt_qemu::commands::backup::Bitmap;

/// The bitmap a backup export carries as `qemu:dirty-bitmap:<CHANGES_BITMAP>`: the changes
/// since the backup it continues (all its `since` bitmaps merged).
pub const CHANGES_BITMAP: &str = "oxvirt-changes";

/// One disk's size and bitmaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTracking {
    pub disk_id: String,
    pub size: u64,
    /// Its image can keep bitmaps (qcow2).
    pub can_track: bool,
    pub bitmaps: Vec<Bitmap>,
}

/// One disk of a backup about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDisk {
    pub disk_id: String,
    pub size: u64,
    /// Where the scratch image goes (made and removed by the driver).
    pub scratch: PathBuf,
    /// A persistent bitmap to start recording at the backup's instant (the next backup's).
    pub new_bitmap: Option<String>,
    /// Bitmaps whose changes the export carries, merged (empty: a full backup, no changes
    /// exported); each stops recording at the instant.
    pub since: Vec<String>,
    /// The granularity of new bitmaps, in bytes (the repository's chunk size).
    pub granularity: u64,
}

#[async_trait::async_trait]
pub trait BackupOps: Send + Sync {
    /// The size and bitmaps of each disk in `disk_ids`.
    async fn tracking(&self, disk_ids: &[String]) -> Result<Vec<DiskTracking>, HvError>;
    /// Freezes every disk of `disks` at one instant and serves each, read-only, as the NBD
    /// export named by its disk id on `listener` (bound by the caller). On an error nothing
    /// stays: no export, no scratch image, no new bitmap.
    async fn begin_backup(&self, disks: &[BackupDisk], listener: UnixListener) -> Result<(), HvError>;
    /// Ends the exports and the copying before writes; the scratch images and the changes'
    /// bitmap go, the change maps stay. Whatever of it is there: also after a daemon that died
    /// mid-backup.
    async fn end_backup(&self, disks: &[BackupDisk]) -> Result<(), HvError>;
    /// Removes bitmap `name` of disk `disk_id` (from its image too).
    async fn remove_bitmap(&self, disk_id: &str, name: &str) -> Result<(), HvError>;
}
