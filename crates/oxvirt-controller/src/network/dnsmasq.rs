//! One dnsmasq (Debian's dnsmasq-base) per network with a subnet: DHCP with static leases only
//! (every VM's address comes from oxvirt's IPAM, so anti-spoofing knows it), and DNS on nat
//! networks. Its files live in `<data>/networks/<name>/`; it is found again after a daemon restart
//! through its pid file and command line. It runs as a system user of its own
//! ([`DNSMASQ_USER`], made on first use), not root: it starts as root to bind its ports and then
//! drops to that user, which can read the network's static leases and write its lease file, and
//! nothing else of oxvirt's.

use super::links::HostCmdError;
use oxvirt_model::{NetworkKind, NetworkSpec};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub struct DnsmasqFiles {
    pub dir: PathBuf,
}

impl DnsmasqFiles {
    pub fn new(dir: PathBuf) -> Self {
        DnsmasqFiles { dir }
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    pub fn hostsfile(&self) -> PathBuf {
        self.dir.join("dhcp-hosts")
    }
    pub fn leasefile(&self) -> PathBuf {
        self.dir.join("dnsmasq.leases")
    }
}

/// A lease as dnsmasq recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActiveLease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    /// Unix seconds; 0 for an infinite lease.
    pub expires: u64,
}

/// Reads dnsmasq's lease file (`expiry mac ip hostname client-id` per line); bad lines are skipped.
pub fn read_leases(path: &Path) -> Vec<ActiveLease> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(ActiveLease {
                expires: f.first()?.parse().ok()?,
                mac: f.get(1)?.to_string(),
                ip: f.get(2)?.parse().ok()?,
                hostname: f.get(3).filter(|h| **h != "*").map(|h| h.to_string()),
            })
        })
        .collect()
}

/// The pid of the network's dnsmasq if it runs (its pid file names a dnsmasq of this directory).
pub fn running_pid(files: &DnsmasqFiles) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(files.pidfile()).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmdline);
    (cmd.starts_with("dnsmasq") && cmd.contains(files.pidfile().to_string_lossy().as_ref())).then_some(pid)
}

/// The static leases: `mac,ip,name` lines.
pub fn write_hosts(files: &DnsmasqFiles, hosts: &[(String, Ipv4Addr, String)]) -> std::io::Result<()> {
    let text: String = hosts.iter().map(|(mac, ip, name)| format!("{mac},{ip},{name}\n")).collect();
    let tmp = files.dir.join("dhcp-hosts.new");
    std::fs::write(&tmp, text)?;
    // Readable by dnsmasq's group, as the file it replaces was.
    if let Ok(m) = std::fs::metadata(files.hostsfile()) {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::lchown(&tmp, Some(m.uid()), Some(m.gid()))?;
        std::fs::set_permissions(&tmp, m.permissions())?;
    }
    std::fs::rename(tmp, files.hostsfile())
}

/// The unprivileged user every network's dnsmasq runs as.
pub const DNSMASQ_USER: &str = "oxvirt-dnsmasq";

/// dnsmasq's user, made as a system user (no home, no shell) when the host has none yet.
pub fn ensure_user() -> Result<(u32, u32), HostCmdError> {
    oxvirt_hypervisor::qemu::identity::system_user(DNSMASQ_USER, "oxvirt network DHCP/DNS").map_err(|e| HostCmdError {
        cmd: "useradd".into(),
        errno: e.raw_os_error(),
        reason: e.to_string(),
    })
}

/// The network's directory and files as dnsmasq's user needs them: the directory and the static
/// leases readable by its group, the lease file its own (all of them made by oxvirt).
fn share_files(files: &DnsmasqFiles, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, owner: u32, mode: u32| -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(owner), Some(gid))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    set(&files.dir, 0, 0o750)?;
    set(&files.hostsfile(), 0, 0o640)?;
    if !files.leasefile().exists() {
        std::fs::write(files.leasefile(), "")?;
    }
    set(&files.leasefile(), uid, 0o640)?;
    // `<data dir>/networks/<name>`: the directories below the data directory are oxvirt's and
    // passed through (the search bit only); the data directory must be passable already.
    let data_dir = files.dir.parent().and_then(std::path::Path::parent).unwrap_or(&files.dir);
    oxvirt_hypervisor::qemu::confine::reachable(&files.hostsfile(), data_dir)
}

/// Starts dnsmasq on `bridge` unless it runs; a running one re-reads its static leases.
pub fn ensure(files: &DnsmasqFiles, spec: &NetworkSpec, bridge: &str) -> Result<(), HostCmdError> {
    let err = |reason: String| HostCmdError { cmd: "dnsmasq".into(), reason, errno: None };
    if let Some(pid) = running_pid(files) {
        // SIGHUP: re-read the hosts file.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        return Ok(());
    }
    let (Some(subnet), Some(gw), Some((first, last))) = (spec.subnet, spec.gateway(), spec.dhcp_range()) else {
        return Ok(());
    };
    if !files.hostsfile().exists() {
        write_hosts(files, &[]).map_err(|e| err(e.to_string()))?;
    }
    let (uid, gid) = ensure_user()?;
    share_files(files, uid, gid).map_err(|e| err(format!("prepare {}: {e}", files.dir.display())))?;
    let p = |x: PathBuf| x.to_string_lossy().into_owned();
    let mut args = vec![
        "--conf-file=/dev/null".to_string(),
        "--no-hosts".into(),
        "--bind-dynamic".into(),
        format!("--interface={bridge}"),
        "--except-interface=lo".into(),
        format!("--listen-address={gw}"),
        format!("--pid-file={}", p(files.pidfile())),
        format!("--dhcp-leasefile={}", p(files.leasefile())),
        format!("--dhcp-hostsfile={}", p(files.hostsfile())),
        // Static leases only: a VM gets the address IPAM gave it, and nothing else does.
        format!("--dhcp-range={first},static,{},1h", subnet.netmask()),
        "--dhcp-authoritative".into(),
        format!("--dhcp-option=option:mtu,{}", spec.mtu()),
        // Not root once its ports are bound.
        format!("--user={DNSMASQ_USER}"),
        format!("--group={DNSMASQ_USER}"),
    ];
    let _ = last;
    if spec.kind == NetworkKind::Nat {
        args.push(format!("--dhcp-option=option:router,{gw}"));
        args.push(format!("--dhcp-option=option:dns-server,{gw}"));
    } else {
        // No way out: no router; no DNS either.
        args.push("--dhcp-option=option:router".into());
        args.push("--port=0".into());
    }
    let out = std::process::Command::new("dnsmasq")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run dnsmasq (Debian package dnsmasq-base): {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// Stops the network's dnsmasq, if it runs.
pub fn stop(files: &DnsmasqFiles) {
    if let Some(pid) = running_pid(files) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..50 {
            if running_pid(files).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(files.pidfile());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_read_and_bad_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("oxv-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("l");
        std::fs::write(&f, "1700000000 52:54:00:aa:bb:cc 10.0.0.5 vm1 01:52:54:00:aa:bb:cc\ngarbage\n0 52:54:00:aa:bb:cd 10.0.0.6 * *\n").unwrap();
        let l = read_leases(&f);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].hostname.as_deref(), Some("vm1"));
        assert_eq!(l[1].ip.to_string(), "10.0.0.6");
        assert_eq!(l[1].hostname, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
