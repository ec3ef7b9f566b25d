//! Backups: repositories (a directory of chunks and indexes, shared by every host and VM that
//! names it), the backups in them, and the requests that take and restore one.

use crate::{validate_name, Millis, ValidationError};

/// A backup repository as an administrator defines it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRepoSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    /// A directory on the host (local, or a shared file system every host mounts at this path),
    /// made if absent; it must hold nothing else.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Chunks and VM definitions encrypted on the hosts (AES-256-GCM, chunks named by an HMAC):
    /// the repository's storage sees no data. oxvirt makes the key and keeps it in its store;
    /// `GET .../key` (administrators) shows it, to keep apart: without it the backups are lost.
    #[serde(default)]
    pub encrypt: bool,
    /// With `encrypt`, to join a repository encrypted before (another cluster's, or one
    /// forgotten): its key, 64 hex digits. Only read: never stored in the record nor shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub key: Option<String>,
}

impl BackupRepoSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if !self.path.starts_with('/') || self.path.len() > 4096 {
            return Err(ValidationError::new("path", "must be an absolute path of at most 4096 bytes"));
        }
        match &self.key {
            Some(_) if !self.encrypt => {
                return Err(ValidationError::new("key", "is for an encrypted repository: set encrypt too"))
            }
            Some(k) if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(ValidationError::new("key", "must be 64 hex digits (a 256-bit key)"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// An encrypted repository's key, as an administrator asks for it to keep it safe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupRepoKey {
    pub repo: String,
    /// 64 hex digits.
    pub key: String,
    /// What names the key without revealing it (the repository's header holds it too).
    pub fingerprint: String,
}

/// A backup repository, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupRepo {
    pub spec: BackupRepoSpec,
    pub created_at: Millis,
}

/// A repository with what it holds, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupRepoView {
    #[serde(flatten)]
    pub repo: BackupRepo,
    pub backups: usize,
    /// Chunks stored, and their bytes on disk (compressed).
    pub chunks: usize,
    pub stored_bytes: u64,
}

/// `POST /vms/{name}/backup`: back the VM up into a repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub repo: String,
}

impl BackupRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("repo", &self.repo)
    }
}

/// `POST /backup-repos/{repo}/backups/{id}/restore`: a new VM from a backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The new VM's name.
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    /// The pool its disks become volumes of.
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub pool: String,
}

impl RestoreRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_name("pool", &self.pool)
    }
}

/// `POST /backup-repos/{repo}/backups/{id}/export`: one disk of a backup as a qcow2 file on
/// the host (administrators: it names a host path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupExportRequest {
    /// The disk's id in the VM (`disk0` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub disk: Option<String>,
    /// A new file on the host.
    #[schemars(length(min = 1, max = 4096))]
    pub destination: String,
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupDiskInfo {
    pub id: String,
    pub size: u64,
    /// Its chunks, and those of them that are not zeros.
    pub chunks: usize,
    pub data_chunks: usize,
}

/// A backup in a repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Backup {
    pub id: String,
    pub repo: String,
    pub vm: String,
    /// When its disks were frozen.
    pub taken_at: Millis,
    /// Every chunk read, or only the changes since `parent`.
    pub full: bool,
    /// Why it read everything when it could have read the changes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub disks: Vec<BackupDiskInfo>,
    /// Bytes read from the VM's disks.
    pub read_bytes: u64,
    /// Chunks it added to the repository and their stored bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub duration_ms: u64,
}

/// How many of each period's newest backups a prune keeps (of each VM apart): the newest
/// `keep_last`, then the newest of each of the last `keep_daily` days, `keep_weekly` ISO
/// weeks and `keep_monthly` months that have one. At least one must be above 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_last: u32,
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_daily: u32,
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_weekly: u32,
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_monthly: u32,
}

impl Retention {
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (f, v) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ] {
            if v > 10_000 {
                return Err(ValidationError::new(f, "must be at most 10000"));
            }
        }
        if self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0 {
            return Err(ValidationError::new(
                "keep_last",
                "a retention must keep something: set one of keep_* above 0",
            ));
        }
        Ok(())
    }
}

