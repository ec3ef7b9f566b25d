//! The controller's background work, as a closed list of jobs.
//!
//! Every job is named here, with how often it runs and where: most run in the reconcile round,
//! one after another in the order of [`Job::ROUND`] (migrations first: a VM that just arrived is
//! taken over from its waiting QEMU, not re-adopted as a stranger), each when its interval has
//! passed; the balloon, history and alert jobs run on loops of their own, so that a slow round
//! (a re-adoption, a start) never delays a sample. Each run is counted and timed ([`JobBook`]),
//! and `/metrics` shows the figures (`oxvirt_job_*{job="..."}`).

use crate::{lock, now_millis, Controller};
use std::future::Future;
use std::time::{Duration, Instant};

/// One kind of background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Migration records this host serves as a target (also driven by a store watch).
    Migrations,
    /// Each VM of this host: re-adoption, restart policies, console log rotation.
    Vms,
    /// Each HA resource of this host kept at its state (also run when an HA VM's QEMU exits);
    /// on the leader, lost hosts' HA VMs recovered on others.
    Ha,
    /// Finished tasks beyond the number kept are removed.
    Tasks,
    /// The administrator token's file holds one that works (renewed before it expires).
    AdminToken,
    /// This host's record in the store: what it has and reaches, its CPU pressure.
    HostRecord,
    /// VXLAN networks' peers follow the cluster's hosts.
    VxlanPeers,
    /// The Open vSwitch of vlan networks: its daemons restarted when dead, its ports and flows
    /// as the store says.
    Ovs,
    /// The leader's automatic rebalancing (its policy says when).
    Rebalance,
    /// `nbd` pools' export daemons are restarted when they die.
    ExportDaemons,
    /// Backup jobs whose scheduled time came are claimed and started.
    BackupJobs,
    /// Templates' warm pools kept at their size (also woken when one of theirs is taken).
    TemplatePools,
    /// Automatic ballooning under memory pressure.
    AutoBalloon,
    /// An hour of figures per VM and for the host.
    History,
    /// Alert rules evaluated, webhooks sent.
    Alerts,
}

impl Job {
    /// The reconcile round's jobs, in the order they run.
    pub const ROUND: [Job; 12] = [
        Job::Migrations,
        Job::Vms,
        Job::Ha,
        Job::Tasks,
        Job::AdminToken,
        Job::HostRecord,
        Job::VxlanPeers,
        Job::Ovs,
        Job::Rebalance,
        Job::ExportDaemons,
        Job::BackupJobs,
        Job::TemplatePools,
    ];

    /// The jobs of loops of their own.
    pub const OWN_LOOPS: [Job; 3] = [Job::AutoBalloon, Job::History, Job::Alerts];

    /// Every job: the round's, then those of their own loops (the order figures are shown in).
    pub const ALL: [Job; 15] = {
        let mut all = [Job::Migrations; 15];
        let mut i = 0;
        while i < Job::ROUND.len() {
            all[i] = Job::ROUND[i];
            i += 1;
        }
        while i < all.len() {
            all[i] = Job::OWN_LOOPS[i - Job::ROUND.len()];
            i += 1;
        }
        all
    };

    pub fn name(self) -> &'static str {
        match self {
            Job::Migrations => "migrations",
            Job::Vms => "vms",
            Job::Ha => "ha",
            Job::Tasks => "tasks",
            Job::AdminToken => "admin_token",
            Job::HostRecord => "host_record",
            Job::VxlanPeers => "vxlan_peers",
            Job::Ovs => "ovs",
            Job::Rebalance => "rebalance",
            Job::ExportDaemons => "export_daemons",
            Job::BackupJobs => "backup_jobs",
            Job::TemplatePools => "template_pools",
            Job::AutoBalloon => "auto_balloon",
            Job::History => "history",
            Job::Alerts => "alerts",
        }
    }

    /// How often a round job runs: `round` is the reconcile interval (`None`: every round). Jobs
    /// on their own loops have their interval where they are started.
    pub fn every(self, round: Duration) -> Option<Duration> {
        match self {
            Job::Tasks => Some(Duration::from_secs(10).max(round)),
            Job::AdminToken => Some(Duration::from_secs(60).max(round)),
            _ => None,
        }
    }

    fn index(self) -> usize {
        Job::ALL.iter().position(|j| *j == self).unwrap_or(0)
    }
}

/// What one job has done since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct JobFigures {
    pub runs: u64,
    /// Time spent in all runs.
    pub seconds: f64,
    /// The last run's length.
    pub last_seconds: f64,
    /// When the last run ended (ms since the epoch; 0: never).
    pub last_run_ms: u64,
}

/// The figures of every job, and when each round job last ran.
#[derive(Default)]
pub struct JobBook {
    figures: std::sync::Mutex<[JobFigures; Job::ALL.len()]>,
    last_start: std::sync::Mutex<[Option<Instant>; Job::ALL.len()]>,
}

