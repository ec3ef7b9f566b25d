//! Virtual networks on this host: bridges, VXLAN devices, dnsmasq, nftables and tc, all made from
//! the store and recorded before they are made, so that a restarted daemon finds them again and a
//! deleted network or stopped VM leaves nothing behind. oxvirt touches no device, process or
//! table it did not make.
//!
//! - `links`: devices through iproute2; `dnsmasq`: DHCP/DNS per network; `firewall`: nftables;
//!   `shaping`: tc; `ipam`: addresses; `taps`: VM NICs' TAP devices; `secgroups`: groups' CRUD.

pub mod dnsmasq;
pub mod firewall;
mod flow_rules;
mod ipam;
pub(crate) mod links;
mod netlink;
mod nics;
mod ovs;
mod secgroups;
pub use ipam::Ipam;
pub use ovs::OVS_BRIDGE;
pub use secgroups::SecurityGroups;
pub mod shaping;
mod taps;

pub use dnsmasq::ActiveLease;
pub use links::HostCmdError;
pub use taps::NicStats;

use crate::{lock, now_millis, ControlError};
use oxvirt_model::{LeaseView, Network, NetworkKind, NetworkSpec, NetworkView, SecurityGroup, Vm};
use oxvirt_store::{Expect, Record, StoreExt};
use std::path::PathBuf;

crate::service! {
    /// Networks on this host: records, bridges, VXLAN, DHCP, TAPs, NICs and oxvirt's firewall tables.
    Networks, networks, state = networks
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// Serialises changes of networks and of oxvirt's nftables tables.
    pub net_lock: tokio::sync::Mutex<()>,
    /// The Open vSwitch of `vlan` networks, once made (`ovs.rs`).
    pub(crate) ovs: tokio::sync::Mutex<Option<std::sync::Arc<ovs::OvsRuntime>>>,
}

impl Record for HostObject {
    const PREFIX: &'static str = "hostobjs/";
}

/// A device or process oxvirt made on this host, recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostObject {
    /// `bridge`, `vxlan`, `tap`, `ifb` or `dnsmasq`.
    pub kind: String,
    /// The network (for bridges, VXLAN devices, dnsmasq) or VM (TAP and IFB devices, huge
    /// pages) it serves.
    pub owner: String,
    /// For `hugepages`: how many pages oxvirt added to the host's pool for the owner.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// 8 hex digits of an id: names host devices within Linux's 15 characters.
pub(crate) fn short_id(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect()
}

/// The bridge VMs of this network join.
pub fn bridge_of(net: &Network) -> String {
    match (&net.spec.kind, &net.spec.bridge) {
        (NetworkKind::Bridged, Some(b)) => b.clone(),
        (NetworkKind::Vlan, _) => OVS_BRIDGE.to_string(),
        _ => format!("oxb{}", short_id(&net.id)),
    }
}

/// The MAC address of a network's gateway: one per network, the same on every host (an anycast
/// gateway), so a VM that migrates finds its gateway at the address it knows. Locally
/// administered (`02:`), apart from VMs' `52:54:00`.
pub fn gateway_mac(net: &Network) -> String {
    let id = short_id(&net.id);
    let b = |i: usize| id.get(i..i + 2).unwrap_or("00").to_string();
    format!("02:6f:78:{}:{}:{}", b(0), b(2), b(4))
}

/// A vlan network's gateway: the switch's internal port (an access port of the VLAN) that holds
/// the network's address and serves its DHCP.
pub fn vlan_gateway_of(net: &Network) -> String {
    format!("oxg{}", short_id(&net.id))
}

/// Where a network's DHCP server listens (and its address is): its bridge, or a vlan
/// network's gateway port.
pub fn dhcp_interface_of(net: &Network) -> String {
    match net.spec.kind {
        NetworkKind::Vlan => vlan_gateway_of(net),
        _ => bridge_of(net),
    }
}

pub fn vxlan_of(net: &Network) -> String {
    format!("oxx{}", short_id(&net.id))
}

impl From<links::HostCmdError> for ControlError {
    fn from(e: links::HostCmdError) -> Self {
        ControlError::Host(e.to_string())
    }
}

