//! Live migration between hosts of the cluster, through the store: the source records the
//! migration, the target starts a QEMU waiting for the stream and records where, the source
//! sends (pre-copy, downtime target, bandwidth limit, auto-converge, post-copy), then hands the
//! VM over in one transaction (`Vm.host`); the target's QEMU, which runs the guest once it has
//! everything, is taken over by the target. On any failure the VM runs on where it was: the
//! source's QEMU carries on, the target removes what it started.
//!
//! Disks in shared pools (shared-dir, nbd) and path disks stay where they are (both hosts reach
//! them); disks in local pools are copied while the guest runs (`disks.rs`) and their old copies
//! removed once the VM is on the target. The target's side is in `target.rs`.

mod disks;
mod target;
mod tls;

pub(crate) use target::Incoming;

use crate::tasks::TaskHandle;
use crate::vms::busy;
use crate::{lock, now_millis, ControlError};
use oxvirt_hypervisor::ops::{MigrationInfo, MigrationStatus, SendOptions, StreamEnd};
use oxvirt_hypervisor::Instance;
use oxvirt_model::{MigrateRequest, Migration, MigrationState, Task, Vm, VmState};
use oxvirt_store::{encode, Expect, Op, Record, StoreExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::service! {
    /// Live migration through the store: the source side, the target side, local disks mirrored over NBD.
    Migrations, migrations, state = migrations
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// QEMUs waiting for a VM migrating to this host, by VM.
    pub incoming: std::sync::Mutex<std::collections::HashMap<String, Incoming>>,
    /// Held while migration records are served (by the reconciler or the store watch).
    pub serving_migrations: tokio::sync::Mutex<()>,
}

/// How long the target may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of the console log goes with the VM.
const CONSOLE_HANDOVER: u64 = 256 << 10;

/// The source carries on: no migration, no mirrors, the guest running again (QEMU resumes a guest
/// it paused for the switch-over only when it got that far).
async fn undo_on_source(instance: &dyn Instance, local: &[disks::LocalDisk]) {
    let _ = instance.migration().cancel().await;
    disks::abandon_mirrors(instance, local).await;
    tls::drop_stream_tls(instance, StreamEnd::Source).await;
    let _ = instance.resume().await;
}

/// A completed migration's figures: QEMU says `completed` (and sends the event) a moment before
/// it has written its total and pause times, so a query right on the event may read zeros.
async fn completed_figures(instance: &dyn Instance, mut info: MigrationInfo) -> MigrationInfo {
    for _ in 0..50 {
        if info.total_time_ms > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        match instance.migration().migration_info().await {
            Ok(again) if again.status == MigrationStatus::Completed => info = again,
            _ => break,
        }
    }
    info
}

/// How a migration went, as the source saw it.
struct Sent {
    info: MigrationInfo,
    /// How long each phase took, in ms, in order (`target ready`, `disks copied`, `memory sent`).
    phases: Vec<(&'static str, u64)>,
    /// It switched to post-copy.
    postcopy: bool,
    /// The most auto-converge slowed the vCPUs down, in percent.
    throttled: u64,
}

impl Migrations {
    /// A QEMU waits here for this VM to arrive (this host is a migration's target).
    pub(crate) fn is_arriving(&self, vm: &str) -> bool {
        lock(&self.state().incoming).contains_key(vm)
    }

    /// Starts a migration task; checks first what can be checked here.
    pub fn migrate_vm(&self, name: &str, req: MigrateRequest) -> Result<Task, ControlError> {
        let guard = self.ctl.inner.slot(name).op.clone().try_lock_owned().map_err(|_| busy(name))?;
        self.begin_migration(name, req, Expect::Absent, guard)
    }

    /// [`Migrations::migrate_vm`] for a request: a VM held for a moment (its event watcher
    /// recording a resume after it arrived, say) is waited for, up to `BUSY_GRACE`, before the
    /// request is told it is busy.
    pub async fn migrate_vm_waiting(&self, name: &str, req: MigrateRequest) -> Result<Task, ControlError> {
        let op = self.ctl.inner.slot(name).op.clone();
        let guard =
            tokio::time::timeout(crate::vms::lifecycle::BUSY_GRACE, op.lock_owned()).await.map_err(|_| busy(name))?;
        self.begin_migration(name, req, Expect::Absent, guard)
    }

    /// A migration the cluster's rebalancing asked for (record `rev`), started by this host, the
    /// VM's; one that cannot start is dropped (the next plan sees the cluster as it is).
    pub(crate) fn start_asked(&self, m: &Migration, rev: u64) {
        let req = MigrateRequest {
            to: m.target.clone(),
            downtime_ms: 100,
            bandwidth_mibs: 0,
            auto_converge: true,
            postcopy: false,
        };
        let started = match self.ctl.inner.slot(&m.vm).op.clone().try_lock_owned() {
            Ok(guard) => self.begin_migration(&m.vm, req, Expect::Revision(rev), guard),
            Err(_) => Err(busy(&m.vm)),
        };
        if let Err(e) = started {
            tracing::warn!(vm = %m.vm, to = %m.target, "rebalancing asked for a migration that cannot start: {e}");
            let _ = self.ctl.inner.store.delete_record::<Migration>(&m.vm, Expect::Revision(rev));
        }
    }

    /// Starts a migration of VM `name`, whose operation lock `guard` is.
    fn begin_migration(
        &self,
        name: &str,
        req: MigrateRequest,
        expect: Expect,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Task, ControlError> {
        req.validate()?;
        let Some(me) = self.ctl.hosts().host_name() else {
            return Err(ControlError::Conflict("this host is not in a cluster: there is nowhere to migrate to".into()));
        };
        let vm = self.ctl.vms().get_vm(name)?;
        self.ctl.hosts().check_local(&vm)?;
        if vm.status.state != VmState::Running {
            return Err(ControlError::Conflict(format!(
                "VM {name} is {}: only a running VM migrates",
                vm.status.state.as_str()
            )));
        }
        if req.to == me {
            return Err(ControlError::invalid("to", format!("VM {name} runs on {me} already")));
        }
        let target = self.ctl.hosts().usable_host("to", &req.to)?;
        self.check_peer_tls("to", &target)?;
        let local = self.local_disks(&vm.spec)?;
        if req.postcopy && !local.is_empty() {
            return Err(ControlError::invalid(
                "postcopy",
                "not with local disks: they are copied before the switch-over",
            ));
        }
        let m = Migration {
            postcopy: req.postcopy,
            ..Migration::new(name, &me, &target.name, MigrationState::Requested, now_millis())
        };
        self.ctl.inner.store.put_record(name, &m, expect).map_err(|_| busy(name))?;
        let task = self.ctl.inner.tasks.create("vm.migrate", &format!("vms/{name}"))?;
        let snapshot = task.snapshot();
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let r = me.run_migration(&name, &req, &task).await;
            if let Err(e) = &r {
                me.end_migration(&name, MigrationState::Failed, Some(e.to_string()));
            }
            drop(guard);
            task.finish_with(r.map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    fn end_migration(&self, name: &str, state: MigrationState, error: Option<String>) {
        // A record already gone (the source removed a refused one) stays gone.
        let r = self.ctl.inner.store.update_record::<Migration>(name, |m| {
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
        // The target's answer is a change of the record: waited for on the store's watch (a poll
        // every 100 ms only in case a change was missed).
        let mut changes = self.ctl.inner.store.watch();
        let key = Migration::key_of(name);
        let ready = loop {
            let m = self.ctl.inner.store.get_record::<Migration>(name)?.map(|(m, _)| m);
            match m {
                Some(m @ Migration { state: MigrationState::Ready, uri: Some(_), .. }) => break m,
                Some(Migration { state: MigrationState::Refused | MigrationState::Failed, error, .. }) => {
                    let _ = self.ctl.inner.store.delete_record::<Migration>(name, Expect::Any);
                    return Err(ControlError::Failed(format!("the target refused: {}", error.unwrap_or_default())));
                }
                None => return Err(ControlError::Failed("the migration's record went away".into())),
                _ => {}
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(ControlError::Failed(format!(
                    "host {} did not get ready within {READY_TIMEOUT:?}",
                    req.to
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), async {
                loop {
                    match changes.recv().await {
                        Ok(oxvirt_store::WatchEvent::Put(e)) if e.key == key => return,
                        Ok(oxvirt_store::WatchEvent::Delete { key: k, .. }) if k == key => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
            .await;
        };
        let ready_ms = start.elapsed().as_millis() as u64;
        tracing::info!(vm = name, to = %req.to, ms = ready_ms, "migration: the target is ready");
        let vm = self.ctl.vms().get_vm(name)?;
        let local = self.local_disks(&vm.spec)?;
        let instance = self.ctl.vms().instance(name)?;
        let mut postcopy_started = false;
        let sent = match self.send(&*instance, req, &ready, &local, task, &mut postcopy_started).await {
            Ok(mut sent) => {
                sent.phases.insert(0, ("target ready", ready_ms));
                sent
            }
            Err(e) if postcopy_started => {
                // Past the switch to post-copy the guest's newest memory is on the target: the
                // source's is stale and must never run again.
                let _ = instance.kill().await;
                return Err(ControlError::Failed(format!(
                    "{e}; it had switched to post-copy, so the guest's running state is lost (the VM is stopped: start it again)"
                )));
            }
            Err(e) => {
                undo_on_source(&*instance, &local).await;
                return Err(e);
            }
        };
        self.finish_on_source(&vm, &req.to, &instance, &local, &sent).await
    }

    /// The guest runs on the target now: the VM record follows (in one transaction with the
    /// migration's), then this host's QEMU, local disk copies, TAP devices go.
    async fn finish_on_source(
        &self,
        vm: &Vm,
        to: &str,
        instance: &Arc<dyn Instance>,
        local: &[disks::LocalDisk],
        sent: &Sent,
    ) -> Result<String, ControlError> {
        let name = vm.spec.name.as_str();
        let my_files: Vec<_> = local.iter().map(|d| self.local_disk_file(d)).collect::<Result<_, _>>()?;
        let (total, downtime) = (sent.info.total_time_ms, sent.info.downtime_ms);
        let console =
            self.ctl.vms().console_log(name, CONSOLE_HANDOVER).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut tries = 0;
        let mut how = format!("{total} ms in all, paused {downtime} ms");
        if !local.is_empty() {
            how += &format!(", {} local disk(s) copied", local.len());
        }
        if sent.postcopy {
            how += ", finished by post-copy";
        }
        if sent.throttled > 0 {
            how += &format!(", vCPUs slowed by up to {}% (auto-converge)", sent.throttled);
        }
        if !sent.phases.is_empty() {
            let phases: Vec<String> = sent.phases.iter().map(|(what, ms)| format!("{what} {ms} ms")).collect();
            how += &format!("; {}", phases.join(", "));
        }
        let handing = Instant::now();
        while let Err(e) = self.hand_over(name, to, local, &how, console.clone()) {
            // The guest runs on the target already: the record must follow, never the guest go back.
            tries += 1;
            if tries >= 30 {
                return Err(e);
            }
            tracing::warn!(vm = name, "handing the VM over to {to}: {e}; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Our QEMU is done (paused after the switch-over, its disks flushed and let go): it goes
        // (its exit is not the VM's, which is the target's now), then the local disks' old
        // copies and the NICs' TAP devices here — after the task, which is done: the VM runs there.
        *lock(&self.ctl.inner.slot(name).instance) = None;
        let (me, instance, vm) = (self.clone(), instance.clone(), vm.clone());
        tokio::spawn(async move {
            let _ = instance.discard().await;
            // Killed, QEMU left its pidfile: it names no QEMU of this VM any more.
            let _ = std::fs::remove_file(me.ctl.inner.paths(&vm.id).pidfile());
            disks::remove_copies(&my_files);
            me.ctl.networks().release_network(&vm.id, &vm.spec);
            // The console's output went with the VM (its new host keeps it).
            me.ctl.vms().forget_console_log(&vm);
        });
        Ok(format!("on {to} now: {how}, handed over {} ms", handing.elapsed().as_millis()))
    }

    /// Sends the guest (and its local disks) to the target; says how it went.
    async fn send(
        &self,
        instance: &dyn oxvirt_hypervisor::Instance,
        req: &MigrateRequest,
        ready: &Migration,
        local: &[disks::LocalDisk],
        task: &TaskHandle,
        postcopy_started: &mut bool,
    ) -> Result<Sent, ControlError> {
        let uri = ready.uri.clone().unwrap_or_default();
        if self.migration_tls() {
            // First: a QEMU without the credentials fails here, before any disk is mirrored.
            tls::set_stream_tls(instance, StreamEnd::Source).await?;
        }
        let mut phases = Vec::new();
        let copying = Instant::now();
        let mem_from = if local.is_empty() {
            10
        } else {
            let nbd = ready.nbd.as_deref().ok_or_else(|| ControlError::Failed("the target serves no disks".into()))?;
            task.progress(8, &format!("copying {} local disk(s) to {}", local.len(), req.to));
            disks::start_mirrors(instance, nbd, local, self.migration_tls()).await?;
            disks::wait_in_sync(instance, local, |done, total| {
                let pct = (8 + done.saturating_mul(32) / total.max(1)).min(40) as u8;
                task.progress(pct, &format!("copied {} MiB of {} MiB of disks", done >> 20, total >> 20));
            })
            .await?;
            tracing::info!(to = %req.to, ms = ready.created_at.abs_diff(crate::now_millis()), "migration: the disks are in sync");
            phases.push(("disks copied", copying.elapsed().as_millis() as u64));
            40
        };
        let options = SendOptions {
            auto_converge: req.auto_converge,
            postcopy: req.postcopy,
            pause_before_switchover: !local.is_empty(),
            downtime_ms: req.downtime_ms,
            max_bandwidth: req.bandwidth_mibs << 20,
        };
        task.progress(mem_from, &format!("sending memory to {} ({uri})", req.to));
        // QEMU says each change of the migration's status (`MIGRATION` events): a wait ends on
        // one at once; the poll between them only moves the progress on.
        let mut events = instance.subscribe();
        instance.migration().send(&uri, &options).await?;
        let begun = Instant::now();
        let mut throttled = 0;
        // QEMU leaves `pre-switchover` a moment after `migrate-continue` returns: a query
        // meanwhile still says it, and the mirrors are already gone.
        let mut switch_over_asked = false;
        let poll = Duration::from_millis(if local.is_empty() { 200 } else { 20 });
        loop {
            let _ = tokio::time::timeout(poll, async {
                loop {
                    match events.recv().await {
                        Ok(oxvirt_hypervisor::InstanceEvent::Migration { .. }) => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        // No more events (QEMU gone): the query says what happened.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .await;
            let info = instance.migration().migration_info().await?;
            match &info.status {
                MigrationStatus::Completed => {
                    let info = completed_figures(instance, info).await;
                    phases.push(("memory sent", begun.elapsed().as_millis() as u64));
                    return Ok(Sent { info, phases, postcopy: *postcopy_started, throttled });
                }
                MigrationStatus::Failed(why) => {
                    return Err(ControlError::Failed(format!("migration failed: {why}")));
                }
                // The guest is paused, its memory almost all there: the disks' last writes go
                // before the switch-over.
                MigrationStatus::PreSwitchover if switch_over_asked => {}
                MigrationStatus::PreSwitchover => {
                    disks::finish_mirrors(instance, local).await?;
                    instance.migration().continue_switchover().await?;
                    switch_over_asked = true;
                }
                MigrationStatus::None | MigrationStatus::Active(_) => {
                    let (sent, total) = (info.ram_transferred, info.ram_total.max(1));
                    let span = 95 - u64::from(mem_from);
                    let pct = (u64::from(mem_from) + sent.saturating_mul(span) / total).min(95) as u8;
                    task.progress(pct, &format!("sent {} MiB of {} MiB of memory", sent >> 20, total >> 20));
                    throttled = throttled.max(info.cpu_throttle_percentage);
                    if req.postcopy && !*postcopy_started && begun.elapsed() > Duration::from_secs(5) {
                        *postcopy_started = instance.migration().start_postcopy().await.is_ok();
                        if *postcopy_started {
                            task.progress(pct, "switched to post-copy: the guest runs on the target");
                        }
                    }
                }
            }
        }
    }

    /// At start: a migration this daemon was part of when it stopped is finished (the guest had
    /// gone over: QEMU completed it alone) or undone (the VM runs on at its source, the target's
    /// QEMU and copies go). `as_source`: the migrations from here (once guests are re-adopted); else those to here
    /// (before anything else, so that a half-made target is not made again).
    pub(crate) async fn recover_migrations(&self, as_source: bool) {
        let Some(me) = self.ctl.hosts().host_name() else { return };
        let Ok(all) = self.ctl.inner.store.list_records::<Migration>() else { return };
        for (m, _) in all {
            if as_source && m.source == me && m.state == MigrationState::Refused {
                let _ = self.ctl.inner.store.delete_record::<Migration>(&m.vm, Expect::Any);
                continue;
            }
            if !matches!(m.state, MigrationState::Requested | MigrationState::Ready) {
                continue;
            }
            if as_source && m.source == me {
                self.recover_as_source(&m).await;
            } else if !as_source && m.target == me && !lock(&self.state().incoming).contains_key(&m.vm) {
                self.recover_as_target(&m).await;
            }
        }
    }

    async fn recover_as_source(&self, m: &Migration) {
        let slot = self.ctl.inner.slot(&m.vm);
        let _op = slot.op.lock().await;
        let (Ok(vm), Ok(instance)) = (self.ctl.vms().get_vm(&m.vm), self.ctl.vms().instance(&m.vm)) else {
            self.end_migration(
                &m.vm,
                MigrationState::Failed,
                Some("oxvirtd restarted and the VM's QEMU was gone".into()),
            );
            return;
        };
        let local = self.local_disks(&vm.spec).unwrap_or_default();
        let info = instance.migration().migration_info().await.ok();
        if let Some(info) = info.filter(|i| i.status == MigrationStatus::Completed) {
            let sent = Sent { info, phases: Vec::new(), postcopy: false, throttled: 0 };
            match self.finish_on_source(&vm, &m.target, &instance, &local, &sent).await {
                Ok(done) => tracing::info!(vm = %m.vm, "a migration finished while oxvirtd was away: {done}"),
                Err(e) => tracing::error!(vm = %m.vm, "a migration that finished while oxvirtd was away: {e}"),
            }
            return;
        }
        undo_on_source(&*instance, &local).await;
        tracing::info!(vm = %m.vm, to = %m.target, "undid a migration that oxvirtd's restart interrupted");
        self.end_migration(
            &m.vm,
            MigrationState::Failed,
            Some("the source's oxvirtd restarted during the migration: undone, the VM runs on the source".into()),
        );
    }

    /// Gives the VM to `to`: its record says so, the migration is completed, in one transaction.
    fn hand_over(
        &self,
        name: &str,
        to: &str,
        local: &[disks::LocalDisk],
        how: &str,
        console: Option<String>,
    ) -> Result<(), ControlError> {
        let (mut vm, rev) =
            self.ctl.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        vm.host = Some(to.to_string());
        // The switch-over paused the guest here; it runs there.
        vm.desired = oxvirt_model::DesiredState::Running;
        // This host's process is not the VM's any more: the target records its own on taking over.
        vm.status.pid = None;
        vm.host_reason = Some(format!("migrated from {}: {how}", self.ctl.hosts().host_name().unwrap_or_default()));
        let (mut m, mrev) =
            self.ctl.inner.store.get_record::<Migration>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        m.state = MigrationState::Completed;
        m.console = console;
        let mut ops = vec![
            Op::Put { key: Vm::key_of(name), value: encode(&vm), expect: Expect::Revision(rev) },
            Op::Put { key: Migration::key_of(name), value: encode(&m), expect: Expect::Revision(mrev) },
        ];
        // Its local volumes are on the target now.
        for d in local {
            let key = crate::storage::volume_key(&d.pool, &d.volume);
            if let Some((mut vol, vrev)) = self.ctl.inner.store.get_record::<oxvirt_model::Volume>(&key)? {
                vol.host = Some(to.to_string());
                ops.push(Op::Put {
                    key: oxvirt_model::Volume::key_of(&key),
                    value: encode(&vol),
                    expect: Expect::Revision(vrev),
                });
            }
        }
        self.ctl.inner.store.txn(ops)?;
        Ok(())
    }
}
