//! The host side of VM NICs: a TAP device per NIC that oxvirt makes (recorded first), joins to
//! its bridge (an oxvirt network's or the operator's), shapes, and removes when the VM stops.

use super::{bridge_of, links, shaping};
use crate::ControlError;
use oxvirt_hypervisor::qemu::cmdline::{nic_queues, tap_name};
use oxvirt_model::{Network, NicMode, NicSpec, VmSpec};
use oxvirt_store::StoreExt;

/// Packet counters of a NIC as the guest sees them (host TAP rx is guest tx).
#[derive(Debug, Clone, Default)]
pub struct NicStats {
    pub nic: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

fn counter(tap: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Where a NIC's TAP device goes: its bridge and MTU, or a VLAN of the switch.
struct Attachment {
    bridge: String,
    mtu: u32,
    /// On oxvirt's Open vSwitch (a `vlan` network): the port's tag.
    vlan: Option<u16>,
}

impl crate::Networks {
    fn attachment(&self, field: &str, nic: &NicSpec) -> Result<Attachment, ControlError> {
        let (bridge, mtu) = match nic.mode {
            NicMode::Bridged => {
                let b = nic.bridge.clone().unwrap_or_default();
                let mtu = links::mtu_of(&b).unwrap_or(1500);
                (b, mtu)
            }
            NicMode::Network => {
                let name = nic.network.as_deref().unwrap_or_default();
                let net: Network =
                    self.ctl.inner.store.get_record::<Network>(name)?.map(|(n, _)| n).ok_or_else(|| {
                        ControlError::invalid(format!("{field}.network"), format!("there is no network named {name}"))
                    })?;
                if net.spec.kind == oxvirt_model::NetworkKind::Vlan {
                    return Ok(Attachment { bridge: bridge_of(&net), mtu: net.spec.mtu(), vlan: net.spec.vlan });
                }
                (bridge_of(&net), net.spec.mtu())
            }
            NicMode::User => return Err(ControlError::invalid(field, "a user-mode NIC has no TAP device")),
        };
        if !links::is_bridge(&bridge) {
            let f = if nic.mode == NicMode::Bridged { format!("{field}.bridge") } else { format!("{field}.network") };
            return Err(ControlError::invalid(f, format!("there is no bridge named {bridge} on this host")));
        }
        Ok(Attachment { bridge, mtu, vlan: None })
    }

    /// Makes one NIC's TAP device (recorded first), joined, shaped. Returns its MTU, and whether
    /// it is a port of oxvirt's Open vSwitch (its device then offers no offloads).
    /// `owner`: the uid of the VM's confined QEMU, which may then attach the TAP device itself
    /// (a NIC hot-plugged into it).
    pub(crate) async fn make_nic_tap(
        &self,
        vm_id: &str,
        spec: &VmSpec,
        index: usize,
        owner: Option<u32>,
    ) -> Result<(u32, bool), ControlError> {
        let nic = &spec.nics[index];
        let field = format!("nics[{index}]");
        let at = self.attachment(&field, nic)?;
        let tap = tap_name(vm_id, nic.slot());
        self.record_object(&tap, "tap", vm_id)?;
        match at.vlan {
            Some(vlan) => {
                links::make_tap(&tap, nic_queues(spec, nic), at.mtu, None, owner)?;
                if let Err(e) = self.ovs_plug(&tap, vlan).await {
                    self.remove_nic_tap(vm_id, nic);
                    return Err(e);
                }
            }
            None => links::make_tap(&tap, nic_queues(spec, nic), at.mtu, Some(&at.bridge), owner)?,
        }
        if !nic.qos.is_unlimited() {
            self.record_ifb(&tap, vm_id)?;
            if let Err(e) = shaping::apply(&tap, &nic.qos, at.mtu).await {
                self.remove_nic_tap(vm_id, nic);
                return Err(e.into());
            }
        }
        Ok((at.mtu, at.vlan.is_some()))
    }

    /// Records (before it is made) the IFB device that shapes what `tap` receives.
    pub(crate) fn record_ifb(&self, tap: &str, vm_id: &str) -> Result<(), ControlError> {
        self.record_object(&shaping::ifb_name(tap), "ifb", vm_id)
    }

    /// Removes one NIC's TAP (and IFB) device and their records.
    pub(crate) fn remove_nic_tap(&self, vm_id: &str, nic: &NicSpec) {
        let tap = tap_name(vm_id, nic.slot());
        shaping::release(&tap);
        let ifb = shaping::ifb_name(&tap);
        if !links::exists(&ifb) {
            self.forget_object(&ifb);
        }
        match links::delete(&tap) {
            Ok(()) => {
                self.forget_object(&tap);
            }
            Err(e) => tracing::warn!(tap, "{e}"),
        }
    }

    /// Makes the TAP devices of a VM's NICs and its firewall rules; returns the spec to start
    /// QEMU with (each NIC's MTU filled in). On failure removes what it made.
    pub(crate) async fn prepare_network(
        &self,
        vm_id: &str,
        spec: &VmSpec,
        owner: Option<u32>,
    ) -> Result<VmSpec, ControlError> {
        // A network this host has not made yet (created on another host of the cluster, or a
        // VM migrating here) is made now: networks follow their VMs.
        for nic in spec.nics.iter().filter(|n| n.mode == NicMode::Network) {
            let Some(name) = nic.network.as_deref() else { continue };
            let Some((net, _)) = self.ctl.inner.store.get_record::<Network>(name)? else { continue };
            if !links::is_bridge(&bridge_of(&net)) {
                let _net = self.state().net_lock.lock().await;
                tracing::info!(network = name, "making the network on this host for a VM");
                self.ensure_network(&net)?;
            }
        }
        let mut out = spec.clone();
        let mut made: Vec<usize> = Vec::new();
        let mut result = Ok(());
        for i in 0..spec.nics.len() {
            if !spec.nics[i].has_tap() {
                continue;
            }
            match self.make_nic_tap(vm_id, spec, i, owner).await {
                Ok((mtu, on_switch)) => {
                    out.nics[i].mtu = Some(mtu);
                    out.nics[i].no_offloads = on_switch;
                    made.push(i);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() && !made.is_empty() {
            result = self.refresh_firewall().await;
        }
        if let Err(e) = result {
            for i in made {
                self.remove_nic_tap(vm_id, &spec.nics[i]);
            }
            return Err(e);
        }
        Ok(out)
    }

    /// For a re-adopted VM: each TAP device back on its bridge (which may have been made anew)
    /// with its limits, as the store says.
    pub(crate) async fn rejoin_taps(&self, vm: &oxvirt_model::Vm) {
        for (i, nic) in vm.spec.nics.iter().enumerate().filter(|(_, n)| n.has_tap()) {
            let tap = tap_name(&vm.id, nic.slot());
            let Ok(at) = self.attachment(&format!("nics[{i}]"), nic) else { continue };
            if !links::exists(&tap) {
                tracing::warn!(vm = %vm.spec.name, tap, "TAP device missing: the NIC has no link until the VM restarts");
                continue;
            }
            let fixed: Result<(), ControlError> = async {
                if let Some(vlan) = at.vlan {
                    self.ovs_plug(&tap, vlan).await?;
                } else if links::master_of(&tap).as_deref() != Some(at.bridge.as_str()) {
                    tracing::info!(vm = %vm.spec.name, tap, bridge = %at.bridge, "TAP device joined to its bridge again");
                    links::join(&tap, &at.bridge)?;
                }
                Ok(shaping::apply(&tap, &nic.qos, at.mtu).await?)
            }
            .await;
            if let Err(e) = fixed {
                tracing::warn!(vm = %vm.spec.name, tap, "{e}");
            }
        }
    }

    /// Removes the TAP devices of a VM whose QEMU is gone, and their firewall rules (and their
    /// ports on the switch, taken off by the next round of `ovs_round` at the latest).
    pub(crate) fn release_network(&self, vm_id: &str, spec: &VmSpec) {
        let mut any = false;
        for nic in spec.nics.iter().filter(|n| n.has_tap()) {
            self.remove_nic_tap(vm_id, nic);
            any = true;
        }
        if any {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.refresh_firewall().await {
                    tracing::warn!("firewall: {e}");
                }
                me.ovs_round().await;
            });
        }
    }

    /// Counters of a VM's NICs that have a TAP device.
    pub(crate) fn nic_stats(vm_id: &str, spec: &VmSpec) -> Vec<NicStats> {
        spec.nics
            .iter()
            .filter(|n| n.has_tap())
            .map(|n| (n.id.clone(), tap_name(vm_id, n.slot())))
            .filter(|(_, t)| links::exists(t))
            .map(|(id, t)| NicStats {
                nic: if id.is_empty() { "nic0".into() } else { id },
                rx_bytes: counter(&t, "tx_bytes"),
                tx_bytes: counter(&t, "rx_bytes"),
                rx_packets: counter(&t, "tx_packets"),
                tx_packets: counter(&t, "rx_packets"),
                rx_dropped: counter(&t, "tx_dropped"),
                tx_dropped: counter(&t, "rx_dropped"),
            })
            .collect()
    }
}
