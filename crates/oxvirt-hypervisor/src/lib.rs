//! The hypervisor layer: turns a VM spec into a running guest and keeps it under control.
//!
//! [`Hypervisor`] starts and re-adopts guests; [`Instance`] is one running guest. The traits are
//! narrow on purpose (as Cloud Hypervisor's `hypervisor` crate is) so that another engine can be a
//! driver beside [`qemu`]. The accelerator choice (KVM or TCG) is in [`accel`].

pub mod accel;
#[cfg(feature = "fake")]
pub mod fake;
pub mod ops;
pub mod qemu;

use oxvirt_model::VmSpec;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub use accel::{Accel, AccelDecision};
pub use ops::{BackupOps, DiskOps, MemoryOps, MigrationOps, StateOps};
pub use oxvirt_guest_agent::protocol::{
    hostname_from, machine_id_from, Identity as GuestIdentity, Request as GuestRequest,
};

/// How one start of a guest goes, beside what the guest is (its `VmSpec`): set by the control
/// plane for that start, never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// The uid and gid the hypervisor process runs the guest as (`None`: root).
    pub run_as: Option<(u32, u32)>,
    /// For a guest that arrives by migration: where its process waits for it (`tcp:HOST:PORT`,
    /// or `defer` to be told later).
    pub incoming: Option<String>,
    /// The guest waits for a resume before it runs (also once it has arrived by migration).
    pub paused: bool,
    /// The guest's memory mapped from a file instead of anonymous memory (templates).
    pub memory_file: Option<MemoryFile>,
}

/// Guest memory backed by a file the caller opened: the process inherits descriptor `fd` and
/// maps it through `/proc/self/fd/<fd>` (it never opens a path of its own), `shared` (its writes
/// reach the file: a template's memory being made) or private (copy-on-write: a VM restored from
/// a template, whose writes stay its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFile {
    pub fd: i32,
    pub shared: bool,
}

/// Where one VM's runtime files live: sockets, pidfile, console log. One directory per VM.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    pub dir: PathBuf,
}

impl RuntimePaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RuntimePaths { dir: dir.into() }
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// The guest agent's port (microvm VMs).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// QEMU's own standard output and error (its warnings and errors), new at each start.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a guest's hypervisor reported.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceEvent {
    /// The guest shut down (`guest` = it did so itself, e.g. `poweroff`).
    Shutdown {
        guest: bool,
        reason: String,
    },
    Reset {
        guest: bool,
    },
    Paused,
    Resumed,
    /// The guest kernel panicked.
    Panicked,
    BlockIoError {
        device: String,
        reason: String,
    },
    BalloonChange {
        actual: u64,
    },
    Migration {
        status: String,
    },
    /// Any other event, by name.
    Other {
        name: String,
    },
    /// The hypervisor process is gone.
    Exited,
}

/// The run state the hypervisor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Panicked,
    ShuttingDown,
    /// Anything else QEMU reports (e.g. `prelaunch`, `inmigrate`).
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Qmp(#[from] qemu::qmp::QmpError),
    #[error(transparent)]
    Process(#[from] oxvirt_qemu::ProcessError),
    #[error("invalid VM definition for the hypervisor: {0}")]
    Invalid(String),
    #[error("the accelerator {0} is not usable on this host: {1}")]
    AccelUnavailable(&'static str, String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{0}")]
    Unsupported(String),
    /// QEMU or one of its tools said no (their words).
    #[error("{0}")]
    Refused(String),
}

impl HvError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HvError::Io { what: what.into(), source }
    }
}

/// A hypervisor engine on this host.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// The engine's name, e.g. `qemu`.
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    /// The accelerator a VM asking for `auto` gets, and why.
    fn accel(&self) -> &AccelDecision;
    /// Starts a guest. The guest outlives this process: it runs in its own session.
    async fn start(
        &self,
        id: &str,
        spec: &VmSpec,
        launch: &Launch,
        paths: &RuntimePaths,
    ) -> Result<Arc<dyn Instance>, HvError>;
    /// Removes what the host keeps for a guest whose process is gone (its cgroups): for guests
    /// that exited while nobody watched them.
    fn cleanup(&self, id: &str);
    /// Finds a guest started earlier (by this or an earlier daemon) and takes control of it again.
    /// `Ok(None)`: no such guest runs any more.
    async fn adopt(&self, id: &str, paths: &RuntimePaths) -> Result<Option<Arc<dyn Instance>>, HvError>;
    /// Sets a guest's CPU weight, cap, memory limit and CPU/memory-node sets (its cgroups), live;
    /// returns what this host cannot enforce (a controller it lacks).
    fn set_limits(&self, id: &str, limits: &oxvirt_cgroup::Limits) -> Result<Vec<&'static str>, HvError>;
    /// CPU time a guest's processes used, in nanoseconds (from its cgroup).
    fn cpu_usage_ns(&self, id: &str) -> Option<u64>;
}

