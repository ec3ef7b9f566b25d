//! A VM's share of the host: CPU weight, cap and pinning, memory limit, NUMA, hugepages, balloon
//! floor and page sharing (the per-VM settings of Proxmox's and libvirt's resource tuning); and
//! the host's policy (over-commit, auto-ballooning, KSM).

use crate::{ByteSize, ValidationError, MIB};

/// The default CPU weight: every VM equal.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Room QEMU needs above the guest's memory (its own code, device state, I/O buffers).
pub const QEMU_OVERHEAD: u64 = 64 * MIB;
/// Size of the huge pages oxvirt backs VM memory with.
pub const HUGEPAGE: u64 = 2 * MIB;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn yes() -> bool {
    true
}
fn is_default_weight(w: &u32) -> bool {
    *w == DEFAULT_WEIGHT
}
fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NumaMode {
    /// vCPUs and memory on one host node when the VM fits one (the node with most free memory),
    /// else spread with guest NUMA nodes.
    #[default]
    Auto,
    /// No placement.
    Off,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU priority relative to other VMs: 1..10000, 100 = normal (cgroup cpu.weight / shares).
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    #[schemars(range(min = 1, max = 10_000))]
    pub cpu_weight: u32,
    /// Most host CPU time the VM gets, in CPUs (e.g. 1.5), over 100 ms periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01))]
    pub cpu_limit: Option<f64>,
    /// Most memory QEMU may use in all (guest memory and QEMU's own); at least memory + 64MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<ByteSize>,
    /// The host CPU of each vCPU (as many as the VM has vCPUs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(max = 4095)))]
    pub vcpu_pins: Vec<u32>,
    /// The host CPUs of QEMU's other threads (I/O, emulation), a CPU list like `0-1,4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"))]
    pub emulator_cpus: Option<String>,
    #[serde(default)]
    pub numa: NumaMode,
    /// Back guest memory with 2 MiB huge pages (reserved on the host as needed).
    #[serde(default)]
    pub hugepages: bool,
    /// Auto-ballooning may shrink the guest down to this; without it the VM is never shrunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_min: Option<ByteSize>,
    /// Let KSM merge the guest's memory with identical pages elsewhere.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ksm: bool,
    /// Where the controller placed the VM (host CPUs, memory nodes, guest NUMA nodes): filled
    /// in when it starts. Not stored.
    #[serde(skip)]
    pub placement: Option<Placement>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_weight: DEFAULT_WEIGHT,
            cpu_limit: None,
            memory_limit: None,
            vcpu_pins: vec![],
            emulator_cpus: None,
            numa: NumaMode::Auto,
            hugepages: false,
            balloon_min: None,
            ksm: true,
            placement: None,
        }
    }
}

/// Where a VM runs on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Placement {
    /// Host CPUs the VM's threads may run on (a CPU list), if restricted.
    pub cpus: Option<String>,
    /// Host memory nodes its memory comes from, if restricted.
    pub mems: Option<String>,
    /// Guest NUMA nodes: (vCPUs, memory bytes, host node) each; empty for one node.
    pub guest_nodes: Vec<GuestNode>,
    /// Why (for `vm show`).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct GuestNode {
    pub first_vcpu: u32,
    pub vcpus: u32,
    pub memory: u64,
    pub host_node: u32,
}

/// Parses a CPU list (`0-3,8,10-11`) into CPU numbers, in order, without repeats.
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| format!("{part:?} is not a CPU number or range"))?;
        let b: u32 = b.trim().parse().map_err(|_| format!("{part:?} is not a CPU number or range"))?;
        if a > b || b > 4095 {
            return Err(format!("{part:?} is not a range of CPUs 0..4095 in order"));
        }
        for c in a..=b {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        return Err("must name at least one CPU, e.g. 0-1,4".into());
    }
    Ok(out)
}

/// Writes CPU numbers as a CPU list (`0-3,8`).
pub fn format_cpulist(cpus: &[u32]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if start == v[i] { start.to_string() } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    parts.join(",")
}

