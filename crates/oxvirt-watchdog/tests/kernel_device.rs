//! The watchdog binary with a kernel watchdog device (a FIFO stands in: this machine has none):
//! armed while it guards a process, disarmed once the process it fenced is dead, and left armed
//! (so the kernel would reset the host) when the watchdog itself is killed while guarding.

use oxvirt_watchdog::kernel::StandIn;
use oxvirt_watchdog::{start_time, Feed, Guarded};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn wait_for(what: &str, device: &StandIn, ok: impl Fn(&[Vec<u8>]) -> bool) {
    let begun = Instant::now();
    while !ok(&device.sessions()) {
        assert!(begun.elapsed() < Duration::from_secs(10), "{what}: {:?}", device.sessions());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn feed(socket: &mut UnixStream, valid_for_ms: u64, guard: Vec<Guarded>) {
    let line = serde_json::to_string(&Feed { valid_for_ms, guard }).unwrap();
    socket.write_all(format!("{line}\n").as_bytes()).unwrap();
}

#[test]
fn the_device_is_armed_while_guarding_disarmed_after_a_fence_and_left_armed_when_the_watchdog_dies() {
    let dir = tempfile::tempdir().unwrap();
    let device = StandIn::new(&dir.path().join("watchdog")).unwrap();
    let socket_path = dir.path().join("wd.sock");
    let mut watchdog = std::process::Command::new(env!("CARGO_BIN_EXE_oxvirt-watchdog"))
        .arg("--socket")
        .arg(&socket_path)
        .arg("--kernel-watchdog")
        .arg(&device.path)
        .args(["--kernel-timeout", "2"])
        .spawn()
        .unwrap();
    let begun = Instant::now();
    let mut socket = loop {
        match UnixStream::connect(&socket_path) {
            Ok(s) => break s,
            Err(_) if begun.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the watchdog does not listen: {e}"),
        }
    };
    // Fed with nothing guarded: not armed.
    feed(&mut socket, 1000, vec![]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(device.sessions().is_empty());

    // Guarding a process ("QEMU"): armed and petted.
    let mut qemu = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let g = Guarded { pid: qemu.id(), start_time: start_time(qemu.id()).unwrap() };
    feed(&mut socket, 600, vec![g]);
    wait_for("armed and petted", &device, |s| s.len() == 1 && s[0].len() >= 2);
    // The feeding stops: at the deadline the process is killed, then the device disarmed.
    wait_for("disarmed after the fence", &device, |s| s[0].ends_with(b"V"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(qemu.wait().unwrap().signal(), Some(libc::SIGKILL));

    // Guarding again, then the watchdog is killed: the device is closed without the magic
    // character, so a real one would reset the host.
    let mut qemu = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let g = Guarded { pid: qemu.id(), start_time: start_time(qemu.id()).unwrap() };
    feed(&mut socket, 60_000, vec![g]);
    wait_for("armed again", &device, |s| s.len() == 2 && s[1].len() >= 2);
    watchdog.kill().unwrap();
    watchdog.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = device.sessions();
    assert!(s.len() == 2 && !s[1].contains(&b'V'), "closed without disarming: {s:?}");
    let _ = qemu.kill();
    let _ = qemu.wait();
}
