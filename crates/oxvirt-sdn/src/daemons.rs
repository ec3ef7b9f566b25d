//! Open vSwitch's daemons, run by oxvirt: their database, sockets, pidfiles and logs in one
//! directory (`OVS_RUNDIR` and its kin point there, so nothing goes to the system's
//! /var/run/openvswitch), started detached (they outlive oxvirtd, as VMs' networks must).

use std::path::{Path, PathBuf};
use std::process::Command;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

#[derive(Debug, thiserror::Error)]
pub enum SdnError {
    #[error("{program}: {source} (make deps installs openvswitch-switch)")]
    Spawn { program: &'static str, source: std::io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: &'static str, status: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The two daemons, by the name of their program.
pub const DAEMONS: [&str; 2] = ["ovsdb-server", "ovs-vswitchd"];

pub struct OvsDaemons {
    dir: PathBuf,
    /// A network namespace (`ip netns`) ovs-vswitchd runs in; none: oxvirtd's own.
    netns: Option<String>,
}

impl OvsDaemons {
    pub fn new(dir: &Path, netns: Option<String>) -> OvsDaemons {
        OvsDaemons { dir: dir.to_path_buf(), netns }
    }

    /// ovsdb-server's socket, for `oxvirt-ovsdb`.
    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// Where the switch's per-bridge management sockets are (`ovs-ofctl` finds them through
    /// `OVS_RUNDIR`).
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    fn pidfile(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{program}.pid"))
    }

    /// The daemon's pid, when it runs (its pidfile names a live process of that program).
    pub fn pid(&self, program: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pidfile(program)).ok()?.trim().parse().ok()?;
        // `/proc/PID/stat`: "pid (comm) state ..."; comm is cut at 15 bytes ("ovs-vswitchd" and
        // "ovsdb-server" fit). A zombie (killed, not yet reaped) does not run.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        (comm == program && !rest.starts_with('Z')).then_some(pid)
    }

    fn command(&self, program: &'static str) -> Command {
        let mut c = match (&self.netns, program) {
            (Some(ns), "ovs-vswitchd") => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            _ => Command::new(program),
        };
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c
    }

    fn run(&self, program: &'static str, args: &[&str]) -> Result<(), SdnError> {
        let out = self.command(program).args(args).output().map_err(|source| SdnError::Spawn { program, source })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SdnError::Failed {
                program,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Starts whichever daemon is not running (the database first: the switch reads it), and
    /// returns those it started. Each returns once ready (`--detach` waits for that).
    pub fn ensure_running(&self) -> Result<Vec<&'static str>, SdnError> {
        std::fs::create_dir_all(&self.dir)?;
        let mut started = Vec::new();
        for program in DAEMONS {
            if self.pid(program).is_some() {
                continue;
            }
            let pidfile = format!("--pidfile={}", self.pidfile(program).display());
            let log = format!("--log-file={}", self.dir.join(format!("{program}.log")).display());
            let ctl = format!("--unixctl={}", self.dir.join(format!("{program}.ctl")).display());
            match program {
                "ovsdb-server" => {
                    let db = self.dir.join("conf.db");
                    if !db.exists() {
                        let db = db.to_string_lossy().into_owned();
                        self.run("ovsdb-tool", &["create", &db, SCHEMA])?;
                    }
                    let db = db.to_string_lossy().into_owned();
                    let remote = format!("--remote=punix:{}", self.db_socket().display());
                    self.run("ovsdb-server", &[&db, &remote, &pidfile, &log, &ctl, "--detach", "--no-chdir"])?;
                }
                _ => {
                    let db = format!("unix:{}", self.db_socket().display());
                    self.run("ovs-vswitchd", &[&db, &pidfile, &log, &ctl, "--detach", "--no-chdir"])?;
                }
            }
            started.push(program);
        }
        Ok(started)
    }

    /// Stops both daemons (the switch first). Their database stays for the next start.
    pub fn stop(&self) {
        for program in DAEMONS.iter().rev() {
            if let Some(pid) = self.pid(program) {
                unsafe { libc::kill(pid, libc::SIGTERM) };
                for _ in 0..200 {
                    if self.pid(program).is_none() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if let Some(pid) = self.pid(program) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}
