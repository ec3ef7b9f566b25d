//! Maintenance and draining: a host in maintenance takes no new VMs, and its running VMs migrate
//! away in one task. The moves are planned before any starts (each target counted with the
//! picks before it, so eight VMs do not all land on the one host that was emptiest), and run at
//! most the cluster policy's `max_migrations` at once, counting every migration in the cluster.

use super::placement::request_of;
use crate::ControlError;
use oxvirt_model::{MigrateRequest, Migration, Task, TaskState, VmState};
use oxvirt_scheduler::Cluster;
use oxvirt_store::{Expect, Record, WatchEvent};
use std::time::Duration;

/// How long one migration of a drain may take before the drain stops waiting for it.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a drain with none of its migrations running waits for the cluster's others to end
/// before it starts one anyway.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// One planned move.
#[derive(Debug, Clone)]
struct Move {
    vm: String,
    to: String,
}

impl crate::Hosts {
    /// Puts host `name` in maintenance or takes it out. In: its running VMs migrate away, all of
    /// them planned first; the drain's task is returned (none when taken out). A VM no other
    /// host can take refuses the drain, and nothing changes.
    pub fn set_maintenance(&self, name: &str, on: bool) -> Result<Vec<Task>, ControlError> {
        let mut rec =
            self.host_record(name)?.ok_or_else(|| ControlError::NotFound { kind: "host", name: name.into() })?;
        if on && self.host_name().as_deref() != Some(name) {
            return Err(ControlError::Conflict(format!("drain host {name} through its own API (it migrates its VMs)")));
        }
        let plan = if on { self.plan_drain(name)? } else { Vec::new() };
        rec.maintenance = on;
        self.ctl.inner.store.put(&format!("hosts/{name}"), oxvirt_store::encode(&rec), Expect::Any)?;
        if !on {
            return Ok(vec![]);
        }
        let task = self.ctl.inner.tasks.create("host.drain", &format!("hosts/{name}"))?;
        let snapshot = task.snapshot();
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.run_drain(&plan, &task).await;
            task.finish_with(r);
        });
        Ok(vec![snapshot])
    }

    /// Where each running VM of host `name` goes: the scheduler's pick among the other hosts,
    /// counting the VMs placed before it.
    fn plan_drain(&self, name: &str) -> Result<Vec<Move>, ControlError> {
        let vms = self.ctl.vms().list_vms()?;
        let (mut hosts, placed, policy) = self.scheduler_view(&vms)?;
        for h in hosts.iter_mut().filter(|h| h.name == name) {
            h.maintenance = true;
        }
        let mut cluster = Cluster::new(hosts, policy);
        for p in placed.iter().filter(|p| p.host != name) {
            cluster.note_groups(&p.host, p.request.affinity.as_deref(), p.request.anti_affinity.as_deref());
        }
        let leaving = vms.iter().filter(|v| v.host.as_deref() == Some(name) && v.status.state == VmState::Running);
        let mut plan = Vec::new();
        for vm in leaving {
            let d = cluster.place(&request_of(&vm.spec)).map_err(|e| {
                ControlError::Conflict(format!(
                    "host {name} cannot be drained: no other host can take VM {}: {e}",
                    vm.spec.name
                ))
            })?;
            plan.push(Move { vm: vm.spec.name.clone(), to: d.host });
        }
        Ok(plan)
    }

    /// Runs the planned moves, never more migrations in the cluster at once than the policy
    /// allows; says what moved, or which did not and why.
    async fn run_drain(&self, plan: &[Move], task: &crate::tasks::TaskHandle) -> Result<String, String> {
        let total = plan.len();
        if total == 0 {
            return Ok("no running VM to move".into());
        }
        let mut changes = self.ctl.inner.store.watch();
        let mut pending = plan.iter();
        let mut running = tokio::task::JoinSet::new();
        let (mut moved, mut failed) = (Vec::new(), Vec::new());
        let mut idle_since = std::time::Instant::now();
        loop {
            let limit = self.cluster_policy().map(|p| p.max_migrations as usize).unwrap_or(1);
            let in_cluster = self.ctl.inner.store.list(Migration::PREFIX).map(|l| l.len()).unwrap_or(usize::MAX);
            let mut room = limit.saturating_sub(in_cluster);
            // A record that outlives its migration for long (its hosts gone) must not stall the
            // drain: with none of ours running for a while, one more starts.
            if running.is_empty() && idle_since.elapsed() > STALE_AFTER {
                room = room.max(1);
            }
            while room > 0 {
                let Some(m) = pending.next() else { break };
                let req = MigrateRequest {
                    to: m.to.clone(),
                    downtime_ms: 100,
                    bandwidth_mibs: 0,
                    auto_converge: true,
                    postcopy: false,
                };
                match self.ctl.migrations().migrate_vm_waiting(&m.vm, req).await {
                    Ok(t) => {
                        room -= 1;
                        let (me, m) = (self.clone(), m.clone());
                        running.spawn(async move {
                            let end = me.ctl.inner.tasks.wait(&t.id, MIGRATION_TIMEOUT).await;
                            (m, end)
                        });
                    }
                    Err(e) => failed.push(format!("{}: {e}", m.vm)),
                }
            }
            if running.is_empty() && pending.len() == 0 {
                break;
            }
            task.progress(
                ((moved.len() + failed.len()) * 100 / total) as u8,
                &format!("{} of {total} VM(s) moved, {} migrating", moved.len(), running.len()),
            );
            // The next end of ours, or a migration record going away (room for one more).
            tokio::select! {
                done = running.join_next(), if !running.is_empty() => match done {
                    Some(Ok((m, Ok(t)))) if t.state == TaskState::Succeeded => moved.push(format!("{} to {}", m.vm, m.to)),
                    Some(Ok((m, Ok(t)))) => failed.push(format!("{}: {}", m.vm, t.error.unwrap_or(t.message))),
                    Some(Ok((m, Err(e)))) => failed.push(format!("{}: {e}", m.vm)),
                    Some(Err(e)) => failed.push(format!("a migration's waiter ended: {e}")),
                    None => {}
                },
                _ = record_gone(&mut changes) => {}
            }
            if !running.is_empty() {
                idle_since = std::time::Instant::now();
            }
        }
        if failed.is_empty() {
            Ok(format!("moved {} VM(s) away: {}", moved.len(), moved.join(", ")))
        } else {
            Err(format!("moved {} of {total} VM(s); not moved: {}", moved.len(), failed.join("; ")))
        }
    }
}

/// Waits until a migration record is deleted (or a second passed: a change missed is seen by
/// the next count).
async fn record_gone(changes: &mut tokio::sync::broadcast::Receiver<WatchEvent>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match changes.recv().await {
                Ok(WatchEvent::Delete { key, .. }) if key.contains(Migration::PREFIX) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}
