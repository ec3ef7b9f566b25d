//! The host: what it is, and the latest figures of it and its VMs.

use crate::{Client, ClientError};
use oxvirt_model::HostInfo;
use serde_json::Value;

impl Client {
    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.get("/api/v1/host").await
    }

    /// The latest figures of the host and of every VM (`{"host": ..., "vms": [{"vm", "sample"}]}`;
    /// JSON: the samples' types are the controller's, not the model's).
    pub async fn top(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/top").await
    }
}