impl Networks {
    pub(crate) fn network_dir(&self, name: &str) -> PathBuf {
        self.ctl.inner.config.data_dir.join("networks").join(name)
    }

    fn dnsmasq_files(&self, name: &str) -> dnsmasq::DnsmasqFiles {
        dnsmasq::DnsmasqFiles::new(self.network_dir(name))
    }

    pub fn get_network(&self, name: &str) -> Result<Network, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<Network>(name)?
            .map(|(n, _)| n)
            .ok_or_else(|| ControlError::NotFound { kind: "network", name: name.into() })
    }

    pub fn list_networks(&self) -> Result<Vec<NetworkView>, ControlError> {
        let vms = self.ctl.vms().list_vms()?;
        self.ctl
            .inner
            .store
            .list_records::<Network>()?
            .into_iter()
            .map(|(n, _)| Ok(self.network_view(n, &vms)))
            .collect()
    }

    pub fn show_network(&self, name: &str) -> Result<NetworkView, ControlError> {
        let n = self.get_network(name)?;
        Ok(self.network_view(n, &self.ctl.vms().list_vms()?))
    }

    fn network_view(&self, n: Network, vms: &[Vm]) -> NetworkView {
        let bridge = bridge_of(&n);
        let nics = vms.iter().flat_map(|v| &v.spec.nics).filter(|x| x.network.as_deref() == Some(&n.spec.name)).count();
        NetworkView {
            bridge_up: links::exists(&bridge),
            bridge,
            mtu: n.spec.mtu(),
            gateway: n.spec.gateway(),
            dhcp_pid: dnsmasq::running_pid(&self.dnsmasq_files(&n.spec.name)),
            nics,
            network: n,
        }
    }

    /// Creates a network and makes it on the host; if that fails, nothing is left of it.
    /// What reaches the host's own networking (a host bridge, an uplink, a VXLAN underlay) is an
    /// administrator's to name.
    pub async fn create_network(&self, caller: &str, spec: NetworkSpec) -> Result<NetworkView, ControlError> {
        spec.validate()?;
        let host_side = [
            (spec.kind == NetworkKind::Bridged || spec.bridge.is_some(), "bridge"),
            (spec.uplink.is_some(), "uplink"),
            (spec.vxlan.is_some(), "vxlan"),
        ];
        if let Some((_, field)) = host_side.iter().find(|(named, _)| *named) {
            self.ctl.access().admin_only(
                caller,
                format!("{field}: only an administrator may tie a network to the host's own networking"),
            )?;
        }
        if spec.bridge.as_deref().is_some_and(|b| b.starts_with("oxb")) {
            return Err(ControlError::invalid("bridge", "oxb* bridges are oxvirt's own networks'"));
        }
        let _net = self.state().net_lock.lock().await;
        let others = self.ctl.inner.store.list_records::<Network>()?;
        if others.iter().any(|(n, _)| n.spec.name == spec.name) {
            return Err(ControlError::Exists(oxvirt_model::ValidationError::new(
                "name",
                format!("a network named {:?} already exists", spec.name),
            )));
        }
        for (o, _) in &others {
            if let (Some(a), Some(b)) = (spec.subnet, o.spec.subnet) {
                let overlap = a.contains(b.network()) || b.contains(a.network());
                if overlap && (spec.kind != NetworkKind::Vxlan || o.spec.kind != NetworkKind::Vxlan) {
                    return Err(ControlError::invalid("subnet", format!("overlaps network {}'s {b}", o.spec.name)));
                }
            }
            if let (Some(a), Some(b)) = (spec.vlan, o.spec.vlan) {
                if a == b {
                    return Err(ControlError::invalid(
                        "vlan",
                        format!("network {} uses VLAN {a} already", o.spec.name),
                    ));
                }
            }
            if let (Some(a), Some(b)) = (&spec.vxlan, &o.spec.vxlan) {
                if a.vni == b.vni && a.port == b.port {
                    return Err(ControlError::invalid(
                        "vxlan.vni",
                        format!("network {} uses VNI {} already", o.spec.name, a.vni),
                    ));
                }
            }
        }
        // A subnet of the host's own (its LAN, its management network) is never handed to VMs:
        // they would answer for the host's neighbours.
        if let Some(a) = spec.subnet.filter(|_| spec.kind != NetworkKind::Bridged) {
            for (dev, h) in links::host_addresses()? {
                if a.contains(h.addr) || h.contains(a.network()) {
                    return Err(ControlError::invalid(
                        "subnet",
                        format!("{a} overlaps the host's own {}/{} on {dev}", h.addr, h.prefix),
                    ));
                }
            }
        }
        if spec.kind == NetworkKind::Bridged {
            let b = spec.bridge.as_deref().unwrap_or_default();
            if !links::is_bridge(b) {
                return Err(ControlError::invalid("bridge", format!("there is no bridge named {b} on this host")));
            }
        }
        if let Some(u) = &spec.uplink {
            if !links::exists(u) {
                return Err(ControlError::invalid("uplink", format!("there is no interface named {u} on this host")));
            }
        }
        let net = Network { id: uuid::Uuid::new_v4().to_string(), spec, created_at: now_millis() };
        self.ctl.inner.store.put_record(&net.spec.name, &net, Expect::Absent)?;
        let made = match self.ensure_network(&net) {
            Ok(()) if net.spec.kind == NetworkKind::Vlan => match self.ensure_vlan_gateway(&net).await {
                Ok(()) => match self.ensure_ovs().await {
                    Ok(_) => self.refresh_firewall_locked().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Ok(()) => self.refresh_firewall_locked().await,
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            self.remove_network_from_host(&net);
            self.ovs_unplug(&vlan_gateway_of(&net)).await;
            let _ = self.ctl.inner.store.delete_record::<Network>(&net.spec.name, Expect::Any);
            let _ = self.refresh_firewall_locked().await;
            return Err(e);
        }
        Ok(self.network_view(net, &self.ctl.vms().list_vms()?))
    }

    /// Deletes a network no NIC uses, and everything oxvirt made on the host for it.
    pub async fn delete_network(&self, name: &str) -> Result<(), ControlError> {
        let _net = self.state().net_lock.lock().await;
        let (net, rev) = self
            .ctl
            .inner
            .store
            .get_record::<Network>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "network", name: name.into() })?;
        let users: Vec<String> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v| v.spec.nics.iter().any(|n| n.network.as_deref() == Some(name)))
            .map(|v| v.spec.name)
            .collect();
        if !users.is_empty() {
            return Err(ControlError::InUse(format!(
                "network {name} has NICs of VM(s) {}: remove them first",
                users.join(", ")
            )));
        }
        self.ctl.inner.store.delete_record::<Network>(name, Expect::Revision(rev))?;
        self.forget_flow_rules(name);
        self.remove_network_from_host(&net);
        if net.spec.kind == NetworkKind::Vlan {
            self.ovs_unplug(&vlan_gateway_of(&net)).await;
        }
        self.refresh_firewall_locked().await?;
        Ok(())
    }

    fn record_object(&self, name: &str, kind: &str, owner: &str) -> Result<(), ControlError> {
        let obj = HostObject { kind: kind.into(), owner: owner.into(), count: 0 };
        self.ctl.inner.store.put_record(&self.ctl.hosts().local_key(name), &obj, Expect::Any)?;
        Ok(())
    }

    fn forget_object(&self, name: &str) {
        if let Err(e) = self.ctl.inner.store.delete_record::<HostObject>(&self.ctl.hosts().local_key(name), Expect::Any)
        {
            tracing::debug!(name, "forget host object: {e}");
        }
    }

    /// Makes the host match one network: bridge, VXLAN device, forwarding, DHCP.
    pub(crate) fn ensure_network(&self, net: &Network) -> Result<(), ControlError> {
        let spec = &net.spec;
        // A host bridge is the operator's; a vlan network lives on the switch (`ovs.rs`).
        if matches!(spec.kind, NetworkKind::Bridged | NetworkKind::Vlan) {
            return Ok(());
        }
        let name = &spec.name;
        let bridge = bridge_of(net);
        let mtu = spec.mtu();
        self.record_object(&bridge, "bridge", name)?;
        let addr = spec.gateway().zip(spec.subnet.map(|s| s.prefix));
        let mac = addr.map(|_| gateway_mac(net));
        links::ensure_bridge(&bridge, mtu, addr, mac.as_deref())?;
        self.ensure_vxlan_of(net)?;
        if spec.kind == NetworkKind::Nat {
            // Routing between the network and the uplink (the host's own sysctl, in its namespace).
            if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").map(|v| v.trim() != "1").unwrap_or(true) {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .map_err(|e| ControlError::Host(format!("enable IPv4 forwarding: {e}")))?;
            }
        }
        if spec.dhcp && spec.subnet.is_some() {
            let dir = self.network_dir(name);
            std::fs::create_dir_all(&dir).map_err(|e| ControlError::Host(format!("create {}: {e}", dir.display())))?;
            self.record_object(&format!("dnsmasq-{name}"), "dnsmasq", name)?;
            self.write_dhcp_hosts(name)?;
            dnsmasq::ensure(&self.dnsmasq_files(name), spec, &bridge)?;
        }
        Ok(())
    }

    /// A vlan network with a subnet: its gateway port on the switch, addressed, and DHCP on it.
    pub(crate) async fn ensure_vlan_gateway(&self, net: &Network) -> Result<(), ControlError> {
        let spec = &net.spec;
        let (Some(gw), Some(subnet), Some(vlan)) = (spec.gateway(), spec.subnet, spec.vlan) else { return Ok(()) };
        let port = vlan_gateway_of(net);
        self.ovs_gateway_port(&port, vlan).await?;
        links::ensure_addressed(&port, spec.mtu(), Some((gw, subnet.prefix)), Some(&gateway_mac(net)))?;
        // Started when it does not run (the reconcile round calls this too; a running one is
        // told of new leases by `sync_dhcp`).
        if spec.dhcp && dnsmasq::running_pid(&self.dnsmasq_files(&spec.name)).is_none() {
            let name = &spec.name;
            let dir = self.network_dir(name);
            std::fs::create_dir_all(&dir).map_err(|e| ControlError::Host(format!("create {}: {e}", dir.display())))?;
            self.record_object(&format!("dnsmasq-{name}"), "dnsmasq", name)?;
            self.write_dhcp_hosts(name)?;
            dnsmasq::ensure(&self.dnsmasq_files(name), spec, &port)?;
        }
        Ok(())
    }

    /// A VXLAN network's device on this host, its peers as they are now.
    fn ensure_vxlan_of(&self, net: &Network) -> Result<(), ControlError> {
        let Some(vx) = &net.spec.vxlan else { return Ok(()) };
        let dev = vxlan_of(net);
        self.record_object(&dev, "vxlan", &net.spec.name)?;
        let (local, peers) = self.vxlan_ends(vx);
        links::ensure_vxlan(&dev, &bridge_of(net), vx.vni, local, vx.port, net.spec.mtu(), &peers)?;
        Ok(())
    }

    /// A segment's ends from this host: on a single host as written; in a cluster this host's
    /// address (`[store] address`) is its end and every other host's is a peer (with those
    /// written), so one network record serves every host and a host that joins is a peer.
    fn vxlan_ends(&self, vx: &oxvirt_model::VxlanSpec) -> (std::net::Ipv4Addr, Vec<std::net::Ipv4Addr>) {
        let Some(me) = self.ctl.hosts().host_name() else { return (vx.local, vx.peers.clone()) };
        let ip_of = |r: &oxvirt_model::HostRecord| {
            r.address_host().parse::<std::net::Ipv4Addr>().ok().filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        };
        let records = self.ctl.hosts().host_records().unwrap_or_default();
        let local = records.iter().find(|r| r.name == me).and_then(ip_of).unwrap_or(vx.local);
        let mut peers: Vec<std::net::Ipv4Addr> = vx.peers.clone();
        peers.extend(records.iter().filter(|r| r.name != me).filter_map(ip_of));
        peers.retain(|p| *p != local);
        peers.sort();
        peers.dedup();
        (local, peers)
    }

    /// In a cluster, each reconcile round: VXLAN networks made here follow the hosts that come
    /// and go (their peers).
    pub(crate) async fn refresh_vxlan_peers(&self) {
        if self.ctl.hosts().host_name().is_none() {
            return;
        }
        let _net = self.state().net_lock.lock().await;
        for (n, _) in self.ctl.inner.store.list_records::<Network>().unwrap_or_default() {
            if n.spec.vxlan.is_some() && links::is_bridge(&bridge_of(&n)) {
                if let Err(e) = self.ensure_vxlan_of(&n) {
                    tracing::warn!(network = %n.spec.name, "VXLAN peers: {e}");
                }
            }
        }
    }

    /// Removes what oxvirt made for a network (its records of them too).
    fn remove_network_from_host(&self, net: &Network) {
        let name = &net.spec.name;
        dnsmasq::stop(&self.dnsmasq_files(name));
        self.forget_object(&format!("dnsmasq-{name}"));
        let _ = std::fs::remove_dir_all(self.network_dir(name));
        // The operator's bridge, and the switch other vlan networks share, stay.
        if matches!(net.spec.kind, NetworkKind::Bridged | NetworkKind::Vlan) {
            return;
        }
        for dev in [vxlan_of(net), bridge_of(net)] {
            match links::delete(&dev) {
                Ok(()) => self.forget_object(&dev),
                Err(e) => tracing::warn!(dev, "{e}"),
            }
        }
    }

    /// Rewrites a network's static DHCP leases from IPAM and has dnsmasq re-read them.
    pub(crate) fn sync_dhcp(&self, network: &str) {
        let Ok(net) = self.get_network(network) else { return };
        if !(net.spec.dhcp && net.spec.subnet.is_some()) {
            return;
        }
        let r = self.write_dhcp_hosts(network).and_then(|_| {
            dnsmasq::ensure(&self.dnsmasq_files(network), &net.spec, &dhcp_interface_of(&net))
                .map_err(ControlError::from)
        });
        if let Err(e) = r {
            tracing::warn!(network, "DHCP hosts: {e}");
        }
    }

    fn write_dhcp_hosts(&self, network: &str) -> Result<(), ControlError> {
        let hosts: Vec<(String, std::net::Ipv4Addr, String)> =
            self.ctl.ipam().leases_of(network)?.into_iter().map(|l| (l.mac, l.ip, l.vm)).collect();
        dnsmasq::write_hosts(&self.dnsmasq_files(network), &hosts)
            .map_err(|e| ControlError::Host(format!("write DHCP hosts of {network}: {e}")))
    }

    /// The network's leases: what IPAM gave out, and what dnsmasq saw of it.
    pub fn network_leases(&self, name: &str) -> Result<Vec<LeaseView>, ControlError> {
        self.get_network(name)?;
        let active = dnsmasq::read_leases(&self.dnsmasq_files(name).leasefile());
        Ok(self
            .ctl
            .ipam()
            .leases_of(name)?
            .into_iter()
            .map(|l| {
                let seen = active.iter().find(|a| a.ip == l.ip && a.mac.eq_ignore_ascii_case(&l.mac));
                LeaseView { active: seen.is_some(), expires: seen.map(|a| a.expires), lease: l }
            })
            .collect())
    }

    /// Makes oxvirt's nftables tables match the store (networks, and the NICs whose TAP exists).
    pub(crate) async fn refresh_firewall(&self) -> Result<(), ControlError> {
        let _net = self.state().net_lock.lock().await;
        self.refresh_firewall_locked().await
    }

    async fn refresh_firewall_locked(&self) -> Result<(), ControlError> {
        let nets: Vec<Network> = self.ctl.inner.store.list_records::<Network>()?.into_iter().map(|(n, _)| n).collect();
        let groups: Vec<SecurityGroup> =
            self.ctl.inner.store.list_records::<SecurityGroup>()?.into_iter().map(|(g, _)| g).collect();
        let net_rules: Vec<firewall::NetRules> = nets
            .iter()
            .map(|n| firewall::NetRules {
                bridge: if n.spec.subnet.is_some() { dhcp_interface_of(n) } else { bridge_of(n) },
                kind: n.spec.kind,
                subnet: n.spec.subnet,
                uplink: n.spec.uplink.clone(),
            })
            .collect();
        let mut nic_rules = Vec::new();
        let on_switch = |nic: &oxvirt_model::NicSpec| {
            nets.iter().any(|n| n.spec.kind == NetworkKind::Vlan && nic.network.as_ref() == Some(&n.spec.name))
        };
        for vm in self.ctl.vms().list_vms()? {
            for nic in &vm.spec.nics {
                let tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&vm.id, nic.slot());
                // A TAP on the switch is no Linux bridge's port: its MAC is kept by the switch's
                // flows (`ovs.rs`), not by the `bridge` family's rules.
                if !nic.has_tap() || !links::exists(&tap) || on_switch(nic) {
                    continue;
                }
                // Every NIC with a TAP keeps to its own MAC (a bridged one too: it joins a LAN of
                // the host's), and to its address where it has one: a network's lease, or the one
                // an administrator gave a bridged NIC.
                let rules = (!nic.security_groups.is_empty()).then(|| {
                    nic.security_groups
                        .iter()
                        .filter_map(|g| groups.iter().find(|x| &x.spec.name == g))
                        .flat_map(|g| g.spec.rules.clone())
                        .collect()
                });
                nic_rules.push(firewall::NicRules { tap, mac: nic.mac.clone().unwrap_or_default(), ip: nic.ip, rules });
            }
        }
        // Nothing to filter and no table there: `apply` does nothing.
        firewall::apply(&self.ctl.inner.config.nft_table, &net_rules, &nic_rules).await?;
        Ok(())
    }

    /// At daemon start, before guests are adopted or started: every network made again where it
    /// drifted (a host reboot, a device someone deleted).
    pub(crate) async fn ensure_networks(&self) {
        let _net = self.state().net_lock.lock().await;
        let nets = self.ctl.inner.store.list_records::<Network>().unwrap_or_default();
        for (n, _) in &nets {
            if let Err(e) = self.ensure_network(n) {
                tracing::error!(network = %n.spec.name, "cannot make the network on this host: {e}");
            }
        }
        for (n, _) in nets.iter().filter(|(n, _)| n.spec.kind == NetworkKind::Vlan) {
            let made = match self.ensure_ovs().await {
                Ok(_) => self.ensure_vlan_gateway(n).await,
                Err(e) => Err(e),
            };
            if let Err(e) = made {
                tracing::error!(network = %n.spec.name, "cannot make the vlan network on this host: {e}");
            }
        }
    }

    /// After guests are adopted: what oxvirt recorded making whose owner is gone is removed, and
    /// the firewall rewritten.
    pub(crate) async fn remove_orphans(&self) {
        let _net = self.state().net_lock.lock().await;
        let nets = self.ctl.inner.store.list_records::<Network>().unwrap_or_default();
        let vms = self.ctl.vms().list_vms().unwrap_or_default();
        let objects = self.ctl.inner.store.list_records::<HostObject>().unwrap_or_default();
        let keys = self.ctl.inner.store.list(HostObject::PREFIX).unwrap_or_default();
        let mine = self.ctl.hosts().local_key("");
        for ((obj, _), entry) in objects.iter().zip(keys.iter()) {
            // In a cluster each host's things are under its name; another host's are not ours.
            let Some(name) = entry.key.trim_start_matches(HostObject::PREFIX).strip_prefix(&mine) else { continue };
            if name.contains('/') {
                continue;
            }
            if obj.kind == "hugepages" {
                // Given back when its VM stops (mark_stopped), not here.
                continue;
            }
            let alive = match obj.kind.as_str() {
                "tap" | "ifb" => {
                    vms.iter().any(|v| v.id == obj.owner && lock(&self.ctl.inner.slot(&v.spec.name).instance).is_some())
                }
                _ => nets.iter().any(|(n, _)| n.spec.name == obj.owner),
            };
            if alive {
                continue;
            }
            tracing::info!(name, kind = %obj.kind, "removing what oxvirt made for something that is gone");
            if obj.kind == "dnsmasq" {
                dnsmasq::stop(&self.dnsmasq_files(&obj.owner));
            } else if let Err(e) = links::delete(name) {
                tracing::warn!(name, "{e}");
                continue;
            }
            self.forget_object(name);
        }
        for vm in vms.iter().filter(|v| lock(&self.ctl.inner.slot(&v.spec.name).instance).is_some()) {
            self.rejoin_taps(vm).await;
        }
        if let Err(e) = self.refresh_firewall_locked().await {
            tracing::error!("firewall: {e}");
        }
    }
}
