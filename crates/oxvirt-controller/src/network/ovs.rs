//! `vlan` networks on oxvirt's Open vSwitch: one bridge per host (`oxsdn0`, userspace
//! datapath) whose daemons oxvirt runs under `<data-dir>/ovs` (`oxvirt-sdn`), made over OVSDB
//! (`oxvirt-ovsdb`) and driven by oxvirt's own OpenFlow controller (a `FlowKeeper`). Each VM
//! NIC's TAP is an access port tagged with its network's VLAN; the switch's NORMAL forwarding
//! keeps VLANs apart. The flows, made from the store:
//! - priority 100, one per port: `in_port=P,dl_src=<the NIC's MAC>` → normal (a NIC sends only
//!   from its own MAC);
//! - priority 0: everything else is dropped (a port oxvirt does not know, a spoofed source, the
//!   bridge's own port).
//!
//! The daemons outlive oxvirtd, as the VMs' traffic must; a restarted oxvirtd finds them, and
//! its controller changes no flow before it has worked out the flows it wants.

use super::flow_rules::NetPort;
use super::links;
use crate::ControlError;
use oxvirt_model::{Network, NetworkKind, NicMode};
use oxvirt_openflow::FlowMod;
use oxvirt_ovsdb::{BridgeSpec, Client, PortKind, PortSpec, Switch};
use oxvirt_sdn::{FlowKeeper, OvsDaemons};
use oxvirt_store::StoreExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// oxvirt's Open vSwitch bridge on a host.
pub const OVS_BRIDGE: &str = "oxsdn0";
/// The cookie of the flow that drops what no other flow lets through.
const DROP_COOKIE: u64 = 1;
/// Cookies of ports' flows: this base plus the port's OpenFlow number.
const PORT_COOKIE: u64 = 0x1_0000_0000;
const OVSDB_TIMEOUT: Duration = Duration::from_secs(20);

/// The running switch as this daemon holds it.
pub(crate) struct OvsRuntime {
    keeper: FlowKeeper,
    switch: tokio::sync::Mutex<Switch>,
}

impl From<oxvirt_ovsdb::OvsdbError> for ControlError {
    fn from(e: oxvirt_ovsdb::OvsdbError) -> Self {
        err(e)
    }
}

impl From<oxvirt_sdn::SdnError> for ControlError {
    fn from(e: oxvirt_sdn::SdnError) -> Self {
        err(e)
    }
}

fn err(e: impl std::fmt::Display) -> ControlError {
    ControlError::Host(format!("Open vSwitch: {e}"))
}

impl crate::Networks {
    fn ovs_dir(&self) -> std::path::PathBuf {
        self.ctl.inner.config.data_dir.join("ovs")
    }

