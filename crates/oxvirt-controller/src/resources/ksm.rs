//! KSM (kernel same-page merging): the host's switch as the policy says, what it saves, and
//! whether a VM about to run may merge (across projects only where the policy allows it).

use crate::host::read_u64;
use crate::ControlError;
use oxvirt_model::{KsmPolicy, KsmView};

const KSM: &str = "/sys/kernel/mm/ksm";

pub fn ksm_view() -> KsmView {
    let page = 4096;
    KsmView {
        run: read_u64(&format!("{KSM}/run")) == 1,
        pages_shared: read_u64(&format!("{KSM}/pages_shared")),
        pages_sharing: read_u64(&format!("{KSM}/pages_sharing")),
        saved_bytes: read_u64(&format!("{KSM}/pages_sharing")) * page,
    }
}

/// Pages of a process that KSM merged (kernel 6.1+), as bytes.
pub fn ksm_merging_bytes(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/ksm_merging_pages")).ok()?.trim().parse::<u64>().ok().map(|p| p * 4096)
}

impl crate::ResourceControl {
    /// KSM for a VM about to run: a VM of a project merges only where the host policy lets
    /// projects share pages (`ksm_across_projects`).
    pub(crate) fn ksm_for_launch(&self, spec: &mut oxvirt_model::VmSpec) -> Result<(), ControlError> {
        if spec.project.is_some() && spec.resources.ksm && !self.host_policy()?.ksm_across_projects {
            spec.resources.ksm = false;
        }
        Ok(())
    }
}

/// Turns KSM on (scanning faster than the kernel's default) or off, as the policy says.
pub(crate) fn apply_ksm(policy: KsmPolicy) -> Result<(), ControlError> {
    let w = |f: &str, v: &str| {
        std::fs::write(format!("{KSM}/{f}"), v).map_err(|e| ControlError::Host(format!("KSM {f}: {e}")))
    };
    match policy {
        KsmPolicy::Auto => Ok(()),
        KsmPolicy::On => {
            w("pages_to_scan", "1000")?;
            w("sleep_millisecs", "20")?;
            w("run", "1")
        }
        KsmPolicy::Off => w("run", "0"),
    }
}
