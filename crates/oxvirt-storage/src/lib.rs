//! Storage on the host.
//!
//! A pool is a directory; a volume is one image file in it, named after the volume. Paths are
//! made here and only here ([`paths`]), so a volume can never escape its pool. Image work goes
//! through `qemu-img` ([`qemu_img`]); capacity is measured in [`usage`].

pub mod host_paths;
pub mod image_export;
pub mod nbd;
pub mod paths;
pub mod qemu_img;
pub mod usage;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// qemu-img refused; its message says why (e.g. no space left on the device).
    #[error("qemu-img {op} failed: {message}")]
    QemuImg { op: String, message: String },
    #[error("{0}")]
    Unsafe(String),
    #[error("cancelled")]
    Cancelled,
}

impl StorageError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io { what: what.into(), source }
    }
}
