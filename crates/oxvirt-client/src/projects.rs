//! Projects (tenants) and their quotas. A project comes back as JSON: its view (the project
//! with what its VMs hold) is the controller's type, not the model's.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::ProjectSpec;
use serde_json::Value;

impl Client {
    pub async fn create_project(&self, spec: &ProjectSpec) -> Result<Value, ClientError> {
        self.call_with(Method::POST, "/api/v1/projects", spec).await
    }

    pub async fn list_projects(&self) -> Result<Vec<Value>, ClientError> {
        self.get("/api/v1/projects").await
    }

    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/projects/{}", encode(name))).await
    }
}
