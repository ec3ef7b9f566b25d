//! One image served over NBD on a Unix socket by `qemu-nbd`, for as long as the value lives:
//! a stopped VM's disk read by a backup (read-only, with a dirty bitmap), or a new volume a
//! restore writes into. Only oxvirtd connects: the socket is in a directory of root's.

use crate::StorageError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions<'a> {
    pub format: &'a str,
    pub writable: bool,
    /// The image's dirty bitmap to offer as `qemu:dirty-bitmap:<name>` (read-only exports).
    pub bitmap: Option<&'a str>,
    /// Connections served at once.
    pub connections: u32,
}

/// A running `qemu-nbd`; killed when dropped.
pub struct ImageExport {
    child: Child,
    socket: PathBuf,
    name: String,
}

impl ImageExport {
    /// Serves `image` as export `name` on `socket` (removed first if stale) and waits until
    /// it listens.
    pub fn start(image: &Path, socket: &Path, name: &str, o: &ExportOptions) -> Result<ImageExport, StorageError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg(format!("--format={}", o.format))
            .args(["--persistent", "--cache=writeback", "--aio=threads"])
            .arg(format!("--shared={}", o.connections.max(1)))
            .arg(format!("--export-name={name}"))
            .arg(format!("--socket={}", socket.display()));
        if !o.writable {
            cmd.arg("--read-only");
        }
        if let Some(b) = o.bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        let mut child = cmd
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StorageError::io("run qemu-nbd", e))?;
        let begun = Instant::now();
        loop {
            // Listening, not only bound: the file appears at bind(), before listen(), and a
            // client connecting then is refused.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(ImageExport { child, socket: socket.to_path_buf(), name: name.to_string() });
            }
            if let Ok(Some(_)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(StorageError::QemuImg { op: "nbd export".into(), message: err.trim().to_string() });
            }
            if begun.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StorageError::QemuImg {
                    op: "nbd export".into(),
                    message: format!("qemu-nbd did not listen on {} within 30 s", socket.display()),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ImageExport {
    fn drop(&mut self) {
        // SIGTERM lets qemu-nbd flush and close the image (its bitmaps saved).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let begun = Instant::now();
        while begun.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.socket);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
