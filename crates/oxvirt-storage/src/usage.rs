//! Pool capacity: the file system's size and use, and what the volumes take.

use crate::StorageError;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// (size, used, free) of the file system holding `dir`, in bytes.
pub fn filesystem(dir: &Path) -> Result<(u64, u64, u64), StorageError> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| StorageError::Unsafe(format!("{} holds a NUL byte", dir.display())))?;
    // SAFETY: statvfs fills the zeroed struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(StorageError::io(format!("statvfs {}", dir.display()), std::io::Error::last_os_error()));
    }
    let frsize = st.f_frsize as u64;
    let size = st.f_blocks as u64 * frsize;
    let free = st.f_bavail as u64 * frsize;
    let used = size.saturating_sub(st.f_bfree as u64 * frsize);
    Ok((size, used, free))
}

/// Bytes a file really takes on disk (its allocated blocks).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let (size, used, free) = filesystem(dir.path()).unwrap();
        assert!(size > 0 && used <= size && free <= size);
        let f = dir.path().join("sparse");
        std::fs::File::create(&f).unwrap().set_len(1 << 30).unwrap();
        assert!(allocated(&f) < 1 << 20, "a sparse file takes almost nothing");
    }
}
