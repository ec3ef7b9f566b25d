//! `oxvirt network ...`, `oxvirt security-group ...` and `oxvirt vm nic ...`.

use crate::args::{parsed, rate, word};
use crate::output::{print_json, table, Output};
use clap::Subcommand;
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{
    FlowRuleSpec, NetworkSpec, NetworkView, NicQos, NicSpec, NicUpdate, SecurityGroup, SecurityGroupSpec, SecurityRule,
    Vm, VxlanSpec,
};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network: nat, isolated, vxlan, bridged or vlan.
    Create(Box<NetworkCreate>),
    List,
    Show {
        name: String,
    },
    /// Delete a network no NIC uses.
    Delete {
        name: String,
    },
    /// Addresses given to NICs and whether the guests took them.
    Leases {
        name: String,
    },
    /// A vlan network's flow rules (ovs-ofctl's words), on oxvirt's Open vSwitch.
    #[command(subcommand)]
    Flow(FlowCmd),
}

#[derive(Subcommand)]
pub enum FlowCmd {
    /// Add a rule (administrators): e.g. --priority 200 --match "tcp,nw_src=10.0.0.0/24,tp_dst=80"
    /// --actions drop; actions: drop, normal, output:VM/NIC (with normal: a mirror),
    /// mod_vlan_vid:N, strip_vlan.
    Add {
        network: String,
        #[arg(long)]
        priority: u16,
        #[arg(long = "match")]
        r#match: String,
        #[arg(long)]
        actions: String,
    },
    /// The rules with the packets and bytes the switch counted for each.
    List { network: String },
    /// Remove a rule.
    Del { network: String, id: String },
}

#[derive(clap::Args)]
pub struct NetworkCreate {
    name: String,
    #[arg(long, default_value = "nat")]
    kind: String,
    /// The subnet VMs get addresses from, e.g. 10.10.0.0/24.
    #[arg(long)]
    subnet: Option<String>,
    /// The host's address on the network (default: the subnet's first).
    #[arg(long)]
    gateway: Option<String>,
    /// Addresses this host hands out: FIRST-LAST.
    #[arg(long)]
    range: Option<String>,
    /// Up to 9000 (jumbo frames).
    #[arg(long)]
    mtu: Option<u32>,
    /// nat: the interface traffic leaves by.
    #[arg(long)]
    uplink: Option<String>,
    /// bridged: the existing host bridge.
    #[arg(long)]
    bridge: Option<String>,
    /// vxlan: the segment id (1..16777215).
    #[arg(long)]
    vni: Option<u32>,
    /// vxlan: this host's underlay address.
    #[arg(long)]
    local: Option<String>,
    /// vxlan: another host's underlay address (repeat for more).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// No DHCP server.
    #[arg(long)]
    no_dhcp: bool,
    /// vlan: the VLAN id (1..4094) on oxvirt's Open vSwitch.
    #[arg(long)]
    vlan: Option<u16>,
}

#[derive(Subcommand)]
pub enum SecurityGroupCmd {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Add an allow rule (live on every NIC using the group).
    RuleAdd {
        group: String,
        /// ingress (to the VM) or egress (from it).
        #[arg(long, default_value = "ingress")]
        direction: String,
        /// any, tcp, udp or icmp.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// A port or range: 22, 8000-8080.
        #[arg(long)]
        ports: Option<String>,
        /// The peer's addresses, e.g. 10.0.0.0/8.
        #[arg(long)]
        cidr: Option<String>,
    },
    /// Remove rule number N (from `show`, counting from 0).
    RuleDel {
        group: String,
        index: usize,
    },
}

#[derive(Subcommand)]
pub enum NicCmd {
    /// Add a NIC (hot-plugged into a running VM).
    Add {
        vm: String,
        /// An oxvirt network.
        #[arg(long)]
        network: Option<String>,
        /// An existing host bridge.
        #[arg(long)]
        bridge: Option<String>,
        /// A static address on the network; on a host bridge, the address the guest uses there (the
        /// NIC may then send from no other).
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        /// Security groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        security_groups: Vec<String>,
        /// Limit of traffic to the VM, e.g. 20mbit.
        #[arg(long)]
        ingress: Option<String>,
        /// Limit of traffic from the VM.
        #[arg(long)]
        egress: Option<String>,
    },
    /// Change a NIC's security groups or limits (live).
    Set {
        vm: String,
        nic: String,
        #[arg(long, value_delimiter = ',')]
        security_groups: Option<Vec<String>>,
        #[arg(long)]
        ingress: Option<String>,
        #[arg(long)]
        egress: Option<String>,
    },
    /// Remove a NIC (hot-unplugged from a running VM).
    Del { vm: String, nic: String },
}

