//! Matches and actions in ovs-ofctl's words, as operators write them
//! (`tcp,nw_src=10.0.0.0/24,tp_dst=80` and `drop`, `normal`, `output:2`, `mod_vlan_vid:10`),
//! parsed with an error naming the part and the rule, and printed back in the same words.

use crate::action::{port, Action};
use crate::instruction::Instruction;
use crate::oxm::{Match, Oxm, OxmField, VID_PRESENT};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A part of a match or of actions that cannot be read, and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{part}`: {rule}")]
pub struct TextError {
    pub part: String,
    pub rule: String,
}

fn err<T>(part: &str, rule: impl Into<String>) -> Result<T, TextError> {
    Err(TextError { part: part.to_string(), rule: rule.into() })
}

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: u16 = 0x8100;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Longest match or actions text read (a flow is a line, not a file).
const MAX_TEXT: usize = 4096;

fn parse_num<T: TryFrom<u64>>(part: &str, s: &str, max: u64) -> Result<T, TextError> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    match v {
        Ok(v) if v <= max => T::try_from(v).or_else(|_| err(part, format!("a number up to {max}"))),
        _ => err(part, format!("a number from 0 to {max} (decimal or 0x hex)")),
    }
}

fn parse_mac(part: &str, s: &str) -> Result<[u8; 6], TextError> {
    let bytes: Vec<&str> = s.split(':').collect();
    let mut out = [0u8; 6];
    if bytes.len() != 6 {
        return err(part, "a MAC address is six hex bytes, as 52:54:00:12:34:56");
    }
    for (o, b) in out.iter_mut().zip(bytes) {
        if b.is_empty() || b.len() > 2 {
            return err(part, "a MAC address is six hex bytes, as 52:54:00:12:34:56");
        }
        *o =
            u8::from_str_radix(b, 16).or_else(|_| err(part, "a MAC address is six hex bytes, as 52:54:00:12:34:56"))?;
    }
    Ok(out)
}

fn parse_ipv4_prefix(part: &str, s: &str) -> Result<(Ipv4Addr, u8), TextError> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, parse_num::<u8>(part, p, 32)?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().or_else(|_| err(part, "an IPv4 address, with an optional /prefix (0 to 32)"))?;
    Ok((addr, prefix))
}

/// A match in ovs-ofctl's words: comma-separated `key=value` fields (`dl_vlan=none`: untagged
/// packets only) and the shorthands `ip`,
/// `tcp`, `udp`, `icmp`, `arp`. Each field's prerequisites must be given (`nw_src` needs `ip`
/// or a protocol shorthand, `tp_dst` needs `tcp` or `udp`), and no field twice.
pub fn parse_match(text: &str) -> Result<Match, TextError> {
    if text.len() > MAX_TEXT {
        return err(&text[..32.min(text.len())], format!("a match is at most {MAX_TEXT} characters"));
    }
    let mut fields: BTreeMap<OxmField, Oxm> = BTreeMap::new();
    let put = |part: &str, oxm: Oxm, fields: &mut BTreeMap<OxmField, Oxm>| -> Result<(), TextError> {
        let Some(f) = oxm.known() else {
            return err(part, "unknown match field");
        };
        match fields.get(&f) {
            Some(old) if *old != oxm => err(part, "this field is given twice, with different values"),
            _ => {
                fields.insert(f, oxm);
                Ok(())
            }
        }
    };
    let tokens: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    if tokens.is_empty() && !text.trim().is_empty() {
        return err(text, "empty match parts");
    }
    // First what says the protocol (later fields' prerequisites), then the rest.
    let mut rest = Vec::new();
    for t in &tokens {
        let (key, value) = t.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((t, ""));
        match key {
            "any" | "all" if value.is_empty() => {}
            "ip" | "tcp" | "udp" | "icmp" | "arp" if value.is_empty() => {
                put(t, Oxm::eth_type(if key == "arp" { ETH_ARP } else { ETH_IPV4 }), &mut fields)?;
                let proto = match key {
                    "tcp" => Some(PROTO_TCP),
                    "udp" => Some(PROTO_UDP),
                    "icmp" => Some(PROTO_ICMP),
                    _ => None,
                };
                if let Some(p) = proto {
                    put(t, Oxm::ip_proto(p), &mut fields)?;
                }
            }
            "dl_type" | "eth_type" => put(t, Oxm::eth_type(parse_num(t, value, 0xffff)?), &mut fields)?,
            "nw_proto" | "ip_proto" => put(t, Oxm::ip_proto(parse_num(t, value, 255)?), &mut fields)?,
            _ => rest.push((*t, key, value)),
        }
    }
    let eth_type = fields.get(&OxmField::EthType).map(|o| u16::from_be_bytes([o.value[0], o.value[1]]));
    let ip_proto = fields.get(&OxmField::IpProto).map(|o| o.value[0]);
    if ip_proto.is_some() && eth_type != Some(ETH_IPV4) {
        return err(text, "nw_proto needs ip (eth_type=0x0800)");
    }
    let need_ip =
        |t: &str| if eth_type == Some(ETH_IPV4) { Ok(()) } else { err(t, "needs ip, tcp, udp or icmp in the match") };
    let need_proto = |t: &str, p: u8, name: &str| {
        if ip_proto == Some(p) {
            Ok(())
        } else {
            err(t, format!("needs {name} in the match"))
        }
    };
    for (t, key, value) in rest {
        if value.is_empty() {
            return err(t, "unknown match word (key=value, or ip, tcp, udp, icmp, arp)");
        }
        let oxm = match key {
            "in_port" => match value {
                "local" | "LOCAL" => Oxm::in_port(port::LOCAL),
                _ => {
                    let p: u32 = parse_num(t, value, port::MAX as u64)?;
                    if p == 0 {
                        return err(t, "a port number from 1 to 4294967040");
                    }
                    Oxm::in_port(p)
                }
            },
            "dl_src" | "eth_src" | "dl_dst" | "eth_dst" => {
                let field = if key.ends_with("src") { OxmField::EthSrc } else { OxmField::EthDst };
                match value.split_once('/') {
                    Some((v, m)) => Oxm::masked(field, &parse_mac(t, v)?, &parse_mac(t, m)?),
                    None => Oxm::exact(field, &parse_mac(t, value)?),
                }
            }
            // `none`: untagged packets only (OFPVID_NONE).
            "dl_vlan" | "vlan_vid" if value == "none" => Oxm::exact(OxmField::VlanVid, &[0, 0]),
            "dl_vlan" | "vlan_vid" => Oxm::vlan_vid(parse_num(t, value, 4095)?),
            "dl_vlan_pcp" | "vlan_pcp" => Oxm::exact(OxmField::VlanPcp, &[parse_num(t, value, 7)?]),
            "nw_src" | "ip_src" | "nw_dst" | "ip_dst" => {
                need_ip(t)?;
                let (addr, prefix) = parse_ipv4_prefix(t, value)?;
                let field = if key.ends_with("src") { OxmField::Ipv4Src } else { OxmField::Ipv4Dst };
                Oxm::ipv4(field, addr, prefix)
            }
            "tp_src" | "tp_dst" => {
                let src = key == "tp_src";
                let field = match ip_proto {
                    Some(PROTO_TCP) if src => OxmField::TcpSrc,
                    Some(PROTO_TCP) => OxmField::TcpDst,
                    Some(PROTO_UDP) if src => OxmField::UdpSrc,
                    Some(PROTO_UDP) => OxmField::UdpDst,
                    _ => return err(t, "needs tcp or udp in the match"),
                };
                Oxm::port16(field, parse_num(t, value, 0xffff)?)
            }
            "tcp_src" | "tcp_dst" => {
                need_proto(t, PROTO_TCP, "tcp")?;
                let f = if key == "tcp_src" { OxmField::TcpSrc } else { OxmField::TcpDst };
                Oxm::port16(f, parse_num(t, value, 0xffff)?)
            }
            "udp_src" | "udp_dst" => {
                need_proto(t, PROTO_UDP, "udp")?;
                let f = if key == "udp_src" { OxmField::UdpSrc } else { OxmField::UdpDst };
                Oxm::port16(f, parse_num(t, value, 0xffff)?)
            }
            "icmp_type" | "icmp_code" => {
                need_proto(t, PROTO_ICMP, "icmp")?;
                let f = if key == "icmp_type" { OxmField::Icmpv4Type } else { OxmField::Icmpv4Code };
                Oxm::exact(f, &[parse_num(t, value, 255)?])
            }
            "arp_op" | "arp_spa" | "arp_tpa" => {
                if eth_type != Some(ETH_ARP) {
                    return err(t, "needs arp in the match");
                }
                match key {
                    "arp_op" => Oxm::port16(OxmField::ArpOp, parse_num(t, value, 0xffff)?),
                    _ => {
                        let (addr, prefix) = parse_ipv4_prefix(t, value)?;
                        Oxm::ipv4(if key == "arp_spa" { OxmField::ArpSpa } else { OxmField::ArpTpa }, addr, prefix)
                    }
                }
            }
            _ => return err(t, "unknown match field"),
        };
        put(t, oxm, &mut fields)?;
    }
    if fields.contains_key(&OxmField::VlanPcp) && !fields.contains_key(&OxmField::VlanVid) {
        return err(text, "vlan_pcp needs dl_vlan in the match");
    }
    // Sorted by field code, which puts each prerequisite before what needs it.
    Ok(Match { fields: fields.into_values().collect() })
}

/// Actions in ovs-ofctl's words, comma-separated: `drop` (alone), `normal`, `flood`, `all`,
/// `local`, `in_port`, `controller[:max_len]`, `output:N` (or `N`), `mod_vlan_vid:N` (tags a
/// packet the match does not say is tagged, else rewrites its tag), `push_vlan:0x8100`,
/// `set_field:N->vlan_vid`, `strip_vlan` (`pop_vlan`), `group:N`, and `goto_table:N` last.
/// Several outputs copy the packet to each (a mirror).
pub fn parse_actions(text: &str, r#match: &Match) -> Result<Vec<Instruction>, TextError> {
    if text.len() > MAX_TEXT {
        return err(&text[..32.min(text.len())], format!("actions are at most {MAX_TEXT} characters"));
    }
    let tokens: Vec<&str> = text.split(',').map(str::trim).collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return err(text, "actions are comma-separated, none empty");
    }
    if tokens.contains(&"drop") {
        if tokens.len() > 1 {
            return err(text, "drop stands alone");
        }
        return Ok(vec![]);
    }
    let tagged = r#match.get(OxmField::VlanVid).is_some_and(|v| v.value[0] & (VID_PRESENT >> 8) as u8 != 0);
    let mut actions = Vec::new();
    let mut goto = None;
    for t in &tokens {
        if goto.is_some() {
            return err(t, "goto_table comes last");
        }
        let (word, arg) = t.split_once(':').map(|(w, a)| (w.trim(), Some(a.trim()))).unwrap_or((t, None));
        let out_port = |p: u32| Ok::<_, TextError>(Action::output(p));
        let action = match (word, arg) {
            ("normal", None) => out_port(port::NORMAL)?,
            ("flood", None) => out_port(port::FLOOD)?,
            ("all", None) => out_port(port::ALL)?,
            ("local", None) => out_port(port::LOCAL)?,
            ("in_port", None) => out_port(port::IN_PORT)?,
            ("controller", None) => out_port(port::CONTROLLER)?,
            ("controller", Some(n)) => Action::Output { port: port::CONTROLLER, max_len: parse_num(t, n, 0xffff)? },
            ("output", Some(n)) => out_port(output_port(t, n)?)?,
            (n, None) if n.chars().all(|c| c.is_ascii_digit()) => out_port(output_port(t, n)?)?,
            ("strip_vlan" | "pop_vlan", None) => Action::PopVlan,
            ("push_vlan", Some(e)) => {
                let e: u16 = parse_num(t, e, 0xffff)?;
                if e != ETH_VLAN && e != 0x88a8 {
                    return err(t, "push_vlan takes 0x8100 (802.1Q) or 0x88a8 (802.1ad)");
                }
                Action::PushVlan(e)
            }
            ("mod_vlan_vid", Some(v)) => {
                let vid: u16 = parse_num(t, v, 4095)?;
                if !tagged {
                    actions.push(Action::PushVlan(ETH_VLAN));
                }
                Action::SetField(Oxm::vlan_vid(vid))
            }
            ("set_field", Some(spec)) => {
                let Some((value, field)) = spec.split_once("->") else {
                    return err(t, "set_field:VALUE->FIELD");
                };
                let (value, field) = (value.trim(), field.trim());
                Action::SetField(match field {
                    "vlan_vid" | "dl_vlan" => Oxm::vlan_vid(parse_num(t, value, 4095)?),
                    "eth_src" | "dl_src" => Oxm::exact(OxmField::EthSrc, &parse_mac(t, value)?),
                    "eth_dst" | "dl_dst" => Oxm::exact(OxmField::EthDst, &parse_mac(t, value)?),
                    "ip_src" | "nw_src" | "ip_dst" | "nw_dst" => {
                        let addr: Ipv4Addr = value.parse().or_else(|_| err(t, "an IPv4 address"))?;
                        let f = if field.ends_with("src") { OxmField::Ipv4Src } else { OxmField::Ipv4Dst };
                        Oxm::exact(f, &addr.octets())
                    }
                    _ => return err(t, "set_field sets vlan_vid, eth_src, eth_dst, ip_src or ip_dst"),
                })
            }
            ("group", Some(g)) => Action::Group(parse_num(t, g, 0xffff_ff00)?),
            ("goto_table", Some(n)) => {
                let table: u8 = parse_num(t, n, 254)?;
                if table == 0 {
                    return err(t, "goto_table goes to a later table (1 to 254)");
                }
                goto = Some(table);
                continue;
            }
            _ => return err(t, "unknown action (drop, normal, flood, all, local, in_port, controller, output:N, mod_vlan_vid:N, push_vlan:0x8100, set_field:V->F, strip_vlan, group:N, goto_table:N)"),
        };
        actions.push(action);
    }
    let mut out = Vec::new();
    if !actions.is_empty() {
        out.push(Instruction::ApplyActions(actions));
    }
    if let Some(t) = goto {
        out.push(Instruction::GotoTable(t));
    }
    Ok(out)
}

/// A flow for table 0 in ovs-ofctl's words: its priority, cookie, match and actions.
pub fn flow_from_words(priority: u16, cookie: u64, r#match: &str, actions: &str) -> Result<crate::FlowMod, TextError> {
    let r#match = parse_match(r#match)?;
    let instructions = parse_actions(actions, &r#match)?;
    Ok(crate::FlowMod { cookie, ..crate::FlowMod::add(priority, r#match, instructions) })
}

fn output_port(t: &str, n: &str) -> Result<u32, TextError> {
    let p: u32 = parse_num(t, n, port::MAX as u64)?;
    if p == 0 {
        return err(t, "an output port from 1 to 4294967040");
    }
    Ok(p)
}

fn hex_or_dec(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64)
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

fn ipv4(value: &[u8], mask: Option<&[u8]>) -> String {
    let addr = Ipv4Addr::new(value[0], value[1], value[2], value[3]);
    match mask {
        None => addr.to_string(),
        Some(m) => {
            let m = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
            if m.leading_ones() + m.trailing_zeros() == 32 {
                format!("{addr}/{}", m.leading_ones())
            } else {
                format!("{addr}/{}", Ipv4Addr::from(m))
            }
        }
    }
}

/// A match in the words [`parse_match`] reads (fields it does not know as `oxm(...)`).
pub fn format_match(m: &Match) -> String {
    let eth_type = m.get(OxmField::EthType).map(|o| hex_or_dec(&o.value) as u16);
    let ip_proto = m.get(OxmField::IpProto).map(|o| o.value[0]);
    let mut parts = Vec::new();
    let shorthand = match (eth_type, ip_proto) {
        (Some(ETH_IPV4), Some(PROTO_TCP)) => Some("tcp"),
        (Some(ETH_IPV4), Some(PROTO_UDP)) => Some("udp"),
        (Some(ETH_IPV4), Some(PROTO_ICMP)) => Some("icmp"),
        (Some(ETH_IPV4), _) => Some("ip"),
        (Some(ETH_ARP), _) => Some("arp"),
        _ => None,
    };
    if let Some(s) = shorthand {
        parts.push(s.to_string());
    }
    for f in &m.fields {
        let Some(known) = f.known() else {
            parts.push(format!("oxm({:#06x}:{})", f.class, f.field));
            continue;
        };
        let v = &f.value;
        let mask = f.mask.as_deref();
        let with_mask = |s: String| match mask {
            Some(m) if known == OxmField::EthSrc || known == OxmField::EthDst => format!("{s}/{}", mac(m)),
            Some(m) => format!("{s}/{:#x}", hex_or_dec(m)),
            None => s,
        };
        let part = match known {
            OxmField::EthType if shorthand.is_some() => continue,
            OxmField::IpProto if matches!(ip_proto, Some(PROTO_TCP | PROTO_UDP | PROTO_ICMP)) => continue,
            OxmField::InPort if hex_or_dec(v) == port::LOCAL as u64 => "in_port=local".to_string(),
            OxmField::InPort => format!("in_port={}", hex_or_dec(v)),
            OxmField::EthSrc => with_mask(format!("dl_src={}", mac(v))),
            OxmField::EthDst => with_mask(format!("dl_dst={}", mac(v))),
            OxmField::EthType => format!("dl_type={:#06x}", hex_or_dec(v)),
            OxmField::VlanVid if mask.is_none() && hex_or_dec(v) & VID_PRESENT as u64 == 0 => {
                "dl_vlan=none".to_string()
            }
            OxmField::VlanVid => with_mask(format!("dl_vlan={}", hex_or_dec(v) & 0x0fff)),
            OxmField::VlanPcp => format!("dl_vlan_pcp={}", v[0]),
            OxmField::IpProto => format!("nw_proto={}", v[0]),
            OxmField::Ipv4Src => format!("nw_src={}", ipv4(v, mask)),
            OxmField::Ipv4Dst => format!("nw_dst={}", ipv4(v, mask)),
            OxmField::TcpSrc | OxmField::UdpSrc => with_mask(format!("tp_src={}", hex_or_dec(v))),
            OxmField::TcpDst | OxmField::UdpDst => with_mask(format!("tp_dst={}", hex_or_dec(v))),
            OxmField::Icmpv4Type => format!("icmp_type={}", v[0]),
            OxmField::Icmpv4Code => format!("icmp_code={}", v[0]),
            OxmField::ArpOp => format!("arp_op={}", hex_or_dec(v)),
            OxmField::ArpSpa => format!("arp_spa={}", ipv4(v, mask)),
            OxmField::ArpTpa => format!("arp_tpa={}", ipv4(v, mask)),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        "any".to_string()
    } else {
        parts.join(",")
    }
}

fn format_action(a: &Action) -> String {
    match a {
        Action::Output { port, max_len } => match *port {
            port::NORMAL => "normal".into(),
            port::FLOOD => "flood".into(),
            port::ALL => "all".into(),
            port::LOCAL => "local".into(),
            port::IN_PORT => "in_port".into(),
            port::CONTROLLER if *max_len == crate::action::NO_BUFFER_LEN => "controller".into(),
            port::CONTROLLER => format!("controller:{max_len}"),
            p => format!("output:{p}"),
        },
        Action::PushVlan(e) => format!("push_vlan:{e:#06x}"),
        Action::PopVlan => "strip_vlan".into(),
        Action::Group(g) => format!("group:{g}"),
        Action::SetField(o) => match o.known() {
            Some(OxmField::VlanVid) => format!("set_field:{}->vlan_vid", hex_or_dec(&o.value) & 0x0fff),
            Some(OxmField::EthSrc) => format!("set_field:{}->eth_src", mac(&o.value)),
            Some(OxmField::EthDst) => format!("set_field:{}->eth_dst", mac(&o.value)),
            Some(OxmField::Ipv4Src) => format!("set_field:{}->ip_src", ipv4(&o.value, None)),
            Some(OxmField::Ipv4Dst) => format!("set_field:{}->ip_dst", ipv4(&o.value, None)),
            _ => format!("set_field:oxm({:#06x}:{})", o.class, o.field),
        },
        Action::Other { kind, .. } => format!("action({kind})"),
    }
}

/// Instructions in the words [`parse_actions`] reads (`drop` when there are none).
pub fn format_actions(list: &[Instruction]) -> String {
    let mut parts = Vec::new();
    for i in list {
        match i {
            Instruction::ApplyActions(a) => parts.extend(a.iter().map(format_action)),
            Instruction::GotoTable(t) => parts.push(format!("goto_table:{t}")),
            Instruction::WriteActions(a) => {
                parts.push(format!("write_actions({})", a.iter().map(format_action).collect::<Vec<_>>().join(",")))
            }
            Instruction::WriteMetadata { metadata, mask } => {
                parts.push(format!("write_metadata:{metadata:#x}/{mask:#x}"))
            }
            Instruction::ClearActions => parts.push("clear_actions".into()),
            Instruction::Meter(m) => parts.push(format!("meter:{m}")),
            Instruction::Other { kind, .. } => parts.push(format!("instruction({kind})")),
        }
    }
    if parts.is_empty() {
        "drop".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(r: Result<impl std::fmt::Debug, TextError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn the_issue_s_example_reads_and_prints_back() {
        let m = parse_match("tcp,nw_src=10.0.0.0/24,tp_dst=80").expect("match");
        assert_eq!(
            m.fields,
            vec![
                Oxm::eth_type(0x0800),
                Oxm::ip_proto(6),
                Oxm::ipv4(OxmField::Ipv4Src, Ipv4Addr::new(10, 0, 0, 0), 24),
                Oxm::port16(OxmField::TcpDst, 80)
            ]
        );
        assert_eq!(format_match(&m), "tcp,nw_src=10.0.0.0/24,tp_dst=80");
        assert_eq!(parse_actions("drop", &m).expect("drop"), vec![]);
        assert_eq!(format_actions(&[]), "drop");
    }

    #[test]
    fn printed_matches_and_actions_read_back_the_same() {
        for text in [
            "any",
            "in_port=3",
            "in_port=local,dl_src=52:54:00:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff",
            "dl_src=52:54:00:00:00:00/ff:ff:ff:00:00:00",
            "ip,nw_dst=192.168.1.7",
            "udp,in_port=1,tp_src=68,tp_dst=67",
            "icmp,nw_src=10.0.0.0/8,icmp_type=8",
            "arp,arp_op=1,arp_tpa=10.1.0.1",
            "dl_vlan=10,dl_vlan_pcp=3",
            "dl_vlan=none,in_port=2",
            "dl_type=0x86dd",
        ] {
            let m = parse_match(text).expect(text);
            assert_eq!(parse_match(&format_match(&m)).expect("again"), m, "{text}");
        }
        let untagged = Match::any();
        for text in [
            "normal",
            "output:2,output:3",
            "controller",
            "controller:128",
            "strip_vlan,output:1",
            "push_vlan:0x8100,set_field:10->vlan_vid,normal",
            "set_field:52:54:00:00:00:09->eth_dst,group:4,goto_table:1",
            "flood",
            "in_port,local,all",
        ] {
            let a = parse_actions(text, &untagged).expect(text);
            assert_eq!(format_actions(&a), text);
        }
    }

    #[test]
    fn mod_vlan_vid_tags_only_what_is_not_tagged() {
        let untagged = parse_match("in_port=1").expect("match");
        let tagged = parse_match("dl_vlan=5").expect("match");
        assert_eq!(
            parse_actions("mod_vlan_vid:10,output:2", &untagged).expect("tag"),
            vec![Instruction::ApplyActions(vec![
                Action::PushVlan(0x8100),
                Action::SetField(Oxm::vlan_vid(10)),
                Action::output(2)
            ])]
        );
        assert_eq!(
            parse_actions("mod_vlan_vid:10", &tagged).expect("retag"),
            vec![Instruction::ApplyActions(vec![Action::SetField(Oxm::vlan_vid(10))])]
        );
    }

    #[test]
    fn bad_matches_name_the_part_and_the_rule() {
        assert_eq!(rule(parse_match("nw_src=10.0.0.1")), "`nw_src=10.0.0.1`: needs ip, tcp, udp or icmp in the match");
        assert_eq!(rule(parse_match("ip,tp_dst=80")), "`tp_dst=80`: needs tcp or udp in the match");
        assert_eq!(rule(parse_match("udp,tcp_dst=80")), "`tcp_dst=80`: needs tcp in the match");
        assert!(rule(parse_match("tcp,udp")).contains("given twice"));
        assert!(rule(parse_match("arp,tcp")).contains("given twice"));
        assert!(rule(parse_match("in_port=0")).starts_with("`in_port=0`"));
        assert!(rule(parse_match("ip,nw_src=10.0.0.300")).contains("IPv4 address"));
        assert!(rule(parse_match("ip,nw_src=10.0.0.0/33")).contains("0 to 32"));
        assert!(rule(parse_match("dl_vlan=4096")).contains("0 to 4095"));
        assert!(rule(parse_match("dl_src=52:54:00:00:00")).contains("MAC address"));
        assert_eq!(rule(parse_match("color=red")), "`color=red`: unknown match field");
        assert!(rule(parse_match("tcpp")).contains("unknown match word"));
        assert!(rule(parse_match("dl_vlan_pcp=1")).contains("needs dl_vlan"));
        assert!(rule(parse_match(&"ip,".repeat(2000))).contains("at most"));
    }

    #[test]
    fn bad_actions_name_the_part_and_the_rule() {
        let any = Match::any();
        assert_eq!(rule(parse_actions("drop,normal", &any)), "`drop,normal`: drop stands alone");
        assert_eq!(rule(parse_actions("goto_table:1,normal", &any)), "`normal`: goto_table comes last");
        assert!(rule(parse_actions("output:0", &any)).contains("1 to"));
        assert!(rule(parse_actions("output:x", &any)).contains("number"));
        assert!(rule(parse_actions("normal,,flood", &any)).contains("none empty"));
        assert!(rule(parse_actions("explode", &any)).starts_with("`explode`: unknown action"));
        assert!(rule(parse_actions("push_vlan:0x0800", &any)).contains("0x8100"));
        assert!(rule(parse_actions("set_field:1->tp_dst", &any)).contains("set_field sets"));
        assert!(rule(parse_actions("goto_table:0", &any)).contains("later table"));
        assert!(rule(parse_actions("mod_vlan_vid:5000", &any)).contains("0 to 4095"));
    }
}
