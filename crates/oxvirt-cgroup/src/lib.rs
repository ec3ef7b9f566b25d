//! Control groups for VMs.
//!
//! Hosts run cgroup v1, v2 or both (hybrid: v1 controllers plus a cgroup2 mount). oxvirt puts each
//! VM's QEMU in a cgroup of its own in every hierarchy it finds, below the daemon's own cgroup
//! (delegation), never at the root of a hierarchy the daemon does not own:
//! `<mount>/<daemon's path>/oxvirt/<vm>`. Limits (weights, caps, memory) come on top of this.

mod limits;
pub mod numa;

pub use limits::{affinity, set_affinity, shares, Limits, Unsupported, CPU_PERIOD_US};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// v1 controllers oxvirt uses, each in its own hierarchy or combined (e.g. `cpu,cpuacct`).
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"];

/// Name of the directory that holds the VMs' cgroups below the daemon's.
pub const PARENT: &str = "oxvirt";

/// One hierarchy: where oxvirt's parent cgroup lives in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The v1 controllers of this hierarchy (`cpu,cpuacct`), or `unified` for cgroup2.
    pub name: String,
    /// `<mount>/<daemon's path>/oxvirt`.
    pub dir: PathBuf,
}

/// The hierarchies of this host, seen from this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroups {
    pub hierarchies: Vec<Hierarchy>,
}

/// One VM's cgroup in every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    pub dirs: Vec<(String, PathBuf)>,
}

/// From `/proc/self/mounts` and `/proc/self/cgroup` (given as text, for tests).
pub fn parse(mounts: &str, own: &str) -> Cgroups {
    // The daemon's path in each hierarchy, keyed by its controller list ("" for cgroup2).
    let own_paths: Vec<(String, String)> = own
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctrls.to_string(), path.to_string()))
        })
        .collect();
    let mut hierarchies = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (mountpoint, fstype, options) = (f[1], f[2], f[3]);
        let (name, own_key) = match fstype {
            "cgroup2" => ("unified".to_string(), String::new()),
            "cgroup" => {
                let ctrls: Vec<&str> = options.split(',').filter(|o| V1_CONTROLLERS.contains(o)).collect();
                if ctrls.is_empty() {
                    continue;
                }
                (ctrls.join(","), ctrls.join(","))
            }
            _ => continue,
        };
        // /proc/self/cgroup lists v1 controllers in the kernel's order; compare as sets.
        let key_set = |k: &str| {
            let mut v: Vec<&str> = k.split(',').filter(|c| !c.is_empty()).collect();
            v.sort();
            v.join(",")
        };
        let own_path = own_paths
            .iter()
            .find(|(k, _)| if own_key.is_empty() { k.is_empty() } else { key_set(k) == key_set(&own_key) })
            .map(|(_, p)| p.as_str())
            .unwrap_or("/");
        let dir = Path::new(mountpoint).join(own_path.trim_start_matches('/')).join(PARENT);
        if !hierarchies.iter().any(|h: &Hierarchy| h.dir == dir) {
            hierarchies.push(Hierarchy { name, dir });
        }
    }
    Cgroups { hierarchies }
}

impl Cgroups {
    /// The hierarchies of this host, for this process.
    pub fn detect() -> Cgroups {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        parse(&mounts, &own)
    }

    pub fn vm(&self, name: &str) -> VmCgroup {
        VmCgroup { dirs: self.hierarchies.iter().map(|h| (h.name.clone(), h.dir.join(name))).collect() }
    }
}

/// A v1 cpuset cgroup starts with no CPUs and no memory nodes: give it its parent's.
fn init_cpuset(dir: &Path) -> io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(file);
        if std::fs::read_to_string(&mine).map(|s| s.trim().is_empty()).unwrap_or(false) {
            let parent = dir.parent().map(|p| p.join(file)).unwrap_or_default();
            let value = std::fs::read_to_string(&parent)?;
            std::fs::write(&mine, value.trim())?;
        }
    }
    Ok(())
}

