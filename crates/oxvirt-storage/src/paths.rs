//! Where volumes live: `<pool dir>/<volume name>.<format>`. Names are DNS labels, so they cannot
//! hold `/` or `..`; on top of that, every path is checked to stay inside the pool and not to be a
//! symbolic link, so nothing planted in the pool directory can redirect a write.

use crate::StorageError;
use oxvirt_model::DiskFormat;
use std::path::{Path, PathBuf};

pub fn volume_file(pool_dir: &Path, name: &str, format: DiskFormat) -> Result<PathBuf, StorageError> {
    oxvirt_model::validate_name("name", name).map_err(|e| StorageError::Unsafe(e.to_string()))?;
    let path = pool_dir.join(format!("{name}.{}", format.as_str()));
    check_inside(pool_dir, &path)?;
    Ok(path)
}

/// A temporary name beside the volume, for work that must appear whole or not at all; unique to
/// this process and call, so two makers of one name never share (or delete) each other's file.
pub fn partial_file(final_path: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    final_path.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()))
}

/// Renames `from` to `to` unless `to` exists (then: an error, and nothing replaced).
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let f = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: two NUL-terminated paths; renameat2 with RENAME_NOREPLACE never overwrites.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Refuses a path whose parent is not the pool directory itself, or that is a symbolic link.
pub fn check_inside(pool_dir: &Path, path: &Path) -> Result<(), StorageError> {
    let pool =
        pool_dir.canonicalize().map_err(|e| StorageError::io(format!("pool directory {}", pool_dir.display()), e))?;
    let parent = path.parent().ok_or_else(|| StorageError::Unsafe(format!("{} has no directory", path.display())))?;
    let parent = parent.canonicalize().map_err(|e| StorageError::io(format!("directory of {}", path.display()), e))?;
    if parent != pool {
        return Err(StorageError::Unsafe(format!("{} is outside its pool {}", path.display(), pool.display())));
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            return Err(StorageError::Unsafe(format!("{} is a symbolic link: refusing to use it", path.display())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_stay_in_their_pool() {
        let dir = tempfile::tempdir().unwrap();
        let p = volume_file(dir.path(), "data", DiskFormat::Qcow2).unwrap();
        assert_eq!(p, dir.path().join("data.qcow2"));
        assert!(volume_file(dir.path(), "../etc", DiskFormat::Raw).is_err());
        assert!(volume_file(dir.path(), "a/b", DiskFormat::Raw).is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil.raw")).unwrap();
        let err = volume_file(dir.path(), "evil", DiskFormat::Raw).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(check_inside(dir.path(), Path::new("/etc/passwd")).is_err());
        let (a, b) = (partial_file(&p), partial_file(&p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir.path()));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&p, b"old").unwrap();
        assert!(rename_no_replace(&a, &p).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
