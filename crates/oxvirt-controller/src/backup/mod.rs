//! Backups: repositories (records `backup-repos/<name>`; what they hold lives in their own
//! directory, in the format of the `oxvirt-backup` crate, so every host naming one shares it),
//! listing and forgetting backups (`mod.rs`), taking a VM's backup, running or stopped, full or
//! only its changes since the last one (`take.rs`), restoring one as a new VM (`restore.rs`), and
//! a repository's upkeep: prune, garbage collection, verification (`upkeep.rs`); jobs that back VMs
//! up on a schedule and prune after (`jobs.rs`), asking other hosts of a cluster for the backups
//! of their VMs (`orders.rs`); at start, what an
//! interrupted backup left on the host undone (`recover.rs`). An encrypted repository's key is
//! kept in the store apart from its record (`backup-keys/<name>`), never in what the API shows
//! but to an administrator who asks for it.

mod jobs;
mod orders;
mod recover;
mod restore;
mod take;
mod upkeep;

use crate::{now_millis, ControlError};
use oxvirt_backup::{BackupIndex, Repo, RepoError, RepoKey};
use oxvirt_model::{
    Backup, BackupDiskInfo, BackupRepo, BackupRepoKey, BackupRepoSpec, BackupRepoView, ValidationError,
};
use std::sync::Arc;

/// Where an encrypted repository's key is kept in the store.
fn key_path(repo: &str) -> String {
    format!("backup-keys/{repo}")
}
use oxvirt_storage::host_paths::Want;
use oxvirt_store::{Expect, Record, StoreError, StoreExt};

/// What the backup service keeps between calls (reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// The backup jobs running on this host now.
    pub running_jobs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Other hosts' orders this host is carrying out now (`orders.rs`).
    pub running_orders: std::sync::Mutex<std::collections::HashSet<String>>,
}

crate::service! {
    /// Backup repositories, the backups in them, taking and restoring them, backup jobs.
    Backups, backups, state = backups
}

impl From<RepoError> for ControlError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NoBackup { id } => ControlError::NotFound { kind: "backup", name: id },
            e => ControlError::Failed(e.to_string()),
        }
    }
}

/// Runs blocking repository work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ControlError::Failed(format!("a backup worker ended: {e}")))?
}

