//! Host network devices, made and removed with iproute2 (`ip`, `bridge`, `tc`): argv only, no
//! shell. Every name passed here was made by oxvirt or checked as an interface name.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// A host command that failed, with what it said.
#[derive(Debug, thiserror::Error)]
#[error("{cmd}: {reason}")]
pub struct HostCmdError {
    pub cmd: String,
    pub reason: String,
}

pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, HostCmdError> {
    run_stdin(prog, args, None)
}

pub(crate) fn run_stdin(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HostCmdError> {
    use std::io::Write;
    let cmd = format!("{prog} {}", args.join(" "));
    let mut c = Command::new(prog);
    c.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        c.stdin(std::process::Stdio::piped());
    }
    let mut child = c.spawn().map_err(|e| HostCmdError { cmd: cmd.clone(), reason: e.to_string() })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).map_err(|e| HostCmdError { cmd: cmd.clone(), reason: e.to_string() })?;
    }
    let out = child.wait_with_output().map_err(|e| HostCmdError { cmd: cmd.clone(), reason: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(HostCmdError { cmd, reason })
    }
}

/// The host's own IPv4 addresses with their prefix, per device (`ip -j -4 addr`), oxvirt's
/// bridges left out (their addresses are networks' gateways).
pub(crate) fn host_addresses() -> Result<Vec<(String, oxvirt_model::Ipv4Net)>, HostCmdError> {
    let out = run("ip", &["-j", "-4", "addr", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| HostCmdError { cmd: "ip -j -4 addr show".into(), reason: e.to_string() })?;
    let mut addrs = Vec::new();
    for dev in v.as_array().into_iter().flatten() {
        let name = dev["ifname"].as_str().unwrap_or_default();
        if name.starts_with("oxb") {
            continue;
        }
        for a in dev["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else { continue };
            if let Ok(addr) = local.parse() {
                addrs.push((name.to_string(), oxvirt_model::Ipv4Net { addr, prefix: prefix.min(32) as u8 }));
            }
        }
    }
    Ok(addrs)
}

pub(crate) fn ip(args: &[&str]) -> Result<(), HostCmdError> {
    run("ip", args).map(|_| ())
}

pub(crate) fn exists(dev: &str) -> bool {
    Path::new(&format!("/sys/class/net/{dev}")).exists()
}

pub(crate) fn is_bridge(dev: &str) -> bool {
    Path::new(&format!("/sys/class/net/{dev}/bridge")).is_dir()
}

pub(crate) fn mtu_of(dev: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu")).ok()?.trim().parse().ok()
}

/// The bridge a device is a port of.
pub(crate) fn master_of(dev: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{dev}/master")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

pub(crate) fn delete(dev: &str) -> Result<(), HostCmdError> {
    if exists(dev) {
        ip(&["link", "del", dev])?;
    }
    Ok(())
}

/// A bridge with an MTU and, when given, an address; up. Made only if missing, fixed if it drifted.
pub(crate) fn ensure_bridge(
    name: &str,
    mtu: u32,
    addr: Option<(Ipv4Addr, u8)>,
    mac: Option<&str>,
) -> Result<(), HostCmdError> {
    if !exists(name) {
        ip(&["link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
    }
    if let Some(mac) = mac {
        let now = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap_or_default();
        if now.trim() != mac {
            ip(&["link", "set", name, "address", mac])?;
        }
    }
    let mtu_s = mtu.to_string();
    if mtu_of(name) != Some(mtu) {
        // A bridge without ports keeps the MTU it is given; with ports it takes the smallest.
        ip(&["link", "set", name, "mtu", &mtu_s])?;
    }
    if let Some((a, p)) = addr {
        let cidr = format!("{a}/{p}");
        let shown = run("ip", &["-o", "-4", "addr", "show", "dev", name])?;
        if !shown.split_whitespace().any(|w| w == cidr) {
            ip(&["addr", "replace", &cidr, "dev", name])?;
        }
    }
    ip(&["link", "set", name, "up"])
}

/// A VXLAN device on a bridge, sending broadcast and unknown frames to every peer.
pub(crate) fn ensure_vxlan(
    name: &str,
    bridge: &str,
    vni: u32,
    local: Ipv4Addr,
    port: u16,
    mtu: u32,
    peers: &[Ipv4Addr],
) -> Result<(), HostCmdError> {
    let (vni_s, local_s, port_s, mtu_s) = (vni.to_string(), local.to_string(), port.to_string(), mtu.to_string());
    if !exists(name) {
        ip(&["link", "add", name, "type", "vxlan", "id", &vni_s, "local", &local_s, "dstport", &port_s])?;
    }
    ip(&["link", "set", name, "mtu", &mtu_s])?;
    if master_of(name).as_deref() != Some(bridge) {
        ip(&["link", "set", name, "master", bridge])?;
    }
    // Head-end replication: the all-zero entry per peer floods to each; the bridge learns MACs.
    let fdb = run("bridge", &["fdb", "show", "dev", name])?;
    let have: Vec<String> = fdb
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dst").nth(1).map(str::to_string))
        .collect();
    for p in peers {
        let p_s = p.to_string();
        if !have.contains(&p_s) {
            run("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", &p_s])?;
        }
    }
    for h in have.iter().filter(|h| !peers.iter().any(|p| p.to_string() == **h)) {
        run("bridge", &["fdb", "del", "00:00:00:00:00:00", "dev", name, "dst", h])?;
    }
    ip(&["link", "set", name, "up"])
}

/// A TAP device (multi-queue when `queues` > 1) with an MTU, joined to `bridge`, up; `owner` may
/// attach to it without privileges.
pub(crate) fn make_tap(
    name: &str,
    queues: u32,
    mtu: u32,
    bridge: &str,
    owner: Option<u32>,
) -> Result<(), HostCmdError> {
    if exists(name) {
        // Ours from an earlier run of this VM (same id): made afresh.
        ip(&["link", "del", name])?;
    }
    let mut add = vec!["tuntap", "add", "dev", name, "mode", "tap"];
    if queues > 1 {
        add.push("multi_queue");
    }
    let owner_s = owner.map(|u| u.to_string());
    if let Some(u) = &owner_s {
        add.extend(["user", u]);
    }
    ip(&add)?;
    let mtu_s = mtu.to_string();
    let joined = ip(&["link", "set", name, "mtu", &mtu_s])
        .and_then(|_| ip(&["link", "set", name, "master", bridge]))
        .and_then(|_| ip(&["link", "set", name, "up"]));
    if let Err(e) = joined {
        let _ = ip(&["link", "del", name]);
        return Err(e);
    }
    Ok(())
}
