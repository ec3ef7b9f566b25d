//! VMs: their records and actions, the serial console, live migration, disks (attach, detach,
//! I/O limits) and snapshots of all of a VM's volumes at one instant.

use crate::{check, encode, ApiErrorBody, Client, ClientError, Io};
use hyper::Method;
use oxvirt_model::{DiskQos, DiskSpec, MigrateRequest, NewSnapshot, Task, TaskState, Vm, Volume};
use serde::Serialize;
use std::time::Duration;

/// What defining a VM gave: the VM, and the task that starts it when it was asked to start.
pub type Created = oxvirt_model::VmCreated;

/// An open serial console: send bytes as binary messages, receive what the guest prints.
pub type Console = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

pub(crate) fn vm_path(name: &str) -> String {
    format!("/api/v1/vms/{}", encode(name))
}

fn disk_path(name: &str, disk: &str) -> String {
    format!("{}/disks/{}", vm_path(name), encode(disk))
}

fn snapshot_path(name: &str, snapshot: &str) -> String {
    format!("{}/snapshots/{}", vm_path(name), encode(snapshot))
}

impl Client {
    /// Defines a VM, and starts it with `start`. `spec` is a [`oxvirt_model::VmSpec`], or JSON
    /// of one (tests send specs the model's types would not let them build).
    pub async fn create_vm<S: Serialize + ?Sized>(&self, spec: &S, start: bool) -> Result<Created, ClientError> {
        let path = if start { "/api/v1/vms?start=true" } else { "/api/v1/vms" };
        self.call_with(Method::POST, path, spec).await
    }

    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.get("/api/v1/vms").await
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&vm_path(name)).await
    }

    /// Changes a stopped VM: `update` is a [`oxvirt_model::VmUpdate`], or JSON of one.
    pub async fn update_vm<U: Serialize + ?Sized>(&self, name: &str, update: &U) -> Result<Vm, ClientError> {
        self.call_with(Method::PATCH, &vm_path(name), update).await
    }

    pub async fn delete_vm(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&vm_path(name)).await
    }

    pub async fn vm_action(&self, name: &str, action: &str) -> Result<Task, ClientError> {
        self.call(Method::POST, &format!("{}/actions/{}", vm_path(name), encode(action)), None).await
    }

    /// Runs an action and waits for its task; a failed task is an error.
    pub async fn vm_action_wait(&self, name: &str, action: &str, timeout: Duration) -> Result<Task, ClientError> {
        let t = self.vm_action(name, action).await?;
        let t = self.wait_task(&t.id, timeout).await?;
        match t.state {
            TaskState::Succeeded => Ok(t),
            _ => Err(ClientError::Api(ApiErrorBody {
                status: 500,
                code: "task-failed".into(),
                message: format!("{} {:?}: {}", t.kind, t.state, t.error.clone().unwrap_or_default()).to_lowercase(),
                field: None,
                rule: None,
            })),
        }
    }

    /// The last `bytes` of the VM's serial console output.
    pub async fn console_log(&self, name: &str, bytes: u64) -> Result<Vec<u8>, ClientError> {
        let path = format!("{}/console-log?bytes={bytes}", vm_path(name));
        let (status, body) = self.raw(Method::GET, &path, None).await?;
        check(status, &body)?;
        Ok(body.to_vec())
    }

    /// Opens the VM's interactive serial console (a WebSocket over the daemon's socket).
    pub async fn console(&self, name: &str) -> Result<Console, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let stream = self.transport.connect().await?;
        let url = format!("{}{}/console", self.transport.ws_base(), vm_path(name));
        let mut req = url.into_client_request().map_err(|e| ClientError::Http(e.to_string()))?;
        if let Some(auth) = self.transport.authorization() {
            let v = auth.parse().map_err(|_| ClientError::Http("token holds characters a header cannot".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                check(resp.status().as_u16(), &body)?;
                Err(ClientError::Http(format!("console refused with status {}", resp.status())))
            }
            Err(e) => Err(ClientError::Http(format!("console: {e}"))),
        }
    }

    /// Starts a live migration to host `to` with the defaults (a task).
    pub async fn migrate_vm(&self, name: &str, to: &str) -> Result<Task, ClientError> {
        self.migrate_vm_with(name, &MigrateRequest::new(to)).await
    }

    /// Starts a live migration as `req` says (a task).
    pub async fn migrate_vm_with(&self, name: &str, req: &MigrateRequest) -> Result<Task, ClientError> {
        self.call_with(Method::POST, &format!("{}/migrate", vm_path(name)), req).await
    }

    /// Attaches a disk (hot-plugged when the VM runs).
    pub async fn attach_disk(&self, name: &str, disk: &DiskSpec) -> Result<Vm, ClientError> {
        self.call_with(Method::POST, &format!("{}/disks", vm_path(name)), disk).await
    }

    pub async fn detach_disk(&self, name: &str, disk: &str) -> Result<Vm, ClientError> {
        self.delete_json(&disk_path(name, disk)).await
    }

    /// Sets a disk's I/O limits (live when the VM runs).
    pub async fn set_disk_qos(&self, name: &str, disk: &str, qos: &DiskQos) -> Result<Vm, ClientError> {
        self.call_with(Method::PUT, &format!("{}/qos", disk_path(name, disk)), qos).await
    }

    /// Snapshots all of the VM's volumes at one instant: the volumes with their new snapshot.
    pub async fn snapshot_vm(&self, name: &str, snapshot: &str) -> Result<Vec<Volume>, ClientError> {
        let req = NewSnapshot { name: snapshot.to_string() };
        self.call_with(Method::POST, &format!("{}/snapshots", vm_path(name)), &req).await
    }

    /// Reverts a stopped VM's volumes to a snapshot.
    pub async fn revert_vm(&self, name: &str, snapshot: &str) -> Result<Vec<Volume>, ClientError> {
        self.call(Method::POST, &format!("{}/revert", snapshot_path(name, snapshot)), None).await
    }

    pub async fn delete_vm_snapshot(&self, name: &str, snapshot: &str) -> Result<Vec<Volume>, ClientError> {
        self.delete_json(&snapshot_path(name, snapshot)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_into_their_paths() {
        assert_eq!(disk_path("a b", "disk/1"), "/api/v1/vms/a%20b/disks/disk%2F1");
        assert_eq!(snapshot_path("vm", "../s"), "/api/v1/vms/vm/snapshots/..%2Fs");
    }
}
