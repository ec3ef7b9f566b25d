//! `oxvirt network ...`, `oxvirt security-group ...` and `oxvirt vm nic ...`.

use crate::output::{print_json, table, Output};
use clap::Subcommand;
use oxvirt_client::{encode, Client, ClientError};
use oxvirt_model::{LeaseView, NetworkView, SecurityGroup, SecurityRule, Vm};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network: nat, isolated, vxlan or bridged.
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
                s.vxlan.as_ref().map(|v| v.vni.to_string()).unwrap_or_else(|| "-".into()),
                if n.bridge_up { "up" } else { "missing" }.into(),
                n.dhcp_pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "-".into()),
                n.nics.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "SUBNET", "GATEWAY", "BRIDGE", "MTU", "VNI", "STATE", "DHCP", "NICS"], rows);
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

fn qos(ingress: Option<String>, egress: Option<String>) -> Option<Value> {
    (ingress.is_some() || egress.is_some()).then(
        || json!({ "ingress": ingress.unwrap_or_else(|| "0".into()), "egress": egress.unwrap_or_else(|| "0".into()) }),
    )
}

pub async fn network(client: &Client, out: Output, cmd: NetworkCmd) -> Result<(), ClientError> {
    match cmd {
        NetworkCmd::Create(a) => {
            let NetworkCreate { name, kind, subnet, gateway, range, mtu, uplink, bridge, vni, local, peers, no_dhcp } =
                *a;
            let mut body = json!({ "name": name, "kind": kind, "dhcp": !no_dhcp });
            for (k, v) in
                [("subnet", subnet), ("gateway", gateway), ("range", range), ("uplink", uplink), ("bridge", bridge)]
            {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            if let Some(m) = mtu {
                body["mtu"] = json!(m);
            }
            if vni.is_some() || local.is_some() {
                body["vxlan"] = json!({ "vni": vni.unwrap_or(0), "local": local.unwrap_or_default(), "peers": peers });
            }
            let n: NetworkView = client.post("/api/v1/networks", &body).await?;
            print_networks(&[n], out);
        }
        NetworkCmd::List => print_networks(&client.get::<Vec<NetworkView>>("/api/v1/networks").await?, out),
        NetworkCmd::Show { name } => {
            print_networks(&[client.get(&format!("/api/v1/networks/{}", encode(&name))).await?], out)
        }
        NetworkCmd::Delete { name } => {
            client.delete(&format!("/api/v1/networks/{}", encode(&name))).await?;
            println!("network {name} deleted");
        }
        NetworkCmd::Leases { name } => {
            let leases: Vec<LeaseView> = client.get(&format!("/api/v1/networks/{}/leases", encode(&name))).await?;
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
    }
    Ok(())
}

pub async fn security_group(client: &Client, out: Output, cmd: SecurityGroupCmd) -> Result<(), ClientError> {
    let path = |n: &str| format!("/api/v1/security-groups/{}", encode(n));
    match cmd {
        SecurityGroupCmd::Create { name, description } => {
            let g: SecurityGroup =
                client.post("/api/v1/security-groups", &json!({ "name": name, "description": description })).await?;
            print_groups(&[g], out);
        }
        SecurityGroupCmd::List => {
            print_groups(&client.get::<Vec<SecurityGroup>>("/api/v1/security-groups").await?, out)
        }
        SecurityGroupCmd::Show { name } => print_groups(&[client.get(&path(&name)).await?], out),
        SecurityGroupCmd::Delete { name } => {
            client.delete(&path(&name)).await?;
            println!("security group {name} deleted");
        }
        SecurityGroupCmd::RuleAdd { group, direction, protocol, ports, cidr } => {
            let mut g: SecurityGroup = client.get(&path(&group)).await?;
            let rule: SecurityRule = serde_json::from_value(
                json!({ "direction": direction, "protocol": protocol, "ports": ports, "cidr": cidr }),
            )
            .map_err(|e| ClientError::Decode(format!("rule: {e}")))?;
            g.spec.rules.push(rule);
            let g: SecurityGroup = client.put(&path(&group), &json!(g.spec)).await?;
            print_groups(&[g], out);
        }
        SecurityGroupCmd::RuleDel { group, index } => {
            let mut g: SecurityGroup = client.get(&path(&group)).await?;
            if index >= g.spec.rules.len() {
                return Err(ClientError::Decode(format!("index: group {group} has {} rule(s)", g.spec.rules.len())));
            }
            g.spec.rules.remove(index);
            let g: SecurityGroup = client.put(&path(&group), &json!(g.spec)).await?;
            print_groups(&[g], out);
        }
    }
    Ok(())
}

pub async fn nic(client: &Client, out: Output, cmd: NicCmd) -> Result<Vm, ClientError> {
    let vm = match cmd {
        NicCmd::Add { vm, network, bridge, ip, mac, security_groups, ingress, egress } => {
            let mut body = json!({ "security_groups": security_groups });
            for (k, v) in [("network", network), ("bridge", bridge), ("ip", ip), ("mac", mac)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            if let Some(q) = qos(ingress, egress) {
                body["qos"] = q;
            }
            client.post(&format!("/api/v1/vms/{}/nics", encode(&vm)), &body).await?
        }
        NicCmd::Set { vm, nic, security_groups, ingress, egress } => {
            let mut body = json!({});
            if let Some(g) = security_groups {
                body["security_groups"] = json!(g.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>());
            }
            if let Some(q) = qos(ingress, egress) {
                body["qos"] = q;
            }
            client.patch(&format!("/api/v1/vms/{}/nics/{}", encode(&vm), encode(&nic)), &body).await?
        }
        NicCmd::Del { vm, nic } => {
            client.delete_json(&format!("/api/v1/vms/{}/nics/{}", encode(&vm), encode(&nic))).await?
        }
    };
    let _ = out;
    Ok(vm)
}
