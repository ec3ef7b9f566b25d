//! Virtual networks (as libvirt networks, Incus networks and Proxmox SDN zones) and the IPv4
//! subnets they hand out addresses from.

use crate::{validate_ifname, validate_name, Millis, ValidationError};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Largest MTU a network may carry (jumbo frames).
pub const MAX_MTU: u32 = 9000;
/// Smallest MTU (IPv4's minimum for a link that carries DHCP).
pub const MIN_MTU: u32 = 576;
/// Bytes a VXLAN packet adds on the underlay (outer Ethernet, IPv4, UDP, VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;

/// An IPv4 subnet written `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    /// The subnet's own address (host bits zero).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.mask())
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// The addresses hosts may have: neither the network's own nor the broadcast address.
    pub fn hosts(self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(u32::from(self.network()) + 1), Ipv4Addr::from(u32::from(self.broadcast()) - 1))
    }
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{p:?} is not a prefix length 0..32"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

/// `a.b.c.d/len` (or a bare address: /32).
impl schemars::JsonSchema for Ipv4Net {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ipv4Net".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$" })
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// A bridge with an address, DHCP and DNS, masqueraded to the host's uplink (libvirt's default).
    #[default]
    Nat,
    /// A bridge with an address and DHCP and no way out.
    Isolated,
    /// An overlay segment over UDP (VXLAN) that spans hosts, peers listed (no multicast).
    Vxlan,
    /// An existing host bridge oxvirt only plugs VMs into.
    Bridged,
    /// An 802.1Q VLAN on oxvirt's Open vSwitch bridge (`oxsdn0`, userspace datapath, driven by
    /// oxvirt's OpenFlow controller): VMs of one VLAN reach each other and no other VLAN's, and
    /// each NIC may send only from its own MAC. With a subnet, the host serves DHCP on it (an
    /// access port of the VLAN holds the gateway address) and routes nothing.
    Vlan,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Nat => "nat",
            NetworkKind::Isolated => "isolated",
            NetworkKind::Vxlan => "vxlan",
            NetworkKind::Bridged => "bridged",
            NetworkKind::Vlan => "vlan",
        }
    }
}

/// The overlay settings of a `vxlan` network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VxlanSpec {
    /// The segment's id, 1..16,777,215.
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,
    /// This host's underlay address, which the peers send to.
    pub local: Ipv4Addr,
    /// The other hosts' underlay addresses: broadcast and unknown frames go to each (head-end
    /// replication).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub peers: Vec<Ipv4Addr>,
    /// UDP port (IANA's 4789 unless given).
    #[serde(default = "vxlan_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
}

impl VxlanSpec {
    /// IANA's VXLAN port, used unless a spec names another.
    pub const DEFAULT_PORT: u16 = 4789;
}

fn vxlan_port() -> u16 {
    VxlanSpec::DEFAULT_PORT
}

/// What a network should be: the part the user writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub kind: NetworkKind,
    /// The subnet VMs get addresses from (nat, isolated; optional for vxlan and vlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The host's address on the network (default: the subnet's first address). On a vxlan
    /// network each host needs its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The addresses this host hands out, `first-last` (default: the subnet's hosts after the
    /// gateway). Hosts sharing a vxlan segment give disjoint ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Frame payload size; up to 9000 (jumbo frames). Default 1500, or 1450 on vxlan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_MTU, max = MAX_MTU))]
    pub mtu: Option<u32>,
    /// Serve DHCP (and, on nat, DNS) to the VMs. Default on when there is a subnet.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// For `nat`: the interface traffic leaves by (default: any but the network's bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub uplink: Option<String>,
    /// For `bridged`: the existing host bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanSpec>,
    /// For `vlan`: the VLAN id, 1..4094 (one network per id on a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<u16>,
}

fn yes() -> bool {
    true
}

/// A network as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Network {
    pub id: String,
    pub spec: NetworkSpec,
    pub created_at: Millis,
}

