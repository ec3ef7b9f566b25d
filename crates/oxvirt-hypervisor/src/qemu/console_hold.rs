//! The serial console held by oxvirtd while a guest's state loads (a migration arriving, a
//! template restored), until the guest runs.
//!
//! Why: a console client that stops reading (a stalled web console, a slow link) fills its
//! socket, and QEMU's serial port then waits to send its byte until the client is writable
//! again (a watch on that connection). Saved in that moment, the state says "a byte waits"; the
//! QEMU loading it re-arms the watch on *its* console, and with no client connected there is
//! nothing to watch: the byte is never sent, the port never takes another, and the guest's
//! console is silent for good (QEMU 7.2). With oxvirtd connected, the watch fires, the byte
//! goes, and the guest prints on. What it prints meanwhile is read and dropped here (QEMU writes
//! it to the console log all the same); once the guest runs the console is let go, for users.

use super::cmdline::CONSOLE_CHARDEV;
use super::QemuInstance;
use crate::{HvError, InstanceEvent};
use oxvirt_qemu::commands::devices;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;

/// QEMU accepts the connection from its main loop: this long at most.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);

impl QemuInstance {
    /// Connects to the guest's console and holds it until the guest runs (or QEMU ends). Returns
    /// once QEMU has taken the connection: a state loaded after that finds a client. Held
    /// already (a second try to listen): nothing more.
    pub(super) async fn hold_console(&self) -> Result<(), HvError> {
        if self.console_held.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let path = self.paths().console_socket();
        let mut events = self.events.subscribe();
        let mut console = match tokio::net::UnixStream::connect(&path).await {
            Ok(c) => c,
            Err(e) => {
                self.console_held.store(false, Ordering::Release);
                return Err(HvError::io(format!("connect to the console {}", path.display()), e));
            }
        };
        let held = self.console_held.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    read = console.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
                    event = events.recv() => match event {
                        Ok(InstanceEvent::Resumed | InstanceEvent::Exited) | Err(RecvError::Closed) => break,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                    },
                }
            }
            held.store(false, Ordering::Release);
        });
        // (A user's console connected before would be taken first: then it is the client.)
        let start = tokio::time::Instant::now();
        loop {
            match devices::chardev_connected(&self.qmp, CONSOLE_CHARDEV).await? {
                Some(true) | None => return Ok(()),
                Some(false) if start.elapsed() > ACCEPT_TIMEOUT => {
                    return Err(HvError::Timeout(ACCEPT_TIMEOUT, "QEMU taking oxvirtd's console connection".into()))
                }
                Some(false) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}