/// The cgroup limits a spec asks for.
pub fn limits_of(spec: &VmSpec) -> oxvirt_cgroup::Limits {
    let r = &spec.resources;
    let p = r.placement.clone().unwrap_or_default();
    oxvirt_cgroup::Limits {
        cpu_weight: r.cpu_weight,
        cpu_limit: r.cpu_limit,
        memory_max: r.memory_limit.map(|m| m.0),
        cpus: p.cpus,
        mems: p.mems,
    }
}

/// One running guest.
#[async_trait::async_trait]
pub trait Instance: Send + Sync {
    fn pid(&self) -> u32;
    fn accel(&self) -> Accel;
    /// Events from now on. [`InstanceEvent::Exited`] is the last one.
    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent>;
    fn has_exited(&self) -> bool;
    async fn run_state(&self) -> Result<RunState, HvError>;
    /// Presses the ACPI power button: a polite request to shut down.
    async fn power_button(&self) -> Result<(), HvError>;
    async fn reset(&self) -> Result<(), HvError>;
    async fn pause(&self) -> Result<(), HvError>;
    async fn resume(&self) -> Result<(), HvError>;
    /// Ends the guest at once and waits until its process is gone.
    async fn kill(&self) -> Result<(), HvError>;
    /// Ends the process without letting it close its files (SIGKILL): for a QEMU whose guest
    /// went elsewhere (a completed migration has flushed and let go of its disks).
    async fn discard(&self) -> Result<(), HvError>;
    /// Waits until the process is gone; false when `timeout` passed first.
    async fn wait_exit(&self, timeout: Duration) -> bool;
    /// Adds a disk to the running guest (hot-plug). `disk` has its id, resolved path and format.
    async fn hotplug_disk(&self, disk: &oxvirt_model::DiskSpec) -> Result<(), HvError>;
    /// Asks the guest to release a disk and removes it once it has (hot-unplug).
    async fn unplug_disk(&self, disk_id: &str, timeout: Duration) -> Result<(), HvError>;
    /// Sets (or with an unlimited `qos`, clears) a disk's I/O limits, live.
    async fn set_disk_qos(&self, disk_id: &str, qos: &oxvirt_model::DiskQos) -> Result<(), HvError>;
    /// Adds NIC `index` of `spec` (VM `vm_id`) to the running guest; its TAP device exists.
    async fn hotplug_nic(&self, vm_id: &str, spec: &VmSpec, index: usize) -> Result<(), HvError>;
    /// Asks the guest to release a NIC and removes it and its backend once it has.
    async fn unplug_nic(&self, nic: &oxvirt_model::NicSpec, timeout: Duration) -> Result<(), HvError>;
    /// The host thread ids of the vCPUs, in vCPU order.
    async fn vcpu_threads(&self) -> Result<Vec<u32>, HvError>;
    /// Asks the guest agent (the reference guest's, on a microvm's `org.oxvirt.agent` port) and
    /// waits up to `timeout` for it to say done: a guest restored from a template is told who it
    /// is ([`GuestRequest::Identity`]); until then it is another's copy.
    async fn ask_agent(&self, request: &GuestRequest, timeout: Duration) -> Result<(), HvError>;
    /// Its disks' snapshots, sizes and figures.
    fn disks(&self) -> &dyn DiskOps;
    /// Its memory, through the balloon.
    fn memory(&self) -> &dyn MemoryOps;
    /// Its live migration, either end.
    fn migration(&self) -> &dyn MigrationOps;
    /// Its disks' backups.
    fn backup(&self) -> &dyn BackupOps;
    /// Its whole state, saved and loaded (templates).
    fn state(&self) -> &dyn StateOps;
}
