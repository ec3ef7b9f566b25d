//! Guest memory through the balloon device: `balloon`, `query-balloon`, and the balloon
//! driver's own figures (QOM `guest-stats`).

use super::{devices, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};

/// The QOM path of the balloon device oxvirt gives a VM (`-device virtio-balloon-…,id=balloon0`).
pub const BALLOON_PATH: &str = "/machine/peripheral/balloon0";

/// Asks the guest to give memory back until it has `bytes`.
pub async fn balloon(q: &Qmp, bytes: u64) -> Result<(), QmpError> {
    unit(q, "balloon", json!({ "value": bytes })).await
}

/// The memory the guest has now (after what its balloon holds), in bytes.
pub async fn query_balloon(q: &Qmp) -> Result<u64, QmpError> {
    let v = q.execute("query-balloon", Value::Null).await?;
    v.get("actual").and_then(Value::as_u64).ok_or_else(|| QmpError::Protocol(format!("query-balloon: {v}")))
}

/// What the guest's balloon driver last reported, in bytes (`None` until it has).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestMemory {
    pub free: Option<u64>,
    pub total: Option<u64>,
}

pub async fn balloon_guest_stats(q: &Qmp) -> Result<GuestMemory, QmpError> {
    let v = devices::qom_get(q, BALLOON_PATH, "guest-stats").await?;
    // -1 until the guest has reported.
    let stat = |k: &str| v["stats"][k].as_i64().and_then(|n| u64::try_from(n).ok());
    Ok(GuestMemory { free: stat("stat-free-memory"), total: stat("stat-total-memory") })
}

/// How often the guest's balloon driver reports its figures.
pub async fn set_balloon_stats_interval(q: &Qmp, seconds: u32) -> Result<(), QmpError> {
    devices::qom_set(q, BALLOON_PATH, "guest-stats-polling-interval", json!(seconds)).await
}
