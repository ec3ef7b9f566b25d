//! Who a process oxvirt starts runs as, and the files it may reach: system users of oxvirt's
//! helpers (made on first use), and giving a file oxvirt made to such a user.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The uid and gid of `name`, from the system's user database.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once, not kept.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A system user (no home, no shell, a group of its own) for one of oxvirt's helpers, made
/// with `useradd` when the host has none yet.
pub fn system_user(name: &str, comment: &str) -> io::Result<(u32, u32)> {
    if let Some(ids) = user_ids(name) {
        return Ok(ids);
    }
    let out = std::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", "--comment", comment, name])
        .output()?;
    // Another daemon may have made it meanwhile.
    user_ids(name).ok_or_else(|| {
        io::Error::other(format!("cannot make the system user {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    })
}

/// Gives `path` to `uid:gid` with `mode`; a symlink is refused (it could point anywhere). Only
/// for files oxvirt made.
pub fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is a symlink", path.display())));
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Lets processes that gave up root reach `path`: every directory above it gets the search
/// bit for others (`o+x`: pass through, not list), which nothing else is changed.
pub fn reachable(path: &Path) -> io::Result<()> {
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() || dir == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode | 0o001) & 0o7777))?;
        }
    }
    Ok(())
}
