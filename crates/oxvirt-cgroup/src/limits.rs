//! CPU weight, CPU cap, memory limit and CPU/memory-node sets of a VM's cgroups, written to
//! whichever of v1 (`cpu.shares`, `cpu.cfs_quota_us`, `memory.limit_in_bytes`, `cpuset.*`) and v2
//! (`cpu.weight`, `cpu.max`, `memory.max`, `cpuset.*`) the host offers; CPU time used, read back.

use crate::VmCgroup;
use std::io;
use std::path::Path;

/// The period CPU caps are counted over.
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// 1..10000, 100 = normal.
    pub cpu_weight: u32,
    /// Host CPUs' worth of time per period (1.5 = 150 ms per 100 ms); `None`: no cap.
    pub cpu_limit: Option<f64>,
    pub memory_max: Option<u64>,
    /// CPU list the VM's threads may use; `None`: the parent's.
    pub cpus: Option<String>,
    /// Memory nodes; `None`: the parent's.
    pub mems: Option<String>,
}

/// What of a setting a host could not apply (no such controller here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub Vec<&'static str>);

fn write(dir: &Path, file: &str, value: &str) -> io::Result<bool> {
    let p = dir.join(file);
    if !p.exists() {
        return Ok(false);
    }
    std::fs::write(&p, value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {}: {e}", p.display())))?;
    Ok(true)
}

fn parent_value(dir: &Path, file: &str) -> String {
    dir.parent()
        .and_then(|p| std::fs::read_to_string(p.join(file)).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// v1 `cpu.shares` for a weight (1024 is normal; the kernel wants at least 2).
pub fn shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).max(2)
}

impl VmCgroup {
    /// Applies `l` in every hierarchy; returns the settings no hierarchy here could take.
    pub fn apply(&self, l: &Limits) -> io::Result<Unsupported> {
        let mut done: Vec<&'static str> = Vec::new();
        let quota = l.cpu_limit.map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1000));
        for (name, dir) in &self.dirs {
            let v1 = name != "unified";
            let has = |c: &str| name.split(',').any(|x| x == c);
            if v1 && has("cpu") {
                write(dir, "cpu.shares", &shares(l.cpu_weight).to_string())?;
                write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(dir, "cpu.cfs_quota_us", &quota.map(|q| q.to_string()).unwrap_or("-1".into()))?;
                done.extend(["cpu_weight", "cpu_limit"]);
            }
            if !v1 {
                if write(dir, "cpu.weight", &l.cpu_weight.to_string())? {
                    done.push("cpu_weight");
                }
                let max = quota.map(|q| q.to_string()).unwrap_or("max".into());
                if write(dir, "cpu.max", &format!("{max} {CPU_PERIOD_US}"))? {
                    done.push("cpu_limit");
                }
                if write(dir, "memory.max", &l.memory_max.map(|m| m.to_string()).unwrap_or("max".into()))? {
                    done.push("memory_limit");
                }
            }
            if v1 && has("memory") {
                write(dir, "memory.limit_in_bytes", &l.memory_max.map(|m| m.to_string()).unwrap_or("-1".into()))?;
                done.push("memory_limit");
            }
            if has("cpuset") || !v1 {
                let cpus = l
                    .cpus
                    .clone()
                    .unwrap_or_else(|| parent_value(dir, if v1 { "cpuset.cpus" } else { "cpuset.cpus.effective" }));
                let mems = l
                    .mems
                    .clone()
                    .unwrap_or_else(|| parent_value(dir, if v1 { "cpuset.mems" } else { "cpuset.mems.effective" }));
                let a = !cpus.is_empty() && write(dir, "cpuset.cpus", &cpus)?;
                let b = !mems.is_empty() && write(dir, "cpuset.mems", &mems)?;
                if a && b {
                    done.push("cpuset");
                }
            }
        }
        let mut missing = Vec::new();
        let wanted = [
            ("cpu_weight", l.cpu_weight != 100),
            ("cpu_limit", l.cpu_limit.is_some()),
            ("memory_limit", l.memory_max.is_some()),
            ("cpuset", l.cpus.is_some() || l.mems.is_some()),
        ];
        for (what, set) in wanted {
            if set && !done.contains(&what) {
                missing.push(what);
            }
        }
        Ok(Unsupported(missing))
    }

    /// CPU time the VM's processes used, in nanoseconds (v1 `cpuacct.usage` or v2 `cpu.stat`).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        for (name, dir) in &self.dirs {
            if name.split(',').any(|x| x == "cpuacct") {
                if let Ok(s) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
                    return s.trim().parse().ok();
                }
            }
            if name == "unified" {
                if let Ok(s) = std::fs::read_to_string(dir.join("cpu.stat")) {
                    let us = s
                        .lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if let Some(us) = us {
                        return Some(us * 1000);
                    }
                }
            }
        }
        None
    }
}

/// Pins a thread (or process) to host CPUs.
pub fn set_affinity(tid: u32, cpus: &[u32]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for cpus < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus.iter().filter(|c| **c < 1024) {
            libc::CPU_SET(*c as usize, &mut set);
        }
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs a thread may run on.
pub fn affinity(tid: u32) -> io::Result<Vec<u32>> {
    // SAFETY: as above; the kernel fills the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..1024u32).filter(|c| libc::CPU_ISSET(*c as usize, &set)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_shares() {
        assert_eq!(shares(100), 1024);
        assert_eq!(shares(200), 2048);
        assert_eq!(shares(1), 10);
    }

    /// A fake v1 + v2 tree: each setting lands in the file of its hierarchy.
    #[test]
    fn limits_land_in_v1_and_v2_files() {
        let root = std::env::temp_dir().join(format!("oxv-limits-{}", std::process::id()));
        let v1cpu = root.join("cpu,cpuacct/vm");
        let v1mem = root.join("memory/vm");
        let v2 = root.join("unified/vm");
        for (d, files) in [
            (&v1cpu, &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"][..]),
            (&v1mem, &["memory.limit_in_bytes"][..]),
            (&v2, &["cpu.weight", "cpu.max", "memory.max"][..]),
        ] {
            std::fs::create_dir_all(d).unwrap();
            for f in files {
                std::fs::write(d.join(f), "").unwrap();
            }
        }
        let cg = VmCgroup {
            dirs: vec![
                ("cpu,cpuacct".into(), v1cpu.clone()),
                ("memory".into(), v1mem.clone()),
                ("unified".into(), v2.clone()),
            ],
        };
        let l = Limits {
            cpu_weight: 200,
            cpu_limit: Some(0.5),
            memory_max: Some(1 << 30),
            cpus: Some("1".into()),
            mems: None,
        };
        let missing = cg.apply(&l).unwrap();
        let read = |p: &Path, f: &str| std::fs::read_to_string(p.join(f)).unwrap();
        assert_eq!(read(&v1cpu, "cpu.shares"), "2048");
        assert_eq!(read(&v1cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&v1mem, "memory.limit_in_bytes"), "1073741824");
        assert_eq!(read(&v2, "cpu.weight"), "200");
        assert_eq!(read(&v2, "cpu.max"), "50000 100000");
        // No cpuset hierarchy in this tree: said so.
        assert_eq!(missing, Unsupported(vec!["cpuset"]));
        std::fs::remove_dir_all(root).unwrap();
    }
}
