//! Devices and their back-ends: `device_add`, `device_del`, `netdev_add`, `netdev_del`,
//! descriptors handed over (`getfd`, `add-fd`, `query-fdsets`, `remove-fd`), QOM properties
//! (`qom-get`, `qom-set`), `query-cpus-fast` and whether a character device has a client
//! (`query-chardev`).

use super::{u64_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use std::os::fd::RawFd;

/// Adds a device (its JSON description, as `-device` takes it).
pub async fn device_add(q: &Qmp, device: Value) -> Result<(), QmpError> {
    unit(q, "device_add", device).await
}

/// Asks the guest to release device `id` (QEMU says `DEVICE_DELETED` once it has).
pub async fn device_del(q: &Qmp, id: &str) -> Result<(), QmpError> {
    unit(q, "device_del", json!({ "id": id })).await
}

/// Adds a network back-end (its `-netdev` options as a JSON object).
pub async fn netdev_add(q: &Qmp, netdev: Value) -> Result<(), QmpError> {
    unit(q, "netdev_add", netdev).await
}

pub async fn netdev_del(q: &Qmp, id: &str) -> Result<(), QmpError> {
    unit(q, "netdev_del", json!({ "id": id })).await
}

/// Hands QEMU an open descriptor under a name (for `fds=` of a TAP back-end).
pub async fn getfd(q: &Qmp, name: &str, fd: RawFd) -> Result<(), QmpError> {
    q.execute_with_fd("getfd", json!({ "fdname": name }), fd).await.map(drop)
}

/// Puts an open descriptor in a new fd set marked `opaque`; returns the set's id
/// (`/dev/fdset/ID` then names the file).
pub async fn add_fd(q: &Qmp, opaque: &str, fd: RawFd) -> Result<u32, QmpError> {
    let r = q.execute_with_fd("add-fd", json!({ "opaque": opaque }), fd).await?;
    r.get("fdset-id")
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| QmpError::Protocol(format!("add-fd answered without an fdset-id: {r}")))
}

/// The ids of the fd sets holding a descriptor marked `opaque`.
pub async fn fdsets_marked(q: &Qmp, opaque: &str) -> Result<Vec<u64>, QmpError> {
    let sets = q.execute("query-fdsets", Value::Null).await?;
    Ok(sets
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["fds"].as_array().into_iter().flatten().any(|f| f["opaque"].as_str() == Some(opaque)))
        .filter_map(|s| s["fdset-id"].as_u64())
        .collect())
}

pub async fn remove_fd(q: &Qmp, fdset: u64) -> Result<(), QmpError> {
    unit(q, "remove-fd", json!({ "fdset-id": fdset })).await
}

/// Whether the socket character device `label` has a client connected now (QEMU names a
/// listening one without a client `disconnected:...`). None: no such device.
pub async fn chardev_connected(q: &Qmp, label: &str) -> Result<Option<bool>, QmpError> {
    let all = q.execute("query-chardev", Value::Null).await?;
    Ok(all.as_array().into_iter().flatten().find(|c| c["label"].as_str() == Some(label)).map(|c| {
        let filename = c["filename"].as_str().unwrap_or_default();
        !filename.starts_with("disconnected:")
    }))
}

/// A QOM property's value.
pub async fn qom_get(q: &Qmp, path: &str, property: &str) -> Result<Value, QmpError> {
    q.execute("qom-get", json!({ "path": path, "property": property })).await
}

pub async fn qom_set(q: &Qmp, path: &str, property: &str, value: Value) -> Result<(), QmpError> {
    unit(q, "qom-set", json!({ "path": path, "property": property, "value": value })).await
}

/// The host thread of each vCPU, in vCPU order (`query-cpus-fast`).
pub async fn vcpu_threads(q: &Qmp) -> Result<Vec<u32>, QmpError> {
    Ok(parse_vcpu_threads(&q.execute("query-cpus-fast", Value::Null).await?))
}

/// `query-cpus-fast`'s reply: the vCPUs' threads in vCPU order (vCPUs without one left out).
pub fn parse_vcpu_threads(v: &Value) -> Vec<u32> {
    let mut cpus: Vec<(u64, u32)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("cpu-index")?.as_u64()?, u32::try_from(u64_of(c, "thread-id")).ok()?)))
        .filter(|(_, t)| *t > 0)
        .collect();
    cpus.sort();
    cpus.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_in_vcpu_order() {
        let v = json!([{ "cpu-index": 1, "thread-id": 102 }, { "cpu-index": 0, "thread-id": 101 }, { "cpu-index": 2 }]);
        assert_eq!(parse_vcpu_threads(&v), [101, 102]);
        assert!(parse_vcpu_threads(&json!({})).is_empty());
    }
}
