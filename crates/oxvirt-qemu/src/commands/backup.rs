//! Backups: dirty bitmaps (`block-dirty-bitmap-add`, `-remove`, `-merge`, `-disable`), the
//! copy-before-write job that freezes a disk for a reader (`blockdev-backup` with sync `none`:
//! "image fleecing"), several started at one instant in a `transaction`, and what each node
//! tracks (`query-named-block-nodes`).

use super::{str_of, u64_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};

/// A dirty bitmap of a node, as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    /// Recording the guest's writes now (enabled).
    pub recording: bool,
    /// Kept in the image (qcow2) across restarts.
    pub persistent: bool,
    /// Not to be trusted: QEMU stopped without saving it (a crash), so writes may be missing.
    pub inconsistent: bool,
    /// Bytes one bit stands for.
    pub granularity: u64,
}

/// A block node with its size and bitmaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub virtual_size: u64,
    pub format: String,
    pub bitmaps: Vec<Bitmap>,
}

/// Every named node, its size and bitmaps.
pub async fn query_named_block_nodes(q: &Qmp) -> Result<Vec<NodeInfo>, QmpError> {
    Ok(parse_nodes(&q.execute("query-named-block-nodes", json!({ "flat": true })).await?))
}

/// `query-named-block-nodes`' reply read into [`NodeInfo`]s.
pub fn parse_nodes(v: &Value) -> Vec<NodeInfo> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|n| NodeInfo {
            node: str_of(n, "node-name").to_string(),
            virtual_size: n.get("image").map(|i| u64_of(i, "virtual-size")).unwrap_or(0),
            format: str_of(n, "drv").to_string(),
            bitmaps: n
                .get("dirty-bitmaps")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|b| Bitmap {
                    name: str_of(b, "name").to_string(),
                    recording: b.get("recording").and_then(Value::as_bool).unwrap_or(false),
                    persistent: b.get("persistent").and_then(Value::as_bool).unwrap_or(false),
                    inconsistent: b.get("inconsistent").and_then(Value::as_bool).unwrap_or(false),
                    granularity: u64_of(b, "granularity"),
                })
                .collect(),
        })
        .collect()
}

/// One action of a backup's start, all taken at one instant or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// From now on, before the guest overwrites data of `source`, the old data goes to `target`
    /// (whose backing is `source`): `target` shows the disk as it is at this instant.
    CopyBeforeWrite { job_id: String, source: String, target: String },
    /// A new bitmap on `node`.
    AddBitmap { node: String, name: String, persistent: bool, disabled: bool, granularity: u64 },
    /// Bitmap `target` of `node` takes the bits of `sources` too.
    Merge { node: String, target: String, sources: Vec<String> },
    /// Bitmap `name` of `node` stops recording.
    Disable { node: String, name: String },
}

impl Action {
    fn to_json(&self) -> Value {
        match self {
            Action::CopyBeforeWrite { job_id, source, target } => json!({
                "type": "blockdev-backup",
                "data": { "job-id": job_id, "device": source, "target": target, "sync": "none", "auto-dismiss": true },
            }),
            Action::AddBitmap { node, name, persistent, disabled, granularity } => json!({
                "type": "block-dirty-bitmap-add",
                "data": { "node": node, "name": name, "persistent": persistent, "disabled": disabled, "granularity": granularity },
            }),
            Action::Merge { node, target, sources } => json!({
                "type": "block-dirty-bitmap-merge",
                "data": { "node": node, "target": target, "bitmaps": sources },
            }),
            Action::Disable { node, name } => json!({
                "type": "block-dirty-bitmap-disable",
                "data": { "node": node, "name": name },
            }),
        }
    }
}

/// Takes every action at one instant, or none.
pub async fn transaction(q: &Qmp, actions: &[Action]) -> Result<(), QmpError> {
    let actions: Vec<Value> = actions.iter().map(Action::to_json).collect();
    unit(q, "transaction", json!({ "actions": actions })).await
}

/// Removes bitmap `name` of `node` (from its image too, if persistent).
pub async fn bitmap_remove(q: &Qmp, node: &str, name: &str) -> Result<(), QmpError> {
    unit(q, "block-dirty-bitmap-remove", json!({ "node": node, "name": name })).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_with_their_bitmaps() {
        let v = json!([
            { "node-name": "disk0-fmt", "drv": "qcow2", "image": { "virtual-size": 1073741824 },
              "dirty-bitmaps": [
                { "name": "oxvirt-backup-a", "recording": true, "persistent": true, "busy": false, "granularity": 4194304 },
                { "name": "old", "recording": false, "persistent": true, "inconsistent": true, "granularity": 65536 }
              ] },
            { "node-name": "disk0-file", "drv": "file" }
        ]);
        let n = parse_nodes(&v);
        assert_eq!(n.len(), 2);
        assert_eq!((n[0].node.as_str(), n[0].virtual_size, n[0].format.as_str()), ("disk0-fmt", 1 << 30, "qcow2"));
        assert_eq!(n[0].bitmaps[0].granularity, 4 << 20);
        assert!(n[0].bitmaps[0].recording && !n[0].bitmaps[0].inconsistent);
        assert!(n[0].bitmaps[1].inconsistent && !n[0].bitmaps[1].recording);
        assert!(n[1].bitmaps.is_empty());
    }

    #[test]
    fn actions_as_qemu_takes_them() {
        let a = Action::CopyBeforeWrite { job_id: "j".into(), source: "s".into(), target: "t".into() }.to_json();
        assert_eq!(a["type"], "blockdev-backup");
        assert_eq!(a["data"]["sync"], "none");
        let m = Action::Merge { node: "n".into(), target: "c".into(), sources: vec!["a".into(), "b".into()] }.to_json();
        assert_eq!(m["data"]["bitmaps"], json!(["a", "b"]));
    }
}
