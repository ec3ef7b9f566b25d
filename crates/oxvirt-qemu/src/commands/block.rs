//! Block nodes, jobs and snapshots: `blockdev-add`, `blockdev-del`, `blockdev-mirror`,
//! `query-block-jobs`, `block-job-cancel`, `block_resize`, `block_set_io_throttle`,
//! `query-blockstats`, and internal snapshots (`blockdev-snapshot-internal-sync`,
//! `blockdev-snapshot-delete-internal-sync`, several at once in a `transaction`).

use super::{str_of, u64_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};

/// Adds a block node (its JSON description, as `-blockdev` takes it).
pub async fn blockdev_add(q: &Qmp, node: Value) -> Result<(), QmpError> {
    unit(q, "blockdev-add", node).await
}

pub async fn blockdev_del(q: &Qmp, node_name: &str) -> Result<(), QmpError> {
    unit(q, "blockdev-del", json!({ "node-name": node_name })).await
}

/// Mirrors node `device` into node `target` (all of it, then every write to both until the job
/// ends: `copy-mode` write-blocking), as job `job_id`, which goes away by itself once ended.
pub async fn blockdev_mirror(q: &Qmp, job_id: &str, device: &str, target: &str) -> Result<(), QmpError> {
    let job = json!({
        "job-id": job_id, "device": device, "target": target, "sync": "full",
        "copy-mode": "write-blocking", "auto-dismiss": true,
    });
    unit(q, "blockdev-mirror", job).await
}

/// A block job as `query-block-jobs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJob {
    /// The job's id (QEMU's `device` member).
    pub id: String,
    /// A mirror in sync: what the guest writes now reaches both ends.
    pub ready: bool,
    /// Bytes done and to do.
    pub offset: u64,
    pub len: u64,
}

pub async fn query_block_jobs(q: &Qmp) -> Result<Vec<BlockJob>, QmpError> {
    let v = q.execute("query-block-jobs", Value::Null).await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|j| BlockJob {
            id: str_of(j, "device").to_string(),
            ready: j.get("ready").and_then(Value::as_bool).unwrap_or(false),
            offset: u64_of(j, "offset"),
            len: u64_of(j, "len"),
        })
        .collect())
}

/// Ends a job: a mirror in sync completes its copy first; `force` ends it wherever it is.
pub async fn block_job_cancel(q: &Qmp, job_id: &str, force: bool) -> Result<(), QmpError> {
    let mut args = json!({ "device": job_id });
    if force {
        args["force"] = json!(true);
    }
    unit(q, "block-job-cancel", args).await
}

/// Grows (or shrinks) node `node_name` to `size` bytes; the guest sees the new size at once.
pub async fn block_resize(q: &Qmp, node_name: &str, size: u64) -> Result<(), QmpError> {
    unit(q, "block_resize", json!({ "node-name": node_name, "size": size })).await
}

/// Sets a device's I/O limits (`args` as `block_set_io_throttle` takes them).
pub async fn block_set_io_throttle(q: &Qmp, args: Value) -> Result<(), QmpError> {
    unit(q, "block_set_io_throttle", args).await
}

/// The I/O figures of one disk device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// The device's id (`disk0`, or the id the disk was given).
    pub id: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_time_ns: u64,
    pub write_time_ns: u64,
}

/// The figures of every disk device (`query-blockstats`).
pub async fn query_blockstats(q: &Qmp) -> Result<Vec<DiskStats>, QmpError> {
    Ok(parse_blockstats(&q.execute("query-blockstats", Value::Null).await?))
}

/// `query-blockstats`' reply, by device id; nodes that are no device's are left out.
pub fn parse_blockstats(v: &Value) -> Vec<DiskStats> {
    let Some(list) = v.as_array() else { return Vec::new() };
    list.iter()
        .filter_map(|d| {
            // "/machine/peripheral/disk0/virtio-backend" or "/machine/peripheral/disk0".
            let qdev = d.get("qdev")?.as_str()?;
            let id = qdev.strip_prefix("/machine/peripheral/")?.split('/').next()?.to_string();
            let s = d.get("stats")?;
            Some(DiskStats {
                id,
                read_bytes: u64_of(s, "rd_bytes"),
                write_bytes: u64_of(s, "wr_bytes"),
                read_ops: u64_of(s, "rd_operations"),
                write_ops: u64_of(s, "wr_operations"),
                read_time_ns: u64_of(s, "rd_total_time_ns"),
                write_time_ns: u64_of(s, "wr_total_time_ns"),
            })
        })
        .collect()
}

/// Takes internal snapshot `name` of node `device` (a qcow2 image, in the image itself).
pub async fn snapshot_internal(q: &Qmp, device: &str, name: &str) -> Result<(), QmpError> {
    unit(q, "blockdev-snapshot-internal-sync", json!({ "device": device, "name": name })).await
}

/// Takes internal snapshot `name` of every node in `devices` at one instant, or of none.
pub async fn snapshot_internal_all(q: &Qmp, devices: &[String], name: &str) -> Result<(), QmpError> {
    let actions: Vec<Value> = devices
        .iter()
        .map(|d| json!({ "type": "blockdev-snapshot-internal-sync", "data": { "device": d, "name": name } }))
        .collect();
    unit(q, "transaction", json!({ "actions": actions })).await
}

pub async fn snapshot_delete_internal(q: &Qmp, device: &str, name: &str) -> Result<(), QmpError> {
    unit(q, "blockdev-snapshot-delete-internal-sync", json!({ "device": device, "name": name })).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockstats_by_device_id() {
        let v = json!([
            { "device": "", "qdev": "/machine/peripheral/disk0/virtio-backend", "node-name": "disk0-fmt",
              "stats": { "rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2, "rd_total_time_ns": 5, "wr_total_time_ns": 7 } },
            { "device": "", "qdev": "/machine/peripheral/disk1", "stats": { "rd_bytes": 3 } },
            { "device": "x", "stats": {} }
        ]);
        let d = parse_blockstats(&v);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].id.as_str(), d[0].read_bytes, d[0].write_ops, d[0].write_time_ns), ("disk0", 512, 2, 7));
        assert_eq!((d[1].id.as_str(), d[1].read_bytes), ("disk1", 3));
        assert!(parse_blockstats(&json!({})).is_empty());
    }
}
