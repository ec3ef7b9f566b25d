//! A repository's upkeep: pruning backups a retention does not keep, collecting the chunks no
//! backup needs (never one a backup being written may need), verifying that every chunk a
//! backup needs reads back whole. Collecting and verifying are tasks.

use super::{blocking, Backups};
use crate::ControlError;
use oxvirt_backup::{collect_garbage, verify, Candidate, KeepPolicy, Repo};
use oxvirt_model::{PruneRequest, PruneResult, Retention, Task};

/// A retention as the backup crate's prune takes it.
pub(crate) fn policy(r: &Retention) -> KeepPolicy {
    KeepPolicy {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
    }
}

/// Forgets the backups of `repo` (of VM `vm` only, if named) that `keep` does not keep.
pub(crate) fn prune_repo(
    repo: &Repo,
    keep: &Retention,
    vm: Option<&str>,
    dry_run: bool,
) -> Result<PruneResult, ControlError> {
    let all = repo.indexes(vm)?;
    let candidates: Vec<Candidate> =
        all.iter().map(|i| Candidate { id: i.id.clone(), vm: i.vm.clone(), taken_at: i.taken_at }).collect();
    let kept = oxvirt_backup::prune::keep(&candidates, &policy(keep));
    let mut out = PruneResult { dry_run, ..Default::default() };
    for c in candidates {
        if kept.contains(&c.id) {
            out.kept.push(c.id);
        } else {
            if !dry_run {
                repo.remove_index(&c.id)?;
            }
            out.removed.push(c.id);
        }
    }
    Ok(out)
}

impl Backups {
    pub async fn prune(&self, repo: &str, req: PruneRequest) -> Result<PruneResult, ControlError> {
        req.keep.validate()?;
        if let Some(vm) = &req.vm {
            oxvirt_model::validate_name("vm", vm)?;
        }
        let (_, r) = self.open(repo)?;
        blocking(move || prune_repo(&r, &req.keep, req.vm.as_deref(), req.dry_run)).await
    }

    /// Removes the chunks no backup needs: a task (`backup.gc`).
    pub fn collect_garbage(&self, repo: &str) -> Result<Task, ControlError> {
        let (rec, r) = self.open(repo)?;
        let task = self.ctl.inner.tasks.create("backup.gc", &format!("backup-repos/{}", rec.spec.name))?;
        let snapshot = task.snapshot();
        tokio::spawn(async move {
            task.progress(10, "finding the chunks backups need");
            let done = blocking(move || Ok(collect_garbage(&r)?)).await.map(|g| {
                format!(
                    "removed {} chunk(s), {} MiB; kept {} chunk(s), {} MiB ({} named by no backup yet: being written)",
                    g.removed_chunks,
                    g.removed_bytes >> 20,
                    g.kept_chunks,
                    g.kept_bytes >> 20,
                    g.kept_unreferenced
                )
            });
            task.finish_with(done.map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    /// Reads back every chunk a backup needs: a task (`backup.verify`) that fails naming the
    /// damaged chunks and the backups they break.
    pub fn verify(&self, repo: &str) -> Result<Task, ControlError> {
        let (rec, r) = self.open(repo)?;
        let task = self.ctl.inner.tasks.create("backup.verify", &format!("backup-repos/{}", rec.spec.name))?;
        let snapshot = task.snapshot();
        tokio::spawn(async move {
            task.progress(10, "reading back every chunk");
            let r = blocking(move || Ok(verify(&r)?)).await;
            let done = match r {
                Ok(v) if v.bad_chunks.is_empty() => {
                    Ok(format!("{} backup(s), {} chunk(s): all sound", v.backups, v.chunks_checked))
                }
                Ok(v) => Err(format!(
                    "{} of {} chunk(s) bad ({}); broken backups: {}",
                    v.bad_chunks.len(),
                    v.chunks_checked,
                    v.bad_chunks.values().cloned().collect::<Vec<_>>().join("; "),
                    v.broken_backups.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                Err(e) => Err(e.to_string()),
            };
            task.finish_with(done);
        });
        Ok(snapshot)
    }
}