/// `POST /backup-repos/{repo}/prune`: forget the backups a retention does not keep.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    #[serde(flatten)]
    pub keep: Retention,
    /// Only this VM's backups (else every VM's, each apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub vm: Option<String>,
    /// Say what would go, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a prune kept and removed (or would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PruneResult {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub dry_run: bool,
}

fn yes() -> bool {
    true
}

/// A backup job: the VMs it backs up into a repository on a schedule, and the retention its
/// repository is pruned to after each run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJobSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 1000))]
    pub vms: Vec<String>,
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub repo: String,
    /// Cron: `minute hour day-of-month month day-of-week`, UTC (e.g. `*/15 * * * *`).
    #[schemars(length(min = 9, max = 200))]
    pub schedule: String,
    /// After each run, the job's VMs' backups are pruned to this (none kept fewer: no prune).
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl BackupJobSpec {
    pub fn validate(&self) -> Result<crate::Schedule, ValidationError> {
        validate_name("name", &self.name)?;
        validate_name("repo", &self.repo)?;
        if self.vms.is_empty() || self.vms.len() > 1000 {
            return Err(ValidationError::new("vms", "name 1 to 1000 VMs"));
        }
        for (i, v) in self.vms.iter().enumerate() {
            validate_name(&format!("vms[{i}]"), v)?;
        }
        if let Some(r) = &self.retention {
            r.validate()?;
        }
        crate::Schedule::parse(&self.schedule)
    }
}

/// How a job's last run went.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupJobStatus {
    /// The scheduled time of the last run started (ms; 0: never).
    pub last_run_at: Millis,
    /// When the last run ended, and whether every VM was backed up.
    pub last_end_at: Millis,
    pub last_ok: bool,
    /// When a run last backed up every VM.
    pub last_success_at: Millis,
    /// What the last run said (its backups, or what failed).
    pub last_message: String,
    /// The next scheduled time (ms; 0: none).
    pub next_run_at: Millis,
    pub runs: u64,
    pub failures: u64,
}

/// A backup job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupJob {
    pub spec: BackupJobSpec,
    pub created_at: Millis,
    #[serde(default)]
    pub status: BackupJobStatus,
}

/// Where a backup job's run asked another host to back up a VM of its own, and how it went
/// (records `backup-orders/<job>.<vm>`; the run deletes its orders when it ends).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BackupOrder {
    pub job: String,
    pub vm: String,
    pub repo: String,
    /// The host that runs the VM, which takes the backup.
    pub host: String,
    pub asked_at: Millis,
    pub state: OrderState,
    /// The backup task's last message, or why it failed.
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OrderState {
    Asked,
    Running,
    Succeeded,
    Failed,
}

impl BackupOrder {
    /// The record name of job `job`'s order for VM `vm`.
    pub fn name_of(job: &str, vm: &str) -> String {
        format!("{job}.{vm}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_the_field_they_break() {
        let ok = BackupRepoSpec { name: "main".into(), path: "/srv/backup".into(), ..Default::default() };
        ok.validate().unwrap();
        let key = Some("ab".repeat(32));
        BackupRepoSpec { encrypt: true, key: key.clone(), ..ok.clone() }.validate().unwrap();
        let e = BackupRepoSpec { key: key.clone(), ..ok.clone() }.validate().unwrap_err();
        assert!(e.field == "key" && e.to_string().contains("set encrypt"), "{e}");
        let e = BackupRepoSpec { encrypt: true, key: Some("xy".repeat(32)), ..ok.clone() }.validate().unwrap_err();
        assert!(e.field == "key" && e.to_string().contains("64 hex"), "{e}");
        let e = BackupRepoSpec { path: "rel/dir".into(), ..ok.clone() }.validate().unwrap_err();
        assert_eq!(e.field, "path");
        let e = BackupRepoSpec { name: "Bad Name".into(), ..ok }.validate().unwrap_err();
        assert_eq!(e.field, "name");
        assert_eq!(BackupRequest { repo: "../x".into() }.validate().unwrap_err().field, "repo");
        assert_eq!(RestoreRequest { name: "n".into(), pool: "".into() }.validate().unwrap_err().field, "pool");
    }
}
