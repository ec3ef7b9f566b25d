//! A running guest's memory through its balloon device.

use crate::HvError;

pub use oxvirt_qemu::commands::memory::GuestMemory;

#[async_trait::async_trait]
pub trait MemoryOps: Send + Sync {
    /// The memory the guest has now (what its balloon holds taken off), in bytes.
    async fn balloon_actual(&self) -> Result<u64, HvError>;
    /// Asks the guest to have `bytes` of memory (giving back or taking again the rest).
    async fn set_balloon(&self, bytes: u64) -> Result<(), HvError>;
    /// What the guest's balloon driver last reported.
    async fn guest_memory(&self) -> Result<GuestMemory, HvError>;
    /// How often the guest's balloon driver reports.
    async fn set_balloon_stats_interval(&self, seconds: u32) -> Result<(), HvError>;
}
