//! Serial console logs. QEMU appends the guest's serial output to `console.log` itself, so
//! nothing is lost while the daemon is away; the daemon caps it by copy-and-truncate rotation
//! (QEMU opened it with O_APPEND, so it keeps writing at the new end).

use crate::ControlError;
use oxvirt_model::Vm;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The last `max` bytes of a file, or all of it.
fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link (a run directory a QEMU once owned might hold one).
    let mut f = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > max {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut buf = Vec::with_capacity(len.min(max) as usize);
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

impl crate::Vms {
    /// The end of a VM's console output (older rotated output first), at most `max` bytes.
    pub fn console_log(&self, name: &str, max: u64) -> Result<Vec<u8>, ControlError> {
        let vm = self.get_vm(name)?;
        let path = self.ctl.inner.paths(&vm.id).console_log();
        let io = |e: std::io::Error| {
            ControlError::Hypervisor(oxvirt_hypervisor::HvError::io(format!("read {}", path.display()), e))
        };
        let current = tail(&path, max).map_err(io)?;
        if (current.len() as u64) < max {
            let mut older = tail(&rotated(&path), max - current.len() as u64).map_err(io)?;
            older.extend_from_slice(&current);
            return Ok(older);
        }
        Ok(current)
    }

    /// The last lines QEMU wrote of a VM (its errors), for a message.
    pub(crate) fn qemu_log_tail(&self, name: &str) -> String {
        let Ok(vm) = self.get_vm(name) else { return String::new() };
        let text = tail(&self.ctl.inner.paths(&vm.id).qemu_log(), 512).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.len() {
            0 => "QEMU said nothing".into(),
            n => format!("QEMU said: {}", lines[n.saturating_sub(3)..].join(" / ")),
        }
    }

    /// The path of the serial console's socket, for an interactive console.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, ControlError> {
        let vm = self.get_vm(name)?;
        Ok(self.ctl.inner.paths(&vm.id).console_socket())
    }

    /// A VM that migrated here: the console output it had on its former host becomes the older
    /// part of its log here, so that the log reads on where it was.
    pub(crate) fn carry_console_over(&self, name: &str, text: &[u8]) {
        let Ok(vm) = self.get_vm(name) else { return };
        let path = rotated(&self.ctl.inner.paths(&vm.id).console_log());
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!(vm = name, "cannot keep the console output it had: {e}");
        }
    }

    /// Removes a VM's console log here (and its older part): output from an earlier stay on this
    /// host, which a VM migrating in carries over with the rest, or a VM gone from here.
    pub(crate) fn forget_console_log(&self, vm: &Vm) {
        let path = self.ctl.inner.paths(&vm.id).console_log();
        for p in [rotated(&path), path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(vm = %vm.spec.name, "{}: {e}", p.display()),
            }
        }
    }

    pub(crate) fn rotate_console_log(&self, vm: &Vm) {
        let paths = self.ctl.inner.paths(&vm.id);
        let max = self.ctl.inner.config.console_log_max;
        // QEMU's own messages too: a guest can make QEMU report errors without end.
        for path in [paths.console_log(), paths.qemu_log()] {
            if let Err(e) = rotate_if_larger(&path, max) {
                tracing::warn!(vm = %vm.spec.name, "{} rotation: {e}", path.display());
            }
        }
    }
}

/// Moves the content of `path` to `path.1` when it is larger than `max`, keeping the file itself
/// (and QEMU's open descriptor on it).
pub(crate) fn rotate_if_larger(path: &Path, max: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} is not a file", path.display())));
    }
    if meta.len() <= max {
        return Ok(false);
    }
    // Neither end through a link: the old copy is made anew, the log opened as itself.
    let mut from = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let _ = std::fs::remove_file(rotated(path));
    let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(rotated(path))?;
    std::io::copy(&mut from, &mut to)?;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_the_writer_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        w.write_all(&[b'a'; 100]).unwrap();
        assert!(!rotate_if_larger(&path, 200).unwrap());
        assert!(rotate_if_larger(&path, 50).unwrap());
        w.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read(rotated(&path)).unwrap().len(), 100);
        assert_eq!(tail(&path, 2).unwrap(), b"ew");
        assert_eq!(tail(&dir.path().join("none"), 2).unwrap(), b"");
    }
}
