//! Open vSwitch for tests and benches (issue #20): ovsdb-server and ovs-vswitchd with the
//! userspace datapath (no kernel module), their files in a directory of their own, the switch
//! in a network namespace of its own so that its bridges' ports are TAPs made there, never on
//! the host. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// ovsdb-server and ovs-vswitchd with their files in a directory of their own.
pub struct Ovs {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Ovs {
    pub fn start() -> Ovs {
        let dir = tempfile::Builder::new().prefix("ovs").tempdir_in("/tmp").expect("tempdir");
        let mut ovs = Ovs { dir, children: vec![] };
        let db = ovs.path("conf.db");
        ovs.run("ovsdb-tool", &["create", db.to_str().unwrap_or_default(), "/usr/share/openvswitch/vswitch.ovsschema"]);
        let remote = format!("--remote=punix:{}", ovs.path("db.sock").display());
        let log = format!("--log-file={}", ovs.path("ovsdb.log").display());
        ovs.spawn("ovsdb-server", &[db.to_str().unwrap_or_default(), &remote, &log]);
        wait_for(&ovs.path("db.sock"));
        ovs.vsctl(&["--no-wait", "init"]);
        let log = format!("--log-file={}", ovs.path("vswitchd.log").display());
        let db = format!("unix:{}", ovs.path("db.sock").display());
        // Its own network namespace: the bridge's internal port is a TAP device made there.
        ovs.spawn("unshare", &["--net", "ovs-vswitchd", &db, &log]);
        ovs
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            c.env(var, self.dir.path());
        }
        c
    }

    fn spawn(&mut self, program: &str, args: &[&str]) {
        let child = self.command(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        self.children.push(child.unwrap_or_else(|e| panic!("{program}: {e} (make deps installs openvswitch-switch)")));
    }

    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.path("db.sock").display());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        self.run("ovs-vsctl", &all)
    }

    /// A bridge on the userspace datapath, OpenFlow 1.3 only, in secure fail mode (no flow
    /// but the controller's), whose controller is `target` (`unix:PATH`, listening already).
    pub fn add_bridge(&self, bridge: &str, target: &str) {
        self.vsctl(&[
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail_mode=secure",
            "--",
            "set-controller",
            bridge,
            target,
        ]);
    }

    /// The bridge's flows as ovs-ofctl prints them, a line each.
    pub fn dump_flows(&self, bridge: &str) -> Vec<String> {
        self.run("ovs-ofctl", &["-O", "OpenFlow13", "dump-flows", bridge])
            .lines()
            .filter(|l| l.contains("priority="))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < TIMEOUT, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
