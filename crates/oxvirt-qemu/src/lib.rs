//! QEMU plumbing: the QMP client ([`qmp`]), its typed vocabulary ([`commands`]) and daemonized
//! QEMU processes ([`process`]), used by
//! the hypervisor driver (qemu-system) and the storage layer (qemu-storage-daemon) alike.

pub mod commands;
pub mod identity;
pub mod process;
pub mod qmp;

/// Why a QEMU process could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0} refused to start: {1}")]
    StartFailed(String, String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
}

impl ProcessError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ProcessError::Io { what: what.into(), source }
    }
}
