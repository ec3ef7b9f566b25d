//! oxvirt's nftables rules, rendered from the store and applied in one transaction.
//!
//! oxvirt owns exactly two tables, `inet oxvirt` (forwarding and masquerade of its networks) and
//! `bridge oxvirt` (per-NIC anti-spoofing and security groups), and never touches any other. The
//! name is the daemon's `nft_table` setting (`oxvirt` unless set): daemons sharing one kernel's
//! rules (tests) each keep to their own tables.
//!
//! Security groups are stateful without bridge conntrack (this kernel has none): each filtered NIC
//! has two dynamic sets of flows, those the VM opened and those a rule let in; a packet of a known
//! flow passes in either direction. Entries expire after 5 minutes idle (the sets are kept when
//! rules change, so live connections survive a rule change).

use super::links::{run, run_stdin, HostCmdError};
use oxvirt_model::{Direction, Ipv4Net, NetworkKind, Protocol, SecurityRule};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The tables' name unless the daemon is told another.
pub const DEFAULT_TABLE: &str = "oxvirt";

/// What the `inet` table needs to know of a network with a bridge of oxvirt's.
#[derive(Debug, Clone)]
pub struct NetRules {
    pub bridge: String,
    pub kind: NetworkKind,
    pub subnet: Option<Ipv4Net>,
    pub uplink: Option<String>,
}

/// What the `bridge` table needs to know of a NIC.
#[derive(Debug, Clone)]
pub struct NicRules {
    pub tap: String,
    pub mac: String,
    /// The NIC's address: with it, the VM may send from no other (anti-spoofing).
    pub ip: Option<Ipv4Addr>,
    /// The rules of the NIC's security groups, or `None` when it has no groups (no filtering).
    pub rules: Option<Vec<SecurityRule>>,
}

fn cidr_match(field: &str, rule: &SecurityRule) -> String {
    match rule.cidr {
        Some(c) if c.prefix > 0 => format!("ip {field} {}/{} ", c.network(), c.prefix),
        _ => String::new(),
    }
}

fn proto_match(rule: &SecurityRule) -> String {
    let ports = rule.port_range().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") });
    match (rule.protocol, ports) {
        (Protocol::Any, _) => String::new(),
        (Protocol::Icmp, _) => "ip protocol icmp ".into(),
        (p, Some(ports)) => format!("{} dport {ports} ", p.as_str()),
        (p, None) => format!("ip protocol {} ", p.as_str()),
    }
}

