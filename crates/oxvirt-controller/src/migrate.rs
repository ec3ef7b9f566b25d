//! Live migration between hosts of the cluster, through the store: the source records the
//! migration, the target starts a QEMU waiting for the stream and records where, the source
//! sends (pre-copy, downtime target, bandwidth limit, auto-converge, post-copy), then hands the
//! VM over in one transaction (`Vm.host`); the target's QEMU, which runs the guest once it has
//! everything, is taken over by the target. On any failure the VM runs on where it was: the
//! source's QEMU carries on, the target removes what it started.
//!
//! Memory only: every disk must be reachable from both hosts (a shared or NBD pool, or a path).

use crate::cluster::HostRecord;
use crate::tasks::TaskHandle;
use crate::vms::busy;
use crate::{lock, now_millis, ControlError, Controller};
use oxvirt_model::{MigrateRequest, Migration, MigrationState, Task, Vm, VmState};
use oxvirt_store::{encode, Expect, Op, Record, StoreExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long the target may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Controller {
    /// Starts a migration task; checks first what can be checked here.
    pub fn migrate_vm(&self, name: &str, req: MigrateRequest) -> Result<Task, ControlError> {
        req.validate()?;
        let Some(me) = self.host_name() else {
            return Err(ControlError::Conflict("this host is not in a cluster: there is nowhere to migrate to".into()));
        };
        let slot = self.inner.slot(name);
        let guard = slot.op.clone().try_lock_owned().map_err(|_| busy(name))?;
        let vm = self.get_vm(name)?;
        self.check_local(&vm)?;
        if vm.status.state != VmState::Running {
            return Err(ControlError::Conflict(format!(
                "VM {name} is {}: only a running VM migrates",
                vm.status.state.as_str()
            )));
        }
        if req.to == me {
            return Err(ControlError::invalid("to", format!("VM {name} runs on {me} already")));
        }
        let target = self.usable_host("to", &req.to)?;
        for (i, d) in vm.spec.disks.iter().enumerate() {
            if let Some(r) = &d.volume {
                let (pool, _) = oxvirt_model::parse_volume_ref("volume", r)?;
                let p = self.inner.store.get_record::<oxvirt_model::Pool>(&pool)?.map(|(p, _)| p);
                if !p.is_some_and(|p| p.spec.kind.is_shared()) {
                    return Err(ControlError::invalid(
                        format!("disks[{i}]"),
                        format!("volume {r} is in a local pool: only disks both hosts reach (shared-dir or nbd pools) migrate"),
                    ));
                }
            }
        }
        let m = Migration {
            vm: name.into(),
            source: me,
            target: target.name.clone(),
            state: MigrationState::Requested,
            uri: None,
            error: None,
            created_at: now_millis(),
        };
        self.inner.store.put_record(name, &m, Expect::Absent).map_err(|_| busy(name))?;
        let task = self.inner.tasks.create("vm.migrate", &format!("vms/{name}"))?;
        let snapshot = task.snapshot();
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let r = me.run_migration(&name, &req, &task).await;
            if let Err(e) = &r {
                me.end_migration(&name, MigrationState::Failed, Some(e.to_string()));
            }
            drop(guard);
            if let Ok(done) = &r {
                task.progress(100, done);
            }
            task.finish(r.map(|_| ()).map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    fn end_migration(&self, name: &str, state: MigrationState, error: Option<String>) {
        let r = self.inner.store.update_record::<Migration>(name, |m| {
            m.state = state;
            m.error = error.clone();
        });
        if let Err(e) = r {
            tracing::warn!(vm = name, "migration record: {e}");
        }
    }

    async fn run_migration(&self, name: &str, req: &MigrateRequest, task: &TaskHandle) -> Result<String, ControlError> {
        task.progress(5, &format!("waiting for {} to get ready", req.to));
        let start = Instant::now();
        let uri = loop {
            let m = self.inner.store.get_record::<Migration>(name)?.map(|(m, _)| m);
            match m {
                Some(Migration { state: MigrationState::Ready, uri: Some(u), .. }) => break u,
                Some(Migration { state: MigrationState::Failed, error, .. }) => {
                    return Err(ControlError::Conflict(format!("the target refused: {}", error.unwrap_or_default())))
                }
                _ => {}
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(ControlError::Conflict(format!(
                    "host {} did not get ready within {READY_TIMEOUT:?}",
                    req.to
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let instance = self.instance(name)?;
        let caps = json!({ "capabilities": [
            { "capability": "auto-converge", "state": req.auto_converge },
            { "capability": "postcopy-ram", "state": req.postcopy },
        ]});
        instance.command("migrate-set-capabilities", caps).await?;
        // Every parameter is set each time: QEMU keeps those of an earlier migration (a slow one
        // that failed would otherwise throttle the next).
        let bandwidth = if req.bandwidth_mibs > 0 { req.bandwidth_mibs << 20 } else { 1 << 40 };
        let params = json!({ "downtime-limit": req.downtime_ms, "max-bandwidth": bandwidth });
        instance.command("migrate-set-parameters", params).await?;
        task.progress(10, &format!("sending memory to {} ({uri})", req.to));
        instance.command("migrate", json!({ "uri": uri })).await?;
        let begun = Instant::now();
        let mut postcopy_asked = false;
        let info = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let q: Value = instance.command("query-migrate", Value::Null).await?;
            match q["status"].as_str().unwrap_or("") {
                "completed" => break q,
                "failed" | "cancelled" => {
                    let why = q["error-desc"].as_str().unwrap_or("QEMU gave up").to_string();
                    // The source carries on (QEMU resumes a guest it paused for the switch-over).
                    let _ = instance.command("cont", Value::Null).await;
                    return Err(ControlError::Conflict(format!("migration failed: {why}")));
                }
                _ => {
                    let (sent, total) =
                        (q["ram"]["transferred"].as_u64().unwrap_or(0), q["ram"]["total"].as_u64().unwrap_or(1));
                    let pct = (10 + sent.saturating_mul(85) / total.max(1)).min(95) as u8;
                    task.progress(pct, &format!("sent {} MiB of {} MiB", sent >> 20, total >> 20));
                    if req.postcopy && !postcopy_asked && begun.elapsed() > Duration::from_secs(5) {
                        postcopy_asked = instance.command("migrate-start-postcopy", Value::Null).await.is_ok();
                    }
                }
            }
        };
        // The guest is on the target now: hand the VM over, in one transaction with the record.
        let (mut vm, rev) = self.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        vm.host = Some(req.to.clone());
        let total = info["total-time"].as_u64().unwrap_or(0);
        let downtime = info["downtime"].as_u64().unwrap_or(0);
        vm.host_reason = Some(format!(
            "migrated from {}: {total} ms in all, paused {downtime} ms",
            self.host_name().unwrap_or_default()
        ));
        let (mut m, mrev) =
            self.inner.store.get_record::<Migration>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        m.state = MigrationState::Completed;
        self.inner.store.txn(vec![
            Op::Put { key: Vm::key_of(name), value: encode(&vm), expect: Expect::Revision(rev) },
            Op::Put { key: Migration::key_of(name), value: encode(&m), expect: Expect::Revision(mrev) },
        ])?;
        // Our QEMU is done (paused after the switch-over): it goes, the op lock keeps its exit
        // from being taken for the VM's.
        let _ = instance.kill().await;
        *lock(&self.inner.slot(name).instance) = None;
        Ok(format!("on {} now: {total} ms in all, {downtime} ms paused", req.to))
    }

    /// The target's side, each reconcile round: get ready for migrations to this host, take over
    /// VMs that arrived, remove what failed ones left.
    pub(crate) async fn serve_migrations(&self) {
        let Some(me) = self.host_name() else { return };
        let Ok(all) = self.inner.store.list_records::<Migration>() else { return };
        for (m, _) in all {
            if m.target == me {
                match m.state {
                    MigrationState::Requested => {
                        tracing::info!(vm = %m.vm, from = %m.source, "getting ready for a migration");
                        if let Err(e) = self.receive(&m).await {
                            tracing::warn!(vm = %m.vm, "cannot receive the migration: {e}");
                            self.end_migration(&m.vm, MigrationState::Failed, Some(e.to_string()));
                        }
                    }
                    MigrationState::Completed => {
                        let taken = lock(&self.inner.incoming).remove(&m.vm);
                        if let Some(i) = taken {
                            tracing::info!(vm = %m.vm, from = %m.source, "migrated in");
                            self.attach(&m.vm, i);
                        }
                        let _ = self.inner.store.delete_record::<Migration>(&m.vm, Expect::Any);
                    }
                    MigrationState::Failed => {
                        let taken = lock(&self.inner.incoming).remove(&m.vm);
                        if let Some(i) = taken {
                            // Its QEMU's exit removes what it had (its cgroup, once empty).
                            let _ = i.kill().await;
                        }
                        let _ = self.inner.store.delete_record::<Migration>(&m.vm, Expect::Any);
                    }
                    MigrationState::Ready => {}
                }
            }
        }
    }

    /// Starts a QEMU that waits for the VM's memory, and says where.
    async fn receive(&self, m: &Migration) -> Result<(), ControlError> {
        if lock(&self.inner.incoming).contains_key(&m.vm) {
            return Ok(());
        }
        let vm = self.get_vm(&m.vm)?;
        let me: HostRecord =
            self.host_record(&m.target)?.ok_or_else(|| ControlError::Conflict("this host has no record".into()))?;
        let ip = me.address.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_default();
        let ip = if ip.is_empty() || ip == "0.0.0.0" { "127.0.0.1".to_string() } else { ip };
        let port = std::net::TcpListener::bind(format!("{ip}:0"))
            .and_then(|l| l.local_addr())
            .map_err(|e| ControlError::Host(format!("no free port on {ip}: {e}")))?
            .port();
        let with_mtu = self.prepare_network(&vm.id, &vm.spec, vm.uid).await?;
        self.prepare_storage(&vm.id, &vm.spec).await?;
        let mut spec = self.resolve_disks(&vm.id, &with_mtu)?;
        spec.resources.placement = None;
        spec.run_as = self.run_as(&m.vm)?;
        let uri = format!("tcp:{ip}:{port}");
        spec.incoming = Some(uri.clone());
        let instance = self.inner.hv.start(&vm.id, &spec, &self.inner.paths(&vm.id)).await?;
        lock(&self.inner.incoming).insert(m.vm.clone(), instance);
        self.inner.store.update_record::<Migration>(&m.vm, |r| {
            r.state = MigrationState::Ready;
            r.uri = Some(uri.clone());
        })?;
        Ok(())
    }
}