/// [`blocking`], calling `report` every half second until it is done (a task's progress).
pub(crate) async fn blocking_reporting<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
    report: impl Fn(),
) -> Result<T, ControlError> {
    let mut work = tokio::task::spawn_blocking(f);
    loop {
        tokio::select! {
            r = &mut work => {
                return r.map_err(|e| ControlError::Failed(format!("a backup worker ended: {e}")))?;
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => report(),
        }
    }
}

impl Backups {
    /// Makes (or joins: a shared directory another host made) a repository at a host path;
    /// only an administrator may name one.
    pub async fn create_repo(&self, caller: &str, spec: BackupRepoSpec) -> Result<BackupRepo, ControlError> {
        spec.validate()?;
        let path = self.ctl.access().host_path(caller, "path", &spec.path, Want::Dir)?;
        if self.ctl.inner.store.get_record::<BackupRepo>(&spec.name)?.is_some() {
            return Err(exists(&spec.name));
        }
        for (other, _) in self.ctl.inner.store.list_records::<BackupRepo>()? {
            if std::path::Path::new(&other.spec.path) == path {
                return Err(ControlError::Exists(ValidationError::new(
                    "path",
                    format!("repository {} is at {} already", other.spec.name, path.display()),
                )));
            }
        }
        let key = match (&spec.key, spec.encrypt) {
            (Some(hex), _) => Some(RepoKey::from_hex(hex).map_err(|e| ControlError::invalid("key", e.to_string()))?),
            (None, true) => Some(RepoKey::generate().map_err(|e| ControlError::Failed(e.to_string()))?),
            (None, false) => None,
        }
        .map(Arc::new);
        let (at, k) = (path.clone(), key.clone());
        blocking(move || Repo::create(&at, k).map_err(|e| ControlError::invalid("path", e.to_string()))).await?;
        let spec = BackupRepoSpec { path: path.to_string_lossy().into_owned(), key: None, ..spec };
        let repo = BackupRepo { spec, created_at: now_millis() };
        let mut ops = vec![oxvirt_store::Op::Put {
            key: format!("{}{}", BackupRepo::PREFIX, repo.spec.name),
            value: serde_json::to_vec(&repo).unwrap_or_default(),
            expect: Expect::Absent,
        }];
        if let Some(k) = &key {
            ops.push(oxvirt_store::Op::Put {
                key: key_path(&repo.spec.name),
                value: k.to_hex().into_bytes(),
                expect: Expect::Any,
            });
        }
        // The record and its key together, or neither.
        match self.ctl.inner.store.txn(ops) {
            Ok(_) => Ok(repo),
            Err(StoreError::Conflict { .. }) => Err(exists(&repo.spec.name)),
            Err(e) => Err(e.into()),
        }
    }

    /// An encrypted repository's key (for an administrator to keep apart).
    pub fn repo_key(&self, name: &str) -> Result<BackupRepoKey, ControlError> {
        let rec = self.repo_record(name)?;
        let key = self.key_of(&rec)?.ok_or_else(|| {
            ControlError::Conflict(format!("backup repository {name} is not encrypted: it has no key"))
        })?;
        Ok(BackupRepoKey { repo: rec.spec.name, key: key.to_hex(), fingerprint: key.fingerprint() })
    }

    /// The key of `rec`, if it is encrypted.
    fn key_of(&self, rec: &BackupRepo) -> Result<Option<Arc<RepoKey>>, ControlError> {
        if !rec.spec.encrypt {
            return Ok(None);
        }
        let e = self.ctl.inner.store.get(&key_path(&rec.spec.name))?.ok_or_else(|| {
            ControlError::Failed(format!("backup repository {}: its key is missing from the store", rec.spec.name))
        })?;
        let key = RepoKey::from_hex(&String::from_utf8_lossy(&e.value))
            .map_err(|e| ControlError::Failed(format!("backup repository {}: its stored key: {e}", rec.spec.name)))?;
        Ok(Some(Arc::new(key)))
    }

    pub fn repo_record(&self, name: &str) -> Result<BackupRepo, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<BackupRepo>(name)?
            .map(|(r, _)| r)
            .ok_or_else(|| ControlError::NotFound { kind: "backup repository", name: name.into() })
    }

    /// The repository `name`, opened.
    pub(crate) fn open(&self, name: &str) -> Result<(BackupRepo, Repo), ControlError> {
        let rec = self.repo_record(name)?;
        let repo = self.open_record(&rec)?;
        Ok((rec, repo))
    }

    /// The repository of record `rec`, opened with its key.
    pub(crate) fn open_record(&self, rec: &BackupRepo) -> Result<Repo, ControlError> {
        Ok(Repo::open(std::path::Path::new(&rec.spec.path), self.key_of(rec)?)?)
    }

    pub async fn get_repo(&self, name: &str) -> Result<BackupRepoView, ControlError> {
        let (rec, repo) = self.open(name)?;
        blocking(move || {
            let backups = repo.indexes(None)?.len();
            let chunks = repo.chunks()?;
            Ok(BackupRepoView {
                repo: rec,
                backups,
                chunks: chunks.len(),
                stored_bytes: chunks.iter().map(|(_, n)| n).sum(),
            })
        })
        .await
    }

    pub async fn list_repos(&self) -> Result<Vec<BackupRepoView>, ControlError> {
        let mut out = Vec::new();
        for (r, _) in self.ctl.inner.store.list_records::<BackupRepo>()? {
            out.push(self.get_repo(&r.spec.name).await?);
        }
        Ok(out)
    }

    /// Forgets a repository: its directory and what it holds stay (another host, or a later
    /// `create` of the same path, finds them again).
    pub fn remove_repo(&self, name: &str) -> Result<(), ControlError> {
        self.repo_record(name)?;
        // (An encrypted one's key goes with it: joining it again takes the key kept apart.)
        self.ctl.inner.store.txn(vec![
            oxvirt_store::Op::Delete { key: format!("{}{name}", BackupRepo::PREFIX), expect: Expect::Any },
            oxvirt_store::Op::Delete { key: key_path(name), expect: Expect::Any },
        ])?;
        Ok(())
    }

    /// The backups in repository `repo` (of VM `vm` only, if named), oldest first.
    pub async fn list_backups(&self, repo: &str, vm: Option<String>) -> Result<Vec<Backup>, ControlError> {
        let (rec, r) = self.open(repo)?;
        blocking(move || Ok(r.indexes(vm.as_deref())?.iter().map(|i| view(&rec.spec.name, i)).collect())).await
    }

    pub async fn get_backup(&self, repo: &str, id: &str) -> Result<Backup, ControlError> {
        let (rec, r) = self.open(repo)?;
        let id = id.to_string();
        blocking(move || Ok(view(&rec.spec.name, &r.index(&id)?))).await
    }

    /// Forgets a backup: its index goes, its chunks stay until no backup needs them.
    pub async fn remove_backup(&self, repo: &str, id: &str) -> Result<(), ControlError> {
        let (_, r) = self.open(repo)?;
        let id = id.to_string();
        blocking(move || Ok(r.remove_index(&id)?)).await
    }
}

fn exists(name: &str) -> ControlError {
    ControlError::Exists(ValidationError::new("name", format!("a backup repository named {name:?} already exists")))
}

/// A backup's index as the API shows it.
pub(crate) fn view(repo: &str, i: &BackupIndex) -> Backup {
    Backup {
        id: i.id.clone(),
        repo: repo.to_string(),
        vm: i.vm.clone(),
        taken_at: i.taken_at,
        full: i.full,
        full_reason: i.full_reason.clone(),
        parent: i.parent.clone(),
        disks: i
            .disks
            .iter()
            .map(|d| BackupDiskInfo {
                id: d.id.clone(),
                size: d.size,
                chunks: d.chunks.len(),
                data_chunks: d.chunks.iter().flatten().count(),
            })
            .collect(),
        read_bytes: i.read_bytes,
        new_chunks: i.new_chunks,
        new_bytes: i.new_bytes,
        duration_ms: i.duration_ms,
    }
}
