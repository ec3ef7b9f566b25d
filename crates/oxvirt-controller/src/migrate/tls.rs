//! Migration over TLS (`store.migration_tls_dir`): a QEMU is given its end's credentials of the
//! cluster only while it migrates (none holds them from its start): the target listens and
//! serves the disk copies with the server's, which require a client certificate of the cluster's
//! CA, and the source sends and mirrors with the client's, checking the target's certificate
//! against the target's address; the arrived guest's QEMU (or a source whose migration failed)
//! lets them go again. Hosts with and without it do not migrate to each other: that would be in
//! plaintext.

use crate::ControlError;
use oxvirt_hypervisor::ops::StreamEnd;
use oxvirt_hypervisor::Instance;
use oxvirt_model::HostRecord;

impl crate::Migrations {
    /// Whether this host's migrations go over TLS.
    pub(crate) fn migration_tls(&self) -> bool {
        self.ctl.inner.config.migration_tls
    }

    /// Refuses a migration with `peer` unless both or neither use TLS (`field` names the
    /// request's field for a source's error).
    pub(crate) fn check_peer_tls(&self, field: &str, peer: &HostRecord) -> Result<(), ControlError> {
        let why = match (self.migration_tls(), peer.migration_tls) {
            (true, false) => format!(
                "host {} migrates in plaintext (it has no store.migration_tls_dir) and this host only over TLS",
                peer.name
            ),
            (false, true) => {
                format!("host {} migrates only over TLS and this host has no store.migration_tls_dir", peer.name)
            }
            _ => return Ok(()),
        };
        Err(ControlError::invalid(field, why))
    }
}

/// The migration stream of `instance` goes over TLS with its end's credentials, given to it now
/// (before anything is sent on the source, before it listens on the target).
pub(crate) async fn set_stream_tls(instance: &dyn Instance, end: StreamEnd) -> Result<(), ControlError> {
    instance.migration().use_tls(end).await.map_err(|e| ControlError::Failed(e.to_string()))
}

/// The migration is over for `instance`: its credentials go.
pub(crate) async fn drop_stream_tls(instance: &dyn Instance, end: StreamEnd) {
    if let Err(e) = instance.migration().drop_tls(end).await {
        tracing::debug!("migration credentials: {e}");
    }
}
