//! Starting high availability's watchdog (`oxvirt-watchdog`, installed next to oxvirtd): one per
//! data directory, in a process group of its own so that it outlives oxvirtd (a crash, a kill,
//! a restart). A restarted oxvirtd finds the running one at its socket and feeds it again.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The watchdog's socket under `data_dir`, the watchdog started first when none answers there.
/// With `kernel`, the watchdog keeps that device (with that timeout) armed while it guards QEMUs.
pub fn ensure(data_dir: &Path, kernel: Option<(&Path, u32)>) -> Result<PathBuf, String> {
    let socket = data_dir.join("watchdog.sock");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        tracing::info!(socket = %socket.display(), "HA watchdog running already (with the settings it was started with)");
        return Ok(socket);
    }
    let exe = std::env::current_exe().map_err(|e| format!("ha.watchdog: where oxvirtd is: {e}"))?;
    let bin = exe.with_file_name("oxvirt-watchdog");
    if !bin.exists() {
        return Err(format!(
            "ha.watchdog: {} is missing: HA needs it to fence when oxvirtd cannot (install it next to oxvirtd, or set ha.watchdog = false where something else fences)",
            bin.display()
        ));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("watchdog.log"))
        .map_err(|e| format!("ha.watchdog: its log: {e}"))?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--socket").arg(&socket);
    if let Some((device, timeout)) = kernel {
        cmd.arg("--kernel-watchdog").arg(device).arg("--kernel-timeout").arg(timeout.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("ha.watchdog: starting {}: {e}", bin.display()))?;
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("ha.watchdog: {} did not listen on {} within 5 s", bin.display(), socket.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(socket = %socket.display(), "HA watchdog started");
    Ok(socket)
}