impl VmCgroup {
    /// Creates the VM's cgroup (and oxvirt's parent) in every hierarchy.
    pub fn create(&self) -> io::Result<()> {
        for (name, dir) in &self.dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("create cgroup {}: {e}", dir.display())))?;
            if name.split(',').any(|c| c == "cpuset") {
                if let Some(parent) = dir.parent() {
                    init_cpuset(parent)?;
                }
                init_cpuset(dir)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files, opened for writing. Writing `0` to one moves the writer: a child
    /// process does so between fork and exec, so QEMU starts inside its cgroups.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|(_, d)| {
                let p = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", p.display())))
            })
            .collect()
    }

    /// Whether process `pid` is in this cgroup in every hierarchy.
    pub fn contains(&self, pid: u32) -> bool {
        self.dirs.iter().all(|(_, d)| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .map(|s| s.lines().any(|l| l.trim() == pid.to_string()))
                .unwrap_or(false)
        })
    }

    /// Removes the VM's cgroups once they are empty (waits a little for exiting processes).
    pub fn remove(&self) -> io::Result<()> {
        for (_, dir) in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io::Error::new(e.kind(), format!("remove cgroup {}: {e}", dir.display()))),
                }
            }
        }
        Ok(())
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are `fds`. Safe to call
/// between fork and exec: no allocation, only `write(2)`.
pub fn join_in_child(fds: &[i32]) -> io::Result<()> {
    for fd in fds {
        // SAFETY: write of one byte from a static buffer to a descriptor we opened.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
proc /proc proc rw 0 0";
    const HYBRID_OWN: &str = "9:name=systemd:/system.slice/oxvirtd.service
4:memory:/system.slice/oxvirtd.service
3:cpuacct,cpu:/system.slice
2:pids:/
0::/system.slice/oxvirtd.service";

    #[test]
    fn hybrid_host_gets_one_cgroup_per_hierarchy_below_the_daemon() {
        let c = parse(HYBRID_MOUNTS, HYBRID_OWN);
        let dirs: Vec<(&str, &str)> =
            c.hierarchies.iter().map(|h| (h.name.as_str(), h.dir.to_str().unwrap())).collect();
        assert_eq!(
            dirs,
            [
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/system.slice/oxvirt"),
                ("memory", "/sys/fs/cgroup/memory/system.slice/oxvirtd.service/oxvirt"),
                ("pids", "/sys/fs/cgroup/pids/oxvirt"),
                ("unified", "/sys/fs/cgroup/unified/system.slice/oxvirtd.service/oxvirt"),
            ]
        );
        assert_eq!(c.vm("vm-1").dirs[1].1, Path::new("/sys/fs/cgroup/memory/system.slice/oxvirtd.service/oxvirt/vm-1"));
    }

    #[test]
    fn pure_v2_host() {
        let c = parse("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0", "0::/user.slice/session-1.scope");
        assert_eq!(c.hierarchies.len(), 1);
        assert_eq!(c.hierarchies[0].dir, Path::new("/sys/fs/cgroup/user.slice/session-1.scope/oxvirt"));
    }

    #[test]
    fn no_cgroups_mounted() {
        assert!(parse("proc /proc proc rw 0 0", "").hierarchies.is_empty());
    }

    /// On the real host (as root): a child joins the VM's cgroups before exec, and the cgroups go
    /// away once it has exited.
    #[test]
    fn real_cgroups_hold_a_child_and_are_removed() {
        let c = Cgroups::detect();
        if c.hierarchies.is_empty() || unsafe { libc::geteuid() } != 0 {
            return;
        }
        let vm = c.vm(&format!("test-{}", std::process::id()));
        vm.create().unwrap();
        let files = vm.procs_files().unwrap();
        let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: join_in_child only calls write(2).
        unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || join_in_child(&fds)) };
        let mut child = cmd.spawn().unwrap();
        assert!(vm.contains(child.id()), "{vm:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        vm.remove().unwrap();
        assert!(vm.dirs.iter().all(|(_, d)| !d.exists()));
    }
}
