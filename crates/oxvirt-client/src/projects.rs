//! Projects (tenants) and their quotas; a project comes back with what its VMs hold.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{ProjectSpec, ProjectView};

/// Projects (tenants) and their quotas: `client.projects()`.
#[derive(Clone, Copy)]
pub struct Projects<'a> {
    client: &'a Client,
}

impl Client {
    /// Projects (tenants) and their quotas.
    pub fn projects(&self) -> Projects<'_> {
        Projects { client: self }
    }
}

impl Projects<'_> {
    pub async fn create_project(&self, spec: &ProjectSpec) -> Result<ProjectView, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/projects", spec).await
    }

    pub async fn list_projects(&self) -> Result<Vec<ProjectView>, ClientError> {
        self.client.get("/api/v1/projects").await
    }

    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/projects/{}", encode(name))).await
    }
}
