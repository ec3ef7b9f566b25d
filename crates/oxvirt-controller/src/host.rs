//! What this host has, for admission checks and `GET /host`.

use crate::ControlError;
use oxvirt_model::{HostInfo, Vm, VmState};
use oxvirt_store::StoreExt;

#[derive(Debug, Clone)]
pub(crate) struct HostLimits {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostLimits {
    pub fn detect() -> Self {
        HostLimits {
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory_bytes: meminfo("MemTotal:").unwrap_or(0),
        }
    }
}

/// A field of /proc/meminfo as written there (kB for sizes, a count for huge pages).
pub(crate) fn meminfo_field(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok()
}

/// A size field of /proc/meminfo, in bytes.
pub(crate) fn meminfo(key: &str) -> Option<u64> {
    meminfo_field(key).map(|kb| kb * 1024)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

impl crate::ResourceControl {
    pub fn host_info(&self) -> Result<HostInfo, ControlError> {
        let vms = self.ctl.inner.store.list_records::<Vm>()?;
        let hv = &self.ctl.inner.hv;
        Ok(HostInfo {
            hostname: read_trim("/proc/sys/kernel/hostname"),
            cpus: self.ctl.inner.host.cpus,
            memory_bytes: self.ctl.inner.host.memory_bytes,
            memory_available_bytes: meminfo("MemAvailable:").unwrap_or(0),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            accelerator: hv.accel().accel.to_string(),
            accelerator_reason: hv.accel().reason.clone(),
            hypervisor: hv.name().to_string(),
            hypervisor_version: hv.version(),
            oxvirt_version: env!("CARGO_PKG_VERSION").to_string(),
            vms_total: vms.len(),
            vms_running: vms.iter().filter(|(v, _)| v.status.state == VmState::Running).count(),
        })
    }
}

/// A number a kernel file holds (0 when missing or unreadable).
pub(crate) fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}
