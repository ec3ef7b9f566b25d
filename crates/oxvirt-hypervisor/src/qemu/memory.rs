//! [`MemoryOps`] for QEMU: the balloon device oxvirt gives a VM (`balloon0`).

use super::QemuInstance;
use crate::ops::{GuestMemory, MemoryOps};
use crate::HvError;
use oxvirt_qemu::commands::memory;

#[async_trait::async_trait]
impl MemoryOps for QemuInstance {
    async fn balloon_actual(&self) -> Result<u64, HvError> {
        Ok(memory::query_balloon(&self.qmp).await?)
    }

    async fn set_balloon(&self, bytes: u64) -> Result<(), HvError> {
        Ok(memory::balloon(&self.qmp, bytes).await?)
    }

    async fn guest_memory(&self) -> Result<GuestMemory, HvError> {
        Ok(memory::balloon_guest_stats(&self.qmp).await?)
    }

    async fn set_balloon_stats_interval(&self, seconds: u32) -> Result<(), HvError> {
        Ok(memory::set_balloon_stats_interval(&self.qmp, seconds).await?)
    }
}