/// A network as the API shows it: the record and what runs on the host for it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct NetworkView {
    #[serde(flatten)]
    pub network: Network,
    pub bridge: String,
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Whether the bridge exists on this host.
    pub bridge_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_pid: Option<i32>,
    /// NICs of VMs on it.
    pub nics: usize,
}

/// An address given to a VM's NIC by oxvirt's IPAM (a static DHCP lease).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Lease {
    pub network: String,
    pub ip: Ipv4Addr,
    pub vm: String,
    pub nic: String,
    pub mac: String,
}

/// A MAC address held by a VM's NIC (`macs/<mac>`, written with the VM): no two NICs of the
/// cluster ever hold one, checked by one key, not by reading every VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct MacClaim {
    pub vm: String,
    pub nic: String,
}

/// A lease as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct LeaseView {
    #[serde(flatten)]
    pub lease: Lease,
    /// Whether the guest took the address (the DHCP server handed it out and it has not expired).
    pub active: bool,
    /// When the DHCP lease ends (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl NetworkSpec {
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(if self.kind == NetworkKind::Vxlan { 1500 - VXLAN_OVERHEAD } else { 1500 })
    }

    /// The host's address on the network, if it has a subnet.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        let s = self.subnet?;
        Some(self.gateway.unwrap_or(s.hosts().0))
    }

    /// The first and last address handed to VMs.
    pub fn dhcp_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let s = self.subnet?;
        if let Some(r) = &self.range {
            return parse_range(r).ok();
        }
        let (first, last) = s.hosts();
        let gw = self.gateway().unwrap_or(first);
        let start = if gw == first { Ipv4Addr::from(u32::from(first) + 1) } else { first };
        Some((start, last))
    }

    /// Whether VMs on it get addresses from oxvirt.
    pub fn has_ipam(&self) -> bool {
        self.subnet.is_some() && self.kind != NetworkKind::Bridged
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(ValidationError::new("mtu", format!("must be {MIN_MTU}..{MAX_MTU}")));
            }
        }
        let not_here = |field: &str, what: &str| {
            ValidationError::new(field, format!("a {} network has no {what}", self.kind.as_str()))
        };
        match self.kind {
            NetworkKind::Nat | NetworkKind::Isolated => {
                if self.subnet.is_none() {
                    return Err(ValidationError::new(
                        "subnet",
                        format!("a {} network needs a subnet, e.g. 10.10.0.0/24", self.kind.as_str()),
                    ));
                }
            }
            NetworkKind::Vxlan => {}
            NetworkKind::Vlan => match self.vlan {
                Some(v) if (1..=4094).contains(&v) => {}
                Some(_) => return Err(ValidationError::new("vlan", "must be 1..4094")),
                None => return Err(ValidationError::new("vlan", "a vlan network needs its VLAN id, 1..4094")),
            },
            NetworkKind::Bridged => {
                match &self.bridge {
                    Some(b) => validate_ifname("bridge", b)?,
                    None => {
                        return Err(ValidationError::new("bridge", "a bridged network needs the host bridge's name"))
                    }
                }
                for (f, set) in [
                    ("subnet", self.subnet.is_some()),
                    ("gateway", self.gateway.is_some()),
                    ("range", self.range.is_some()),
                ] {
                    if set {
                        return Err(not_here(f, "addresses of oxvirt's (the bridge's own network has them)"));
                    }
                }
            }
        }
        if self.kind != NetworkKind::Vlan && self.vlan.is_some() {
            return Err(not_here("vlan", "VLAN id (only vlan networks have one)"));
        }
        if self.kind != NetworkKind::Bridged && self.bridge.is_some() {
            return Err(not_here("bridge", "host bridge of the operator's (oxvirt makes its own)"));
        }
        if let Some(u) = &self.uplink {
            if self.kind != NetworkKind::Nat {
                return Err(not_here("uplink", "uplink"));
            }
            validate_ifname("uplink", u)?;
        }
        match (&self.vxlan, self.kind) {
            (Some(v), NetworkKind::Vxlan) => {
                if !(1..=16_777_215).contains(&v.vni) {
                    return Err(ValidationError::new("vxlan.vni", "must be 1..16777215"));
                }
                if v.port == 0 {
                    return Err(ValidationError::new("vxlan.port", "must be 1..65535"));
                }
                if v.local.is_unspecified() || v.local.is_multicast() || v.local.is_broadcast() {
                    return Err(ValidationError::new("vxlan.local", "must be this host's unicast underlay address"));
                }
                for (i, p) in v.peers.iter().enumerate() {
                    if p.is_unspecified() || p.is_multicast() || p.is_broadcast() || *p == v.local {
                        return Err(ValidationError::new(
                            format!("vxlan.peers[{i}]"),
                            "must be another host's unicast underlay address",
                        ));
                    }
                    if v.peers[..i].contains(p) {
                        return Err(ValidationError::new(format!("vxlan.peers[{i}]"), "is listed twice"));
                    }
                }
                if v.peers.len() > 256 {
                    return Err(ValidationError::new("vxlan.peers", "at most 256 peers"));
                }
            }
            (None, NetworkKind::Vxlan) => {
                return Err(ValidationError::new("vxlan", "a vxlan network needs vxlan.vni and vxlan.local"))
            }
            (Some(_), _) => return Err(not_here("vxlan", "overlay settings")),
            (None, _) => {}
        }
        if let Some(s) = self.subnet {
            if !(8..=30).contains(&s.prefix) {
                return Err(ValidationError::new("subnet", "prefix length must be 8..30"));
            }
            if s.addr != s.network() {
                return Err(ValidationError::new(
                    "subnet",
                    format!("host bits set: did you mean {}/{}?", s.network(), s.prefix),
                ));
            }
            let (first, last) = s.hosts();
            let inside = |ip: Ipv4Addr| (u32::from(first)..=u32::from(last)).contains(&u32::from(ip));
            if let Some(g) = self.gateway {
                if !inside(g) {
                    return Err(ValidationError::new("gateway", format!("must be a host address of {s}")));
                }
            }
            if let Some(r) = &self.range {
                let (a, b) = parse_range(r).map_err(|e| ValidationError::new("range", e))?;
                if !inside(a) || !inside(b) {
                    return Err(ValidationError::new("range", format!("must lie inside {s}")));
                }
                let gw = self.gateway().unwrap_or(first);
                if (u32::from(a)..=u32::from(b)).contains(&u32::from(gw)) {
                    return Err(ValidationError::new("range", format!("must not hold the gateway {gw}")));
                }
            }
        } else {
            for (f, set) in [("gateway", self.gateway.is_some()), ("range", self.range.is_some())] {
                if set {
                    return Err(ValidationError::new(f, "needs a subnet"));
                }
            }
        }
        Ok(())
    }
}

