//! Migration over TLS (`store.migration_tls_dir`): both ends' QEMUs hold the cluster's
//! credentials from their start (`TLS_SERVER_CREDS`, `TLS_CLIENT_CREDS`); the target listens and
//! serves the disk copies with the server's, which require a client certificate of the cluster's
//! CA, and the source sends and mirrors with the client's, checking the target's certificate
//! against the target's address. Hosts with and without it do not migrate to each other: that
//! would be in plaintext.

use crate::cluster::HostRecord;
use crate::{ControlError, Controller};
use oxvirt_hypervisor::qemu::cmdline::{TLS_CLIENT_CREDS, TLS_SERVER_CREDS};
use oxvirt_hypervisor::Instance;
use serde_json::json;

/// Which end of a migration a QEMU is.
#[derive(Clone, Copy)]
pub(crate) enum End {
    Source,
    Target,
}

impl End {
    fn creds(self) -> &'static str {
        match self {
            End::Source => TLS_CLIENT_CREDS,
            End::Target => TLS_SERVER_CREDS,
        }
    }
}

impl Controller {
    /// Whether this host's migrations go over TLS.
    pub(crate) fn migration_tls(&self) -> bool {
        self.inner.config.migration_tls
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

/// The migration stream of `instance` goes over TLS with its end's credentials (set before
/// anything is sent on the source, before `migrate-incoming` on the target). A QEMU started
/// before the host had migration TLS has no credentials: it cannot migrate until it restarts.
pub(crate) async fn set_stream_tls(instance: &dyn Instance, end: End) -> Result<(), ControlError> {
    instance.command("migrate-set-parameters", json!({ "tls-creds": end.creds() })).await.map_err(|e| {
        ControlError::Conflict(format!(
            "migration over TLS: this VM's QEMU has no TLS credentials {} (started before store.migration_tls_dir was set? stop and start it): {e}",
            end.creds()
        ))
    })?;
    Ok(())
}

/// Adds the credentials to a QMP command's arguments when TLS is on (`nbd-server-start` on the
/// target, the NBD `blockdev-add` on the source).
pub(crate) fn with_creds(mut args: serde_json::Value, tls: bool, end: End) -> serde_json::Value {
    if tls {
        args["tls-creds"] = json!(end.creds());
    }
    args
}
