//! QEMU's QMP vocabulary as oxvirt speaks it: one typed function per command (as Incus's
//! `internal/server/instance/drivers/qmp/commands.go`), shared by the hypervisor driver
//! (qemu-system) and the storage layer (qemu-storage-daemon). No other crate spells a command's
//! name; [`Qmp::execute`](crate::qmp::Qmp::execute) stays for tests and benchmarks that drive
//! QEMU by hand.
//!
//! Each module is one concern: the guest's run state ([`run`]), devices and their back-ends
//! ([`devices`]), block nodes, jobs and snapshots ([`block`]), backups' bitmaps and
//! copy-before-write ([`backup`]), NBD exports ([`nbd`]), memory
//! ([`memory`]) and migration ([`migration`]). Replies are read into types; a member QEMU
//! leaves out reads as its default, never as a panic.

pub mod backup;
pub mod block;
pub mod devices;
pub mod memory;
pub mod migration;
pub mod nbd;
pub mod run;

use crate::qmp::{Qmp, QmpError};
use serde_json::Value;

/// Runs a command whose reply carries nothing oxvirt reads.
async fn unit(q: &Qmp, command: &str, args: Value) -> Result<(), QmpError> {
    q.execute(command, args).await.map(drop)
}

/// The unsigned integer member `key` of a reply (0 when QEMU leaves it out).
fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The string member `key` of a reply ("" when QEMU leaves it out).
fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}
