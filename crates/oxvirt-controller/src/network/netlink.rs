//! The kernel's routing netlink, spoken directly (no `ip` or `bridge` process): links, their
//! settings, IPv4 addresses and a bridge port's forwarding entries. Each request has a socket of
//! its own and is answered at once (no process to start and wait for); a refusal carries the
//! kernel's errno, never text to recognise.

use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::{IpAddr, Ipv4Addr};

/// A request the kernel refused or that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl NetlinkError {
    fn new(what: &str, source: std::io::Error) -> Self {
        NetlinkError { what: what.to_string(), source }
    }

    /// The kernel's errno (`libc::EEXIST`, `libc::ENODEV`...).
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Sends one request and reads the answer to its end: the messages of a dump, or the ack.
fn exchange(what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let io = |e: std::io::Error| NetlinkError::new(what, e);
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(io)?;
        let mut at = 0;
        while at < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                NetlinkPayload::Error(e) => return Err(io(e.to_io())),
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

/// Makes a link (a bridge, a VXLAN device...): refused with `EEXIST` when one has the name.
pub fn add_link(what: &str, msg: LinkMessage) -> Result<(), NetlinkError> {
    exchange(what, RouteNetlinkMessage::NewLink(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).map(|_| ())
}

/// Changes a link's settings (MTU, address, controller, up).
pub fn set_link(what: &str, msg: LinkMessage) -> Result<(), NetlinkError> {
    exchange(what, RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map(|_| ())
}

pub fn delete_link(what: &str, index: u32) -> Result<(), NetlinkError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    exchange(what, RouteNetlinkMessage::DelLink(msg), NLM_F_ACK).map(|_| ())
}

/// The index of a link by name (`ENODEV` when there is none).
pub fn index_of(name: &str) -> Result<u32, NetlinkError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| NetlinkError::new(name, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(NetlinkError::new(name, std::io::Error::last_os_error())),
        i => Ok(i),
    }
}

fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// Every IPv4 address on the host: (device, address, prefix length).
pub fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr, u8)>, NetlinkError> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let answers = exchange("list addresses", RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for a in answers {
        let RouteNetlinkMessage::NewAddress(a) = a else { continue };
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })
        });
        if let (Some(addr), Some(dev)) = (addr, name_of(a.header.index)) {
            out.push((dev, addr, a.header.prefix_len));
        }
    }
    Ok(out)
}

/// Gives a link an IPv4 address (kept when it has it already).
pub fn replace_ipv4(what: &str, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
    let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(addr, prefix).build();
    exchange(what, RouteNetlinkMessage::NewAddress(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE).map(|_| ())
}

fn fdb_entry(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    msg
}

/// The destinations of a VXLAN device's forwarding entries for `mac`.
pub fn fdb_destinations(index: u32, mac: [u8; 6]) -> Result<Vec<Ipv4Addr>, NetlinkError> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    let answers = exchange("list forwarding entries", RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for a in answers {
        let RouteNetlinkMessage::NewNeighbour(n) = a else { continue };
        if n.header.ifindex != index {
            continue;
        }
        let lla = n.attributes.iter().any(|x| matches!(x, NeighbourAttribute::LinkLayerAddress(l) if l[..] == mac));
        let dst = n.attributes.iter().find_map(|x| match x {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
            _ => None,
        });
        if let (true, Some(d)) = (lla, dst) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Adds a forwarding entry beside those `mac` has (`bridge fdb append`).
pub fn fdb_append(what: &str, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetlinkError> {
    let msg = fdb_entry(index, mac, dst);
    exchange(what, RouteNetlinkMessage::NewNeighbour(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND).map(|_| ())
}

pub fn fdb_delete(what: &str, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetlinkError> {
    exchange(what, RouteNetlinkMessage::DelNeighbour(fdb_entry(index, mac, dst)), NLM_F_ACK).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_link_is_refused_with_its_errno() {
        let e = index_of("oxnonexistent0").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    }

    #[test]
    fn the_loopback_address_is_listed() {
        let all = ipv4_addresses().unwrap();
        assert!(all.iter().any(|(d, a, p)| d == "lo" && *a == Ipv4Addr::LOCALHOST && *p == 8), "{all:?}");
    }
}
