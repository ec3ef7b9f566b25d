//! NBD exports of block nodes: the built-in server (`nbd-server-start`, `nbd-server-stop`) and
//! exports (`block-export-add`, `block-export-del`, `query-block-exports`).

use super::{str_of, unit};
use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use std::time::Duration;

/// Starts QEMU's NBD server on `host:port`; with `tls_creds`, clients must do TLS with those
/// credentials (and show a certificate when they ask for one).
pub async fn nbd_server_start(q: &Qmp, host: &str, port: &str, tls_creds: Option<&str>) -> Result<(), QmpError> {
    // nbd-server-start takes the legacy address form (the data nested).
    let mut args = json!({ "addr": { "type": "inet", "data": { "host": host, "port": port } } });
    if let Some(c) = tls_creds {
        args["tls-creds"] = json!(c);
    }
    unit(q, "nbd-server-start", args).await
}

/// Starts the NBD server on a listening socket handed over before with `getfd` as `fd_name`.
pub async fn nbd_server_start_on_fd(q: &Qmp, fd_name: &str, tls_creds: Option<&str>) -> Result<(), QmpError> {
    let mut args = json!({ "addr": { "type": "fd", "data": { "str": fd_name } } });
    if let Some(c) = tls_creds {
        args["tls-creds"] = json!(c);
    }
    unit(q, "nbd-server-start", args).await
}

/// Stops the NBD server and every export it serves.
pub async fn nbd_server_stop(q: &Qmp) -> Result<(), QmpError> {
    unit(q, "nbd-server-stop", Value::Null).await
}

/// Serves node `node_name` as the NBD export `name` (export id `id`), writable or not.
pub async fn block_export_add(q: &Qmp, id: &str, node_name: &str, name: &str, writable: bool) -> Result<(), QmpError> {
    let args = json!({ "type": "nbd", "id": id, "node-name": node_name, "name": name, "writable": writable });
    unit(q, "block-export-add", args).await
}

/// Serves node `node_name` read-only as export `name` (id `id`) with its dirty bitmap `bitmap`
/// (found on the node or below it) as the meta context `qemu:dirty-bitmap:<bitmap>`.
pub async fn block_export_add_with_bitmap(
    q: &Qmp,
    id: &str,
    node_name: &str,
    name: &str,
    bitmap: Option<&str>,
) -> Result<(), QmpError> {
    let mut args = json!({ "type": "nbd", "id": id, "node-name": node_name, "name": name, "writable": false });
    if let Some(b) = bitmap {
        args["bitmaps"] = json!([b]);
    }
    unit(q, "block-export-add", args).await
}

/// Ends export `id` at once (its clients are cut off) and waits up to `wait` until QEMU says
/// it is gone (`BLOCK_EXPORT_DELETED`), so that its node can go next.
pub async fn block_export_del(q: &Qmp, id: &str, wait: Duration) -> Result<(), QmpError> {
    let mut events = q.subscribe();
    unit(q, "block-export-del", json!({ "id": id, "mode": "hard" })).await?;
    let _ = tokio::time::timeout(wait, async {
        while let Ok(e) = events.recv().await {
            if e.name == "BLOCK_EXPORT_DELETED" && e.data["id"] == id {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// The ids of the exports being served.
pub async fn query_block_exports(q: &Qmp) -> Result<Vec<String>, QmpError> {
    let v = q.execute("query-block-exports", Value::Null).await?;
    Ok(v.as_array().into_iter().flatten().map(|e| str_of(e, "id").to_string()).filter(|s| !s.is_empty()).collect())
}