fn print_networks(nets: &[NetworkView], out: Output) {
    if out == Output::Json {
        return print_json(&nets);
    }
    let rows = nets
        .iter()
        .map(|n| {
            let s = &n.network.spec;
            vec![
                s.name.clone(),
                s.kind.as_str().into(),
                s.subnet.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                n.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                n.bridge.clone(),
                n.mtu.to_string(),
                s.vxlan
                    .as_ref()
                    .map(|v| format!("vni {}", v.vni))
                    .or(s.vlan.map(|v| format!("vlan {v}")))
                    .unwrap_or_else(|| "-".into()),
                if n.bridge_up { "up" } else { "missing" }.into(),
                n.dhcp_pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "-".into()),
                n.nics.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "SUBNET", "GATEWAY", "BRIDGE", "MTU", "SEGMENT", "STATE", "DHCP", "NICS"], rows);
}

fn print_groups(groups: &[SecurityGroup], out: Output) {
    if out == Output::Json {
        return print_json(&groups);
    }
    for g in groups {
        println!(
            "{}{}",
            g.spec.name,
            if g.spec.description.is_empty() { String::new() } else { format!(" — {}", g.spec.description) }
        );
        let rows = g
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    i.to_string(),
                    format!("{:?}", r.direction).to_lowercase(),
                    r.protocol.as_str().into(),
                    r.ports.clone().unwrap_or_else(|| "all".into()),
                    r.cidr.map(|c| c.to_string()).unwrap_or_else(|| "0.0.0.0/0".into()),
                ]
            })
            .collect();
        table(&["#", "DIRECTION", "PROTOCOL", "PORTS", "CIDR"], rows);
    }
}

/// `--ingress` / `--egress`: the limits when either is given (the other is then none).
fn nic_qos(ingress: Option<&str>, egress: Option<&str>) -> Result<Option<NicQos>, ClientError> {
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let limit = |flag: &str, v: Option<&str>| v.map_or(Ok(0), |v| rate(flag, v));
    Ok(Some(NicQos { ingress: limit("--ingress", ingress)?, egress: limit("--egress", egress)? }))
}

fn network_spec(a: NetworkCreate) -> Result<NetworkSpec, ClientError> {
    let NetworkCreate { name, kind, subnet, gateway, range, mtu, uplink, bridge, vni, local, peers, no_dhcp, vlan } = a;
    let vxlan = match (vni, local) {
        (None, None) => None,
        (Some(vni), Some(local)) => Some(VxlanSpec {
            vni,
            local: parsed("--local", &local)?,
            peers: peers.iter().map(|p| parsed("--peer", p)).collect::<Result<_, _>>()?,
            port: VxlanSpec::DEFAULT_PORT,
        }),
        (Some(_), None) => return Err(ClientError::Usage("--local: is required with --vni".into())),
        (None, Some(_)) => return Err(ClientError::Usage("--vni: is required with --local".into())),
    };
    Ok(NetworkSpec {
        name,
        kind: word("--kind", &kind)?,
        subnet: subnet.map(|s| parsed("--subnet", &s)).transpose()?,
        gateway: gateway.map(|g| parsed("--gateway", &g)).transpose()?,
        range,
        mtu,
        dhcp: !no_dhcp,
        uplink,
        bridge,
        vxlan,
        vlan,
    })
}

