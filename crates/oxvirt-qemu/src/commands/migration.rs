//! Live migration: `migrate`, `migrate-incoming`, `migrate-set-capabilities`,
//! `migrate-set-parameters`, `query-migrate`, `migrate-continue`, `migrate-start-postcopy`,
//! `migrate_cancel`, and the TLS credentials a migration goes with (`object-add` of a
//! `tls-creds-x509`, `object-del`).

use super::{str_of, u64_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};

/// The migration capabilities oxvirt sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Slows the vCPUs down when memory is dirtied faster than it is sent.
    AutoConverge,
    /// Lets the guest run on the target before all its memory is there.
    PostcopyRam,
    /// Stops with the guest paused before the switch-over (`pre-switchover`), until
    /// [`migrate_continue`]: time to finish disk mirrors.
    PauseBeforeSwitchover,
    /// The target takes its disks over only when the guest is resumed (`cont`), not as soon as
    /// the stream is in: what still uses them (an NBD export of their copies) can go first.
    LateBlockActivate,
    /// `MIGRATION` events at each change of status: waits end on them, not on a poll.
    Events,
    /// Memory in shared files is not sent (both ends map the same file): a template's state.
    IgnoreShared,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::AutoConverge => "auto-converge",
            Capability::PostcopyRam => "postcopy-ram",
            Capability::PauseBeforeSwitchover => "pause-before-switchover",
            Capability::LateBlockActivate => "late-block-activate",
            Capability::Events => "events",
            Capability::IgnoreShared => "x-ignore-shared",
        }
    }
}

pub async fn migrate_set_capabilities(q: &Qmp, caps: &[(Capability, bool)]) -> Result<(), QmpError> {
    let list: Vec<Value> = caps.iter().map(|(c, on)| json!({ "capability": c.as_str(), "state": on })).collect();
    unit(q, "migrate-set-capabilities", json!({ "capabilities": list })).await
}

/// Migration parameters; those left `None` keep the value QEMU has (which an earlier migration
/// may have set: give every one that matters each time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parameters {
    /// The longest pause of the guest allowed at the switch-over, in ms.
    pub downtime_limit_ms: Option<u64>,
    /// Bytes per second.
    pub max_bandwidth: Option<u64>,
    /// The id of the `tls-creds-x509` object the stream goes over TLS with.
    pub tls_creds: Option<String>,
}

pub async fn migrate_set_parameters(q: &Qmp, p: &Parameters) -> Result<(), QmpError> {
    let mut args = serde_json::Map::new();
    if let Some(d) = p.downtime_limit_ms {
        args.insert("downtime-limit".into(), json!(d));
    }
    if let Some(b) = p.max_bandwidth {
        args.insert("max-bandwidth".into(), json!(b));
    }
    if let Some(c) = &p.tls_creds {
        args.insert("tls-creds".into(), json!(c));
    }
    unit(q, "migrate-set-parameters", Value::Object(args)).await
}

/// Adds `tls-creds-x509` object `id`, read now from `dir` (QEMU's layout: `ca-cert.pem`,
/// `server-*.pem` or `client-*.pem`); a server checks its peers' certificates.
pub async fn tls_creds_add(q: &Qmp, id: &str, dir: &str, server: bool) -> Result<(), QmpError> {
    let mut args = json!({ "qom-type": "tls-creds-x509", "id": id, "dir": dir,
                           "endpoint": if server { "server" } else { "client" } });
    if server {
        args["verify-peer"] = json!(true);
    }
    unit(q, "object-add", args).await
}

/// Removes object `id` (credentials no longer needed).
pub async fn object_del(q: &Qmp, id: &str) -> Result<(), QmpError> {
    unit(q, "object-del", json!({ "id": id })).await
}

/// Sends the guest to `uri` (`tcp:host:port`); [`query_migrate`] follows it.
pub async fn migrate(q: &Qmp, uri: &str) -> Result<(), QmpError> {
    unit(q, "migrate", json!({ "uri": uri })).await
}

/// A QEMU started with `-incoming defer` starts listening on `uri`.
pub async fn migrate_incoming(q: &Qmp, uri: &str) -> Result<(), QmpError> {
    unit(q, "migrate-incoming", json!({ "uri": uri })).await
}

/// Where a migration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// None asked for yet.
    None,
    /// Under way (`setup`, `active`, `postcopy-active`, `device`...).
    Active(String),
    /// Paused before the switch-over, waiting for [`migrate_continue`].
    PreSwitchover,
    Completed,
    /// Failed or cancelled, with QEMU's reason.
    Failed(String),
}

/// `query-migrate`'s reply, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub status: Status,
    pub ram_transferred: u64,
    pub ram_total: u64,
    /// Of a completed migration: all of it, and the guest's pause, in ms.
    pub total_time_ms: u64,
    pub downtime_ms: u64,
    /// How much auto-converge slows the vCPUs now, in percent.
    pub cpu_throttle_percentage: u64,
}

impl Info {
    pub fn from_reply(v: &Value) -> Info {
        let status = match str_of(v, "status") {
            "" | "none" => Status::None,
            "completed" => Status::Completed,
            "pre-switchover" => Status::PreSwitchover,
            "failed" | "cancelled" => {
                Status::Failed(v.get("error-desc").and_then(Value::as_str).unwrap_or("QEMU gave up").to_string())
            }
            other => Status::Active(other.to_string()),
        };
        let ram = v.get("ram").cloned().unwrap_or(Value::Null);
        Info {
            status,
            ram_transferred: u64_of(&ram, "transferred"),
            ram_total: u64_of(&ram, "total"),
            total_time_ms: u64_of(v, "total-time"),
            downtime_ms: u64_of(v, "downtime"),
            cpu_throttle_percentage: u64_of(v, "cpu-throttle-percentage"),
        }
    }
}

pub async fn query_migrate(q: &Qmp) -> Result<Info, QmpError> {
    Ok(Info::from_reply(&q.execute("query-migrate", Value::Null).await?))
}

/// Goes on from the `pre-switchover` pause.
pub async fn migrate_continue(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "migrate-continue", json!({ "state": "pre-switchover" })).await
}

/// Switches a running pre-copy migration to post-copy.
pub async fn migrate_start_postcopy(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "migrate-start-postcopy", Value::Null).await
}

pub async fn migrate_cancel(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "migrate_cancel", Value::Null).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_into_a_status() {
        let done = json!({ "status": "completed", "total-time": 1794, "downtime": 154, "ram": { "transferred": 5, "total": 9 } });
        let i = Info::from_reply(&done);
        assert_eq!(
            (i.status, i.total_time_ms, i.downtime_ms, i.ram_transferred, i.ram_total),
            (Status::Completed, 1794, 154, 5, 9)
        );
        let failed = Info::from_reply(&json!({ "status": "failed", "error-desc": "Unable to write" }));
        assert_eq!(failed.status, Status::Failed("Unable to write".into()));
        assert_eq!(Info::from_reply(&json!({ "status": "cancelled" })).status, Status::Failed("QEMU gave up".into()));
        assert_eq!(Info::from_reply(&json!({})).status, Status::None);
        let busy = Info::from_reply(&json!({ "status": "active", "cpu-throttle-percentage": 20 }));
        assert_eq!((busy.status, busy.cpu_throttle_percentage), (Status::Active("active".into()), 20));
        assert_eq!(Info::from_reply(&json!({ "status": "pre-switchover" })).status, Status::PreSwitchover);
    }
}
