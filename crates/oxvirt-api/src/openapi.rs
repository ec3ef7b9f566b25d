//! The OpenAPI 3 document of `/api/v1`, served at `/api/v1/openapi.json`.

use axum::Json;
use serde_json::{json, Value};

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    /// Schema of the JSON request body, if any.
    pub request: Option<&'static str>,
    /// The status of success.
    pub status: u16,
    /// Schema of the JSON success body, if any.
    pub response: Option<&'static str>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
) -> Operation {
    Operation { method, path, id, summary, request, status, response }
}

/// Every operation. An end-to-end test checks that each of these is routed.
pub const OPERATIONS: &[Operation] = &[
    op("get", "/api/v1/cluster/policy", "clusterPolicy", "The cluster's placement and rebalancing policy", None, 200, Some("ClusterPolicy")),
    op("put", "/api/v1/cluster/policy", "clusterPolicySet", "Replace the cluster's placement and rebalancing policy", Some("ClusterPolicy"), 200, Some("ClusterPolicy")),
    op("get", "/api/v1/cluster/rebalance", "clusterRebalancePlan", "The rebalancing plan now: the migrations that would even out (spread) or consolidate (pack) load", None, 200, Some("Rebalance")),
    op("post", "/api/v1/cluster/rebalance", "clusterRebalance", "Rebalance now: the plan's first migrations start, at most max_migrations at once", None, 200, Some("Rebalance")),
    op("put", "/api/v1/cluster/hosts/{host}/maintenance", "clusterMaintenance", "Put a host in maintenance (no new VMs; its VMs migrate away: the tasks) or take it out", Some("Maintenance"), 200, Some("TaskList")),
    op("post", "/api/v1/vms/{name}/migrate", "vmMigrate", "Live-migrate a running VM to another host (memory; disks in local pools copied over NBD while it runs): a task", Some("MigrateRequest"), 202, Some("Task")),
    op("get", "/api/v1/cluster/hosts", "clusterHosts", "The cluster's hosts: online or not, the leader, their VMs (etcd store only)", None, 200, Some("HostList")),
    op("delete", "/api/v1/cluster/hosts/{host}", "clusterLeave", "Take a host out of the cluster (refused while it has VMs)", None, 204, None),
    op("get", "/api/v1/audit", "auditLog", "The audit log's latest records (?limit=N)", None, 200, Some("AuditList")),
    op("put", "/api/v1/vms/{name}/resources", "vmResources", "Set a VM's CPU weight, cap, pinning, memory limit, NUMA, huge pages, balloon floor, KSM (live where it can be)", Some("Resources"), 200, Some("Vm")),
    op("get", "/api/v1/vms/{name}/balloon", "vmBalloon", "A running VM's balloon: memory now and the guest's figures", None, 200, Some("Balloon")),
    op("put", "/api/v1/vms/{name}/balloon", "vmBalloonSet", "Set a running VM's balloon target", Some("BalloonTarget"), 200, Some("Balloon")),
    op("get", "/api/v1/host/policy", "hostPolicy", "The host's resource policy: over-commit, auto-ballooning, KSM", None, 200, Some("HostPolicy")),
    op("put", "/api/v1/host/policy", "hostPolicySet", "Replace the host's resource policy", Some("HostPolicy"), 200, Some("HostPolicy")),
    op("get", "/api/v1/host/resources", "hostResources", "Committed vCPUs and memory, NUMA nodes, KSM, huge pages", None, 200, None),
    op("post", "/api/v1/auth/login", "login", "Log in with a user's password: a token valid for 8 hours (no token needed)", Some("Login"), 201, Some("NewToken")),
    op("get", "/api/v1/tokens", "tokenList", "Your API tokens (an administrator sees all)", None, 200, Some("TokenList")),
    op("post", "/api/v1/tokens", "tokenCreate", "A new API token acting as you (the secret is shown once)", Some("TokenRequest"), 201, Some("NewToken")),
    op("delete", "/api/v1/tokens/{id}", "tokenRevoke", "Revoke a token: refused from the next request on", None, 204, None),
    op("get", "/api/v1/users", "userList", "Local users", None, 200, Some("UserList")),
    op("post", "/api/v1/users", "userCreate", "Create a local user (password kept as an argon2id hash)", Some("UserSpec"), 201, Some("User")),
    op("delete", "/api/v1/users/{user}", "userDelete", "Delete a user, their grants and tokens", None, 204, None),
    op("get", "/api/v1/acl", "aclShow", "All grants: a role for a user on a path", None, 200, Some("Acl")),
    op("put", "/api/v1/acl", "aclSet", "Replace all grants", Some("Acl"), 200, Some("Acl")),
    op("get", "/api/v1/projects", "projectList", "Projects (tenants) with their quotas and what their VMs hold", None, 200, Some("ProjectList")),
    op("post", "/api/v1/projects", "projectCreate", "Create a project with quotas on VMs, vCPUs, memory and storage", Some("ProjectSpec"), 201, Some("Project")),
    op("get", "/api/v1/projects/{project}", "projectShow", "One project", None, 200, Some("Project")),
    op("put", "/api/v1/projects/{project}", "projectReplace", "Change a project's quotas (not below what its VMs hold)", Some("ProjectSpec"), 200, Some("Project")),
    op("delete", "/api/v1/projects/{project}", "projectDelete", "Delete a project without VMs", None, 204, None),
    op(
        "post",
        "/api/v1/vms/{name}/disks",
        "diskAttach",
        "Add a disk (hot-plugged into a running q35 VM)",
        Some("DiskSpec"),
        200,
        Some("Vm"),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/disks/{disk}",
        "diskDetach",
        "Remove a disk (hot-unplugged from a running VM)",
        None,
        200,
        Some("Vm"),
    ),
    op("get", "/api/v1", "apiInfo", "API version", None, 200, None),
    op("get", "/metrics", "metrics", "Prometheus metrics (OpenMetrics text)", None, 200, None),
    op("get", "/api/v1/openapi.json", "openapi", "This document", None, 200, None),
    op("get", "/api/v1/host", "hostShow", "The host: CPUs, memory, accelerator and why", None, 200, Some("HostInfo")),
    op(
        "get",
        "/api/v1/host/history",
        "hostHistory",
        "The host's figures over the last hour (5 s steps)",
        None,
        200,
        None,
    ),
    op("get", "/api/v1/top", "top", "Latest figures of the host and every VM", None, 200, None),
    op(
        "get",
        "/api/v1/vms/{name}/history",
        "vmHistory",
        "A VM's figures over the last hour (5 s steps)",
        None,
        200,
        None,
    ),
    op("get", "/api/v1/alerts", "alertList", "Built-in alerts firing now", None, 200, Some("AlertList")),
    op("get", "/api/v1/vms", "vmList", "All VMs", None, 200, Some("VmList")),
    op(
        "post",
        "/api/v1/vms",
        "vmCreate",
        "Create a VM (and start it with ?start=true)",
        Some("VmSpec"),
        201,
        Some("VmCreated"),
    ),
    op("get", "/api/v1/vms/{name}", "vmShow", "One VM: spec, desired state, observed status", None, 200, Some("Vm")),
    op("patch", "/api/v1/vms/{name}", "vmUpdate", "Change a stopped VM", Some("VmUpdate"), 200, Some("Vm")),
    op("delete", "/api/v1/vms/{name}", "vmDelete", "Delete a stopped VM", None, 204, None),
    op(
        "post",
        "/api/v1/vms/{name}/actions/{action}",
        "vmAction",
        "start, stop, reboot, reset, pause, resume or kill: returns a task",
        None,
        202,
        Some("Task"),
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
        Some("NetworkList"),
    ),
    op(
        "post",
        "/api/v1/networks",
        "networkCreate",
        "Create a network (nat, isolated, vxlan, bridged) and make it on the host",
        Some("NetworkSpec"),
        201,
        Some("NetworkView"),
    ),
    op("get", "/api/v1/networks/{network}", "networkShow", "One network", None, 200, Some("NetworkView")),
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
        Some("LeaseList"),
    ),
    op(
        "get",
        "/api/v1/security-groups",
        "securityGroupList",
        "All security groups",
        None,
        200,
        Some("SecurityGroupList"),
    ),
    op(
        "post",
        "/api/v1/security-groups",
        "securityGroupCreate",
        "Create a security group",
        Some("SecurityGroupSpec"),
        201,
        Some("SecurityGroup"),
    ),
    op(
        "get",
        "/api/v1/security-groups/{group}",
        "securityGroupShow",
        "One security group",
        None,
        200,
        Some("SecurityGroup"),
    ),
    op(
        "put",
        "/api/v1/security-groups/{group}",
        "securityGroupReplace",
        "Replace a group's rules (live on every NIC using it)",
        Some("SecurityGroupSpec"),
        200,
        Some("SecurityGroup"),
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
        Some("NicSpec"),
        200,
        Some("Vm"),
    ),
    op(
        "patch",
        "/api/v1/vms/{name}/nics/{nic}",
        "nicUpdate",
        "Change a NIC's security groups or bandwidth limits (live)",
        Some("NicUpdate"),
        200,
        Some("Vm"),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/nics/{nic}",
        "nicDetach",
        "Remove a NIC (hot-unplugged from a running VM)",
        None,
        200,
        Some("Vm"),
    ),
    op("get", "/api/v1/pools", "poolList", "All storage pools with their capacity", None, 200, Some("PoolList")),
    op("post", "/api/v1/pools", "poolCreate", "Create a storage pool", Some("PoolSpec"), 201, Some("PoolView")),
    op("get", "/api/v1/pools/{pool}", "poolShow", "One pool and its capacity", None, 200, Some("PoolView")),
    op("delete", "/api/v1/pools/{pool}", "poolDelete", "Delete an empty pool (its directory stays)", None, 204, None),
    op(
        "post",
        "/api/v1/pools/{pool}/import",
        "volumeImport",
        "Import a qcow2/raw/vmdk file as a volume: a task",
        Some("ImportRequest"),
        202,
        Some("Task"),
    ),
    op("get", "/api/v1/pools/{pool}/volumes", "volumeList", "A pool's volumes", None, 200, Some("VolumeList")),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes",
        "volumeCreate",
        "Create a thin volume",
        Some("VolumeSpec"),
        201,
        Some("Volume"),
    ),
    op("get", "/api/v1/pools/{pool}/volumes/{name}", "volumeShow", "One volume", None, 200, Some("Volume")),
    op(
        "patch",
        "/api/v1/pools/{pool}/volumes/{name}",
        "volumeResize",
        "Grow a volume (live when a running VM uses it)",
        Some("Resize"),
        200,
        Some("Volume"),
    ),
    op("delete", "/api/v1/pools/{pool}/volumes/{name}", "volumeDelete", "Delete a volume no VM uses", None, 204, None),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/clone",
        "volumeClone",
        "Linked clone (201, instant) or full clone (202, a task)",
        Some("CloneRequest"),
        201,
        Some("Volume"),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/export",
        "volumeExport",
        "Export to a new file on the host: a task",
        Some("ExportRequest"),
        202,
        Some("Task"),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots",
        "volumeSnapshot",
        "Snapshot a qcow2 volume (live when in use)",
        Some("NewSnapshot"),
        201,
        Some("Volume"),
    ),
    op(
        "delete",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}",
        "volumeSnapshotDelete",
        "Delete a volume snapshot",
        None,
        200,
        Some("Volume"),
    ),
    op(
        "post",
        "/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}/revert",
        "volumeRevert",
        "Revert a volume no running VM uses",
        None,
        200,
        Some("Volume"),
    ),
    op(
        "post",
        "/api/v1/vms/{name}/snapshots",
        "vmSnapshot",
        "Snapshot all of a VM's volumes at one instant (live)",
        Some("NewSnapshot"),
        201,
        Some("VolumeList"),
    ),
    op(
        "delete",
        "/api/v1/vms/{name}/snapshots/{snap}",
        "vmSnapshotDelete",
        "Delete a VM snapshot",
        None,
        200,
        Some("VolumeList"),
    ),
    op(
        "post",
        "/api/v1/vms/{name}/snapshots/{snap}/revert",
        "vmRevert",
        "Revert a stopped VM's volumes",
        None,
        200,
        Some("VolumeList"),
    ),
    op(
        "put",
        "/api/v1/vms/{name}/disks/{disk}/qos",
        "vmDiskQos",
        "Set a disk's I/O limits (live while the VM runs)",
        Some("DiskQos"),
        200,
        Some("Vm"),
    ),
    op("get", "/api/v1/tasks", "taskList", "All tasks, newest first", None, 200, Some("TaskList")),
    op("get", "/api/v1/tasks/{id}", "taskShow", "One task", None, 200, Some("Task")),
    op("delete", "/api/v1/tasks/{id}", "taskCancel", "Ask a running task to stop", None, 200, Some("Task")),
    op(
        "get",
        "/api/v1/tasks/{id}/wait",
        "taskWait",
        "Wait until a task ends (or ?timeout=seconds passes)",
        None,
        200,
        Some("Task"),
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

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

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

fn error_responses() -> Value {
    let e = json!({ "description": "refused: the body names the field and the rule", "content": { "application/json": { "schema": schema_ref("Error") } } });
    json!({ "400": e, "401": e, "403": e, "404": e, "409": e, "413": e, "429": e, "500": e })
}

fn schemas() -> Value {
    let size = json!({ "oneOf": [ { "type": "integer", "minimum": 0 }, { "type": "string", "pattern": "^[0-9.]+ ?(B|K|KiB|M|MiB|G|GiB|T|TiB|kB|KB|MB|GB|TB)?$" } ] });
    let kernel = json!({ "type": "object", "additionalProperties": false, "required": ["kernel"], "properties": {
        "kernel": { "type": "string" }, "initrd": { "type": "string" }, "cmdline": { "type": "string" } } });
    let mut qos_props = serde_json::Map::new();
    for f in [
        "bps_total",
        "bps_read",
        "bps_write",
        "iops_total",
        "iops_read",
        "iops_write",
        "bps_total_max",
        "bps_read_max",
        "bps_write_max",
        "iops_total_max",
        "iops_read_max",
        "iops_write_max",
        "burst_seconds",
    ] {
        qos_props.insert(f.into(), json!({ "type": "integer", "minimum": 0 }));
    }
    qos_props.insert("group".into(), json!({ "type": "string" }));
    let qos = json!({ "type": "object", "additionalProperties": false, "properties": qos_props });
    let disk = json!({ "type": "object", "additionalProperties": false, "properties": {
        "qos": qos,
        "id": { "type": "string" }, "volume": { "type": "string", "pattern": "^[^/]+/[^/]+$" },
        "path": { "type": "string" }, "format": { "type": "string", "enum": ["qcow2", "raw"] },
        "bus": { "type": "string", "enum": ["virtio-blk", "virtio-scsi"] }, "readonly": { "type": "boolean" } } });
    let name_s = json!({ "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" });
    let ipv4 = json!({ "type": "string", "format": "ipv4" });
    let cidr = json!({ "type": "string", "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$" });
    let rate = json!({ "oneOf": [ { "type": "integer", "minimum": 0 }, { "type": "string", "pattern": "^[0-9]+ ?(bit|kbit|mbit|gbit|k|m|g)?$" } ] });
    let nic_qos =
        json!({ "type": "object", "additionalProperties": false, "properties": { "ingress": rate, "egress": rate } });
    let groups = json!({ "type": "array", "items": name_s, "maxItems": 16 });
    let nic = json!({ "type": "object", "additionalProperties": false, "properties": {
        "id": { "type": "string", "pattern": "^nic([0-9]|1[0-5])$" },
        "mode": { "type": "string", "enum": ["user", "isolated", "bridged", "network"] }, "mac": { "type": "string" },
        "queues": { "type": "integer", "minimum": 0, "maximum": 16 }, "bridge": { "type": "string", "maxLength": 15 },
        "network": name_s, "ip": ipv4, "security_groups": groups, "qos": nic_qos } });
    let rule = json!({ "type": "object", "additionalProperties": false, "properties": {
        "direction": { "type": "string", "enum": ["ingress", "egress"] },
        "protocol": { "type": "string", "enum": ["any", "tcp", "udp", "icmp"] },
        "ports": { "type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$" }, "cidr": cidr } });
    let sg_spec = json!({ "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
        "name": name_s, "description": { "type": "string", "maxLength": 1024 }, "rules": { "type": "array", "items": rule, "maxItems": 256 } } });
    let net_spec = json!({ "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
        "name": name_s, "kind": { "type": "string", "enum": ["nat", "isolated", "vxlan", "bridged"] },
        "subnet": cidr, "gateway": ipv4, "range": { "type": "string" },
        "mtu": { "type": "integer", "minimum": 576, "maximum": 9000 }, "dhcp": { "type": "boolean" },
        "uplink": { "type": "string", "maxLength": 15 }, "bridge": { "type": "string", "maxLength": 15 },
        "vxlan": { "type": "object", "additionalProperties": false, "required": ["vni", "local"], "properties": {
            "vni": { "type": "integer", "minimum": 1, "maximum": 16777215 }, "local": ipv4,
            "peers": { "type": "array", "items": ipv4, "maxItems": 256 }, "port": { "type": "integer", "minimum": 1, "maximum": 65535 } } } } });
    let policy = json!({ "type": "string", "enum": ["never", "on-failure", "always"] });
    let accel = json!({ "type": "string", "enum": ["auto", "kvm", "tcg"] });
    let state =
        json!({ "type": "string", "enum": ["stopped", "starting", "running", "paused", "stopping", "crashed"] });
    let mut all = json!({
        "VmSpec": { "type": "object", "additionalProperties": false, "required": ["name", "cpus", "memory"], "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "cpus": { "type": "integer", "minimum": 1, "maximum": oxvirt_model::MAX_CPUS },
            "memory": size, "machine": { "type": "string", "enum": ["q35", "microvm"] },
            "project": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "affinity": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "anti_affinity": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "memory_encryption": { "type": "string", "enum": ["sev", "sev-snp"] },
            "kernel": kernel, "disks": { "type": "array", "items": disk, "maxItems": 16 },
            "nics": { "type": "array", "items": nic, "maxItems": 8 },
            "restart_policy": policy, "accel": accel, "rng": { "type": "boolean" }, "balloon": { "type": "boolean" },
            "resources": { "$ref": "#/components/schemas/Resources" } } },
        "VmUpdate": { "type": "object", "additionalProperties": false, "properties": {
            "cpus": { "type": "integer", "minimum": 1 }, "memory": size, "kernel": kernel,
            "disks": { "type": "array", "items": disk }, "nics": { "type": "array", "items": nic },
            "restart_policy": policy, "accel": accel, "resources": { "$ref": "#/components/schemas/Resources" } } },
        "VmStatus": { "type": "object", "properties": {
            "state": state, "pid": { "type": "integer" }, "accel": { "type": "string" }, "started_at": { "type": "integer" },
            "reason": { "type": "string" }, "changed_at": { "type": "integer" } } },
        "Vm": { "type": "object", "properties": {
            "id": { "type": "string" }, "spec": schema_ref("VmSpec"), "desired": { "type": "string", "enum": ["stopped", "running", "paused"] },
            "status": schema_ref("VmStatus"), "created_at": { "type": "integer" } } },
        "VmList": { "type": "array", "items": schema_ref("Vm") },
        "VmCreated": { "type": "object", "properties": { "vm": schema_ref("Vm"), "task": { "oneOf": [schema_ref("Task"), { "type": "null" }] } } },
        "Task": { "type": "object", "properties": {
            "id": { "type": "string" }, "kind": { "type": "string" }, "target": { "type": "string" },
            "state": { "type": "string", "enum": ["running", "succeeded", "failed", "cancelled"] },
            "progress": { "type": "integer", "minimum": 0, "maximum": 100 }, "message": { "type": "string" },
            "error": { "type": ["string", "null"] }, "created_at": { "type": "integer" }, "finished_at": { "type": ["integer", "null"] } } },
        "TaskList": { "type": "array", "items": schema_ref("Task") },
        "PoolSpec": { "type": "object", "additionalProperties": false, "required": ["name", "path"], "properties": {
            "name": { "type": "string" }, "kind": { "type": "string", "enum": ["dir", "shared-dir", "nbd"] },
            "path": { "type": "string" }, "overcommit": { "type": "number", "minimum": 1, "maximum": 100 },
            "paths": { "type": "integer", "minimum": 1, "maximum": 4 },
            "host_paths": { "type": "object", "additionalProperties": { "type": "string" } } } },
        "PoolView": { "type": "object", "properties": {
            "spec": schema_ref("PoolSpec"), "created_at": { "type": "integer" },
            "usage": { "type": "object", "properties": {
                "size": { "type": "integer" }, "used": { "type": "integer" }, "free": { "type": "integer" },
                "provisioned": { "type": "integer" }, "allocated": { "type": "integer" }, "volumes": { "type": "integer" } } } } },
        "PoolList": { "type": "array", "items": schema_ref("PoolView") },
        "VolumeSpec": { "type": "object", "additionalProperties": false, "required": ["name", "size"], "properties": {
            "name": { "type": "string" }, "size": size, "format": { "type": "string", "enum": ["qcow2", "raw"] } } },
        "Volume": { "type": "object", "properties": {
            "pool": { "type": "string" }, "name": { "type": "string" }, "format": { "type": "string" }, "size": { "type": "integer" },
            "backing": { "type": "string" }, "attached_to": { "type": "string" },
            "snapshots": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "created_at": { "type": "integer" } } } },
            "created_at": { "type": "integer" } } },
        "VolumeList": { "type": "array", "items": schema_ref("Volume") },
        "DiskQos": qos.clone(),
        "DiskSpec": disk.clone(),
        "AlertList": { "type": "array", "items": { "type": "object", "properties": {
            "rule": { "type": "string" }, "kind": { "type": "string" }, "target": { "type": "string" },
            "state": { "type": "string", "enum": ["firing", "resolved"] }, "value": { "type": "number" },
            "threshold": { "type": "number" }, "since": { "type": "integer" } } } },
        "NewSnapshot": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": { "name": { "type": "string" } } },
        "Resize": { "type": "object", "additionalProperties": false, "required": ["size"], "properties": { "size": size } },
        "CloneRequest": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": { "type": "string" }, "pool": { "type": "string" }, "linked": { "type": "boolean" } } },
        "ImportRequest": { "type": "object", "additionalProperties": false, "required": ["name", "source"], "properties": {
            "name": { "type": "string" }, "source": { "type": "string" }, "source_format": { "type": "string", "enum": ["qcow2", "raw", "vmdk"] },
            "format": { "type": "string", "enum": ["qcow2", "raw"] } } },
        "ExportRequest": { "type": "object", "additionalProperties": false, "required": ["destination"], "properties": {
            "destination": { "type": "string" }, "format": { "type": "string", "enum": ["qcow2", "raw"] } } },
        "HostInfo": { "type": "object", "properties": {
            "hostname": { "type": "string" }, "cpus": { "type": "integer" }, "memory_bytes": { "type": "integer" },
            "memory_available_bytes": { "type": "integer" }, "kernel": { "type": "string" },
            "accelerator": { "type": "string", "enum": ["kvm", "tcg"] }, "accelerator_reason": { "type": "string" },
            "hypervisor": { "type": "string" }, "hypervisor_version": { "type": "string" }, "oxvirt_version": { "type": "string" },
            "vms_total": { "type": "integer" }, "vms_running": { "type": "integer" } } },
        "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "properties": {
            "status": { "type": "integer" }, "code": { "type": "string", "enum": ["invalid", "not-found", "exists", "conflict", "busy", "in-use", "exhausted", "unauthorized", "forbidden", "rate-limited", "failed", "internal"] },
            "message": { "type": "string" }, "field": { "type": "string" }, "rule": { "type": "string" } } } } }
    });
    let resources = json!({ "type": "object", "additionalProperties": false, "properties": {
        "cpu_weight": { "type": "integer", "minimum": 1, "maximum": 10000 },
        "cpu_limit": { "type": "number", "minimum": 0.01 },
        "memory_limit": size.clone(),
        "vcpu_pins": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 4095 } },
        "emulator_cpus": { "type": "string", "pattern": "^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$" },
        "numa": { "type": "string", "enum": ["auto", "off"] }, "hugepages": { "type": "boolean" },
        "balloon_min": size.clone(), "ksm": { "type": "boolean" } } });
    let extra = json!({
        "Resources": resources,
        "BalloonTarget": { "type": "object", "additionalProperties": false, "required": ["target"], "properties": { "target": size.clone() } },
        "Balloon": { "type": "object", "properties": {
            "actual": { "type": "integer" }, "memory": { "type": "integer" }, "guest_free": { "type": "integer" },
            "guest_total": { "type": "integer" }, "auto": { "type": "boolean" } } },
        "ProjectSpec": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "quotas": { "type": "object", "additionalProperties": false, "properties": {
                "vms": { "type": "integer", "minimum": 0 }, "vcpus": { "type": "integer", "minimum": 0 },
                "memory": size.clone(), "storage": size.clone() } } } },
        "Project": { "type": "object", "properties": {
            "spec": { "$ref": "#/components/schemas/ProjectSpec" }, "created_at": { "type": "integer" },
            "usage": { "type": "object", "properties": { "vms": { "type": "integer" }, "vcpus": { "type": "integer" },
                "memory": { "type": "integer" }, "storage": { "type": "integer" } } } } },
        "ProjectList": { "type": "array", "items": { "$ref": "#/components/schemas/Project" } },
        "MigrateRequest": { "type": "object", "additionalProperties": false, "required": ["to"], "properties": {
            "to": { "type": "string" }, "downtime_ms": { "type": "integer", "minimum": 1, "maximum": 60000 },
            "bandwidth_mibs": { "type": "integer", "minimum": 0, "maximum": 100000 },
            "auto_converge": { "type": "boolean" }, "postcopy": { "type": "boolean" } } },
        "ClusterPolicy": { "type": "object", "additionalProperties": false, "properties": {
            "strategy": { "type": "string", "enum": ["spread", "pack"] }, "rebalance": { "type": "string", "enum": ["off", "auto"] },
            "max_migrations": { "type": "integer", "minimum": 1, "maximum": 16 },
            "threshold_percent": { "type": "integer", "minimum": 1, "maximum": 100 },
            "interval_secs": { "type": "integer", "minimum": 1, "maximum": 86400 } } },
        "Rebalance": { "type": "object", "properties": {
            "policy": schema_ref("ClusterPolicy"),
            "moves": { "type": "array", "items": { "type": "object", "properties": {
                "vm": { "type": "string" }, "from": { "type": "string" }, "to": { "type": "string" }, "reason": { "type": "string" } } } },
            "started": { "type": "array", "items": { "type": "string" } }, "running": { "type": "integer" } } },
        "Maintenance": { "type": "object", "additionalProperties": false, "required": ["on"], "properties": { "on": { "type": "boolean" } } },
        "HostList": { "type": "array", "items": { "type": "object", "properties": {
            "name": { "type": "string" }, "address": { "type": "string" }, "cpus": { "type": "integer" },
            "memory": { "type": "integer" }, "joined_at": { "type": "integer" }, "online": { "type": "boolean" },
            "maintenance": { "type": "boolean" }, "pools": { "type": "array", "items": { "type": "string" } },
            "networks": { "type": "array", "items": { "type": "string" } }, "cpu_pressure": { "type": "number" },
            "migration_tls": { "type": "boolean" },
            "leader": { "type": "boolean" }, "vms": { "type": "integer" } } } },
        "Login": { "type": "object", "additionalProperties": false, "required": ["user", "password"], "properties": {
            "user": { "type": "string" }, "password": { "type": "string" } } },
        "TokenRequest": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 200 },
            "expires_in_secs": { "type": "integer", "minimum": 1, "maximum": 31622400 }, "user": { "type": "string" } } },
        "Token": { "type": "object", "properties": {
            "id": { "type": "string" }, "name": { "type": "string" }, "user": { "type": "string" },
            "expires_at": { "type": "integer" }, "created_at": { "type": "integer" } } },
        "TokenList": { "type": "array", "items": { "$ref": "#/components/schemas/Token" } },
        "NewToken": { "type": "object", "properties": {
            "id": { "type": "string" }, "name": { "type": "string" }, "user": { "type": "string" },
            "expires_at": { "type": "integer" }, "created_at": { "type": "integer" }, "secret": { "type": "string" } } },
        "UserSpec": { "type": "object", "additionalProperties": false, "required": ["name", "password"], "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" },
            "password": { "type": "string", "minLength": 10, "maxLength": 1024 } } },
        "User": { "type": "object", "properties": { "name": { "type": "string" }, "created_at": { "type": "integer" } } },
        "UserList": { "type": "array", "items": { "$ref": "#/components/schemas/User" } },
        "Acl": { "type": "array", "items": { "type": "object", "additionalProperties": false, "required": ["path", "user", "role"], "properties": {
            "path": { "type": "string" }, "user": { "type": "string" },
            "role": { "type": "string", "enum": ["administrator", "operator", "auditor", "none"] } } } },
        "AuditList": { "type": "array", "items": { "type": "object", "properties": {
            "time": { "type": "integer" }, "user": { "type": "string" }, "token": { "type": "string" }, "from": { "type": "string" },
            "method": { "type": "string" }, "path": { "type": "string" }, "resource": { "type": "string" }, "status": { "type": "integer" } } } },
        "HostPolicy": { "type": "object", "additionalProperties": false, "properties": {
            "cpu_overcommit": { "type": "number", "minimum": 0.1, "maximum": 64 },
            "memory_overcommit": { "type": "number", "minimum": 0.1, "maximum": 16 },
            "auto_balloon": { "type": "boolean" },
            "memory_target_use": { "type": "number", "minimum": 0.01, "maximum": 0.99 },
            "ksm": { "type": "string", "enum": ["auto", "on", "off"] },
            "ksm_across_projects": { "type": "boolean" } } },
    });
    let network = json!({
        "NicSpec": nic.clone(),
        "NicUpdate": { "type": "object", "additionalProperties": false, "properties": { "security_groups": groups, "qos": nic_qos } },
        "NetworkSpec": net_spec.clone(),
        "NetworkView": { "type": "object", "properties": {
            "id": { "type": "string" }, "spec": net_spec, "created_at": { "type": "integer" }, "bridge": { "type": "string" },
            "mtu": { "type": "integer" }, "gateway": ipv4, "bridge_up": { "type": "boolean" }, "dhcp_pid": { "type": "integer" },
            "nics": { "type": "integer" } } },
        "NetworkList": { "type": "array", "items": schema_ref("NetworkView") },
        "LeaseList": { "type": "array", "items": { "type": "object", "properties": {
            "network": { "type": "string" }, "ip": ipv4, "vm": { "type": "string" }, "nic": { "type": "string" },
            "mac": { "type": "string" }, "active": { "type": "boolean" }, "expires": { "type": "integer" } } } },
        "SecurityGroupSpec": sg_spec.clone(),
        "SecurityGroup": { "type": "object", "properties": { "spec": sg_spec, "created_at": { "type": "integer" } } },
        "SecurityGroupList": { "type": "array", "items": schema_ref("SecurityGroup") },
    });
    for more in [network, extra] {
        if let (Some(a), Some(b)) = (all.as_object_mut(), more.as_object()) {
            a.extend(b.clone());
        }
    }
    all
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for Operation { method, path, id, summary, request, status, response } in OPERATIONS {
        let mut op = json!({ "operationId": id, "summary": summary, "parameters": parameters(path, id) });
        if let Some(req) = request {
            op["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": schema_ref(req) } } });
        }
        let mut responses = error_responses();
        let ok = match (response, *id) {
            (Some(r), _) => {
                json!({ "description": "success", "content": { "application/json": { "schema": schema_ref(r) } } })
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
    json!({
        "openapi": "3.0.3",
        "info": { "title": "oxvirt API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Manage VMs, tasks and events of an oxvirt host." },
        "servers": [ { "url": "/" } ],
        "security": [ { "token": [] } ],
        "paths": paths,
        "components": {
            "schemas": schemas(),
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
}
