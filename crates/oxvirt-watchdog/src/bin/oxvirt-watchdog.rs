//! `oxvirt-watchdog --socket PATH [--kernel-watchdog DEVICE --kernel-timeout SECS]`: started by
//! oxvirtd (in a cluster with HA), outlives it. Reads feeds from whoever connects to PATH; kills
//! the QEMUs of the last feed when its deadline passes. With a kernel watchdog device, keeps it
//! armed and petted while it guards QEMUs and every QEMU it fenced is dead (see
//! `oxvirt_watchdog::kernel`). Ends when PATH is removed or taken over by another watchdog, or
//! when it has had no feeder and guarded nothing for ten minutes.

use oxvirt_watchdog::kernel::{dead, KernelWatchdog};
use oxvirt_watchdog::{kill, Feed, Guarded, Watch};
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(20);
const IDLE_EXIT: Duration = Duration::from_secs(600);

fn log(msg: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    eprintln!("{now} oxvirt-watchdog[{}]: {msg}", std::process::id());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let Some(path) = value("--socket").map(std::path::PathBuf::from) else {
        eprintln!("usage: oxvirt-watchdog --socket PATH [--kernel-watchdog DEVICE --kernel-timeout SECS]");
        std::process::exit(2);
    };
    let mut device = match (value("--kernel-watchdog"), value("--kernel-timeout").map(|t| t.parse::<u32>())) {
        (None, None) => None,
        (Some(d), Some(Ok(t))) if t > 0 => Some(KernelWatchdog::new(std::path::Path::new(d), t)),
        _ => {
            eprintln!("oxvirt-watchdog: --kernel-watchdog DEVICE needs --kernel-timeout SECS (1 or more)");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot listen on {}: {e}", path.display()));
            std::process::exit(1);
        }
    };
    let ino = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
    log(&format!("listening on {}", path.display()));
    let watch = Arc::new(Mutex::new(Watch::default()));
    let last_fed = Arc::new(Mutex::new(Instant::now()));
    {
        let (watch, last_fed) = (watch.clone(), last_fed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (watch, last_fed) = (watch.clone(), last_fed.clone());
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        match serde_json::from_str::<Feed>(&line) {
                            Ok(f) => {
                                *last_fed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                                watch.lock().unwrap_or_else(|p| p.into_inner()).feed(f, Instant::now());
                            }
                            Err(e) => log(&format!("a feed that is not one: {e}")),
                        }
                    }
                });
            }
        });
    }
    // QEMUs fenced and not yet seen dead: the kernel's device is not petted meanwhile.
    let mut fenced_alive: Vec<Guarded> = Vec::new();
    let mut device_error = false;
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let (fenced, guarding) = {
            let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
            let fenced = if w.due(now) { w.fence() } else { Vec::new() };
            (fenced, !w.guarded().is_empty())
        };
        for g in fenced {
            let done = kill(g);
            log(&format!("fenced: the feed ran out; QEMU {} {}", g.pid, if done { "killed" } else { "was gone" }));
            fenced_alive.push(g);
        }
        fenced_alive.retain(|g| !dead(g.pid, g.start_time));
        if let Some(d) = &mut device {
            let step = if !fenced_alive.is_empty() {
                // Not petted: if the QEMUs do not die, the kernel resets the host.
                Ok(())
            } else if guarding {
                let arming = !d.armed();
                d.arm().and_then(|_| d.pet()).map(|_| {
                    if arming {
                        log("kernel watchdog armed: this host guards HA QEMUs");
                    }
                })
            } else {
                if d.armed() {
                    d.disarm();
                    log("kernel watchdog disarmed: nothing guarded");
                }
                Ok(())
            };
            match step {
                Err(e) if !device_error => {
                    log(&format!("kernel watchdog: {e}"));
                    device_error = true;
                }
                Ok(()) => device_error = false,
                Err(_) => {}
            }
        }
        // Its socket removed or another watchdog's now: this one is not needed.
        if std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0) != ino {
            if let Some(d) = &mut device {
                // Another watchdog may need the device (it opens once at a time).
                d.disarm();
            }
            log("the socket is gone or another watchdog's: ending");
            return;
        }
        let idle = last_fed.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > IDLE_EXIT;
        if idle && watch.lock().unwrap_or_else(|p| p.into_inner()).guarded().is_empty() {
            log("nothing fed or guarded for ten minutes: ending");
            return;
        }
    }
}