/// `first-last`, two IPv4 addresses in order.
pub fn parse_range(r: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = r.split_once('-').ok_or("must be first-last, e.g. 10.0.0.10-10.0.0.99")?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address"))?;
    if u32::from(a) > u32::from(b) {
        return Err("the first address must not come after the last".into());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(subnet: &str) -> NetworkSpec {
        NetworkSpec {
            name: "n1".into(),
            kind: NetworkKind::Nat,
            subnet: Some(subnet.parse().unwrap()),
            gateway: None,
            range: None,
            mtu: None,
            dhcp: true,
            uplink: None,
            bridge: None,
            vxlan: None,
            vlan: None,
        }
    }

    fn field(s: &NetworkSpec) -> String {
        s.validate().unwrap_err().field
    }

    #[test]
    fn subnet_arithmetic() {
        let n: Ipv4Net = "10.1.2.0/24".parse().unwrap();
        assert_eq!(n.hosts(), ("10.1.2.1".parse().unwrap(), "10.1.2.254".parse().unwrap()));
        assert_eq!(n.netmask().to_string(), "255.255.255.0");
        assert!(n.contains("10.1.2.77".parse().unwrap()));
        assert!(!n.contains("10.1.3.1".parse().unwrap()));
        assert!("10.1.2.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.1.2/24".parse::<Ipv4Net>().is_err());
        let s = nat("10.1.2.0/24");
        assert_eq!(s.gateway().unwrap().to_string(), "10.1.2.1");
        assert_eq!(s.dhcp_range().unwrap().0.to_string(), "10.1.2.2");
        assert_eq!(s.mtu(), 1500);
    }

    #[test]
    fn a_vlan_network_has_its_id() {
        let vlan =
            |id: Option<u16>| NetworkSpec { kind: NetworkKind::Vlan, vlan: id, subnet: None, ..nat("10.0.0.0/24") };
        assert!(vlan(Some(10)).validate().is_ok());
        assert!(vlan(Some(4094)).validate().is_ok());
        assert_eq!(field(&vlan(None)), "vlan");
        assert_eq!(field(&vlan(Some(0))), "vlan");
        assert_eq!(field(&vlan(Some(4095))), "vlan");
        assert!(NetworkSpec { subnet: Some("10.0.0.0/24".parse().unwrap()), ..vlan(Some(10)) }.validate().is_ok());
        assert_eq!(field(&NetworkSpec { vlan: Some(10), ..nat("10.0.0.0/24") }), "vlan");
        assert_eq!(vlan(Some(10)).mtu(), 1500);
    }

    #[test]
    fn bad_networks_name_the_field() {
        assert_eq!(field(&NetworkSpec { subnet: None, ..nat("10.0.0.0/24") }), "subnet");
        assert_eq!(field(&nat("10.0.0.5/24")), "subnet");
        assert_eq!(field(&nat("10.0.0.0/31")), "subnet");
        assert_eq!(field(&NetworkSpec { mtu: Some(9001), ..nat("10.0.0.0/24") }), "mtu");
        assert_eq!(field(&NetworkSpec { gateway: Some("10.0.1.1".parse().unwrap()), ..nat("10.0.0.0/24") }), "gateway");
        assert_eq!(field(&NetworkSpec { range: Some("10.0.0.1-10.0.0.9".into()), ..nat("10.0.0.0/24") }), "range");
        assert_eq!(field(&NetworkSpec { range: Some("10.0.0.9-10.0.0.2".into()), ..nat("10.0.0.0/24") }), "range");
        assert_eq!(field(&NetworkSpec { uplink: Some("eth0;x".into()), ..nat("10.0.0.0/24") }), "uplink");
        assert_eq!(field(&NetworkSpec { name: "Bad Name".into(), ..nat("10.0.0.0/24") }), "name");
        let vx = NetworkSpec { kind: NetworkKind::Vxlan, subnet: None, ..nat("10.0.0.0/24") };
        assert_eq!(field(&vx), "vxlan");
        let v = |vni, peers: Vec<&str>| NetworkSpec {
            vxlan: Some(VxlanSpec {
                vni,
                local: "192.0.2.1".parse().unwrap(),
                peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
                port: 4789,
            }),
            ..vx.clone()
        };
        assert_eq!(field(&v(0, vec![])), "vxlan.vni");
        assert_eq!(field(&v(16_777_216, vec![])), "vxlan.vni");
        assert_eq!(field(&v(7, vec!["192.0.2.1"])), "vxlan.peers[0]");
        assert_eq!(field(&v(7, vec!["192.0.2.2", "192.0.2.2"])), "vxlan.peers[1]");
        assert!(v(16_777_215, vec!["192.0.2.2"]).validate().is_ok());
        assert_eq!(v(7, vec![]).mtu(), 1450);
        let br = NetworkSpec { kind: NetworkKind::Bridged, subnet: None, ..nat("10.0.0.0/24") };
        assert_eq!(field(&br), "bridge");
        assert!(NetworkSpec { bridge: Some("br0".into()), ..br }.validate().is_ok());
    }
}
