//! Templates: taking one of a quiet microvm, listing, forgetting. A VM is made from one with
//! `create_vm` and `template` in its spec.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{Task, TemplatePool, TemplateRequest, TemplateView};

/// Templates: `client.templates()`.
#[derive(Clone, Copy)]
pub struct Templates<'a> {
    client: &'a Client,
}

impl Client {
    /// Templates of microvms.
    pub fn templates(&self) -> Templates<'_> {
        Templates { client: self }
    }
}

impl Templates<'_> {
    /// Takes template `name` of running VM `from`: the task doing it.
    pub async fn create(&self, name: &str, from: &str) -> Result<Task, ClientError> {
        let req = TemplateRequest { name: name.into(), from: from.into() };
        self.client.call_with(Method::POST, "/api/v1/templates", &req).await
    }

    pub async fn list(&self) -> Result<Vec<TemplateView>, ClientError> {
        self.client.get("/api/v1/templates").await
    }

    pub async fn get(&self, name: &str) -> Result<TemplateView, ClientError> {
        self.client.get(&format!("/api/v1/templates/{}", encode(name))).await
    }

    /// Keeps `size` VMs restored from template `name` and paused, ready for creates that start
    /// at once (administrators).
    pub async fn set_pool(&self, name: &str, size: u32) -> Result<TemplateView, ClientError> {
        let path = format!("/api/v1/templates/{}/pool", encode(name));
        self.client.call_with(Method::PUT, &path, &TemplatePool { size }).await
    }

    pub async fn remove(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/templates/{}", encode(name))).await
    }
}