impl Resources {
    /// The rules that need only the VM's own spec; the host's (CPUs that exist, free huge pages)
    /// are the controller's.
    pub fn validate(&self, cpus: u32, memory: u64, balloon: bool) -> Result<(), ValidationError> {
        let f = |n: &str| format!("resources.{n}");
        if !(1..=10_000).contains(&self.cpu_weight) {
            return Err(ValidationError::new(f("cpu_weight"), "must be 1..10000 (100 is normal)"));
        }
        if let Some(l) = self.cpu_limit {
            if !(l.is_finite() && (0.01..=f64::from(cpus)).contains(&l)) {
                return Err(ValidationError::new(
                    f("cpu_limit"),
                    format!("must be 0.01..{cpus} CPUs (the VM's vCPUs)"),
                ));
            }
        }
        if let Some(m) = self.memory_limit {
            if m.0 < memory + QEMU_OVERHEAD {
                return Err(ValidationError::new(
                    f("memory_limit"),
                    format!("must leave QEMU room: at least memory + 64MiB = {}", ByteSize(memory + QEMU_OVERHEAD)),
                ));
            }
        }
        if !self.vcpu_pins.is_empty() && self.vcpu_pins.len() != cpus as usize {
            return Err(ValidationError::new(
                f("vcpu_pins"),
                format!("must give a host CPU for each of the {cpus} vCPUs"),
            ));
        }
        if let Some(e) = &self.emulator_cpus {
            parse_cpulist(e).map_err(|r| ValidationError::new(f("emulator_cpus"), r))?;
        }
        if self.hugepages && !memory.is_multiple_of(HUGEPAGE) {
            return Err(ValidationError::new(f("hugepages"), "memory must be a multiple of 2MiB for huge pages"));
        }
        if let Some(b) = self.balloon_min {
            if !balloon {
                return Err(ValidationError::new(f("balloon_min"), "needs the balloon device (balloon: true)"));
            }
            if b.0 > memory || b.0 < crate::MIN_MEMORY {
                return Err(ValidationError::new(f("balloon_min"), format!("must be 32MiB..{}", ByteSize(memory))));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KsmPolicy {
    /// Left as the host has it.
    #[default]
    Auto,
    /// oxvirt turns KSM on (and scans faster).
    On,
    /// oxvirt turns KSM off.
    Off,
}

/// The host's resource policy (`GET/PUT /api/v1/host/policy`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HostPolicy {
    /// How many vCPUs running VMs may have per host CPU.
    #[schemars(range(min = 0.1, max = 64.0))]
    pub cpu_overcommit: f64,
    /// How far running VMs' memory may exceed the host's (1.0 = none; ballooning and KSM make
    /// more possible).
    #[schemars(range(min = 0.1, max = 16.0))]
    pub memory_overcommit: f64,
    /// Shrink VMs that have `balloon_min` when host memory use passes `memory_target_use`.
    pub auto_balloon: bool,
    /// Share of host memory in use above which auto-ballooning reclaims (Proxmox: 80 %).
    #[schemars(range(min = 0.01, max = 0.99))]
    pub memory_target_use: f64,
    pub ksm: KsmPolicy,
    /// Whether KSM may merge the memory of VMs of different projects (tenants). Off by default:
    /// merged pages are a known side channel between guests (timing of copy-on-write). Off, a
    /// VM in a project is kept out of KSM and only VMs outside projects merge among themselves.
    pub ksm_across_projects: bool,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            auto_balloon: true,
            memory_target_use: 0.8,
            ksm: KsmPolicy::Auto,
            ksm_across_projects: false,
        }
    }
}

impl HostPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(self.cpu_overcommit.is_finite() && (0.1..=64.0).contains(&self.cpu_overcommit)) {
            return Err(ValidationError::new("cpu_overcommit", "must be 0.1..64"));
        }
        if !(self.memory_overcommit.is_finite() && (0.1..=16.0).contains(&self.memory_overcommit)) {
            return Err(ValidationError::new("memory_overcommit", "must be 0.1..16"));
        }
        if !(self.memory_target_use.is_finite() && (0.01..=0.99).contains(&self.memory_target_use)) {
            return Err(ValidationError::new("memory_target_use", "must be 0.01..0.99 (a share of host memory)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8,10-11").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_cpulist(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
        assert!(parse_cpulist("").is_err());
    }

    #[test]
    fn rules_name_their_field() {
        let r = |f: &dyn Fn(&mut Resources)| {
            let mut x = Resources::default();
            f(&mut x);
            x.validate(2, 256 * MIB, true).err().map(|e| e.field)
        };
        assert_eq!(r(&|_| {}), None);
        assert_eq!(r(&|x| x.cpu_weight = 0).as_deref(), Some("resources.cpu_weight"));
        assert_eq!(r(&|x| x.cpu_limit = Some(2.5)).as_deref(), Some("resources.cpu_limit"));
        assert_eq!(r(&|x| x.cpu_limit = Some(f64::NAN)).as_deref(), Some("resources.cpu_limit"));
        assert_eq!(r(&|x| x.memory_limit = Some(ByteSize(300 * MIB))).as_deref(), Some("resources.memory_limit"));
        assert_eq!(r(&|x| x.vcpu_pins = vec![1]).as_deref(), Some("resources.vcpu_pins"));
        assert_eq!(r(&|x| x.emulator_cpus = Some("x".into())).as_deref(), Some("resources.emulator_cpus"));
        assert_eq!(r(&|x| x.balloon_min = Some(ByteSize(512 * MIB))).as_deref(), Some("resources.balloon_min"));
        assert_eq!(r(&|x| x.cpu_limit = Some(0.5)), None);
    }
}
