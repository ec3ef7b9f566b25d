//! Pools, volumes and their snapshots: one typed call per route, the bodies the model's wire
//! types (the same the API parses), every name percent-encoded into its path.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{
    ByteSize, CloneRequest, ExportRequest, ImportRequest, NewSnapshot, PoolSpec, PoolView, Task, Volume, VolumeResize,
    VolumeSpec,
};

/// What a clone gave: the volume at once (linked) or the task that copies it (full).
#[derive(Debug, Clone, PartialEq)]
pub enum Cloned {
    Volume(Volume),
    Copying(Task),
}

fn pool_path(pool: &str) -> String {
    format!("/api/v1/pools/{}", encode(pool))
}

fn volume_path(pool: &str, name: &str) -> String {
    format!("{}/volumes/{}", pool_path(pool), encode(name))
}

/// Pools, volumes, clones, imports, exports and volume snapshots: `client.storage()`.
#[derive(Clone, Copy)]
pub struct Storage<'a> {
    client: &'a Client,
}

impl Client {
    /// Pools, volumes, clones, imports, exports and volume snapshots.
    pub fn storage(&self) -> Storage<'_> {
        Storage { client: self }
    }
}

impl Storage<'_> {
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<PoolView, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/pools", spec).await
    }

    pub async fn list_pools(&self) -> Result<Vec<PoolView>, ClientError> {
        self.client.get("/api/v1/pools").await
    }

    pub async fn get_pool(&self, pool: &str) -> Result<PoolView, ClientError> {
        self.client.get(&pool_path(pool)).await
    }

    pub async fn delete_pool(&self, pool: &str) -> Result<(), ClientError> {
        self.client.delete(&pool_path(pool)).await
    }

    pub async fn create_volume(&self, pool: &str, spec: &VolumeSpec) -> Result<Volume, ClientError> {
        self.client.call_with(Method::POST, &format!("{}/volumes", pool_path(pool)), spec).await
    }

    pub async fn list_volumes(&self, pool: &str) -> Result<Vec<Volume>, ClientError> {
        self.client.get(&format!("{}/volumes", pool_path(pool))).await
    }

    pub async fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, ClientError> {
        self.client.get(&volume_path(pool, name)).await
    }

    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), ClientError> {
        self.client.delete(&volume_path(pool, name)).await
    }

    pub async fn resize_volume(&self, pool: &str, name: &str, size: ByteSize) -> Result<Volume, ClientError> {
        self.client.call_with(Method::PATCH, &volume_path(pool, name), &VolumeResize { size }).await
    }

    pub async fn clone_volume(&self, pool: &str, name: &str, req: &CloneRequest) -> Result<Cloned, ClientError> {
        let v: serde_json::Value =
            self.client.call_with(Method::POST, &format!("{}/clone", volume_path(pool, name)), req).await?;
        // A task has a kind and a state; a volume has neither.
        let decode = |e: serde_json::Error| ClientError::Decode(format!("{e}: {v}"));
        if v.get("kind").is_some() && v.get("state").is_some() {
            Ok(Cloned::Copying(serde_json::from_value(v.clone()).map_err(decode)?))
        } else {
            Ok(Cloned::Volume(serde_json::from_value(v.clone()).map_err(decode)?))
        }
    }

    pub async fn import_volume(&self, pool: &str, req: &ImportRequest) -> Result<Task, ClientError> {
        self.client.call_with(Method::POST, &format!("{}/import", pool_path(pool)), req).await
    }

    pub async fn export_volume(&self, pool: &str, name: &str, req: &ExportRequest) -> Result<Task, ClientError> {
        self.client.call_with(Method::POST, &format!("{}/export", volume_path(pool, name)), req).await
    }

    pub async fn snapshot_volume(&self, pool: &str, name: &str, snapshot: &str) -> Result<Volume, ClientError> {
        let req = NewSnapshot { name: snapshot.to_string() };
        self.client.call_with(Method::POST, &format!("{}/snapshots", volume_path(pool, name)), &req).await
    }

    pub async fn revert_volume(&self, pool: &str, name: &str, snapshot: &str) -> Result<Volume, ClientError> {
        let path = format!("{}/snapshots/{}/revert", volume_path(pool, name), encode(snapshot));
        self.client.call(Method::POST, &path, None).await
    }

    pub async fn delete_volume_snapshot(&self, pool: &str, name: &str, snapshot: &str) -> Result<Volume, ClientError> {
        self.client.delete_json(&format!("{}/snapshots/{}", volume_path(pool, name), encode(snapshot))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_into_their_paths() {
        assert_eq!(volume_path("p", "a b/c"), "/api/v1/pools/p/volumes/a%20b%2Fc");
        assert_eq!(pool_path("../x"), "/api/v1/pools/..%2Fx");
    }

    fn body<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn bodies_are_the_wire_types_the_api_parses() {
        let req = CloneRequest { name: "c".into(), pool: None, linked: false };
        assert_eq!(body(&req), serde_json::json!({ "name": "c", "pool": null, "linked": false }));
        assert_eq!(body(&VolumeResize { size: ByteSize(1 << 30) }), serde_json::json!({ "size": 1073741824u64 }));
    }
}
