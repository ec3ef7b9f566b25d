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

/// Makes `dir` and whichever of its parents are missing (oxvirt makes them, so it sets their mode):
/// each passable by others (0711: through, not list), whatever the daemon's umask.
pub fn make_passable_dirs(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?,
            // Another request made it meanwhile: it is oxvirt's all the same, left as that one made it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Lets processes that gave up root (QEMU, dnsmasq, export daemons) reach `path`, which oxvirt
/// made below `base` (its data directory, or a pool's directory): the directories between the
/// two are oxvirt's and get the search bit for others (`o+x`: pass through, not list). `base` and
/// the directories above it are not oxvirt's to change: one that others cannot pass is an error
/// that names it (the operator gives it `o+x`, or puts the data elsewhere).
pub fn reachable(path: &Path, base: &Path) -> io::Result<()> {
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            break;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        if dir.starts_with(base) && dir != base {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode | 0o001) & 0o7777))?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} (mode {:o}) cannot be passed by oxvirt's unprivileged processes, and oxvirt changes no \
                     directory it did not make: give it o+x (chmod o+x {}) or choose another place",
                    dir.display(),
                    mode & 0o7777,
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn only_directories_below_the_base_are_opened_and_the_base_is_never_changed() {
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let base = tmp.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let inner = base.join("run").join("vm1");
        std::fs::create_dir_all(&inner).unwrap();
        for d in [base.join("run"), inner.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let file = inner.join("qmp.sock");
        std::fs::write(&file, b"").unwrap();

        let e = reachable(&file, base).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains(&format!("{} (mode 700)", base.display())), "{e}");
        assert_eq!(mode(base), 0o700, "the base is the operator's: never changed");

        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711)).unwrap();
        reachable(&file, base).unwrap();
        assert_eq!((mode(&base.join("run")), mode(&inner)), (0o701, 0o701), "oxvirt's directories pass");
        assert_eq!(mode(base), 0o711);
    }

    #[test]
    fn directories_made_for_others_to_pass_are_passable() {
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let deep = tmp.path().join("a").join("b");
        // (The mode is set, not asked of the umask: oxvirtd runs with umask 077.)
        make_passable_dirs(&deep).unwrap();
        assert_eq!((mode(&tmp.path().join("a")), mode(&deep)), (0o711, 0o711));
        make_passable_dirs(&deep).unwrap();
    }
}
