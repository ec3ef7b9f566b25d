//! A VM's share of the host and its balloon; the host's resource policy and resources.

use crate::vms::vm_path;
use crate::{Client, ClientError};
use hyper::Method;
use oxvirt_model::{BalloonTarget, BalloonView, ByteSize, HostPolicy, HostResources, Resources, Vm};

/// A VM's share of the host and its balloon; the host's resource policy and resources: `client.resources()`.
#[derive(Clone, Copy)]
pub struct ResourceControl<'a> {
    client: &'a Client,
}

impl Client {
    /// A VM's share of the host and its balloon; the host's resource policy and resources.
    pub fn resources(&self) -> ResourceControl<'_> {
        ResourceControl { client: self }
    }
}

impl ResourceControl<'_> {
    /// Replaces a VM's resources (CPU weight, cap, pinning, memory limit...), live where it can be.
    pub async fn set_vm_resources(&self, name: &str, resources: &Resources) -> Result<Vm, ClientError> {
        self.client.call_with(Method::PUT, &format!("{}/resources", vm_path(name)), resources).await
    }

    /// A running VM's balloon: memory now and the guest's figures.
    pub async fn vm_balloon(&self, name: &str) -> Result<BalloonView, ClientError> {
        self.client.get(&format!("{}/balloon", vm_path(name))).await
    }

    /// Sets a running VM's balloon target; the balloon as [`Client::vm_balloon`] shows it.
    pub async fn set_vm_balloon(&self, name: &str, target: ByteSize) -> Result<BalloonView, ClientError> {
        self.client.call_with(Method::PUT, &format!("{}/balloon", vm_path(name)), &BalloonTarget { target }).await
    }

    pub async fn host_policy(&self) -> Result<HostPolicy, ClientError> {
        self.client.get("/api/v1/host/policy").await
    }

    pub async fn set_host_policy(&self, policy: &HostPolicy) -> Result<HostPolicy, ClientError> {
        self.client.call_with(Method::PUT, "/api/v1/host/policy", policy).await
    }

    /// Committed vCPUs and memory, NUMA nodes, KSM, huge pages.
    pub async fn host_resources(&self) -> Result<HostResources, ClientError> {
        self.client.get("/api/v1/host/resources").await
    }
}