    fn vlan_networks(&self) -> Vec<Network> {
        self.ctl
            .inner
            .store
            .list_records::<Network>()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.spec.kind == NetworkKind::Vlan)
            .collect()
    }

    /// The switch: its daemons started where they are not running, its controller listening,
    /// its bridge made.
    pub(crate) async fn ensure_ovs(&self) -> Result<Arc<OvsRuntime>, ControlError> {
        let mut held = self.state().ovs.lock().await;
        let dir = self.ovs_dir();
        let daemons = OvsDaemons::new(&dir, None);
        let started = daemons.ensure_running()?;
        if !started.is_empty() {
            tracing::info!(?started, "Open vSwitch daemons started");
        }
        if let Some(rt) = held.as_ref() {
            if started.is_empty() {
                return Ok(rt.clone());
            }
            // A new ovsdb-server needs a new connection; a new ovs-vswitchd reads the bridge
            // from the database and connects to the keeper again by itself.
            if started.contains(&"ovsdb-server") {
                let client = Client::connect(&daemons.db_socket(), OVSDB_TIMEOUT).await?;
                *rt.switch.lock().await = Switch::new(client, OVSDB_TIMEOUT).await?;
            }
            return Ok(rt.clone());
        }
        let sock = dir.join("controller.sock");
        let _ = std::fs::remove_file(&sock);
        let listener =
            tokio::net::UnixListener::bind(&sock).map_err(|e| err(format!("listen on {}: {e}", sock.display())))?;
        let keeper = FlowKeeper::start(listener, Duration::from_secs(5));
        let client = Client::connect(&daemons.db_socket(), OVSDB_TIMEOUT).await?;
        let mut switch = Switch::new(client, OVSDB_TIMEOUT).await?;
        switch
            .ensure_bridge(&BridgeSpec { name: OVS_BRIDGE.into(), controller: format!("unix:{}", sock.display()) })
            .await?;
        let rt = Arc::new(OvsRuntime { keeper, switch: tokio::sync::Mutex::new(switch) });
        *held = Some(rt.clone());
        Ok(rt)
    }

    /// An access port of `vlan` on the bridge (made by the switch when `Internal`).
    async fn ovs_access_port(&self, name: &str, kind: PortKind, vlan: u16) -> Result<Arc<OvsRuntime>, ControlError> {
        let rt = self.ensure_ovs().await?;
        let port = PortSpec { name: name.into(), kind, ofport: None, tag: Some(vlan) };
        rt.switch.lock().await.ensure_port(OVS_BRIDGE, &port).await?;
        Ok(rt)
    }

    /// A NIC's TAP device on the bridge, an access port of `vlan`, with its flows.
    pub(crate) async fn ovs_plug(&self, tap: &str, vlan: u16) -> Result<(), ControlError> {
        let rt = self.ovs_access_port(tap, PortKind::System, vlan).await?;
        self.refresh_ovs_flows(&rt).await
    }

    /// A vlan network's gateway: an internal port of the switch, an access port of `vlan` (its
    /// flows follow with the next refresh).
    pub(crate) async fn ovs_gateway_port(&self, port: &str, vlan: u16) -> Result<(), ControlError> {
        self.ovs_access_port(port, PortKind::Internal, vlan).await.map(|_| ())
    }

    /// Takes a port off the switch (nothing when the switch or the port is not there).
    pub(crate) async fn ovs_unplug(&self, port: &str) {
        let Some(rt) = self.state().ovs.lock().await.clone() else { return };
        if let Err(e) = rt.switch.lock().await.remove_port(OVS_BRIDGE, port).await {
            tracing::warn!(port, "{e}");
        }
        if let Err(e) = self.refresh_ovs_flows(&rt).await {
            tracing::warn!("{e}");
        }
    }

    /// The reconcile round's part: while vlan networks exist, the daemons run (restarted when
    /// dead), the bridge is there, ports whose TAP is gone are taken off, the flows are right.
    pub(crate) async fn ovs_round(&self) {
        let running = self.state().ovs.lock().await.is_some();
        if !running && self.vlan_networks().is_empty() {
            return;
        }
        let r = async {
            let rt = self.ensure_ovs().await?;
            for net in self.vlan_networks() {
                if let Err(e) = self.ensure_vlan_gateway(&net).await {
                    tracing::warn!(network = %net.spec.name, "{e}");
                }
            }
            self.refresh_ovs_flows(&rt).await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!("{e}");
        }
    }

    /// Ports whose TAP device is gone are removed; the flows are made from the ports, the NICs
    /// and the flow rules the store holds, handed to the keeper and waited for.
    pub(super) async fn refresh_ovs_flows(&self, rt: &OvsRuntime) -> Result<(), ControlError> {
        let vlan_nets: Vec<String> = self.vlan_networks().into_iter().map(|n| n.spec.name).collect();
        // TAP → (network, MAC, VM name, NIC id).
        let mut nics: HashMap<String, (String, String, String, String)> = HashMap::new();
        for vm in self.ctl.vms().list_vms()? {
            for nic in vm.spec.nics.iter().filter(|n| n.mode == NicMode::Network) {
                if let Some(net) = nic.network.as_ref().filter(|n| vlan_nets.contains(n)) {
                    let tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&vm.id, nic.slot());
                    let mac = nic.mac.clone().unwrap_or_default();
                    nics.insert(tap, (net.clone(), mac, vm.spec.name.clone(), nic.id.clone()));
                }
            }
        }
        // Gateway ports of vlan networks with a subnet: they send from the gateway's MAC.
        for net in self.vlan_networks().iter().filter(|n| n.spec.subnet.is_some()) {
            let gw = super::vlan_gateway_of(net);
            nics.insert(gw, (net.spec.name.clone(), super::gateway_mac(net), String::new(), String::new()));
        }
        let mut switch = rt.switch.lock().await;
        let mut flows = vec![flow(0, DROP_COOKIE, "any", "drop")?];
        let mut by_net: HashMap<String, Vec<NetPort>> = HashMap::new();
        let mut by_nic: HashMap<(String, String), u32> = HashMap::new();
        for p in switch.ports(OVS_BRIDGE).await? {
            if p.name == OVS_BRIDGE {
                continue;
            }
            if !links::exists(&p.name) {
                tracing::info!(port = %p.name, "taking a port whose TAP device is gone off the switch");
                switch.remove_port(OVS_BRIDGE, &p.name).await?;
                continue;
            }
            let (Some(ofport), Some((net, mac, vm, nic))) = (p.ofport, nics.get(&p.name)) else { continue };
            if mac.is_empty() {
                continue;
            }
            flows.push(flow(100, PORT_COOKIE + ofport as u64, &format!("in_port={ofport},dl_src={mac}"), "normal")?);
            by_net.entry(net.clone()).or_default().push(NetPort { ofport, mac: mac.clone() });
            by_nic.insert((vm.clone(), nic.clone()), ofport);
        }
        drop(switch);
        for (rule, _) in self.ctl.inner.store.list_records::<oxvirt_model::FlowRule>()? {
            let ports = by_net.get(&rule.network).map(Vec::as_slice).unwrap_or_default();
            let port_of = |vm: &str, nic: &str| by_nic.get(&(vm.to_string(), nic.to_string())).copied();
            flows.extend(super::flow_rules::compile(&rule, ports, &port_of));
        }
        rt.keeper.set_flows(flows).map_err(err)?;
        rt.keeper.wait_synced(Duration::from_secs(10)).await.map_err(err)
    }

    /// The switch's flows with their counters now (none when it does not run).
    pub(super) async fn ovs_flow_stats(&self) -> Vec<oxvirt_openflow::FlowStats> {
        let Some(rt) = self.state().ovs.lock().await.clone() else { return vec![] };
        rt.keeper.flow_stats().await.unwrap_or_default()
    }
}

fn flow(priority: u16, cookie: u64, m: &str, actions: &str) -> Result<FlowMod, ControlError> {
    oxvirt_openflow::flow_from_words(priority, cookie, m, actions).map_err(err)
}
