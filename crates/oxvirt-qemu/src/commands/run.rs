//! The guest's run state: `query-status`, `stop`, `cont`, `system_powerdown`, `system_reset`,
//! `quit`.

use super::{str_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::Value;
use std::time::Duration;

/// QEMU's run state (`query-status`'s `status`: `running`, `paused`, `inmigrate`,
/// `guest-panicked`...).
pub async fn query_status(q: &Qmp) -> Result<String, QmpError> {
    let v = q.execute("query-status", Value::Null).await?;
    Ok(str_of(&v, "status").to_string())
}

/// Pauses the guest's vCPUs.
pub async fn stop(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "stop", Value::Null).await
}

/// Runs the guest's vCPUs again (and, for a guest that arrived by migration and is still
/// paused, takes its disks over first).
pub async fn cont(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "cont", Value::Null).await
}

/// Presses the ACPI power button.
pub async fn system_powerdown(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "system_powerdown", Value::Null).await
}

/// Resets the machine, as its reset button would.
pub async fn system_reset(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "system_reset", Value::Null).await
}

/// Asks QEMU to exit (closing its files), waiting at most `timeout` for its answer.
pub async fn quit(q: &Qmp, timeout: Duration) -> Result<(), QmpError> {
    q.execute_with_timeout("quit", Value::Null, timeout).await.map(drop)
}
