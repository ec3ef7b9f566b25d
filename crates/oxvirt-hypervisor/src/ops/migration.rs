//! Live migration, both ends: the stream (pre-copy, pause before the switch-over, post-copy),
//! its TLS, and the copies of local disks (served by the target, mirrored into by the source).

use crate::HvError;

pub use oxvirt_qemu::commands::migration::{Info as MigrationInfo, Status as MigrationStatus};

/// Which end of a migration a guest is: TLS credentials differ (the target serves, the source
/// connects and shows its certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Source,
    Target,
}

/// How the source sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    pub auto_converge: bool,
    pub postcopy: bool,
    /// Pause before the switch-over ([`MigrationStatus::PreSwitchover`]) until
    /// [`MigrationOps::continue_switchover`]: time to finish the disk mirrors.
    pub pause_before_switchover: bool,
    pub downtime_ms: u64,
    /// Bytes per second; 0: as fast as the link goes.
    pub max_bandwidth: u64,
}

/// One local disk's mirror on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorJob {
    pub disk_id: String,
    /// In sync: the guest's writes now reach both copies.
    pub ready: bool,
    pub done: u64,
    pub total: u64,
}

#[async_trait::async_trait]
pub trait MigrationOps: Send + Sync {
    /// The stream (and disk copies) go over TLS with this end's credentials, given to the guest's
    /// process now (it holds none otherwise); fails on a host without migration TLS.
    async fn use_tls(&self, end: StreamEnd) -> Result<(), HvError>;
    /// The credentials of `end` go again (the migration is over): no TLS until [`Self::use_tls`].
    async fn drop_tls(&self, end: StreamEnd) -> Result<(), HvError>;
    /// Target, started to wait (`incoming` "defer"): listens on `uri` now.
    async fn listen(&self, uri: &str) -> Result<(), HvError>;
    /// Target, before the source connects: accepts a migration that switches to post-copy;
    /// with `hold_disks`, takes the disks over only when resumed (their copies are still served
    /// when the stream ends; the guest is started paused for that).
    async fn prepare_to_receive(&self, postcopy: bool, hold_disks: bool) -> Result<(), HvError>;
    /// Target: serves the (empty) copies of `disk_ids` on `listener` (bound by the caller: no
    /// port lost between finding it free and binding it), writable, for the source's mirrors.
    async fn serve_disks(&self, listener: std::net::TcpListener, disk_ids: &[String], tls: bool)
        -> Result<(), HvError>;
    /// Target, once the guest is here: the copies are served no more.
    async fn stop_serving_disks(&self) -> Result<(), HvError>;

    /// Source: mirrors disk `disk_id` into the target's copy served on `host:port`.
    async fn mirror_disk(&self, disk_id: &str, host: &str, port: &str, tls: bool) -> Result<(), HvError>;
    /// Source: the mirrors still running.
    async fn mirror_jobs(&self) -> Result<Vec<MirrorJob>, HvError>;
    /// Source: ends the mirror of `disk_id` once in sync (its copy complete), or at once
    /// (`abandon`: the guest goes on with its own disk, the copy is left as it is).
    async fn end_mirror(&self, disk_id: &str, abandon: bool) -> Result<(), HvError>;
    /// Source: lets go of the connection to the target's copy of `disk_id`.
    async fn drop_mirror_target(&self, disk_id: &str) -> Result<(), HvError>;
    /// Source: sends the guest to `uri` with `options`.
    async fn send(&self, uri: &str, options: &SendOptions) -> Result<(), HvError>;
    /// Either end: where the migration is.
    async fn migration_info(&self) -> Result<MigrationInfo, HvError>;
    /// Source: goes on from the pause before the switch-over.
    async fn continue_switchover(&self) -> Result<(), HvError>;
    /// Source: switches to post-copy (the guest runs on the target from now on).
    async fn start_postcopy(&self) -> Result<(), HvError>;
    /// Source: the migration stops; the guest runs on here.
    async fn cancel(&self) -> Result<(), HvError>;
}