impl JobBook {
    /// Runs one job and records it.
    pub async fn run<F: Future<Output = ()>>(&self, job: Job, work: F) {
        let start = Instant::now();
        lock(&self.last_start)[job.index()] = Some(start);
        work.await;
        let took = start.elapsed().as_secs_f64();
        let mut f = lock(&self.figures);
        let f = &mut f[job.index()];
        f.runs += 1;
        f.seconds += took;
        f.last_seconds = took;
        f.last_run_ms = now_millis();
    }

    /// A round job is due when it never ran or its interval has passed since its last start.
    pub fn due(&self, job: Job, round: Duration) -> bool {
        match (job.every(round), lock(&self.last_start)[job.index()]) {
            (None, _) | (_, None) => true,
            (Some(every), Some(last)) => last.elapsed() >= every,
        }
    }

    /// Every job's figures, in [`Job::ALL`]'s order.
    pub fn figures(&self) -> Vec<(Job, JobFigures)> {
        let f = lock(&self.figures);
        Job::ALL.iter().map(|j| (*j, f[j.index()])).collect()
    }
}

impl Controller {
    /// The figures of the controller's background jobs.
    pub fn job_figures(&self) -> Vec<(Job, JobFigures)> {
        self.inner.jobs.figures()
    }

    /// One reconcile round: each round job that is due, in order. `full` looks at every VM (the
    /// first round after start), and runs every job.
    pub(crate) async fn reconcile_round(&self, full: bool) {
        let book = &self.inner.jobs;
        let round = self.inner.config.reconcile_interval;
        for job in Job::ROUND {
            if !full && !book.due(job, round) {
                continue;
            }
            match job {
                Job::Migrations => book.run(job, self.migrations().serve_migrations()).await,
                Job::Vms => book.run(job, self.vms().reconcile(full)).await,
                Job::Ha => {
                    book.run(job, async {
                        self.ha().keep_round().await;
                        self.ha().recover_round().await;
                    })
                    .await
                }
                Job::Tasks => book.run(job, async { self.inner.tasks.prune() }).await,
                Job::AdminToken => {
                    book.run(job, async {
                        let path = self.inner.config.data_dir.join("admin.token");
                        if let Err(e) = self.access().ensure_admin_token(&path) {
                            tracing::warn!("administrator token: {e}");
                        }
                    })
                    .await
                }
                Job::HostRecord => book.run(job, async { self.hosts().refresh_host_record() }).await,
                Job::VxlanPeers => book.run(job, self.networks().refresh_vxlan_peers()).await,
                Job::Ovs => book.run(job, self.networks().ovs_round()).await,
                Job::Rebalance => book.run(job, self.hosts().rebalance_round()).await,
                Job::ExportDaemons => book.run(job, self.nbd().supervise_export_daemons()).await,
                Job::BackupJobs => book.run(job, self.backups().jobs_round()).await,
                Job::TemplatePools => book.run(job, self.templates().pools_round()).await,
                Job::AutoBalloon | Job::History | Job::Alerts => {}
            }
        }
    }

    /// Runs `work` every `every` for the daemon's life, as `job` (a job of its own loop).
    pub(crate) fn spawn_job<F, W>(&self, job: Job, every: Duration, first_after: Duration, work: W)
    where
        W: Fn() -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(first_after).await;
            loop {
                me.inner.jobs.run(job, work()).await;
                tokio::time::sleep(every).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_is_listed_once_and_round_jobs_keep_their_order() {
        for (i, j) in Job::ALL.iter().enumerate() {
            assert_eq!(j.index(), i);
        }
        let names: std::collections::HashSet<_> = Job::ALL.iter().map(|j| j.name()).collect();
        assert_eq!(names.len(), Job::ALL.len());
        assert_eq!(Job::ROUND[0], Job::Migrations, "migrations are served before VMs are looked at");
        assert_eq!(Job::ROUND[1], Job::Vms);
    }

    #[tokio::test]
    async fn a_job_is_counted_and_due_again_after_its_interval() {
        let book = JobBook::default();
        let round = Duration::from_millis(10);
        assert!(book.due(Job::Tasks, round), "a job that never ran is due");
        book.run(Job::Tasks, async { tokio::time::sleep(Duration::from_millis(5)).await }).await;
        book.run(Job::Vms, async {}).await;
        assert!(!book.due(Job::Tasks, round), "tasks run every 10 s, not every round");
        assert!(book.due(Job::Vms, round), "VMs are looked at every round");
        let f: std::collections::HashMap<_, _> = book.figures().into_iter().collect();
        assert_eq!(f[&Job::Tasks].runs, 1);
        assert!(f[&Job::Tasks].seconds >= 0.005 && f[&Job::Tasks].last_run_ms > 0);
        assert_eq!(f[&Job::History], JobFigures::default());
    }
}
