//! A guest's whole state — memory and devices — written to a file and read back into a new
//! process: templates (a VM restored instead of booted).

use crate::HvError;

#[async_trait::async_trait]
pub trait StateOps: Send + Sync {
    /// Pauses the guest and writes its whole state into `file` (opened for writing by the caller;
    /// the hypervisor's process writes through its own copy) — without its memory when
    /// `memory_apart` (a guest whose memory is a shared file, `Launch::memory_file`: the file is
    /// that part). The guest stays paused: the caller resumes it or ends it. Returns the bytes
    /// written.
    async fn save_state(&self, file: std::fs::File, memory_apart: bool) -> Result<u64, HvError>;
    /// A guest started to wait for its state (`Launch::incoming` "defer") reads it from `file`
    /// (opened read-only by the caller) — with `memory_apart`, a state saved without its memory,
    /// which the guest's memory file holds. It is paused once loaded (as the saved guest was):
    /// the caller resumes it.
    async fn load_state(&self, file: std::fs::File, memory_apart: bool) -> Result<(), HvError>;
}
