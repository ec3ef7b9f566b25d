//! Projects (tenants) and their quotas; a project comes back with what its VMs hold.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{ProjectSpec, ProjectView};

impl Client {
    pub async fn create_project(&self, spec: &ProjectSpec) -> Result<ProjectView, ClientError> {
        self.call_with(Method::POST, "/api/v1/projects", spec).await
    }

    pub async fn list_projects(&self) -> Result<Vec<ProjectView>, ClientError> {
        self.get("/api/v1/projects").await
    }

    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/projects/{}", encode(name))).await
    }
}
