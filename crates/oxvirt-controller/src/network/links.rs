//! Host network devices: bridges, VXLAN devices, TAP and IFB devices and their settings, made
//! through netlink (`netlink.rs`: no `ip` or `bridge` process) and read from sysfs; `tc` and `nft`
//! run as processes (`run`: `tokio::process`, argv only, no shell), read through their JSON output
//! (`-j`, never an error's text). Every name passed here was made by oxvirt
//! or checked as an interface name.

use super::netlink::{self, NetlinkError};
use rtnetlink::packet_route::link::{BridgeStpState, InfoKind};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan};
use std::net::Ipv4Addr;
use std::path::Path;

/// A host command or netlink request that failed: what it was, why, and the kernel's errno when
/// the kernel said it.
#[derive(Debug, thiserror::Error)]
#[error("{cmd}: {reason}")]
pub struct HostCmdError {
    pub cmd: String,
    pub reason: String,
    pub errno: Option<i32>,
}

impl From<NetlinkError> for HostCmdError {
    fn from(e: NetlinkError) -> Self {
        HostCmdError { errno: e.errno(), reason: e.source.to_string(), cmd: e.what }
    }
}

pub(crate) async fn run(prog: &str, args: &[&str]) -> Result<String, HostCmdError> {
    run_stdin(prog, args, None).await
}

/// Runs a program to its end (`tokio::process`: no worker waits on it), `stdin` written to it.
pub(crate) async fn run_stdin(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, HostCmdError> {
    use tokio::io::AsyncWriteExt;
    let cmd = format!("{prog} {}", args.join(" "));
    let failed = |e: std::io::Error| HostCmdError { cmd: cmd.clone(), errno: e.raw_os_error(), reason: e.to_string() };
    let mut c = tokio::process::Command::new(prog);
    c.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = c.spawn().map_err(failed)?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).await.map_err(failed)?;
        // Closed here: the program reads to its end.
        drop(w);
    }
    let out = child.wait_with_output().await.map_err(failed)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(HostCmdError { cmd, reason, errno: None })
    }
}

/// The host's own IPv4 addresses with their prefix, per device, oxvirt's bridges left out
/// (their addresses are networks' gateways).
pub(crate) fn host_addresses() -> Result<Vec<(String, oxvirt_model::Ipv4Net)>, HostCmdError> {
    Ok(netlink::ipv4_addresses()?
        .into_iter()
        .filter(|(dev, _, _)| !dev.starts_with("oxb"))
        .map(|(dev, addr, prefix)| (dev, oxvirt_model::Ipv4Net { addr, prefix: prefix.min(32) }))
        .collect())
}

fn index(dev: &str) -> Result<u32, HostCmdError> {
    Ok(netlink::index_of(dev)?)
}