pub async fn network(client: &Client, out: Output, cmd: NetworkCmd) -> Result<(), ClientError> {
    match cmd {
        NetworkCmd::Create(a) => print_networks(&[client.networks().create_network(&network_spec(*a)?).await?], out),
        NetworkCmd::List => print_networks(&client.networks().list_networks().await?, out),
        NetworkCmd::Show { name } => print_networks(&[client.networks().get_network(&name).await?], out),
        NetworkCmd::Delete { name } => {
            client.networks().delete_network(&name).await?;
            println!("network {name} deleted");
        }
        NetworkCmd::Leases { name } => {
            let leases = client.networks().network_leases(&name).await?;
            if out == Output::Json {
                print_json(&leases);
                return Ok(());
            }
            let rows = leases
                .iter()
                .map(|l| {
                    let l2 = &l.lease;
                    vec![
                        l2.ip.to_string(),
                        l2.mac.clone(),
                        format!("{}/{}", l2.vm, l2.nic),
                        if l.active { "active" } else { "reserved" }.into(),
                    ]
                })
                .collect();
            table(&["ADDRESS", "MAC", "NIC", "STATE"], rows);
        }
        NetworkCmd::Flow(FlowCmd::Add { network, priority, r#match, actions }) => {
            let rule = client.networks().add_flow_rule(&network, &FlowRuleSpec { priority, r#match, actions }).await?;
            if out == Output::Json {
                print_json(&rule);
            } else {
                println!("flow rule {} added to {network}", rule.id);
            }
        }
        NetworkCmd::Flow(FlowCmd::List { network }) => {
            let rules = client.networks().list_flow_rules(&network).await?;
            if out == Output::Json {
                print_json(&rules);
                return Ok(());
            }
            let rows = rules
                .iter()
                .map(|r| {
                    vec![
                        r.rule.id.clone(),
                        r.rule.spec.priority.to_string(),
                        r.rule.spec.r#match.clone(),
                        r.rule.spec.actions.clone(),
                        r.flows.to_string(),
                        r.packets.to_string(),
                        r.bytes.to_string(),
                    ]
                })
                .collect();
            table(&["ID", "PRIORITY", "MATCH", "ACTIONS", "FLOWS", "PACKETS", "BYTES"], rows);
        }
        NetworkCmd::Flow(FlowCmd::Del { network, id }) => {
            client.networks().delete_flow_rule(&network, &id).await?;
            println!("flow rule {id} removed from {network}");
        }
    }
    Ok(())
}

/// `rule-add`: an allow rule from its flags.
fn rule(
    direction: &str,
    protocol: &str,
    ports: Option<String>,
    cidr: Option<String>,
) -> Result<SecurityRule, ClientError> {
    Ok(SecurityRule {
        direction: word("--direction", direction)?,
        protocol: word("--protocol", protocol)?,
        ports,
        cidr: cidr.map(|c| parsed("--cidr", &c)).transpose()?,
    })
}

pub async fn security_group(client: &Client, out: Output, cmd: SecurityGroupCmd) -> Result<(), ClientError> {
    match cmd {
        SecurityGroupCmd::Create { name, description } => {
            let spec = SecurityGroupSpec { name, description, rules: vec![] };
            print_groups(&[client.networks().create_security_group(&spec).await?], out);
        }
        SecurityGroupCmd::List => print_groups(&client.networks().list_security_groups().await?, out),
        SecurityGroupCmd::Show { name } => print_groups(&[client.networks().get_security_group(&name).await?], out),
        SecurityGroupCmd::Delete { name } => {
            client.networks().delete_security_group(&name).await?;
            println!("security group {name} deleted");
        }
        SecurityGroupCmd::RuleAdd { group, direction, protocol, ports, cidr } => {
            let rule = rule(&direction, &protocol, ports, cidr)?;
            let mut g = client.networks().get_security_group(&group).await?;
            g.spec.rules.push(rule);
            print_groups(&[client.networks().replace_security_group(&group, &g.spec).await?], out);
        }
        SecurityGroupCmd::RuleDel { group, index } => {
            let mut g = client.networks().get_security_group(&group).await?;
            if index >= g.spec.rules.len() {
                return Err(ClientError::Usage(format!(
                    "index {index}: group {group} has {} rule(s)",
                    g.spec.rules.len()
                )));
            }
            g.spec.rules.remove(index);
            print_groups(&[client.networks().replace_security_group(&group, &g.spec).await?], out);
        }
    }
    Ok(())
}

pub async fn nic(client: &Client, cmd: NicCmd) -> Result<Vm, ClientError> {
    match cmd {
        NicCmd::Add { vm, network, bridge, ip, mac, security_groups, ingress, egress } => {
            let mut nic = NicSpec {
                network,
                bridge,
                ip: ip.map(|ip| parsed("--ip", &ip)).transpose()?,
                mac,
                security_groups,
                qos: nic_qos(ingress.as_deref(), egress.as_deref())?.unwrap_or_default(),
                ..NicSpec::user()
            };
            nic.normalize(); // network or bridged, as the daemon reads it
            client.networks().attach_nic(&vm, &nic).await
        }
        NicCmd::Set { vm, nic, security_groups, ingress, egress } => {
            let update = NicUpdate {
                security_groups: security_groups.map(|g| g.into_iter().filter(|s| !s.is_empty()).collect()),
                qos: nic_qos(ingress.as_deref(), egress.as_deref())?,
            };
            client.networks().update_nic(&vm, &nic, &update).await
        }
        NicCmd::Del { vm, nic } => client.networks().detach_nic(&vm, &nic).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::usage;
    use clap::Parser;
    use std::net::Ipv4Addr;

    fn spec(args: &[&str]) -> Result<NetworkSpec, ClientError> {
        let cli = crate::Cli::try_parse_from([&["oxvirt", "network", "create"], args].concat()).unwrap();
        let crate::Command::Network(NetworkCmd::Create(a)) = cli.command else { unreachable!("network create") };
        network_spec(*a)
    }

    #[test]
    fn a_network_is_the_spec_its_flags_say() {
        let s = spec(&["lan", "--kind", "isolated", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1"]).unwrap();
        assert_eq!(s.kind, oxvirt_model::NetworkKind::Isolated);
        assert_eq!(s.subnet.map(|n| n.to_string()).as_deref(), Some("10.20.0.0/24"));
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 20, 0, 1)));
        assert!(s.dhcp && s.vxlan.is_none());
        let s = spec(&["o", "--kind", "vxlan", "--vni", "7", "--local", "10.0.0.1", "--peer", "10.0.0.2"]).unwrap();
        let v = s.vxlan.unwrap();
        assert_eq!(
            (v.vni, v.local, v.peers, v.port),
            (7, Ipv4Addr::new(10, 0, 0, 1), vec![Ipv4Addr::new(10, 0, 0, 2)], 4789)
        );
        assert!(!spec(&["n", "--no-dhcp"]).unwrap().dhcp);
    }

    #[test]
    fn a_network_refuses_what_does_not_parse_by_its_flag() {
        assert!(usage(spec(&["n", "--kind", "mesh"])).starts_with("--kind \"mesh\": unknown variant"));
        assert!(usage(spec(&["n", "--subnet", "10.0.0/24"])).starts_with("--subnet \"10.0.0/24\": "));
        assert!(usage(spec(&["n", "--gateway", "gw"])).starts_with("--gateway \"gw\": "));
        assert!(usage(spec(&["n", "--vni", "5"])).starts_with("--local: "));
        assert!(usage(spec(&["n", "--local", "10.0.0.1"])).starts_with("--vni: "));
        assert!(usage(spec(&["n", "--vni", "5", "--local", "h"])).starts_with("--local \"h\": "));
        assert!(usage(spec(&["n", "--vni", "5", "--local", "10.0.0.1", "--peer", "x"])).starts_with("--peer \"x\": "));
    }

    #[test]
    fn nic_limits_are_set_together() {
        assert_eq!(nic_qos(None, None).ok(), Some(None));
        assert_eq!(nic_qos(Some("20mbit"), None).ok(), Some(Some(NicQos { ingress: 20_000_000, egress: 0 })));
        assert_eq!(nic_qos(None, Some("1gbit")).ok(), Some(Some(NicQos { ingress: 0, egress: 1_000_000_000 })));
        assert!(usage(nic_qos(Some("20mbps"), None)).starts_with("--ingress \"20mbps\": "));
    }

    #[test]
    fn a_rule_is_parsed_from_its_flags() {
        let r = rule("egress", "udp", Some("53".into()), Some("10.0.0.0/8".into())).unwrap();
        assert_eq!(
            (r.direction, r.protocol, r.ports.as_deref()),
            (oxvirt_model::Direction::Egress, oxvirt_model::Protocol::Udp, Some("53"))
        );
        assert_eq!(r.cidr.map(|c| c.to_string()).as_deref(), Some("10.0.0.0/8"));
        assert!(usage(rule("in", "tcp", None, None)).starts_with("--direction \"in\": "));
        assert!(usage(rule("ingress", "sctp", None, None)).starts_with("--protocol \"sctp\": "));
        assert!(usage(rule("ingress", "tcp", None, Some("10/8".into()))).starts_with("--cidr \"10/8\": "));
    }
}
