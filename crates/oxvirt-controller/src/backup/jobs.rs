//! Backup jobs (records `backup-jobs/<name>`): VMs backed up into a repository on a cron
//! schedule, one after another, then their backups pruned to the job's retention. A run is
//! claimed in the store (compare-and-swap on the job's record) before it starts, so a slot
//! runs once even if several rounds (or hosts) see it due; a daemon that was down when a slot
//! passed runs the job once when it comes back, not once per missed slot.

use super::Backups;
use crate::{lock, now_millis, ControlError};
use oxvirt_model::{BackupJob, BackupJobSpec, BackupJobStatus, PruneRequest, Task, TaskState, ValidationError};
use oxvirt_store::{Expect, StoreError, StoreExt};
use std::time::Duration;

/// How long one VM's backup in a job may take.
pub(super) const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Backups {
    pub fn create_job(&self, spec: BackupJobSpec) -> Result<BackupJob, ControlError> {
        let schedule = spec.validate()?;
        self.check_job_refs(&spec)?;
        let next = schedule.next_after(now_millis()).unwrap_or(0);
        let job = BackupJob {
            spec,
            created_at: now_millis(),
            status: BackupJobStatus { next_run_at: next, ..Default::default() },
        };
        match self.ctl.inner.store.put_record(&job.spec.name, &job, Expect::Absent) {
            Ok(_) => Ok(job),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("a backup job named {:?} already exists", job.spec.name),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a job's definition; what its runs did is kept, its next run recomputed.
    pub fn set_job(&self, name: &str, spec: BackupJobSpec) -> Result<BackupJob, ControlError> {
        let schedule = spec.validate()?;
        if spec.name != name {
            return Err(ControlError::invalid("name", format!("is {name} in the path and {} in the body", spec.name)));
        }
        self.check_job_refs(&spec)?;
        let job = self.ctl.inner.store.update_record::<BackupJob>(name, |j| {
            j.spec = spec.clone();
            j.status.next_run_at = schedule.next_after(now_millis()).unwrap_or(0);
        })?;
        job.ok_or_else(|| ControlError::NotFound { kind: "backup job", name: name.into() })
    }

    fn check_job_refs(&self, spec: &BackupJobSpec) -> Result<(), ControlError> {
        self.repo_record(&spec.repo).map_err(|_| {
            ControlError::invalid("repo", format!("no backup repository {:?} (oxvirt backup-repo list)", spec.repo))
        })?;
        for (i, vm) in spec.vms.iter().enumerate() {
            if self.ctl.vms().get_vm(vm).is_err() {
                return Err(ControlError::invalid(format!("vms[{i}]"), format!("no VM {vm:?}")));
            }
        }
        Ok(())
    }

    pub fn get_job(&self, name: &str) -> Result<BackupJob, ControlError> {
        self.ctl
            .inner
            .store
            .get_record::<BackupJob>(name)?
            .map(|(j, _)| j)
            .ok_or_else(|| ControlError::NotFound { kind: "backup job", name: name.into() })
    }

    pub fn list_jobs(&self) -> Result<Vec<BackupJob>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<BackupJob>()?.into_iter().map(|(j, _)| j).collect())
    }

    /// Deletes a job (a run going on finishes).
    pub fn remove_job(&self, name: &str) -> Result<(), ControlError> {
        self.get_job(name)?;
        self.ctl.inner.store.delete_record::<BackupJob>(name, Expect::Any)?;
        Ok(())
    }

    /// Runs a job now, outside its schedule: the run's task (`backup.job`).
    pub fn run_job_now(&self, name: &str) -> Result<Task, ControlError> {
        let job = self.get_job(name)?;
        self.start_run(job, false)
    }

    /// The reconcile round's part: every enabled job whose next run is due is claimed and run.
    pub(crate) async fn jobs_round(&self) {
        self.orders_round().await;
        let now = now_millis();
        let Ok(jobs) = self.ctl.inner.store.list_records::<BackupJob>() else { return };
        for (job, rev) in jobs {
            let s = &job.status;
            if !job.spec.enabled || s.next_run_at == 0 || now < s.next_run_at {
                continue;
            }
            if lock(&self.state().running_jobs).contains(&job.spec.name) {
                continue;
            }
            let Ok(schedule) = oxvirt_model::Schedule::parse(&job.spec.schedule) else { continue };
            let mut claimed = job.clone();
            claimed.status.last_run_at = s.next_run_at;
            claimed.status.next_run_at = schedule.next_after(now).unwrap_or(0);
            if self.ctl.inner.store.put_record(&job.spec.name, &claimed, Expect::Revision(rev)).is_err() {
                continue; // Another round or host claimed it first.
            }
            if let Err(e) = self.start_run(claimed, true) {
                tracing::warn!(job = %job.spec.name, "backup job: {e}");
            }
        }
    }

    /// Starts one run of `job` as a task (`scheduled`: for the slot its record was claimed for).
    fn start_run(&self, job: BackupJob, scheduled: bool) -> Result<Task, ControlError> {
        let name = job.spec.name.clone();
        if !lock(&self.state().running_jobs).insert(name.clone()) {
            return Err(ControlError::Busy(format!("backup job {name} is running")));
        }
        let task = match self.ctl.inner.tasks.create("backup.job", &format!("backup-jobs/{name}")) {
            Ok(t) => t,
            Err(e) => {
                lock(&self.state().running_jobs).remove(&name);
                return Err(e);
            }
        };
        let snapshot = task.snapshot();
        let me = self.clone();
        tokio::spawn(async move {
            let (ok, message) = me.run_job(&job.spec, &task).await;
            let end = now_millis();
            let _ = me.ctl.inner.store.update_record::<BackupJob>(&name, |j| {
                // A scheduled run's slot was recorded when it was claimed; one asked for counts
                // from when it was asked.
                if !scheduled {
                    j.status.last_run_at = j.status.last_run_at.max(task.snapshot().created_at);
                }
                j.status.last_end_at = end;
                j.status.last_ok = ok;
                j.status.runs += 1;
                if ok {
                    j.status.last_success_at = end;
                } else {
                    j.status.failures += 1;
                }
                j.status.last_message = message.clone();
            });
            lock(&me.state().running_jobs).remove(&name);
            task.finish_with(if ok { Ok(message) } else { Err(message) });
        });
        Ok(snapshot)
    }

    /// Backs every VM of the job up, one after another, then prunes: whether all went well, and
    /// what happened.
    async fn run_job(&self, spec: &BackupJobSpec, task: &crate::tasks::TaskHandle) -> (bool, String) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let me = self.ctl.hosts().host_name();
        for (i, vm) in spec.vms.iter().enumerate() {
            // A VM another host of the cluster runs is backed up there, asked through the store.
            let elsewhere =
                self.ctl.vms().get_vm(vm).ok().and_then(|v| v.host).filter(|h| me.is_some() && me.as_ref() != Some(h));
            if let Some(host) = elsewhere {
                task.progress((i * 90 / spec.vms.len()) as u8, &format!("backing up {vm} (on {host})"));
                match self.back_up_on(&spec.name, vm, &spec.repo, &host).await {
                    Ok(_) => done.push(vm.clone()),
                    Err(e) => failed.push(format!("{vm}: {e}")),
                }
                continue;
            }
            task.progress((i * 90 / spec.vms.len()) as u8, &format!("backing up {vm}"));
            let r = match self.backup_vm(vm, oxvirt_model::BackupRequest { repo: spec.repo.clone() }).await {
                Ok(t) => self.ctl.inner.tasks.wait(&t.id, BACKUP_TIMEOUT).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(t) if t.state == TaskState::Succeeded => done.push(vm.clone()),
                Ok(t) => failed.push(format!("{vm}: {}", t.error.unwrap_or(t.message))),
                Err(e) => failed.push(format!("{vm}: {e}")),
            }
        }
        let mut pruned = 0;
        if let Some(keep) = &spec.retention {
            task.progress(95, "pruning");
            for vm in &done {
                let req = PruneRequest { keep: *keep, vm: Some(vm.clone()), dry_run: false };
                match self.prune(&spec.repo, req).await {
                    Ok(r) => pruned += r.removed.len(),
                    Err(e) => failed.push(format!("pruning {vm}'s backups: {e}")),
                }
            }
        }
        let mut msg = format!("backed up {} of {} VM(s) into {}", done.len(), spec.vms.len(), spec.repo);
        if spec.retention.is_some() {
            msg += &format!(", pruned {pruned} backup(s)");
        }
        if !failed.is_empty() {
            msg += &format!("; failed: {}", failed.join("; "));
        }
        (failed.is_empty(), msg)
    }

    /// Each job's figures for `/metrics`: (name, last run ended well, last success (its
    /// creation if none), next run, the schedule's interval), times in seconds since the epoch.
    pub fn job_figures(&self) -> Vec<(String, bool, f64, f64, f64)> {
        let now = now_millis();
        self.list_jobs()
            .unwrap_or_default()
            .into_iter()
            .map(|j| {
                let interval = oxvirt_model::Schedule::parse(&j.spec.schedule)
                    .ok()
                    .and_then(|s| {
                        let a = s.next_after(now)?;
                        Some(s.next_after(a)? - a)
                    })
                    .unwrap_or(0);
                let ok = j.status.runs == 0 || j.status.last_ok;
                (
                    j.spec.name,
                    ok,
                    // A job that never succeeded is as late as its age.
                    j.status.last_success_at.max(j.created_at) as f64 / 1000.0,
                    j.status.next_run_at as f64 / 1000.0,
                    interval as f64 / 1000.0,
                )
            })
            .collect()
    }
}
