//! A backup job's VMs on other hosts of the cluster. A VM's backup is taken by the host that
//! runs it (its QEMU, its disks), so a job's run asks that host through the store: an order
//! (`backup-orders/<job>.<vm>`, asked), which the host claims (running), carries out as any
//! backup of its own, and answers (succeeded or failed, with the task's message). The run waits
//! for the answer, or fails the VM when the host leaves the cluster first, then deletes the
//! order. A host whose oxvirtd stopped while carrying one out fails it when it comes back.

use super::Backups;
use crate::{lock, now_millis};
use oxvirt_model::{BackupOrder, BackupRequest, OrderState, TaskState};
use oxvirt_store::{Expect, StoreExt};
use std::time::{Duration, Instant};

/// How often a run looks at its order's answer.
const POLL: Duration = Duration::from_millis(250);

impl Backups {
    /// Has `host` back VM `vm` up into `repo` for job `job`: its answer (the backup's message,
    /// or why it failed).
    pub(crate) async fn back_up_on(&self, job: &str, vm: &str, repo: &str, host: &str) -> Result<String, String> {
        let store = &self.ctl.inner.store;
        let name = BackupOrder::name_of(job, vm);
        let order = BackupOrder {
            job: job.into(),
            vm: vm.into(),
            repo: repo.into(),
            host: host.into(),
            asked_at: now_millis(),
            state: OrderState::Asked,
            message: String::new(),
        };
        store.put_record(&name, &order, Expect::Any).map_err(|e| format!("asking host {host}: {e}"))?;
        let begun = Instant::now();
        let answer = loop {
            tokio::time::sleep(POLL).await;
            match store.get_record::<BackupOrder>(&name) {
                Ok(Some((o, _))) if o.state == OrderState::Succeeded => break Ok(o.message),
                Ok(Some((o, _))) if o.state == OrderState::Failed => break Err(o.message),
                Ok(None) => break Err("its order was deleted meanwhile".to_string()),
                _ => {}
            }
            if !matches!(store.get(&format!("alive/{host}")), Ok(Some(_))) {
                break Err(format!("host {host}, which runs it, left the cluster before it backed it up"));
            }
            if begun.elapsed() > super::jobs::BACKUP_TIMEOUT {
                break Err(format!("host {host} did not back it up within {:?}", super::jobs::BACKUP_TIMEOUT));
            }
        };
        let _ = store.delete_record::<BackupOrder>(&name, Expect::Any);
        answer.map(|m| format!("on {host}: {m}")).map_err(|e| format!("on {host}: {e}"))
    }

    /// Each round, on every host of a cluster: the orders for this host are carried out; those
    /// it was carrying out when its oxvirtd stopped are answered as failed.
    pub(crate) async fn orders_round(&self) {
        let Some(me) = self.ctl.hosts().host_name() else { return };
        let Ok(orders) = self.ctl.inner.store.list_records::<BackupOrder>() else { return };
        for (mut o, rev) in orders.into_iter().filter(|(o, _)| o.host == me) {
            let name = BackupOrder::name_of(&o.job, &o.vm);
            match o.state {
                OrderState::Asked => {
                    o.state = OrderState::Running;
                    if self.ctl.inner.store.put_record(&name, &o, Expect::Revision(rev)).is_err() {
                        continue;
                    }
                    lock(&self.state().running_orders).insert(name.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        let req = BackupRequest { repo: o.repo.clone() };
                        let r = match me.backup_vm(&o.vm, req).await {
                            Ok(t) => me.ctl.inner.tasks.wait(&t.id, super::jobs::BACKUP_TIMEOUT).await,
                            Err(e) => Err(e),
                        };
                        let (state, message) = match r {
                            Ok(t) if t.state == TaskState::Succeeded => (OrderState::Succeeded, t.message),
                            Ok(t) => (OrderState::Failed, t.error.unwrap_or(t.message)),
                            Err(e) => (OrderState::Failed, e.to_string()),
                        };
                        let _ = me.ctl.inner.store.update_record::<BackupOrder>(&name, |o| {
                            o.state = state;
                            o.message = message.clone();
                        });
                        lock(&me.state().running_orders).remove(&name);
                    });
                }
                OrderState::Running if !lock(&self.state().running_orders).contains(&name) => {
                    o.state = OrderState::Failed;
                    o.message = format!("interrupted: oxvirtd on {me} stopped while it backed the VM up");
                    let _ = self.ctl.inner.store.put_record(&name, &o, Expect::Revision(rev));
                }
                _ => {}
            }
        }
    }
}
