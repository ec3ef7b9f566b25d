//! oxvirt's resource types and their validation.
//!
//! Everything here is plain data: no I/O, no clocks, no processes. The API parses requests into
//! these types, the store keeps them as JSON, and the controller acts on them.

mod access_requests;
mod alert;
mod backup;
mod cluster;
mod error;
mod event;
mod flow_rule;
mod ha;
mod host;
mod migration;
mod name;
mod network;
mod project;
mod qos;
pub mod rate;
mod resources;
mod schedule;
mod secgroup;
mod security;
mod size;
mod storage;
mod storage_requests;
mod task;
mod template;
mod token;
mod views;
mod vm;
mod vm_requests;

pub use access_requests::{LoginRequest, NewTokenRequest};
pub use alert::{Alert, AlertKind, AlertRule, AlertState};
pub use backup::{
    Backup, BackupDiskInfo, BackupExportRequest, BackupJob, BackupJobSpec, BackupJobStatus, BackupOrder, BackupRepo,
    BackupRepoKey, BackupRepoSpec, BackupRepoView, BackupRequest, OrderState, PruneRequest, PruneResult,
    RestoreRequest, Retention,
};
pub use cluster::{ClusterPolicy, HostRecord, Maintenance, PlacementStrategy, RebalanceMode};
pub use error::{ApiErrorBody, ErrorReply, ValidationError, ERROR_CODES};
pub use event::Event;
pub use flow_rule::{FlowRule, FlowRuleSpec, FlowRuleView, MAX_FLOW_PRIORITY};
pub use ha::{
    HaGroup, HaGroupHost, HaGroupSpec, HaRecovery, HaResource, HaResourceSpec, HaState, HaStatus, HA_GROUP_MAX_HOSTS,
    HA_MAX_PRIORITY, HA_MAX_TRIES,
};
pub use host::HostInfo;
pub use migration::{MigrateRequest, Migration, MigrationState};
pub use name::validate_name;
pub use network::{
    parse_range, Ipv4Net, Lease, LeaseView, MacClaim, Network, NetworkKind, NetworkSpec, NetworkView, VxlanSpec,
    MAX_MTU, VXLAN_OVERHEAD,
};
pub use project::{Project, ProjectSpec, Quotas, Usage};
pub use qos::DiskQos;
pub use resources::{
    format_cpulist, parse_cpulist, GuestNode, HostPolicy, KsmPolicy, NumaMode, Placement, Resources, DEFAULT_WEIGHT,
    HUGEPAGE, QEMU_OVERHEAD,
};
pub use schedule::Schedule;
pub use secgroup::{parse_ports, Direction, Protocol, SecurityGroup, SecurityGroupSpec, SecurityRule};
pub use security::{
    covers, role_on, validate_password, AclEntry, AclList, AuditRecord, Principal, Privilege, Role, User, UserSpec,
    UserView, ACL_COLLECTIONS, ROOT,
};
pub use size::{ByteSize, SizeError, GIB, KIB, MIB};
pub use storage::{
    parse_volume_ref, Pool, PoolKind, PoolSpec, PoolUsage, PoolView, Volume, VolumeSnapshot, VolumeSpec,
};
pub use storage_requests::{CloneRequest, ExportRequest, ImportRequest, NewSnapshot, VolumeResize};
pub use task::{Task, TaskState};
pub use template::{Template, TemplatePool, TemplateRequest, TemplateView, MAX_POOL_SIZE};
pub use token::{ApiToken, NewToken};
pub use views::{
    BalloonView, Fenced, HostResources, HostSample, HostView, KsmView, NumaNodeView, PlannedMove, ProjectView,
    RebalanceView, TemplatesMemoryView, VmCreated, VmSample,
};
pub use vm::{
    validate_host_path, validate_ifname, validate_mac, AccelChoice, DesiredState, DiskBus, DiskFormat, DiskSpec,
    KernelBoot, MachineType, MemoryEncryption, NbdSource, NicMode, NicQos, NicSpec, PassedFd, RestartPolicy, Vm,
    VmAction, VmSpec, VmState, VmStatus, VmUpdate, MAX_CPUS, MIN_MEMORY, VM_ACTIONS,
};
pub use vm_requests::{BalloonTarget, NicUpdate};

/// Milliseconds since the Unix epoch: the one time format of records and events.
pub type Millis = u64;
