//! IP address management: each NIC on a network with a subnet holds one address, recorded as a
//! lease (`ipam/<network>/<ip>`) in the same store transaction as the VM, so no two NICs ever
//! hold one address. MAC addresses are kept unique across VMs the same way (`macs/<mac>`).

use crate::ControlError;
use oxvirt_hypervisor::qemu::cmdline::default_mac;
use oxvirt_model::{Lease, MacClaim, Network, NicMode, SecurityGroup, VmSpec};
use oxvirt_store::{encode, Expect, Op, Record, StoreExt};
use std::collections::HashSet;
use std::net::Ipv4Addr;

crate::service! {
    /// Addresses and MACs: leases claimed in the same store transaction as their VM.
    Ipam, ipam
}

fn lease_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{network}/{ip}")
}

/// The leases a spec holds: (network, ip, nic id, mac).
fn leases_in(vm: &str, spec: Option<&VmSpec>) -> Vec<Lease> {
    spec.map(|s| {
        s.nics
            .iter()
            .filter_map(|n| {
                Some(Lease {
                    network: n.network.clone()?,
                    ip: n.ip?,
                    vm: vm.to_string(),
                    nic: n.id.clone(),
                    mac: n.mac.clone().unwrap_or_default(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

impl Ipam {
    pub(crate) fn leases_of(&self, network: &str) -> Result<Vec<Lease>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list_records_under::<Lease>(&format!("{network}/"))?
            .into_iter()
            .map(|(l, _)| l)
            .collect())
    }

    /// Fills in what a VM's NICs leave out and checks what they name: modes, ids, unique MACs,
    /// networks and security groups that exist, addresses (given or picked). `old` is the VM's
    /// spec before the change (its NICs keep their addresses).
    pub(crate) fn prepare_nics(
        &self,
        vm_id: &str,
        vm_name: &str,
        spec: &mut VmSpec,
        old: Option<&VmSpec>,
    ) -> Result<(), ControlError> {
        for n in spec.nics.iter_mut() {
            n.normalize();
        }
        for i in 0..spec.nics.len() {
            if spec.nics[i].id.is_empty() {
                let taken: Vec<String> = spec.nics.iter().map(|n| n.id.clone()).collect();
                spec.nics[i].id = (0..16).map(|k| format!("nic{k}")).find(|c| !taken.contains(c)).unwrap_or_default();
            }
        }
        spec.validate()?;
        if spec.nics.is_empty() {
            // Nothing to give out or check (and no reason to read every VM).
            return Ok(());
        }
        // Addresses held on host bridges (given by an administrator, not leased): one NIC each.
        // Only a spec that gives a bridged NIC an address reads the other VMs for them.
        let bridged_ips = spec.nics.iter().any(|n| n.mode == NicMode::Bridged && n.ip.is_some());
        let on_bridges: Vec<(String, Ipv4Addr, String)> = if bridged_ips {
            self.ctl
                .vms()
                .list_vms()?
                .into_iter()
                .filter(|v| v.spec.name != vm_name)
                .flat_map(|v| {
                    let name = v.spec.name.clone();
                    v.spec.nics.into_iter().filter_map(move |n| Some((n.bridge?, n.ip?, name.clone())))
                })
                .collect()
        } else {
            Vec::new()
        };
        let groups: HashSet<String> =
            self.ctl.inner.store.list_records::<SecurityGroup>()?.into_iter().map(|(g, _)| g.spec.name).collect();
        for i in 0..spec.nics.len() {
            let field = format!("nics[{i}]");
            let slot = spec.nics[i].slot();
            match spec.nics[i].mac.clone() {
                Some(mac) => {
                    let mac = mac.to_ascii_lowercase();
                    if let Some(owner) = self.mac_holder(&mac, vm_name)? {
                        return Err(ControlError::invalid(
                            format!("{field}.mac"),
                            format!("{mac} is used by VM {owner}"),
                        ));
                    }
                    if spec.nics[..i].iter().any(|n| n.mac.as_deref().map(str::to_ascii_lowercase) == Some(mac.clone()))
                    {
                        return Err(ControlError::invalid(format!("{field}.mac"), "is used by another NIC of this VM"));
                    }
                    spec.nics[i].mac = Some(mac);
                }
                None => {
                    // Stable per VM and NIC; salted again in the rare case it is taken.
                    let mut found = None;
                    for salt in 0..64 {
                        let m = if salt == 0 {
                            default_mac(vm_id, slot)
                        } else {
                            default_mac(&format!("{vm_id}/{salt}"), slot)
                        };
                        if spec.nics.iter().any(|n| n.mac.as_deref() == Some(m.as_str())) {
                            continue;
                        }
                        if self.mac_holder(&m, vm_name)?.is_none() {
                            found = Some(m);
                            break;
                        }
                    }
                    let mac = found.ok_or_else(|| ControlError::Exhausted("no free MAC address found".into()))?;
                    spec.nics[i].mac = Some(mac);
                }
            }
            if !spec.nics[i].security_groups.is_empty() && spec.nics[i].mode == NicMode::Network {
                let net = spec.nics[i].network.clone().unwrap_or_default();
                if let Some((n, _)) = self.ctl.inner.store.get_record::<oxvirt_model::Network>(&net)? {
                    if n.spec.kind == oxvirt_model::NetworkKind::Vlan {
                        return Err(ControlError::invalid(
                            format!("{field}.security_groups"),
                            "security groups do not apply on vlan networks yet (a NIC there may send only from its own MAC)",
                        ));
                    }
                }
            }
            for (j, g) in spec.nics[i].security_groups.iter().enumerate() {
                if !groups.contains(g) {
                    return Err(ControlError::invalid(
                        format!("{field}.security_groups[{j}]"),
                        format!("there is no security group named {g}"),
                    ));
                }
            }
            if let (NicMode::Bridged, Some(bridge), Some(ip)) =
                (spec.nics[i].mode, spec.nics[i].bridge.clone(), spec.nics[i].ip)
            {
                let twice =
                    spec.nics[..i].iter().any(|n| n.bridge.as_deref() == Some(bridge.as_str()) && n.ip == Some(ip));
                if let Some((_, _, owner)) = on_bridges.iter().find(|(b, a, _)| *b == bridge && *a == ip) {
                    return Err(ControlError::invalid(
                        format!("{field}.ip"),
                        format!("{ip} is held on bridge {bridge} by VM {owner}"),
                    ));
                }
                if twice {
                    return Err(ControlError::invalid(
                        format!("{field}.ip"),
                        format!("{ip} is held on bridge {bridge} by another NIC of this VM"),
                    ));
                }
            }
            if spec.nics[i].mode != NicMode::Network {
                continue;
            }
            let net_name = spec.nics[i].network.clone().unwrap_or_default();
            let net: Network =
                self.ctl.inner.store.get_record::<Network>(&net_name)?.map(|(n, _)| n).ok_or_else(|| {
                    ControlError::invalid(format!("{field}.network"), format!("there is no network named {net_name}"))
                })?;
            self.assign_address(&field, vm_name, &net, spec, i, old)?;
        }
        Ok(())
    }

    fn assign_address(
        &self,
        field: &str,
        vm_name: &str,
        net: &Network,
        spec: &mut VmSpec,
        i: usize,
        old: Option<&VmSpec>,
    ) -> Result<(), ControlError> {
        let (Some(subnet), Some(gw), Some((first, last))) =
            (net.spec.subnet, net.spec.gateway(), net.spec.dhcp_range())
        else {
            if spec.nics[i].ip.is_some() {
                return Err(ControlError::invalid(
                    format!("{field}.ip"),
                    format!("network {} has no subnet to give addresses from", net.spec.name),
                ));
            }
            return Ok(());
        };
        let name = &net.spec.name;
        let leases = self.leases_of(name)?;
        // Taken: by other VMs, and by this VM's other NICs.
        let mut taken: HashSet<Ipv4Addr> = leases.iter().filter(|l| l.vm != vm_name).map(|l| l.ip).collect();
        taken.extend(
            spec.nics
                .iter()
                .enumerate()
                .filter(|(j, n)| *j != i && n.network.as_deref() == Some(name))
                .filter_map(|(_, n)| n.ip),
        );
        let nic_id = spec.nics[i].id.clone();
        let wanted = spec.nics[i].ip.or_else(|| {
            // A NIC that stays on its network keeps its address.
            old.and_then(|o| {
                o.nics.iter().find(|n| n.id == nic_id && n.network.as_deref() == Some(name)).and_then(|n| n.ip)
            })
        });
        let ip = match wanted {
            Some(ip) => {
                let (lo, hi) = subnet.hosts();
                if !subnet.contains(ip) || u32::from(ip) < u32::from(lo) || u32::from(ip) > u32::from(hi) {
                    return Err(ControlError::invalid(
                        format!("{field}.ip"),
                        format!("{ip} is not a host address of {subnet}"),
                    ));
                }
                if ip == gw {
                    return Err(ControlError::invalid(format!("{field}.ip"), format!("{ip} is the network's gateway")));
                }
                if taken.contains(&ip) {
                    let owner = leases
                        .iter()
                        .find(|l| l.ip == ip)
                        .map(|l| format!("VM {}", l.vm))
                        .unwrap_or("another NIC".into());
                    return Err(ControlError::invalid(format!("{field}.ip"), format!("{ip} is taken by {owner}")));
                }
                ip
            }
            None => (u32::from(first)..=u32::from(last))
                .map(Ipv4Addr::from)
                .find(|a| !taken.contains(a) && *a != gw)
                .ok_or_else(|| {
                ControlError::Exhausted(format!("network {name} has no free address left in {first}-{last}"))
            })?,
        };
        spec.nics[i].ip = Some(ip);
        Ok(())
    }

    /// Store operations that give and take back the leases of a VM whose spec goes from `old`
    /// to `new`: a lease someone else took meanwhile makes the whole transaction fail.
    pub(crate) fn lease_ops(&self, vm: &str, old: Option<&VmSpec>, new: Option<&VmSpec>) -> Vec<Op> {
        let (before, after) = (leases_in(vm, old), leases_in(vm, new));
        let mut ops = Vec::new();
        for l in &after {
            if !before.iter().any(|b| b.network == l.network && b.ip == l.ip) {
                ops.push(Op::Put {
                    key: Lease::key_of(&lease_key(&l.network, l.ip)),
                    value: encode(l),
                    expect: Expect::Absent,
                });
            } else if !before.contains(l) {
                ops.push(Op::Put {
                    key: Lease::key_of(&lease_key(&l.network, l.ip)),
                    value: encode(l),
                    expect: Expect::Any,
                });
            }
        }
        for b in before.iter().filter(|b| !after.iter().any(|l| l.network == b.network && l.ip == b.ip)) {
            ops.push(Op::Delete { key: Lease::key_of(&lease_key(&b.network, b.ip)), expect: Expect::Any });
        }
        ops
    }

    /// The VM other than `me` whose NIC holds `mac`, if any.
    fn mac_holder(&self, mac: &str, me: &str) -> Result<Option<String>, ControlError> {
        let claim = self.ctl.inner.store.get_record::<MacClaim>(mac)?;
        Ok(claim.map(|(c, _)| c.vm).filter(|vm| vm != me))
    }

    /// Store operations that claim and let go of the MAC addresses of a VM whose spec goes from
    /// `old` to `new`: a MAC another VM claimed meanwhile makes the whole transaction fail.
    pub(crate) fn mac_ops(&self, vm: &str, old: Option<&VmSpec>, new: Option<&VmSpec>) -> Vec<Op> {
        let macs = |s: Option<&VmSpec>| -> Vec<(String, String)> {
            s.map(|s| {
                s.nics.iter().filter_map(|n| Some((n.mac.as_ref()?.to_ascii_lowercase(), n.id.clone()))).collect()
            })
            .unwrap_or_default()
        };
        let (before, after) = (macs(old), macs(new));
        let mut ops = Vec::new();
        for (mac, nic) in &after {
            let claim = MacClaim { vm: vm.to_string(), nic: nic.clone() };
            match before.iter().find(|(m, _)| m == mac) {
                None => ops.push(Op::Put { key: MacClaim::key_of(mac), value: encode(&claim), expect: Expect::Absent }),
                Some((_, n)) if n != nic => {
                    ops.push(Op::Put { key: MacClaim::key_of(mac), value: encode(&claim), expect: Expect::Any })
                }
                Some(_) => {}
            }
        }
        for (mac, _) in before.iter().filter(|(m, _)| !after.iter().any(|(a, _)| a == m)) {
            ops.push(Op::Delete { key: MacClaim::key_of(mac), expect: Expect::Any });
        }
        ops
    }

    /// At start: every VM's MACs are claimed (stores written before claims existed, or a claim
    /// lost), so that the check at creation reads one key.
    pub(crate) fn claim_all_macs(&self) {
        let Ok(vms) = self.ctl.vms().list_vms() else { return };
        for vm in vms {
            for n in &vm.spec.nics {
                let Some(mac) = n.mac.as_ref().map(|m| m.to_ascii_lowercase()) else { continue };
                let claim = MacClaim { vm: vm.spec.name.clone(), nic: n.id.clone() };
                match self.ctl.inner.store.get_record::<MacClaim>(&mac) {
                    Ok(Some((c, _))) if c == claim => {}
                    Ok(Some((c, _))) => {
                        tracing::warn!(vm = %vm.spec.name, mac, other = %c.vm, "two VMs have one MAC address")
                    }
                    Ok(None) => {
                        let _ = self.ctl.inner.store.put_record(&mac, &claim, Expect::Absent);
                    }
                    Err(e) => tracing::warn!("MAC claims: {e}"),
                }
            }
        }
    }

    /// The networks whose DHCP hosts change between two specs.
    pub(crate) fn networks_touched(old: Option<&VmSpec>, new: Option<&VmSpec>) -> Vec<String> {
        let mut v: Vec<String> =
            [old, new].into_iter().flatten().flat_map(|s| s.nics.iter().filter_map(|n| n.network.clone())).collect();
        v.sort();
        v.dedup();
        v
    }
}
