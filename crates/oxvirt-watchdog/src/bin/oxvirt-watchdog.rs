//! `oxvirt-watchdog --socket PATH`: started by oxvirtd (in a cluster with HA), outlives it. Reads
//! feeds from whoever connects to PATH; kills the QEMUs of the last feed when its deadline
//! passes. Ends when PATH is removed or taken over by another watchdog, or when it has had no
//! feeder and guarded nothing for ten minutes.

use oxvirt_watchdog::{kill, Feed, Watch};
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
    let Some(path) =
        args.iter().position(|a| a == "--socket").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from)
    else {
        eprintln!("usage: oxvirt-watchdog --socket PATH");
        std::process::exit(2);
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
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let fenced = {
            let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
            if w.due(now) {
                w.fence()
            } else {
                Vec::new()
            }
        };
        for g in fenced {
            let done = kill(g);
            log(&format!("fenced: the feed ran out; QEMU {} {}", g.pid, if done { "killed" } else { "was gone" }));
        }
        // Its socket removed or another watchdog's now: this one is not needed.
        if std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0) != ino {
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
