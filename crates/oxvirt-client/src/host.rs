//! The host: what it is, and the latest figures of it and its VMs.

use crate::vms::vm_path;
use crate::{Client, ClientError};
use oxvirt_model::{HostInfo, HostSample, VmSample};
use serde_json::Value;

impl Client {
    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.get("/api/v1/host").await
    }

    /// The latest figures of the host and of every VM (`{"host": ..., "vms": [{"vm", "sample"}]}`).
    pub async fn top(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/top").await
    }

    /// The host's figures over the last hour (5 s steps).
    pub async fn host_history(&self) -> Result<Vec<HostSample>, ClientError> {
        self.get("/api/v1/host/history").await
    }

    /// A VM's figures over the last hour (5 s steps).
    pub async fn vm_history(&self, name: &str) -> Result<Vec<VmSample>, ClientError> {
        self.get(&format!("{}/history", vm_path(name))).await
    }
}
