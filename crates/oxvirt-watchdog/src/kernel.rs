//! The kernel's watchdog device (`/dev/watchdog`: softdog or a hardware timer), the backstop
//! behind the watchdog process: while the host guards HA QEMUs the device is open and petted;
//! if the watchdog process dies or hangs, or a QEMU it fenced does not die, the petting stops
//! and the kernel resets the host when the device's timeout runs out. With nothing guarded the
//! device is closed with the magic character, which disarms it, so a host without HA VMs is never
//! reset by it. Off by default (`ha.kernel_watchdog`): a reset takes down every VM of the host.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// How often the device is petted while the host is safe.
pub const PET_EVERY: Duration = Duration::from_millis(200);

/// What the device's owner does with it.
#[derive(Debug)]
pub struct KernelWatchdog {
    path: PathBuf,
    timeout_secs: u32,
    open: Option<std::fs::File>,
    last_pet: Option<Instant>,
}

impl KernelWatchdog {
    pub fn new(path: &Path, timeout_secs: u32) -> Self {
        KernelWatchdog { path: path.to_path_buf(), timeout_secs, open: None, last_pet: None }
    }

    pub fn armed(&self) -> bool {
        self.open.is_some()
    }

    /// Opens the device (which arms it) and sets its timeout; a device that cannot take the
    /// timeout keeps its own, which is said.
    pub fn arm(&mut self) -> Result<(), String> {
        if self.open.is_some() {
            return Ok(());
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("open {}: {e}", self.path.display()))?;
        let mut t = self.timeout_secs as libc::c_int;
        // SAFETY: the ioctl writes one int, to `t`, which lives across the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT, &mut t) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!(
                "oxvirt-watchdog: {} did not take a timeout of {} s ({e}): it keeps its own",
                self.path.display(),
                self.timeout_secs
            );
        }
        self.open = Some(f);
        self.last_pet = None;
        self.pet()
    }

    /// Tells the device the host is alive (when armed and `PET_EVERY` has passed).
    pub fn pet(&mut self) -> Result<(), String> {
        let Some(f) = &mut self.open else { return Ok(()) };
        if self.last_pet.is_some_and(|t| t.elapsed() < PET_EVERY) {
            return Ok(());
        }
        f.write_all(b"1").map_err(|e| format!("pet {}: {e}", self.path.display()))?;
        self.last_pet = Some(Instant::now());
        Ok(())
    }

    /// Closes the device with the magic character: the kernel stops counting.
    pub fn disarm(&mut self) {
        if let Some(mut f) = self.open.take() {
            if let Err(e) = f.write_all(b"V") {
                eprintln!("oxvirt-watchdog: disarm {}: {e}", self.path.display());
            }
        }
    }
}

/// Whether process `pid` (started at `start_time`) is gone or a zombie: it runs no more code
/// and writes to no disk.
pub fn dead(pid: u32, start_time: u64) -> bool {
    match crate::state_and_start(pid) {
        Some((state, start)) => start != start_time || state == 'Z' || state == 'X',
        None => true,
    }
}

/// A FIFO standing in for a watchdog device, for tests on hosts without one: a thread reads
/// what is written to it, one session per opening, until the writer closes it.
pub struct StandIn {
    pub path: PathBuf,
    sessions: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl StandIn {
    pub fn new(path: &Path) -> std::io::Result<Self> {
        use std::io::Read;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sessions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, s) = (path.to_path_buf(), sessions.clone());
        std::thread::spawn(move || loop {
            // Blocks until the watchdog opens the device (arms it).
            let Ok(mut f) = std::fs::File::open(&p) else { return };
            let index = {
                let mut all = s.lock().unwrap_or_else(|e| e.into_inner());
                all.push(Vec::new());
                all.len() - 1
            };
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = f.read(&mut buf) {
                s.lock().unwrap_or_else(|e| e.into_inner())[index].extend_from_slice(&buf[..n]);
            }
        });
        Ok(StandIn { path: path.to_path_buf(), sessions })
    }

    /// What each opening got, in order (the last one may still be open).
    pub fn sessions(&self) -> Vec<Vec<u8>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_it_is_petted_at_most_every_period_and_disarmed_with_the_magic_character() {
        let dir = tempfile::tempdir().unwrap();
        let device = StandIn::new(&dir.path().join("wd")).unwrap();
        let mut w = KernelWatchdog::new(&device.path, 2);
        assert!(!w.armed());
        w.pet().unwrap();
        w.arm().unwrap();
        assert!(w.armed());
        let begun = Instant::now();
        while begun.elapsed() < PET_EVERY * 3 + PET_EVERY / 2 {
            w.pet().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        w.disarm();
        assert!(!w.armed());
        std::thread::sleep(Duration::from_millis(100));
        let sessions = device.sessions();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        let written = &sessions[0];
        assert_eq!(written.last(), Some(&b'V'), "{written:?}");
        let pets = written.iter().filter(|b| **b == b'1').count();
        assert!((4..=5).contains(&pets), "one at arming and one per period: {written:?}");
    }

    #[test]
    fn a_killed_process_is_dead_once_a_zombie() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let (pid, start) = (child.id(), crate::start_time(child.id()).unwrap());
        assert!(!dead(pid, start));
        assert!(dead(pid, start + 1), "another process under the same pid");
        // SAFETY: our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let begun = Instant::now();
        while !dead(pid, start) {
            assert!(begun.elapsed() < Duration::from_secs(5), "still alive after SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(dead(pid, start));
    }
}
