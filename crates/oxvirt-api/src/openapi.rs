//! The OpenAPI 3 document of `/api/v1`, served at `/api/v1/openapi.json`.
//!
//! The operations are listed here (a test checks the list against the router, both ways); every
//! body's schema is derived from the Rust type the handler parses or answers (`schemars`, which
//! reads the same serde attributes the handlers use), so the document cannot drift from the code.

use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// How the schema of a body is made: [`of`] for its Rust type.
pub type BodySchema = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`: a reference into `components/schemas` for a named type.
pub fn of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    /// The type of the JSON request body, if any.
    pub request: Option<BodySchema>,
    /// The status of success.
    pub status: u16,
    /// The type of the JSON success body, if any.
    pub response: Option<BodySchema>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    request: Option<BodySchema>,
    status: u16,
    response: Option<BodySchema>,
) -> Operation {
    Operation { method, path, id, summary, request, status, response }
}

/// Every operation. An end-to-end test checks that each of these is routed.
pub const OPERATIONS: &[Operation] = &[
    op("post", "/api/v1/cluster/hosts/{host}/fence", "clusterFence", "Fence a host by hand: it kills its HA VMs and runs none until unfenced; they are recovered on other hosts", None, 200, Some(of::<oxvirt_model::Fenced>)),
    op("delete", "/api/v1/cluster/hosts/{host}/fence", "clusterUnfence", "End a host's fence: it may run HA VMs again", None, 204, None),
    op("get", "/api/v1/cluster/policy", "clusterPolicy", "The cluster's placement and rebalancing policy", None, 200, Some(of::<oxvirt_model::ClusterPolicy>)),
    op("put", "/api/v1/cluster/policy", "clusterPolicySet", "Replace the cluster's placement and rebalancing policy", Some(of::<oxvirt_model::ClusterPolicy>), 200, Some(of::<oxvirt_model::ClusterPolicy>)),
    op("get", "/api/v1/cluster/rebalance", "clusterRebalancePlan", "The rebalancing plan now: the migrations that would even out (spread) or consolidate (pack) load", None, 200, Some(of::<oxvirt_model::RebalanceView>)),
    op("post", "/api/v1/cluster/rebalance", "clusterRebalance", "Rebalance now: the plan's first migrations start, at most max_migrations at once", None, 200, Some(of::<oxvirt_model::RebalanceView>)),
    op("put", "/api/v1/cluster/hosts/{host}/maintenance", "clusterMaintenance", "Put a host in maintenance (no new VMs; its VMs migrate away, planned first, at most the policy's max_migrations at once: the drain's task) or take it out", Some(of::<oxvirt_model::Maintenance>), 200, Some(of::<Vec<oxvirt_model::Task>>)),
    op("post", "/api/v1/vms/{name}/migrate", "vmMigrate", "Live-migrate a running VM to another host (memory; disks in local pools copied over NBD while it runs): a task", Some(of::<oxvirt_model::MigrateRequest>), 202, Some(of::<oxvirt_model::Task>)),
    op("get", "/api/v1/cluster/hosts", "clusterHosts", "The cluster's hosts: online or not, the leader, their VMs (etcd store only)", None, 200, Some(of::<Vec<oxvirt_model::HostView>>)),
    op("delete", "/api/v1/cluster/hosts/{host}", "clusterLeave", "Take a host out of the cluster (refused while it has VMs)", None, 204, None),
    op("get", "/api/v1/audit", "auditLog", "The audit log's latest records (?limit=N)", None, 200, Some(of::<Vec<oxvirt_model::AuditRecord>>)),
    op("put", "/api/v1/vms/{name}/resources", "vmResources", "Set a VM's CPU weight, cap, pinning, memory limit, NUMA, huge pages, balloon floor, KSM (live where it can be)", Some(of::<oxvirt_model::Resources>), 200, Some(of::<oxvirt_model::Vm>)),
    op("get", "/api/v1/vms/{name}/balloon", "vmBalloon", "A running VM's balloon: memory now and the guest's figures", None, 200, Some(of::<oxvirt_model::BalloonView>)),
    op("put", "/api/v1/vms/{name}/balloon", "vmBalloonSet", "Set a running VM's balloon target", Some(of::<oxvirt_model::BalloonTarget>), 200, Some(of::<oxvirt_model::BalloonView>)),
    op("get", "/api/v1/host/policy", "hostPolicy", "The host's resource policy: over-commit, auto-ballooning, KSM", None, 200, Some(of::<oxvirt_model::HostPolicy>)),
    op("put", "/api/v1/host/policy", "hostPolicySet", "Replace the host's resource policy", Some(of::<oxvirt_model::HostPolicy>), 200, Some(of::<oxvirt_model::HostPolicy>)),
    op("get", "/api/v1/host/resources", "hostResources", "Committed vCPUs and memory, NUMA nodes, KSM, huge pages", None, 200, Some(of::<oxvirt_model::HostResources>)),
    op("post", "/api/v1/auth/login", "login", "Log in with a user's password: a token valid for 8 hours (no token needed)", Some(of::<oxvirt_model::LoginRequest>), 201, Some(of::<oxvirt_model::NewToken>)),
    op("get", "/api/v1/tokens", "tokenList", "Your API tokens (an administrator sees all)", None, 200, Some(of::<Vec<oxvirt_model::ApiToken>>)),
    op("post", "/api/v1/tokens", "tokenCreate", "A new API token acting as you (the secret is shown once)", Some(of::<oxvirt_model::NewTokenRequest>), 201, Some(of::<oxvirt_model::NewToken>)),
    op("delete", "/api/v1/tokens/{id}", "tokenRevoke", "Revoke a token: refused from the next request on", None, 204, None),
    op("get", "/api/v1/users", "userList", "Local users", None, 200, Some(of::<Vec<oxvirt_model::UserView>>)),
    op("post", "/api/v1/users", "userCreate", "Create a local user (password kept as an argon2id hash)", Some(of::<oxvirt_model::UserSpec>), 201, Some(of::<oxvirt_model::UserView>)),
    op("delete", "/api/v1/users/{user}", "userDelete", "Delete a user, their grants and tokens", None, 204, None),
    op("get", "/api/v1/acl", "aclShow", "All grants: a role for a user on a path", None, 200, Some(of::<Vec<oxvirt_model::AclEntry>>)),
    op("put", "/api/v1/acl", "aclSet", "Replace all grants", Some(of::<Vec<oxvirt_model::AclEntry>>), 200, Some(of::<Vec<oxvirt_model::AclEntry>>)),
    op("get", "/api/v1/ha/resources", "haResourceList", "The VMs under high availability, with their state and what happened to them", None, 200, Some(of::<Vec<oxvirt_model::HaResource>>)),
    op("post", "/api/v1/ha/resources", "haResourceAdd", "Put a VM under high availability: kept started (restarted, relocated), stopped, or disabled", Some(of::<oxvirt_model::HaResourceSpec>), 201, Some(of::<oxvirt_model::HaResource>)),
    op("get", "/api/v1/ha/resources/{name}", "haResourceShow", "One HA resource", None, 200, Some(of::<oxvirt_model::HaResource>)),
    op("put", "/api/v1/ha/resources/{name}", "haResourceSet", "Change an HA resource's state, group, priority or tries", Some(of::<oxvirt_model::HaResourceSpec>), 200, Some(of::<oxvirt_model::HaResource>)),
    op("delete", "/api/v1/ha/resources/{name}", "haResourceRemove", "Take a VM out of high availability (the VM stays as it is)", None, 204, None),
    op("get", "/api/v1/ha/groups", "haGroupList", "HA groups: hosts their VMs prefer, by priority", None, 200, Some(of::<Vec<oxvirt_model::HaGroup>>)),
    op("post", "/api/v1/ha/groups", "haGroupAdd", "Create an HA group", Some(of::<oxvirt_model::HaGroupSpec>), 201, Some(of::<oxvirt_model::HaGroup>)),
    op("get", "/api/v1/ha/groups/{group}", "haGroupShow", "One HA group", None, 200, Some(of::<oxvirt_model::HaGroup>)),
    op("delete", "/api/v1/ha/groups/{group}", "haGroupRemove", "Delete an HA group no resource names", None, 204, None),
    op("get", "/api/v1/templates", "templateList", "Templates: quiet microvms' saved states that VMs are restored from", None, 200, Some(of::<Vec<oxvirt_model::TemplateView>>)),
    op("post", "/api/v1/templates", "templateCreate", "Take a template of a running, quiet microvm without disks or NICs (paused while its state is saved): a task", Some(of::<oxvirt_model::TemplateRequest>), 202, Some(of::<oxvirt_model::Task>)),
    op("get", "/api/v1/templates/{template}", "templateShow", "One template", None, 200, Some(of::<oxvirt_model::TemplateView>)),
    op("put", "/api/v1/templates/{template}/pool", "templatePool", "Keep N VMs restored from the template and paused on its host (administrators): a create that starts at once takes one", Some(of::<oxvirt_model::TemplatePool>), 200, Some(of::<oxvirt_model::TemplateView>)),
    op("delete", "/api/v1/templates/{template}", "templateRemove", "Forget a template no VM is made from, and its saved state", None, 204, None),
    op("get", "/api/v1/backup-repos", "backupRepoList", "Backup repositories, with their backups and stored chunks counted", None, 200, Some(of::<Vec<oxvirt_model::BackupRepoView>>)),
    op("post", "/api/v1/backup-repos", "backupRepoCreate", "Make (or join) a backup repository in a host directory (administrators); encrypt: chunks and VM definitions encrypted on the hosts", Some(of::<oxvirt_model::BackupRepoSpec>), 201, Some(of::<oxvirt_model::BackupRepo>)),
    op("get", "/api/v1/backup-repos/{repo}", "backupRepoShow", "One backup repository", None, 200, Some(of::<oxvirt_model::BackupRepoView>)),
    op("delete", "/api/v1/backup-repos/{repo}", "backupRepoRemove", "Forget a backup repository (its directory stays; an encrypted one's key goes: keep it first)", None, 204, None),
    op("get", "/api/v1/backup-repos/{repo}/key", "backupRepoKey", "An encrypted repository's key, to keep apart (administrators): without it its backups cannot be read", None, 200, Some(of::<oxvirt_model::BackupRepoKey>)),
    op("get", "/api/v1/backup-repos/{repo}/backups", "backupList", "The backups in a repository (`?vm=` for one VM's), oldest first", None, 200, Some(of::<Vec<oxvirt_model::Backup>>)),
    op("post", "/api/v1/backup-repos/{repo}/prune", "backupPrune", "Forget the backups a retention (keep_last, keep_daily, keep_weekly, keep_monthly) does not keep; dry_run says what would go", Some(of::<oxvirt_model::PruneRequest>), 200, Some(of::<oxvirt_model::PruneResult>)),
    op("post", "/api/v1/backup-repos/{repo}/gc", "backupGc", "Remove the chunks no backup needs (never one a backup being written may need): a task", None, 202, Some(of::<oxvirt_model::Task>)),
    op("post", "/api/v1/backup-repos/{repo}/verify", "backupVerify", "Read back and re-hash every chunk a backup needs: a task that fails naming the damaged chunks and the backups they break", None, 202, Some(of::<oxvirt_model::Task>)),
    op("get", "/api/v1/backup-repos/{repo}/backups/{id}", "backupShow", "One backup", None, 200, Some(of::<oxvirt_model::Backup>)),
    op("delete", "/api/v1/backup-repos/{repo}/backups/{id}", "backupRemove", "Forget a backup (its chunks stay until no backup needs them)", None, 204, None),
    op("post", "/api/v1/backup-repos/{repo}/backups/{id}/restore", "backupRestore", "Restore a backup as a new VM whose disks are volumes of a pool: a task", Some(of::<oxvirt_model::RestoreRequest>), 202, Some(of::<oxvirt_model::Task>)),
    op("post", "/api/v1/backup-repos/{repo}/backups/{id}/export", "backupExport", "Write one disk of a backup to a new qcow2 file on the host (administrators): a task", Some(of::<oxvirt_model::BackupExportRequest>), 202, Some(of::<oxvirt_model::Task>)),
    op("post", "/api/v1/vms/{name}/backup", "vmBackup", "Back a VM up into a repository, running or stopped (only its changes since its last backup there when they are known): a task", Some(of::<oxvirt_model::BackupRequest>), 202, Some(of::<oxvirt_model::Task>)),
    op("get", "/api/v1/backup-jobs", "backupJobList", "Backup jobs with how their last run went and when the next comes", None, 200, Some(of::<Vec<oxvirt_model::BackupJob>>)),
    op("post", "/api/v1/backup-jobs", "backupJobCreate", "Back VMs up into a repository on a cron schedule (UTC), pruning to a retention after each run (administrators)", Some(of::<oxvirt_model::BackupJobSpec>), 201, Some(of::<oxvirt_model::BackupJob>)),
    op("get", "/api/v1/backup-jobs/{job}", "backupJobShow", "One backup job", None, 200, Some(of::<oxvirt_model::BackupJob>)),
    op("put", "/api/v1/backup-jobs/{job}", "backupJobSet", "Replace a backup job's definition (what its runs did is kept)", Some(of::<oxvirt_model::BackupJobSpec>), 200, Some(of::<oxvirt_model::BackupJob>)),
    op("delete", "/api/v1/backup-jobs/{job}", "backupJobRemove", "Delete a backup job (a run going on finishes)", None, 204, None),
    op("post", "/api/v1/backup-jobs/{job}/run", "backupJobRun", "Run a backup job now: a task", None, 202, Some(of::<oxvirt_model::Task>)),
    op("get", "/api/v1/projects", "projectList", "Projects (tenants) with their quotas and what their VMs hold", None, 200, Some(of::<Vec<oxvirt_model::ProjectView>>)),
    op("post", "/api/v1/projects", "projectCreate", "Create a project with quotas on VMs, vCPUs, memory and storage", Some(of::<oxvirt_model::ProjectSpec>), 201, Some(of::<oxvirt_model::ProjectView>)),
    op("get", "/api/v1/projects/{project}", "projectShow", "One project", None, 200, Some(of::<oxvirt_model::ProjectView>)),
    op("put", "/api/v1/projects/{project}", "projectReplace", "Change a project's quotas (not below what its VMs hold)", Some(of::<oxvirt_model::ProjectSpec>), 200, Some(of::<oxvirt_model::ProjectView>)),
    op("delete", "/api/v1/projects/{project}", "projectDelete", "Delete a project without VMs", None, 204, None),
    op(
        "post",
        "/api/v1/vms/{name}/disks",
        "diskAttach",
        "Add a disk (hot-plugged into a running q35 VM)",
        Some(of::<oxvirt_model::DiskSpec>),
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/disks/{disk}",
        "diskDetach",
        "Remove a disk (hot-unplugged from a running VM)",
        None,
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op("get", "/api/v1", "apiInfo", "API version", None, 200, None),
    op("get", "/metrics", "metrics", "Prometheus metrics (OpenMetrics text)", None, 200, None),
    op("get", "/api/v1/openapi.json", "openapi", "This document", None, 200, None),
    op("get", "/api/v1/host", "hostShow", "The host: CPUs, memory, accelerator and why", None, 200, Some(of::<oxvirt_model::HostInfo>)),
    op(
        "get",
        "/api/v1/host/history",
        "hostHistory",
        "The host's figures over the last hour (5 s steps)",
        None,
        200,
        Some(of::<Vec<oxvirt_model::HostSample>>),
    ),
    op("get", "/api/v1/top", "top", "Latest figures of the host and every VM", None, 200, None),
    op(
        "get",
        "/api/v1/vms/{name}/history",
        "vmHistory",
        "A VM's figures over the last hour (5 s steps)",
        None,
        200,
        Some(of::<Vec<oxvirt_model::VmSample>>),
    ),
    op("get", "/api/v1/alerts", "alertList", "Built-in alerts firing now", None, 200, Some(of::<Vec<oxvirt_model::Alert>>)),
    op("get", "/api/v1/vms", "vmList", "All VMs", None, 200, Some(of::<Vec<oxvirt_model::Vm>>)),
    op(
        "post",
        "/api/v1/vms",
        "vmCreate",
        "Create a VM (and start it with ?start=true)",
        Some(of::<oxvirt_model::VmSpec>),
        201,
        Some(of::<oxvirt_model::VmCreated>),
    ),
    op("get", "/api/v1/vms/{name}", "vmShow", "One VM: spec, desired state, observed status", None, 200, Some(of::<oxvirt_model::Vm>)),
    op("patch", "/api/v1/vms/{name}", "vmUpdate", "Change a stopped VM", Some(of::<oxvirt_model::VmUpdate>), 200, Some(of::<oxvirt_model::Vm>)),
    op("delete", "/api/v1/vms/{name}", "vmDelete", "Delete a stopped VM", None, 204, None),
    op(
        "post",
        "/api/v1/vms/{name}/actions/{action}",
        "vmAction",
        "start, stop, reboot, reset, pause, resume or kill: returns a task",
        None,
        202,
        Some(of::<oxvirt_model::Task>),
    ),
    op(
        "get",
        "/api/v1/vms/{name}/console-log",
        "vmConsoleLog",
        "The end of the serial console output",
        None,
        200,
        None,
    ),
    op(
        "get",
        "/api/v1/vms/{name}/console",
        "vmConsole",
        "The interactive serial console: a WebSocket (binary messages both ways)",
        None,
        101,
        None,
    ),
    op(
        "get",
        "/api/v1/networks",
        "networkList",
        "All networks, with what runs on the host for each",
        None,
        200,
        Some(of::<Vec<oxvirt_model::NetworkView>>),
    ),
    op(
        "post",
        "/api/v1/networks",
        "networkCreate",
        "Create a network (nat, isolated, vxlan, bridged, vlan) and make it on the host",
        Some(of::<oxvirt_model::NetworkSpec>),
        201,
        Some(of::<oxvirt_model::NetworkView>),
    ),
    op("get", "/api/v1/networks/{network}", "networkShow", "One network", None, 200, Some(of::<oxvirt_model::NetworkView>)),
    op(
        "delete",
        "/api/v1/networks/{network}",
        "networkDelete",
        "Delete a network no NIC uses, and what oxvirt made for it",
        None,
        204,
        None,
    ),
    op(
        "get",
        "/api/v1/networks/{network}/leases",
        "networkLeases",
        "Addresses given to NICs, and whether the guest took them",
        None,
        200,
        Some(of::<Vec<oxvirt_model::LeaseView>>),
    ),
    op(
        "get",
        "/api/v1/networks/{network}/flows",
        "networkFlowList",
        "A vlan network's flow rules, with the packets and bytes the switch counted for each",
        None,
        200,
        Some(of::<Vec<oxvirt_model::FlowRuleView>>),
    ),
    op(
        "post",
        "/api/v1/networks/{network}/flows",
        "networkFlowAdd",
        "Add a flow rule to a vlan network (administrators): ovs-ofctl's words for its match and actions",
        Some(of::<oxvirt_model::FlowRuleSpec>),
        201,
        Some(of::<oxvirt_model::FlowRule>),
    ),
    op(
        "delete",
        "/api/v1/networks/{network}/flows/{id}",
        "networkFlowDelete",
        "Remove a flow rule and its flows (administrators)",
        None,
        204,
        None,
    ),
    op(
        "get",
        "/api/v1/security-groups",
        "securityGroupList",
        "All security groups",
        None,
        200,
        Some(of::<Vec<oxvirt_model::SecurityGroup>>),
    ),
    op(
        "post",
        "/api/v1/security-groups",
        "securityGroupCreate",
        "Create a security group",
        Some(of::<oxvirt_model::SecurityGroupSpec>),
        201,
        Some(of::<oxvirt_model::SecurityGroup>),
    ),
    op(
        "get",
        "/api/v1/security-groups/{group}",
        "securityGroupShow",
        "One security group",
        None,
        200,
        Some(of::<oxvirt_model::SecurityGroup>),
    ),
    op(
        "put",
        "/api/v1/security-groups/{group}",
        "securityGroupReplace",
        "Replace a group's rules (live on every NIC using it)",
        Some(of::<oxvirt_model::SecurityGroupSpec>),
        200,
        Some(of::<oxvirt_model::SecurityGroup>),
    ),
    op(
        "delete",
        "/api/v1/security-groups/{group}",
        "securityGroupDelete",
        "Delete a group no NIC uses",
        None,
        204,
        None,
    ),
    op(
        "post",
        "/api/v1/vms/{name}/nics",
        "nicAttach",
        "Add a NIC (hot-plugged into a running q35 VM)",
        Some(of::<oxvirt_model::NicSpec>),
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op(
        "patch",
        "/api/v1/vms/{name}/nics/{nic}",
        "nicUpdate",
        "Change a NIC's security groups or bandwidth limits (live)",
        Some(of::<oxvirt_model::NicUpdate>),
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/nics/{nic}",
        "nicDetach",
        "Remove a NIC (hot-unplugged from a running VM)",
        None,
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op("get", "/api/v1/pools", "poolList", "All storage pools with their capacity", None, 200, Some(of::<Vec<oxvirt_model::PoolView>>)),
    op("post", "/api/v1/pools", "poolCreate", "Create a storage pool", Some(of::<oxvirt_model::PoolSpec>), 201, Some(of::<oxvirt_model::PoolView>)),
    op("get", "/api/v1/pools/{pool}", "poolShow", "One pool and its capacity", None, 200, Some(of::<oxvirt_model::PoolView>)),
    op("delete", "/api/v1/pools/{pool}", "poolDelete", "Delete an empty pool (its directory stays)", None, 204, None),
    op(
        "post",
        "/api/v1/pools/{pool}/import",
        "volumeImport",
        "Import a qcow2/raw/vmdk file as a volume: a task",
        Some(of::<oxvirt_model::ImportRequest>),
        202,
        Some(of::<oxvirt_model::Task>),
    ),
    op("get", "/api/v1/pools/{pool}/volumes", "volumeList", "A pool's volumes", None, 200, Some(of::<Vec<oxvirt_model::Volume>>)),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes",
        "volumeCreate",
        "Create a thin volume",
        Some(of::<oxvirt_model::VolumeSpec>),
        201,
        Some(of::<oxvirt_model::Volume>),
    ),
    op("get", "/api/v1/pools/{pool}/volumes/{name}", "volumeShow", "One volume", None, 200, Some(of::<oxvirt_model::Volume>)),
    op(
        "patch",
        "/api/v1/pools/{pool}/volumes/{name}",
        "volumeResize",
        "Grow a volume (live when a running VM uses it)",
        Some(of::<oxvirt_model::VolumeResize>),
        200,
        Some(of::<oxvirt_model::Volume>),
    ),
    op("delete", "/api/v1/pools/{pool}/volumes/{name}", "volumeDelete", "Delete a volume no VM uses", None, 204, None),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/clone",
        "volumeClone",
        "Linked clone (201, instant) or full clone (202, a task)",
        Some(of::<oxvirt_model::CloneRequest>),
        201,
        Some(of::<oxvirt_model::Volume>),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/export",
        "volumeExport",
        "Export to a new file on the host: a task",
        Some(of::<oxvirt_model::ExportRequest>),
        202,
        Some(of::<oxvirt_model::Task>),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots",
        "volumeSnapshot",
        "Snapshot a qcow2 volume (live when in use)",
        Some(of::<oxvirt_model::NewSnapshot>),
        201,
        Some(of::<oxvirt_model::Volume>),
    ),
    op(
        "delete",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}",
        "volumeSnapshotDelete",
        "Delete a volume snapshot",
        None,
        200,
        Some(of::<oxvirt_model::Volume>),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}/revert",
        "volumeRevert",
        "Revert a volume no running VM uses",
        None,
        200,
        Some(of::<oxvirt_model::Volume>),
    ),
    op(
        "post",
        "/api/v1/vms/{name}/snapshots",
        "vmSnapshot",
        "Snapshot all of a VM's volumes at one instant (live)",
        Some(of::<oxvirt_model::NewSnapshot>),
        201,
        Some(of::<Vec<oxvirt_model::Volume>>),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/snapshots/{snap}",
        "vmSnapshotDelete",
        "Delete a VM snapshot",
        None,
        200,
        Some(of::<Vec<oxvirt_model::Volume>>),
    ),
    op(
        "post",
        "/api/v1/vms/{name}/snapshots/{snap}/revert",
        "vmRevert",
        "Revert a stopped VM's volumes",
        None,
        200,
        Some(of::<Vec<oxvirt_model::Volume>>),
    ),
    op(
        "put",
        "/api/v1/vms/{name}/disks/{disk}/qos",
        "vmDiskQos",
        "Set a disk's I/O limits (live while the VM runs)",
        Some(of::<oxvirt_model::DiskQos>),
        200,
        Some(of::<oxvirt_model::Vm>),
    ),
    op("get", "/api/v1/tasks", "taskList", "All tasks, newest first", None, 200, Some(of::<Vec<oxvirt_model::Task>>)),
    op("get", "/api/v1/tasks/{id}", "taskShow", "One task", None, 200, Some(of::<oxvirt_model::Task>)),
    op("delete", "/api/v1/tasks/{id}", "taskCancel", "Ask a running task to stop", None, 200, Some(of::<oxvirt_model::Task>)),
    op(
        "get",
        "/api/v1/tasks/{id}/wait",
        "taskWait",
        "Wait until a task ends (or ?timeout=seconds passes)",
        None,
        200,
        Some(of::<oxvirt_model::Task>),
    ),
    op(
        "get",
        "/api/v1/events",
        "events",
        "Server-sent events: VM state changes, lifecycle, guest events, task progress",
        None,
        200,
        None,
    ),
];

fn parameters(path: &str, op: &str) -> Vec<Value> {
    let mut p = Vec::new();
    for seg in path.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let schema = match name {
                "action" => json!({ "type": "string", "enum": oxvirt_model::VM_ACTIONS }),
                "name" | "pool" | "network" | "group" => {
                    json!({ "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" })
                }
                _ => json!({ "type": "string" }),
            };
            p.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
        }
    }
    match op {
        "vmCreate" => p.push(json!({ "name": "start", "in": "query", "schema": { "type": "boolean" } })),
        "vmConsoleLog" => p.push(json!({ "name": "bytes", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 16777216 } })),
        "taskWait" => p.push(json!({ "name": "timeout", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 600 } })),
        "auditLog" => p.push(json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 10000 } })),
        _ => {}
    }
    p
}

fn error_responses(g: &mut SchemaGenerator) -> Value {
    let e = json!({ "description": "refused: the body names the field and the rule",
                    "content": { "application/json": { "schema": of::<oxvirt_model::ErrorReply>(g) } } });
    json!({ "400": e, "401": e, "403": e, "404": e, "409": e, "413": e, "429": e, "500": e })
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = serde_json::Map::new();
    for Operation { method, path, id, summary, request, status, response } in OPERATIONS {
        let mut op = json!({ "operationId": id, "summary": summary, "parameters": parameters(path, id) });
        if let Some(req) = request {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": req(&mut g) } } });
        }
        let mut responses = error_responses(&mut g);
        let ok = match (response, *id) {
            (Some(r), _) => {
                json!({ "description": "success", "content": { "application/json": { "schema": r(&mut g) } } })
            }
            (None, "vmConsoleLog") => {
                json!({ "description": "console output", "content": { "text/plain": { "schema": { "type": "string" } } } })
            }
            (None, "events") => {
                json!({ "description": "event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } })
            }
            (None, _) if *status == 204 => json!({ "description": "done" }),
            (None, _) if *status == 101 => json!({ "description": "switching to the WebSocket protocol" }),
            (None, _) => {
                json!({ "description": "success", "content": { "application/json": { "schema": { "type": "object" } } } })
            }
        };
        responses[status.to_string()] = ok;
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({ "responses": responses });
        if *path == crate::auth::LOGIN {
            // The one route without a token.
            entry[*method]["security"] = json!([]);
        }
        if let Value::Object(o) = op {
            for (k, v) in o {
                entry[*method][k] = v;
            }
        }
    }
    let schemas: serde_json::Map<String, Value> = g.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.0.3",
        "info": { "title": "oxvirt API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Manage VMs, tasks and events of an oxvirt host." },
        "servers": [ { "url": "/" } ],
        "security": [ { "token": [] } ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer",
                "description": "An API token; needed over HTTPS, not on the local Unix socket" } }
        }
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route(...)` in the API's sources, with its methods: the route table as written.
    fn routed() -> Vec<(String, String)> {
        let sources = [
            include_str!("lib.rs"),
            include_str!("host.rs"),
            include_str!("vms.rs"),
            include_str!("storage.rs"),
            include_str!("networks.rs"),
            include_str!("resources.rs"),
            include_str!("projects.rs"),
            include_str!("ha.rs"),
            include_str!("backups.rs"),
            include_str!("templates.rs"),
            include_str!("tasks.rs"),
            include_str!("events.rs"),
            include_str!("users.rs"),
            include_str!("cluster.rs"),
        ];
        let mut out = Vec::new();
        for src in sources {
            for line in src.lines().map(str::trim).filter(|l| l.contains(".route(")) {
                let rest = &line[line.find(".route(").unwrap() + 7..];
                let path = if rest.starts_with("crate::auth::LOGIN") {
                    crate::auth::LOGIN.to_string()
                } else {
                    rest.trim_start_matches('"').split('"').next().unwrap().to_string()
                };
                for m in ["get", "post", "put", "patch", "delete"] {
                    let calls = [format!(" {m}("), format!(".{m}("), format!("::{m}("), format!(", {m}(")];
                    if calls.iter().any(|c| line.contains(c.as_str())) {
                        out.push((m.to_string(), path.clone()));
                    }
                }
            }
        }
        out
    }

    /// The document and the router list the same operations, both ways: a route nobody
    /// documented would also escape the tests generated from the document.
    #[test]
    fn every_routed_operation_is_documented_and_back() {
        let routed = routed();
        assert!(routed.len() > 60, "{routed:?}");
        let documented: Vec<(String, String)> =
            OPERATIONS.iter().map(|o| (o.method.to_string(), o.path.to_string())).collect();
        for r in &routed {
            assert!(documented.contains(r), "{} {} is routed but not documented", r.0, r.1);
        }
        for d in &documented {
            assert!(routed.contains(d), "{} {} is documented but not routed", d.0, d.1);
        }
        let ids: std::collections::HashSet<&str> = OPERATIONS.iter().map(|o| o.id).collect();
        assert_eq!(ids.len(), OPERATIONS.len(), "operation ids are unique");
    }

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every reference in the derived document names a schema it holds, and the schemas keep
    /// what the handlers enforce: unknown fields refused, required fields required.
    #[test]
    fn derived_schemas_resolve_and_keep_the_rules() {
        let doc = document();
        if let Ok(path) = std::env::var("OXVIRT_OPENAPI_DUMP") {
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{found:?}");
        for r in &found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}: not a component"));
            assert!(schemas.contains_key(name), "{r} is referenced but not defined");
        }
        let spec = &schemas["VmSpec"];
        assert_eq!(spec["additionalProperties"], json!(false), "{spec}");
        let required: Vec<&str> = spec["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        for f in ["name", "cpus", "memory"] {
            assert!(required.contains(&f), "VmSpec requires {f}: {required:?}");
        }
        assert_eq!(schemas["Error"]["properties"]["error"]["$ref"], json!("#/components/schemas/ErrorDetail"));
        let codes = &schemas["ErrorDetail"]["properties"]["code"]["enum"];
        assert_eq!(codes.as_array().unwrap().len(), oxvirt_model::ERROR_CODES.len());
        // A size is a number of bytes or a string with a unit, as the handlers parse it.
        assert!(schemas["ByteSize"]["oneOf"].is_array(), "{}", schemas["ByteSize"]);
    }
}
