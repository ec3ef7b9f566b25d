//! The host side of VM NICs: TAP devices that oxvirt makes for `bridged` NICs, joins to their
//! bridge, and removes when the VM stops. oxvirt touches no link it did not make.

use crate::{ControlError, Controller};
use oxvirt_hypervisor::qemu::cmdline::{nic_queues, tap_name};
use oxvirt_model::{NicMode, VmSpec};
use std::path::Path;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The TAP devices of a VM's bridged NICs, with their NIC index.
fn taps(vm_id: &str, spec: &VmSpec) -> Vec<(usize, String)> {
    spec.nics
        .iter()
        .enumerate()
        .filter(|(_, n)| n.mode == NicMode::Bridged)
        .map(|(i, _)| (i, tap_name(vm_id, i)))
        .collect()
}

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

impl Controller {
    /// Makes the TAP devices of a VM's bridged NICs and joins them to their bridges; on failure
    /// removes what it made.
    pub(crate) fn prepare_network(&self, vm_id: &str, spec: &VmSpec) -> Result<(), ControlError> {
        let mut made: Vec<String> = Vec::new();
        let result = (|| {
            for (i, tap) in taps(vm_id, spec) {
                let nic = &spec.nics[i];
                let bridge = nic.bridge.as_deref().unwrap_or_default();
                if !Path::new(&format!("/sys/class/net/{bridge}/bridge")).is_dir() {
                    return Err(ControlError::invalid(
                        format!("nics[{i}].bridge"),
                        format!("there is no bridge named {bridge} on this host"),
                    ));
                }
                if Path::new(&format!("/sys/class/net/{tap}")).exists() {
                    // Ours from an earlier run of this VM (same id): made afresh.
                    let _ = ip(&["link", "del", &tap]);
                }
                let mut add = vec!["tuntap", "add", "dev", &tap, "mode", "tap"];
                if nic_queues(spec, nic) > 1 {
                    add.push("multi_queue");
                }
                ip(&add).map_err(ControlError::Conflict)?;
                made.push(tap.clone());
                ip(&["link", "set", &tap, "master", bridge]).map_err(ControlError::Conflict)?;
                ip(&["link", "set", &tap, "up"]).map_err(ControlError::Conflict)?;
            }
            Ok(())
        })();
        if result.is_err() {
            for t in &made {
                let _ = ip(&["link", "del", t]);
            }
        }
        result
    }

    /// Removes the TAP devices of a VM whose QEMU is gone.
    pub(crate) fn release_network(&self, vm_id: &str, spec: &VmSpec) {
        for (_, tap) in taps(vm_id, spec) {
            if Path::new(&format!("/sys/class/net/{tap}")).exists() {
                if let Err(e) = ip(&["link", "del", &tap]) {
                    tracing::warn!(tap, "{e}");
                }
            }
        }
    }

    /// Counters of a VM's bridged NICs.
    pub(crate) fn nic_stats(vm_id: &str, spec: &VmSpec) -> Vec<NicStats> {
        taps(vm_id, spec)
            .into_iter()
            .filter(|(_, t)| Path::new(&format!("/sys/class/net/{t}")).exists())
            .map(|(i, t)| NicStats {
                nic: format!("nic{i}"),
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
