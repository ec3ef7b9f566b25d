//! What the control plane asks of a running guest beyond its lifecycle, one narrow trait per
//! concern, each reached from [`Instance`](crate::Instance): its disks ([`DiskOps`]), its
//! memory ([`MemoryOps`]), its migration ([`MigrationOps`]), its backups ([`BackupOps`]), its whole state for templates ([`StateOps`]). Backend-neutral: a disk is named by
//! its id in the VM, never by a QEMU node; the QEMU driver implements them in `qemu/`.

mod backup;
mod disks;
mod memory;
mod migration;
mod state;

pub use backup::{BackupDisk, BackupOps, Bitmap, DiskTracking, CHANGES_BITMAP};
pub use disks::{DiskOps, DiskStats};
pub use memory::{GuestMemory, MemoryOps};
pub use migration::{MigrationInfo, MigrationOps, MigrationStatus, MirrorJob, SendOptions, StreamEnd};
pub use state::StateOps;