/// The `inet oxvirt` table: masquerade for nat networks; no forwarding for isolated ones.
pub fn render_inet(table: &str, nets: &[NetRules]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "  chain forward {{ type filter hook forward priority 0; policy accept;");
    for n in nets {
        let br = &n.bridge;
        match n.kind {
            NetworkKind::Nat => {
                let out = n.uplink.as_ref().map(|u| format!("oifname \"{u}\" ")).unwrap_or_default();
                let _ = writeln!(s, "    iifname \"{br}\" oifname \"{br}\" accept");
                let _ = writeln!(s, "    iifname \"{br}\" {out}accept");
                let _ = writeln!(s, "    oifname \"{br}\" ct state established,related accept");
                // Nothing from outside opens a connection into a NAT network.
                let _ = writeln!(s, "    oifname \"{br}\" drop");
                let _ = writeln!(s, "    iifname \"{br}\" drop");
            }
            NetworkKind::Isolated | NetworkKind::Vxlan => {
                let _ = writeln!(s, "    iifname \"{br}\" oifname \"{br}\" accept");
                let _ = writeln!(s, "    iifname \"{br}\" drop");
                let _ = writeln!(s, "    oifname \"{br}\" drop");
            }
            // oxvirt's Open vSwitch bridge: its own port on the host carries no VM's traffic
            // anywhere (the switch's flows keep VLANs apart; see `network/ovs.rs`).
            NetworkKind::Vlan => {
                let _ = writeln!(s, "    iifname \"{br}\" drop");
                let _ = writeln!(s, "    oifname \"{br}\" drop");
            }
            NetworkKind::Bridged => {}
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain postrouting {{ type nat hook postrouting priority 100; policy accept;");
    for n in nets.iter().filter(|n| n.kind == NetworkKind::Nat) {
        if let Some(sub) = n.subnet {
            let net = format!("{}/{}", sub.network(), sub.prefix);
            let out = match &n.uplink {
                Some(u) => format!("oifname \"{u}\""),
                None => format!("oifname != \"{}\"", n.bridge),
            };
            let _ = writeln!(s, "    ip saddr {net} ip daddr != {net} {out} masquerade");
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

fn set_names(tap: &str) -> (String, String) {
    (format!("out-{tap}"), format!("in-{tap}"))
}

/// The rules of the `bridge oxvirt` table's per-NIC chains (sets and base chains apart).
pub fn render_nic_chains(table: &str, n: &NicRules) -> String {
    let tap = &n.tap;
    let (out_set, in_set) = set_names(tap);
    let mut from = Vec::<String>::new();
    let mut to = Vec::<String>::new();
    // From the VM: its own MAC and address only.
    from.push(format!("ether saddr != {} drop", n.mac));
    from.push(format!("ether type arp arp saddr ether != {} drop", n.mac));
    if let Some(ip) = n.ip {
        from.push(format!("ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} drop"));
    }
    from.push("ether type arp accept".into());
    from.push("ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept".into());
    if let Some(ip) = n.ip {
        from.push(format!("ether type ip ip saddr != {ip} drop"));
        // IPv4 only: the networks hand out no IPv6 addresses to check against.
        from.push("ether type != ip drop".into());
    }
    if let Some(rules) = &n.rules {
        let flow = "ip protocol { tcp, udp }";
        let record_out = format!("{flow} update @{out_set} {{ ip daddr . ip protocol . th dport . th sport }}");
        // Replies to flows a rule let in.
        from.push(format!("{flow} ip daddr . ip protocol . th dport . th sport @{in_set} accept"));
        from.push("udp sport 68 udp dport 67 accept".into());
        from.push("icmp type { echo-reply, destination-unreachable, time-exceeded } accept".into());
        let egress: Vec<&SecurityRule> = rules.iter().filter(|r| r.direction == Direction::Egress).collect();
        if egress.is_empty() {
            from.push(record_out);
        } else {
            // A flow is recorded (and so may be answered) only once an egress rule let it out: a
            // packet the rules drop opens nothing inbound.
            for r in egress {
                let m = format!("ether type ip {}{}", cidr_match("daddr", r), proto_match(r));
                from.push(format!("{m}{record_out}"));
                from.push(format!("{m}accept"));
            }
            from.push("drop".into());
        }
        to.push("ether type arp accept".into());
        to.push(format!("{flow} ip saddr . ip protocol . th sport . th dport @{out_set} accept"));
        to.push("udp sport 67 udp dport 68 accept".into());
        to.push("icmp type { echo-reply, destination-unreachable, time-exceeded } accept".into());
        for r in rules.iter().filter(|r| r.direction == Direction::Ingress) {
            let m = format!("ether type ip {}{}", cidr_match("saddr", r), proto_match(r));
            to.push(format!("{m}{flow} update @{in_set} {{ ip saddr . ip protocol . th sport . th dport }}"));
            to.push(format!("{m}accept"));
        }
        to.push("drop".into());
    }
    let mut s = String::new();
    for (chain, rules) in [(format!("from-{tap}"), from), (format!("to-{tap}"), to)] {
        let _ = writeln!(s, "add chain bridge {table} {chain}");
        let _ = writeln!(s, "flush chain bridge {table} {chain}");
        for r in rules {
            let _ = writeln!(s, "add rule bridge {table} {chain} {}", r.replace("  ", " ").trim());
        }
    }
    s
}

/// The objects of `nft -j list ...`: what nft answers as JSON, one kind per entry.
async fn nft_objects(args: &[&str]) -> Result<Vec<serde_json::Value>, HostCmdError> {
    let out = run("nft", &[&["-j"], args].concat()).await?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| HostCmdError {
        cmd: format!("nft -j {}", args.join(" ")),
        reason: format!("unreadable answer: {e}"),
        errno: None,
    })?;
    Ok(v["nftables"].as_array().cloned().unwrap_or_default())
}

/// The families (`inet`, `bridge`) of oxvirt's tables present now.
async fn our_tables(table: &str) -> Result<Vec<String>, HostCmdError> {
    Ok(nft_objects(&["list", "tables"])
        .await?
        .iter()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["name"] == table)
        .filter_map(|t| t["family"].as_str().map(str::to_string))
        .collect())
}

/// The names of the per-NIC chains and sets now in the `bridge oxvirt` table, given the families
/// of oxvirt's tables now (none when it is not there: asked first, so no error text is read).
async fn existing_bridge_objects(table: &str, tables: &[String]) -> Result<(Vec<String>, Vec<String>), HostCmdError> {
    if !tables.iter().any(|f| f == "bridge") {
        return Ok((vec![], vec![]));
    }
    let objects = nft_objects(&["list", "table", "bridge", table]).await?;
    let names = |kind: &str| -> Vec<String> {
        objects.iter().filter_map(|o| o.get(kind)?["name"].as_str().map(str::to_string)).collect()
    };
    Ok((names("chain"), names("set")))
}

/// The whole `nft -f` script that makes oxvirt's tables match `nets` and `nics`.
pub fn render_script(table: &str, nets: &[NetRules], nics: &[NicRules], chains: &[String], sets: &[String]) -> String {
    let mut s = String::new();
    // The inet table holds no state worth keeping: made afresh.
    let _ = writeln!(s, "table inet {table}\ndelete table inet {table}");
    if nets.iter().any(|n| n.kind != NetworkKind::Bridged) {
        s.push_str(&render_inet(table, nets));
    }
    let _ = writeln!(s, "add table bridge {table}");
    let _ =
        writeln!(s, "add chain bridge {table} prerouting {{ type filter hook prerouting priority 0; policy accept; }}");
    let _ = writeln!(
        s,
        "add chain bridge {table} postrouting {{ type filter hook postrouting priority 0; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain bridge {table} prerouting");
    let _ = writeln!(s, "flush chain bridge {table} postrouting");
    let wanted_chains: Vec<String> =
        nics.iter().flat_map(|n| [format!("from-{}", n.tap), format!("to-{}", n.tap)]).collect();
    let wanted_sets: Vec<String> = nics
        .iter()
        .flat_map(|n| {
            let (a, b) = set_names(&n.tap);
            [a, b]
        })
        .collect();
    for c in chains.iter().filter(|c| c.starts_with("from-") || c.starts_with("to-")) {
        if !wanted_chains.contains(c) {
            let _ = writeln!(s, "delete chain bridge {table} {c}");
        }
    }
    for set in sets.iter().filter(|x| x.starts_with("out-") || x.starts_with("in-")) {
        if !wanted_sets.contains(set) {
            let _ = writeln!(s, "delete set bridge {table} {set}");
        }
    }
    for n in nics {
        for set in {
            let (a, b) = set_names(&n.tap);
            [a, b]
        } {
            let _ = writeln!(
                s,
                "add set bridge {table} {set} {{ type ipv4_addr . inet_proto . inet_service . inet_service; flags dynamic,timeout; timeout 5m; size 65536; }}"
            );
        }
        s.push_str(&render_nic_chains(table, n));
        let _ = writeln!(s, "add rule bridge {table} prerouting iifname \"{}\" jump from-{}", n.tap, n.tap);
        let _ = writeln!(s, "add rule bridge {table} postrouting oifname \"{}\" jump to-{}", n.tap, n.tap);
    }
    s
}

/// Makes oxvirt's tables match: one atomic `nft -f` transaction (none when there is nothing to
/// filter and no table of oxvirt's is there). The tables there now are asked once.
pub async fn apply(table: &str, nets: &[NetRules], nics: &[NicRules]) -> Result<(), HostCmdError> {
    if nets.iter().all(|n| n.kind == NetworkKind::Bridged) && nics.is_empty() {
        // Nothing to filter: oxvirt's tables go (if they are there; nft not answering, none are).
        let tables = our_tables(table).await.unwrap_or_default();
        let script = format!(
            "table inet {table}\ndelete table inet {table}\ntable bridge {table}\ndelete table bridge {table}\n"
        );
        return if !tables.is_empty() {
            run_stdin("nft", &["-f", "-"], Some(&script)).await.map(|_| ())
        } else {
            Ok(())
        };
    }
    let (chains, sets) = existing_bridge_objects(table, &our_tables(table).await?).await?;
    let script = render_script(table, nets, nics, &chains, &sets);
    run_stdin("nft", &["-f", "-"], Some(&script)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(direction: Direction, protocol: Protocol, ports: Option<&str>, cidr: Option<&str>) -> SecurityRule {
        SecurityRule { direction, protocol, ports: ports.map(Into::into), cidr: cidr.map(|c| c.parse().unwrap()) }
    }

    #[test]
    fn nat_networks_masquerade_and_isolated_ones_do_not_forward() {
        let nets = [
            NetRules {
                bridge: "oxb1".into(),
                kind: NetworkKind::Nat,
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                uplink: Some("up0".into()),
            },
            NetRules {
                bridge: "oxb2".into(),
                kind: NetworkKind::Isolated,
                subnet: Some("10.2.0.0/24".parse().unwrap()),
                uplink: None,
            },
        ];
        let t = render_inet(DEFAULT_TABLE, &nets);
        assert!(t.contains("ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 oifname \"up0\" masquerade"), "{t}");
        assert!(!t.contains("10.2.0.0/24"), "{t}");
        assert!(t.contains("iifname \"oxb2\" drop"), "{t}");
    }

    #[test]
    fn a_filtered_nic_denies_inbound_but_replies_and_allowed_ports() {
        let nic = NicRules {
            tap: "oxv1n0".into(),
            mac: "52:54:00:00:00:01".into(),
            ip: Some("10.1.0.5".parse().unwrap()),
            rules: Some(vec![rule(Direction::Ingress, Protocol::Tcp, Some("8080"), Some("10.1.0.0/24"))]),
        };
        let c = render_nic_chains(DEFAULT_TABLE, &nic);
        assert!(c.contains("from-oxv1n0 ether saddr != 52:54:00:00:00:01 drop"), "{c}");
        assert!(c.contains("from-oxv1n0 ether type ip ip saddr != 10.1.0.5 drop"), "{c}");
        assert!(c.contains("to-oxv1n0 ether type ip ip saddr 10.1.0.0/24 tcp dport 8080 accept"), "{c}");
        assert!(c.trim_end().ends_with("to-oxv1n0 drop"), "{c}");
        // No egress rule: everything may leave (and its flows are recorded).
        assert!(!c.contains("from-oxv1n0 drop"), "{c}");
        assert!(c.contains("from-oxv1n0 ip protocol { tcp, udp } update @out-oxv1n0"), "{c}");
        // With egress rules, only what a rule lets out is recorded: nothing before the rules.
        let strict = NicRules {
            rules: Some(vec![rule(Direction::Egress, Protocol::Udp, Some("53"), Some("10.1.0.1/32"))]),
            ..nic.clone()
        };
        let c = render_nic_chains(DEFAULT_TABLE, &strict);
        let lines: Vec<&str> = c.lines().filter(|l| l.contains("from-oxv1n0")).collect();
        let records: Vec<&&str> = lines.iter().filter(|l| l.contains("update @out-oxv1n0")).collect();
        assert_eq!(records.len(), 1, "{c}");
        assert!(records[0].contains("ip daddr 10.1.0.1/32") && records[0].contains("udp dport 53"), "{c}");
        let open = NicRules { rules: None, ..nic };
        assert!(!render_nic_chains(DEFAULT_TABLE, &open).contains("to-oxv1n0 drop"));
    }

    #[test]
    fn stale_chains_and_sets_go_and_others_are_kept() {
        let s = render_script(
            DEFAULT_TABLE,
            &[],
            &[],
            &["from-oxvdeadn0".into(), "prerouting".into()],
            &["in-oxvdeadn0".into()],
        );
        assert!(s.contains("delete chain bridge oxvirt from-oxvdeadn0"));
        assert!(s.contains("delete set bridge oxvirt in-oxvdeadn0"));
        assert!(!s.contains("delete chain bridge oxvirt prerouting"));
    }

    /// The rendered script is valid nftables (checked by `nft -c`, which changes nothing).
    #[tokio::test]
    async fn nft_accepts_the_script() {
        if run("nft", &["--version"]).await.is_err() {
            eprintln!("nft missing: skipped");
            return;
        }
        let nets = [NetRules {
            bridge: "oxb1".into(),
            kind: NetworkKind::Nat,
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            uplink: None,
        }];
        let nics = [NicRules {
            tap: "oxv1n0".into(),
            mac: "52:54:00:00:00:01".into(),
            ip: Some("10.1.0.5".parse().unwrap()),
            rules: Some(vec![
                rule(Direction::Ingress, Protocol::Tcp, Some("22"), None),
                rule(Direction::Ingress, Protocol::Icmp, None, Some("10.0.0.0/8")),
                rule(Direction::Egress, Protocol::Udp, Some("53"), None),
                rule(Direction::Egress, Protocol::Any, None, Some("10.1.0.0/24")),
            ]),
        }];
        let script = render_script(DEFAULT_TABLE, &nets, &nics, &[], &[]);
        // `nft -c` wants the tables the script deletes to exist: check the body only.
        let body = script.replace("table inet oxvirt\ndelete table inet oxvirt\n", "");
        if let Err(e) = run_stdin("nft", &["-c", "-f", "-"], Some(&body)).await {
            panic!("{e}\n{body}");
        }
    }

    /// The tables and their chains and sets are read from nft's JSON, in a network namespace of
    /// the test's own (the host's ruleset is never touched); a missing table is asked about, not
    /// inferred from an error's text.
    #[tokio::test]
    async fn bridge_objects_are_read_from_nft_json() {
        if run("nft", &["--version"]).await.is_err() || unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs nft and root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only: its children (nft) inherit the new namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
            // A runtime of this thread's: the programs it starts are in the namespace too.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
            let table = DEFAULT_TABLE;
            let none = our_tables(table).await.unwrap();
            assert_eq!(none, Vec::<String>::new());
            assert_eq!(existing_bridge_objects(table, &none).await.unwrap(), (vec![], vec![]));
            let script = format!(
                "add table bridge {table}\nadd chain bridge {table} from-oxt1\nadd set bridge {table} out-oxt1 {{ type ipv4_addr; }}\n"
            );
            run_stdin("nft", &["-f", "-"], Some(&script)).await.unwrap();
            let bridge = our_tables(table).await.unwrap();
            assert_eq!(bridge, ["bridge"]);
            assert!(our_tables("another").await.unwrap().is_empty(), "another daemon's name: not ours");
            assert_eq!(existing_bridge_objects(table, &bridge).await.unwrap(), (vec!["from-oxt1".to_string()], vec!["out-oxt1".to_string()]));
            });
        })
        .join()
        .unwrap();
    }
}
