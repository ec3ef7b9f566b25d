//! High availability: HA resources (VMs kept at a state) and HA groups.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{HaGroup, HaGroupSpec, HaResource, HaResourceSpec};

/// High availability: `client.ha()`.
#[derive(Clone, Copy)]
pub struct Ha<'a> {
    client: &'a Client,
}

impl Client {
    /// High availability: HA resources and groups.
    pub fn ha(&self) -> Ha<'_> {
        Ha { client: self }
    }
}

impl Ha<'_> {
    pub async fn add_resource(&self, spec: &HaResourceSpec) -> Result<HaResource, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/ha/resources", spec).await
    }

    pub async fn set_resource(&self, spec: &HaResourceSpec) -> Result<HaResource, ClientError> {
        self.client.call_with(Method::PUT, &format!("/api/v1/ha/resources/{}", encode(&spec.vm)), spec).await
    }

    pub async fn list_resources(&self) -> Result<Vec<HaResource>, ClientError> {
        self.client.get("/api/v1/ha/resources").await
    }

    pub async fn get_resource(&self, vm: &str) -> Result<HaResource, ClientError> {
        self.client.get(&format!("/api/v1/ha/resources/{}", encode(vm))).await
    }

    pub async fn remove_resource(&self, vm: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/ha/resources/{}", encode(vm))).await
    }

    pub async fn add_group(&self, spec: &HaGroupSpec) -> Result<HaGroup, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/ha/groups", spec).await
    }

    pub async fn list_groups(&self) -> Result<Vec<HaGroup>, ClientError> {
        self.client.get("/api/v1/ha/groups").await
    }

    pub async fn get_group(&self, name: &str) -> Result<HaGroup, ClientError> {
        self.client.get(&format!("/api/v1/ha/groups/{}", encode(name))).await
    }

    pub async fn remove_group(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/ha/groups/{}", encode(name))).await
    }
}