/// Sets what is given of a link's MTU, controller (the bridge it is a port of) and state up.
fn set(dev: &str, mtu: Option<u32>, controller: Option<&str>, up: bool) -> Result<(), HostCmdError> {
    let mut m = LinkUnspec::new_with_index(index(dev)?);
    if let Some(mtu) = mtu {
        m = m.mtu(mtu);
    }
    if let Some(b) = controller {
        m = m.controller(index(b)?);
    }
    if up {
        m = m.up();
    }
    Ok(netlink::set_link(&format!("set {dev}"), m.build())?)
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let b: Vec<u8> = mac.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    b.try_into().ok()
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
    match netlink::index_of(dev) {
        Ok(i) => match netlink::delete_link(&format!("delete {dev}"), i) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            r => Ok(r?),
        },
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Joins a device to a bridge (when it is not a port of it already) and sets it up.
pub(crate) fn join(dev: &str, bridge: &str) -> Result<(), HostCmdError> {
    let to = (master_of(dev).as_deref() != Some(bridge)).then_some(bridge);
    set(dev, None, to, true)
}

/// A bridge with an MTU and, when given, an address; up. Made only if missing, fixed if it drifted.
pub(crate) fn ensure_bridge(
    name: &str,
    mtu: u32,
    addr: Option<(Ipv4Addr, u8)>,
    mac: Option<&str>,
) -> Result<(), HostCmdError> {
    if !exists(name) {
        let m = LinkBridge::new(name).stp_state(BridgeStpState::Disabled).forward_delay(0).build();
        netlink::add_link(&format!("add bridge {name}"), m)?;
    }
    ensure_addressed(name, mtu, addr, mac)
}

/// An existing device (a bridge, the switch's internal port of a vlan network's gateway) with
/// its MAC, MTU and address as given, up; fixed only where it drifted.
pub(crate) fn ensure_addressed(
    name: &str,
    mtu: u32,
    addr: Option<(Ipv4Addr, u8)>,
    mac: Option<&str>,
) -> Result<(), HostCmdError> {
    if let Some(mac) = mac {
        let now = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap_or_default();
        if now.trim() != mac {
            let bytes = parse_mac(mac).ok_or_else(|| HostCmdError {
                cmd: format!("set {name} address"),
                reason: format!("{mac} is not a MAC address"),
                errno: Some(libc::EINVAL),
            })?;
            let m = LinkUnspec::new_with_index(index(name)?).address(bytes.to_vec()).build();
            netlink::set_link(&format!("set {name} address {mac}"), m)?;
        }
    }
    // A bridge without ports keeps the MTU it is given; with ports it takes the smallest.
    let mtu = (mtu_of(name) != Some(mtu)).then_some(mtu);
    if let Some((a, p)) = addr {
        let has = netlink::ipv4_addresses()?.iter().any(|(d, x, q)| d == name && *x == a && *q == p);
        if !has {
            netlink::replace_ipv4(&format!("address {a}/{p} on {name}"), index(name)?, a, p)?;
        }
    }
    set(name, mtu, None, true)
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
    if !exists(name) {
        let m = LinkVxlan::new(name, vni).local(local).port(port).build();
        netlink::add_link(&format!("add vxlan {name}"), m)?;
    }
    set(name, Some(mtu), (master_of(name).as_deref() != Some(bridge)).then_some(bridge), false)?;
    // Head-end replication: the all-zero entry per peer floods to each; the bridge learns MACs.
    const ALL: [u8; 6] = [0; 6];
    let i = index(name)?;
    let have = netlink::fdb_destinations(i, ALL)?;
    for p in peers.iter().filter(|p| !have.contains(p)) {
        netlink::fdb_append(&format!("forward {name} to {p}"), i, ALL, *p)?;
    }
    for h in have.iter().filter(|h| !peers.contains(h)) {
        netlink::fdb_delete(&format!("stop forwarding {name} to {h}"), i, ALL, *h)?;
    }
    set(name, None, None, true)
}

/// A TAP device (multi-queue when `queues` > 1) with an MTU, joined to `bridge` (none: a port of
/// the switch, plugged there after), up; `owner` may attach to it without privileges.
pub(crate) fn make_tap(
    name: &str,
    queues: u32,
    mtu: u32,
    bridge: Option<&str>,
    owner: Option<u32>,
) -> Result<(), HostCmdError> {
    if exists(name) {
        // Ours from an earlier run of this VM (same id): made afresh.
        delete(name)?;
    }
    add_tap(name, queues > 1, owner)?;
    if let Err(e) = set(name, Some(mtu), bridge, true) {
        let _ = delete(name);
        return Err(e);
    }
    Ok(())
}

/// A persistent TAP device (as `ip tuntap add`): made through `/dev/net/tun`, kept once its
/// descriptor is closed, owned by `owner` when given.
fn add_tap(name: &str, multi_queue: bool, owner: Option<u32>) -> Result<(), HostCmdError> {
    let failed = |what: &str, e: std::io::Error| HostCmdError {
        cmd: format!("{what} {name}"),
        errno: e.raw_os_error(),
        reason: e.to_string(),
    };
    let tun =
        oxvirt_hypervisor::qemu::confine::attach_tap(name, false, multi_queue).map_err(|e| failed("add tap", e))?;
    use std::os::fd::AsRawFd;
    let fd = tun.as_raw_fd();
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value.
        if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, uid as libc::c_ulong) } < 0 {
            return Err(failed("set owner of", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: TUNSETPERSIST takes a flag by value.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(failed("keep", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// An IFB device with an MTU, up (made when missing).
pub(crate) fn ensure_ifb(name: &str, mtu: u32) -> Result<(), HostCmdError> {
    if !exists(name) {
        let m = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb).name(name.to_string()).build();
        netlink::add_link(&format!("add ifb {name}"), m)?;
    }
    set(name, Some(mtu), None, true)
}
