/// What the host offers and how it runs guests, as `GET /api/v1/host` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub kernel: String,
    /// The accelerator VMs get when they ask for `auto`: `kvm` or `tcg`.
    pub accelerator: String,
    /// Why that accelerator was chosen, in one line.
    pub accelerator_reason: String,
    pub hypervisor: String,
    pub hypervisor_version: String,
    pub oxvirt_version: String,
    pub vms_total: usize,
    pub vms_running: usize,
}
