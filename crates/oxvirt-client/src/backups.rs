//! Backups: repositories, the backups in them, taking one of a VM and restoring one.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{
    Backup, BackupJob, BackupJobSpec, BackupRepo, BackupRepoKey, BackupRepoSpec, BackupRepoView, BackupRequest,
    PruneRequest, PruneResult, RestoreRequest, Task,
};

/// Backups: `client.backups()`.
#[derive(Clone, Copy)]
pub struct Backups<'a> {
    client: &'a Client,
}

impl Client {
    /// Backup repositories and backups.
    pub fn backups(&self) -> Backups<'_> {
        Backups { client: self }
    }
}

impl Backups<'_> {
    pub async fn create_repo(&self, spec: &BackupRepoSpec) -> Result<BackupRepo, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/backup-repos", spec).await
    }

    pub async fn list_repos(&self) -> Result<Vec<BackupRepoView>, ClientError> {
        self.client.get("/api/v1/backup-repos").await
    }

    pub async fn get_repo(&self, repo: &str) -> Result<BackupRepoView, ClientError> {
        self.client.get(&format!("/api/v1/backup-repos/{}", encode(repo))).await
    }

    /// An encrypted repository's key (administrators).
    pub async fn repo_key(&self, repo: &str) -> Result<BackupRepoKey, ClientError> {
        self.client.get(&format!("/api/v1/backup-repos/{}/key", encode(repo))).await
    }

    pub async fn remove_repo(&self, repo: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/backup-repos/{}", encode(repo))).await
    }

    /// The backups of `repo` (of VM `vm` only, if named), oldest first.
    pub async fn list(&self, repo: &str, vm: Option<&str>) -> Result<Vec<Backup>, ClientError> {
        let q = vm.map(|v| format!("?vm={}", encode(v))).unwrap_or_default();
        self.client.get(&format!("/api/v1/backup-repos/{}/backups{q}", encode(repo))).await
    }

    pub async fn get(&self, repo: &str, id: &str) -> Result<Backup, ClientError> {
        self.client.get(&format!("/api/v1/backup-repos/{}/backups/{}", encode(repo), encode(id))).await
    }

    pub async fn remove(&self, repo: &str, id: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/backup-repos/{}/backups/{}", encode(repo), encode(id))).await
    }

    /// Backs VM `vm` up into `repo`: the task doing it.
    pub async fn back_up(&self, vm: &str, repo: &str) -> Result<Task, ClientError> {
        let req = BackupRequest { repo: repo.to_string() };
        self.client.call_with(Method::POST, &format!("/api/v1/vms/{}/backup", encode(vm)), &req).await
    }

    /// Restores backup `id` of `repo` as the new VM `name` with its disks in `pool`: the task.
    pub async fn restore(&self, repo: &str, id: &str, name: &str, pool: &str) -> Result<Task, ClientError> {
        let req = RestoreRequest { name: name.to_string(), pool: pool.to_string() };
        let path = format!("/api/v1/backup-repos/{}/backups/{}/restore", encode(repo), encode(id));
        self.client.call_with(Method::POST, &path, &req).await
    }

    pub async fn prune(&self, repo: &str, req: &PruneRequest) -> Result<PruneResult, ClientError> {
        self.client.call_with(Method::POST, &format!("/api/v1/backup-repos/{}/prune", encode(repo)), req).await
    }

    /// Starts a garbage collection of `repo`: the task.
    pub async fn collect_garbage(&self, repo: &str) -> Result<Task, ClientError> {
        self.client.call_with(Method::POST, &format!("/api/v1/backup-repos/{}/gc", encode(repo)), &()).await
    }

    /// Starts a verification of `repo`: the task.
    pub async fn verify(&self, repo: &str) -> Result<Task, ClientError> {
        self.client.call_with(Method::POST, &format!("/api/v1/backup-repos/{}/verify", encode(repo)), &()).await
    }

    pub async fn create_job(&self, spec: &BackupJobSpec) -> Result<BackupJob, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/backup-jobs", spec).await
    }

    pub async fn set_job(&self, spec: &BackupJobSpec) -> Result<BackupJob, ClientError> {
        self.client.call_with(Method::PUT, &format!("/api/v1/backup-jobs/{}", encode(&spec.name)), spec).await
    }

    pub async fn list_jobs(&self) -> Result<Vec<BackupJob>, ClientError> {
        self.client.get("/api/v1/backup-jobs").await
    }

    pub async fn get_job(&self, name: &str) -> Result<BackupJob, ClientError> {
        self.client.get(&format!("/api/v1/backup-jobs/{}", encode(name))).await
    }

    pub async fn remove_job(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/backup-jobs/{}", encode(name))).await
    }

    /// Runs a job now: the run's task.
    pub async fn run_job(&self, name: &str) -> Result<Task, ClientError> {
        self.client.call_with(Method::POST, &format!("/api/v1/backup-jobs/{}/run", encode(name)), &()).await
    }

    /// Writes disk `disk` of backup `id` to the new host file `destination`: the task.
    pub async fn export(
        &self,
        repo: &str,
        id: &str,
        disk: Option<&str>,
        destination: &str,
    ) -> Result<Task, ClientError> {
        let req =
            oxvirt_model::BackupExportRequest { disk: disk.map(String::from), destination: destination.to_string() };
        let path = format!("/api/v1/backup-repos/{}/backups/{}/export", encode(repo), encode(id));
        self.client.call_with(Method::POST, &path, &req).await
    }
}
