//! What the API answers about things that are not records themselves: a VM's balloon, the
//! host's resources, a project with its usage, a cluster host with its presence, a rebalancing
//! plan. The controller fills them; the client reads them as these types.

use crate::{ClusterPolicy, HostPolicy, HostRecord, Millis, Project, Task, Usage, Vm};

/// The balloon as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BalloonView {
    /// Memory the guest has now.
    pub actual: u64,
    /// Memory it was configured with.
    pub memory: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_total: Option<u64>,
    /// Set by automatic ballooning (host memory pressure).
    pub auto: bool,
}

/// The host's resources as the API shows them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostResources {
    pub policy: HostPolicy,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    /// vCPUs and memory of the VMs that run.
    pub committed_vcpus: u32,
    pub committed_memory: u64,
    pub numa_nodes: Vec<NumaNodeView>,
    pub ksm: KsmView,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepage_size: u64,
    /// Templates' memory and warm pools on this host.
    #[serde(default)]
    pub templates: TemplatesMemoryView,
}

/// What templates hold of a host's memory: each template's memory once (its VMs map it
/// copy-on-write: `committed_memory` counts each VM's whole memory, as if it wrote every page),
/// and the VMs waiting in warm pools (not counted in `committed_*`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct TemplatesMemoryView {
    /// Templates' memory held by oxvirtd, shared by every VM restored from them.
    pub shared_memory_bytes: u64,
    /// VMs restored and paused in warm pools.
    pub pool_vms: u32,
    /// Memory those VMs hold of their own (written pages, QEMU's own), measured.
    pub pool_private_bytes: u64,
}

/// A NUMA node of the host: its CPUs and memory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct NumaNodeView {
    pub id: u32,
    pub cpus: String,
    pub memory_total: u64,
    pub memory_free: u64,
}

/// Kernel same-page merging on the host: on or not, what it merged.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct KsmView {
    pub run: bool,
    pub pages_shared: u64,
    pub pages_sharing: u64,
    /// Memory KSM saves: pages mapped from a shared page instead of their own.
    pub saved_bytes: u64,
}

/// A project as the API shows it: with what its VMs hold.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    pub usage: Usage,
}

/// What fencing a host by hand answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Fenced {
    pub message: String,
}

/// A host as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostView {
    #[serde(flatten)]
    pub host: HostRecord,
    /// Its daemon holds its lease now.
    pub online: bool,
    pub leader: bool,
    pub vms: usize,
    /// An operator fenced it (`oxvirt cluster fence`): it runs no HA VM until unfenced.
    #[serde(default)]
    pub fenced: bool,
}

/// A rebalancing plan and what was done with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RebalanceView {
    pub policy: ClusterPolicy,
    /// The migrations the plan holds, first to last.
    pub moves: Vec<PlannedMove>,
    /// Those asked for now (each VM's host starts its migration).
    pub started: Vec<String>,
    /// Migrations running in the cluster before this.
    pub running: usize,
}

/// One migration of a rebalancing plan, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PlannedMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// A VM's figures at one step of its history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VmSample {
    pub time: Millis,
    pub state: crate::VmState,
    /// CPU use as a share of one host CPU (1.0 = one CPU busy).
    pub cpu: f64,
    pub rss_bytes: u64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    /// CPU ready: seconds per second the vCPUs waited runnable but not running (the seed's key
    /// figure of CPU contention; 0.5 = half a vCPU's worth of waiting).
    #[serde(default)]
    pub cpu_ready: f64,
}

/// The host's figures at one step of its history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostSample {
    pub time: Millis,
    /// CPU use of the whole host, 0..1.
    pub cpu: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub vms_running: usize,
}

/// What defining a VM gave: the VM, and the task that starts it when it was asked to start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VmCreated {
    pub vm: Vm,
    pub task: Option<Task>,
}
