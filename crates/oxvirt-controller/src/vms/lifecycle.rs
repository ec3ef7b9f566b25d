//! The VM lifecycle: actions as tasks, and the watcher that follows each running guest.

use crate::tasks::TaskHandle;
use crate::vms::busy;
use crate::{lock, now_millis, ControlError};
use oxvirt_hypervisor::{Instance, InstanceEvent, RunState};
use oxvirt_model::{DesiredState, Event, RestartPolicy, Task, Vm, VmAction, VmState};
use oxvirt_store::StoreExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long a request waits for a VM another operation holds before it is told the VM is busy.
pub const BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl crate::Vms {
    /// Starts an action on a VM as a task. Refused at once (409) when the VM's state does not
    /// allow it or another operation on the VM is in progress.
    pub fn vm_action(&self, name: &str, action: VmAction) -> Result<Task, ControlError> {
        let guard = self.ctl.inner.slot(name).op.clone().try_lock_owned().map_err(|_| busy(name))?;
        self.vm_action_holding(guard, name, action)
    }

    /// [`Controller::vm_action`] for a request: a VM held for a moment (its event watcher
    /// recording a pause or a guest's exit) is waited for, up to [`BUSY_GRACE`], before the
    /// request is told it is busy.
    pub async fn vm_action_waiting(&self, name: &str, action: VmAction) -> Result<Task, ControlError> {
        let op = self.ctl.inner.slot(name).op.clone();
        let guard = tokio::time::timeout(BUSY_GRACE, op.lock_owned()).await.map_err(|_| busy(name))?;
        self.vm_action_holding(guard, name, action)
    }

    fn vm_action_holding(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        name: &str,
        action: VmAction,
    ) -> Result<Task, ControlError> {
        let vm = self.get_vm(name)?;
        self.ctl.hosts().check_local(&vm)?;
        action.check_from(vm.status.state).map_err(ControlError::Conflict)?;
        self.ctl.ha().follow_user_action(name, action)?;
        let task = self.ctl.inner.tasks.create(&format!("vm.{}", action.as_str()), &format!("vms/{name}"))?;
        let snapshot = task.snapshot();
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let result = me.run_action(&name, action, &task).await.map_err(|e| e.to_string());
            drop(guard);
            if let Err(e) = &result {
                tracing::warn!(vm = %name, action = action.as_str(), "failed: {e}");
            }
            task.finish(result);
        });
        Ok(snapshot)
    }

    async fn run_action(&self, name: &str, action: VmAction, task: &TaskHandle) -> Result<(), ControlError> {
        self.set_desired(name, action.desired_after())?;
        match action {
            VmAction::Start => self.do_start(name, task).await,
            VmAction::Stop => self.do_stop(name, task, false).await,
            VmAction::Kill => self.do_stop(name, task, true).await,
            VmAction::Reboot => {
                self.do_stop(name, task, false).await?;
                self.set_desired(name, DesiredState::Running)?;
                self.do_start(name, task).await
            }
            VmAction::Reset => {
                self.instance(name)?.reset().await?;
                self.emit_guest(name, "reset");
                Ok(())
            }
            VmAction::Pause => {
                self.instance(name)?.pause().await?;
                self.set_state(name, VmState::Paused, "paused by request");
                Ok(())
            }
            VmAction::Resume => {
                self.instance(name)?.resume().await?;
                self.set_state(name, VmState::Running, "resumed by request");
                Ok(())
            }
        }
    }

    pub(crate) fn instance(&self, name: &str) -> Result<Arc<dyn Instance>, ControlError> {
        lock(&self.ctl.inner.slot(name).instance)
            .clone()
            .filter(|i| !i.has_exited())
            .ok_or_else(|| ControlError::Conflict(format!("VM {name} has no running QEMU")))
    }

    pub(crate) async fn do_start(&self, name: &str, task: &TaskHandle) -> Result<(), ControlError> {
        let vm = self.get_vm(name)?;
        if task.is_cancelled() {
            return Err(ControlError::Conflict("cancelled before QEMU started".into()));
        }
        task.progress(10, "starting QEMU");
        self.set_state(name, VmState::Starting, "starting");
        let paths = self.ctl.inner.paths(&vm.id);
        // The host's policy first: nothing is made for a VM that does not fit.
        let placement = match self
            .ctl
            .resources()
            .admit(&vm)
            .and_then(|_| self.ctl.resources().place(&vm))
            .and_then(|p| self.ctl.resources().reserve_hugepages(&vm).map(|_| p))
        {
            Ok(p) => p,
            Err(e) => return Err(self.start_failed(name, e)),
        };
        let run_as = match self.run_as(name) {
            Ok(r) => r,
            Err(e) => return Err(self.start_failed(name, e)),
        };
        let prepared = match self.ctl.networks().prepare_network(&vm.id, &vm.spec, run_as.map(|r| r.0)).await {
            Ok(with_mtu) => self.ctl.nbd().prepare_storage(&vm.id, &vm.spec).await.map(|_| with_mtu),
            Err(e) => Err(e),
        };
        let mut spec = match prepared.and_then(|with_mtu| self.ctl.storage().resolve_disks(&vm.id, &with_mtu)) {
            Ok(s) => s,
            Err(e) => return Err(self.start_failed(name, e)),
        };
        spec.resources.placement = placement.clone();
        // A VM whose record took a warm pool's QEMU resumes it; one made from a template
        // otherwise waits for the template's state instead of booting.
        let warm = self.ctl.templates().warm_for(&vm.id);
        let restore = match warm.is_none().then(|| self.ctl.templates().restore_for(&vm.spec)).transpose() {
            Ok(r) => r.flatten(),
            Err(e) => return Err(self.start_failed(name, e)),
        };
        let launch = match &restore {
            Some(r) => r.launch(run_as, false),
            None => oxvirt_hypervisor::Launch { run_as, ..Default::default() },
        };
        if let Err(e) = self.ctl.resources().ksm_for_launch(&mut spec) {
            return Err(self.start_failed(name, e));
        }
        self.update_vm_record(name, |v| v.status.placement = placement.clone());
        let started = match warm {
            Some(member) => {
                task.progress(50, "resuming a VM of the template's warm pool");
                self.resume_warm(&vm.id, &spec, member.instance).await
            }
            None => self.ctl.inner.hv.start(&vm.id, &spec, &launch, &paths).await.map_err(ControlError::from),
        };
        match started {
            Ok(instance) => {
                if let Some(r) = restore {
                    task.progress(50, "restoring the template's guest");
                    let loaded = match instance.state().load_state(r.state, true).await {
                        Ok(()) => instance.resume().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = loaded {
                        let _ = instance.kill().await;
                        return Err(self.start_failed(name, e));
                    }
                }
                let setup = async {
                    // A clone of a template is told who it is before anything else runs in it.
                    if self.ctl.templates().give_identity(&vm, &*instance).await? {
                        task.progress(60, "the guest took its own identity");
                    }
                    self.ctl.resources().pin_threads(&vm.id, &spec, &instance, false).await?;
                    apply_setup(&spec, &instance).await.map_err(ControlError::from)
                }
                .await;
                if let Err(e) = setup {
                    let _ = instance.kill().await;
                    return Err(self.start_failed(name, e));
                }
                task.progress(80, "QEMU running");
                if spec.balloon {
                    // The guest's balloon driver reports its memory figures every 5 s.
                    if let Err(e) = instance.memory().set_balloon_stats_interval(5).await {
                        tracing::debug!(vm = %name, "balloon statistics: {e}");
                    }
                }
                self.attach(name, instance);
                Ok(())
            }
            Err(e) => Err(self.start_failed(name, e)),
        }
    }

    /// A warm pool's paused QEMU made VM `id`'s: its cgroup given the VM's limits, then resumed.
    async fn resume_warm(
        &self,
        id: &str,
        spec: &oxvirt_model::VmSpec,
        instance: Arc<dyn Instance>,
    ) -> Result<Arc<dyn Instance>, ControlError> {
        let ready = match self.ctl.inner.hv.set_limits(id, &oxvirt_hypervisor::limits_of(spec)) {
            Ok(_) => instance.resume().await.map_err(ControlError::from),
            Err(e) => Err(e.into()),
        };
        match ready {
            Ok(()) => Ok(instance),
            Err(e) => {
                let _ = instance.kill().await;
                Err(e)
            }
        }
    }

    /// Records a failed start (the VM is meant to be and is stopped) and hands the error back.
    fn start_failed<E: Into<ControlError> + std::fmt::Display>(&self, name: &str, e: E) -> ControlError {
        let _ = self.set_desired(name, DesiredState::Stopped);
        self.mark_stopped(name, &format!("start failed: {e}"));
        e.into()
    }

    /// Graceful (power button, then forced after the stop timeout) or forced stop.
    pub(crate) async fn do_stop(&self, name: &str, task: &TaskHandle, force: bool) -> Result<(), ControlError> {
        let instance = match self.instance(name) {
            Ok(i) => i,
            Err(_) => {
                // Not tracked: a QEMU may still run (e.g. re-adoption failed). Find it before
                // saying the VM is stopped, or say why it cannot be stopped.
                let vm = self.get_vm(name)?;
                match self.ctl.inner.hv.adopt(&vm.id, &self.ctl.inner.paths(&vm.id)).await? {
                    Some(i) => {
                        self.attach(name, i.clone());
                        i
                    }
                    None => {
                        self.ctl.inner.hv.cleanup(&vm.id);
                        self.mark_stopped(name, "stopped");
                        return Ok(());
                    }
                }
            }
        };
        self.set_state(name, VmState::Stopping, if force { "killing" } else { "shutting down" });
        if !force {
            task.progress(10, "ACPI power button pressed");
            // A paused guest cannot react to the power button.
            if let Err(e) = instance.power_button().await {
                tracing::info!(vm = %name, "power button: {e}");
            }
            let timeout = self.ctl.inner.config.stop_timeout;
            if instance.wait_exit(timeout).await {
                self.mark_stopped(name, "shut down by request");
                return Ok(());
            }
            task.progress(70, "guest did not shut down in time: forcing off");
        }
        instance.kill().await?;
        self.mark_stopped(name, if force { "killed by request" } else { "forced off after the stop timeout" });
        Ok(())
    }

    /// Takes charge of a running guest: remembers it and follows its events.
    pub(crate) fn attach(&self, name: &str, instance: Arc<dyn Instance>) {
        let mut events = instance.subscribe();
        *lock(&self.ctl.inner.slot(name).instance) = Some(instance.clone());
        self.set_state_with(name, VmState::Running, "running", |vm| {
            vm.status.pid = Some(instance.pid());
            vm.status.accel = Some(instance.accel().to_string());
            if vm.status.started_at.is_none() || vm.status.state == VmState::Starting {
                vm.status.started_at = Some(now_millis());
            }
        });
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut last_shutdown: Option<(bool, String)> = None;
            // A guest that exited before this task ran: what it said on the way out (a clean
            // shutdown is not a crash) is already in the channel, when it said it after the
            // subscription.
            if instance.has_exited() {
                while let Ok(ev) = events.try_recv() {
                    if let InstanceEvent::Shutdown { guest, reason } = ev {
                        last_shutdown = Some((guest, reason));
                    }
                }
                me.on_exit(&name, &instance, last_shutdown).await;
                return;
            }
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => InstanceEvent::Exited,
                };
                match ev {
                    InstanceEvent::Shutdown { guest, reason } => last_shutdown = Some((guest, reason)),
                    InstanceEvent::Paused | InstanceEvent::Resumed => me.observe(&name, &instance).await,
                    InstanceEvent::Panicked => me.on_panic(&name, &instance).await,
                    InstanceEvent::Reset { guest } => me.emit_guest(&name, if guest { "guest reset" } else { "reset" }),
                    InstanceEvent::BlockIoError { device, reason } => {
                        me.emit_guest(&name, &format!("I/O error on {device}: {reason}"))
                    }
                    InstanceEvent::Exited => {
                        me.on_exit(&name, &instance, last_shutdown.take()).await;
                        return;
                    }
                    InstanceEvent::BalloonChange { .. }
                    | InstanceEvent::Migration { .. }
                    | InstanceEvent::Other { .. } => {}
                }
            }
        });
    }

    /// A pause or resume QEMU reported: one of our operations records its own outcome (the
    /// event is skipped while one holds the VM); otherwise the guest was paused or resumed from
    /// outside, and what QEMU says now is recorded, the event being only the cue (it may be
    /// older than an operation that ended since).
    async fn observe(&self, name: &str, instance: &Arc<dyn Instance>) {
        let Ok(_op) = self.ctl.inner.slot(name).op.clone().try_lock_owned() else { return };
        let (state, reason) = match instance.run_state().await {
            Ok(RunState::Running) => (VmState::Running, "running"),
            Ok(RunState::Paused) => (VmState::Paused, "paused"),
            _ => return,
        };
        let Ok(vm) = self.get_vm(name) else { return };
        if self.ctl.hosts().check_local(&vm).is_err() {
            return;
        }
        if matches!(vm.status.state, VmState::Running | VmState::Paused) && vm.status.state != state {
            self.set_state(name, state, reason);
            let desired = if state == VmState::Paused { DesiredState::Paused } else { DesiredState::Running };
            let _ = self.set_desired(name, desired);
        }
    }

    /// A guest's panic, from the VM's QEMU here: one from a QEMU that is not the VM's any more
    /// (the source's, once the guest migrated away; an older one of a restarted VM) is not its.
    async fn on_panic(&self, name: &str, instance: &Arc<dyn Instance>) {
        let current = lock(&self.ctl.inner.slot(name).instance).as_ref().is_some_and(|c| Arc::ptr_eq(c, instance));
        let Ok(vm) = self.get_vm(name) else { return };
        if !current || self.ctl.hosts().check_local(&vm).is_err() {
            tracing::info!(vm = name, pid = instance.pid(), "a panic reported by a QEMU that is not the VM's any more");
            return;
        }
        self.emit_guest(name, "guest kernel panicked");
        self.set_state(name, VmState::Crashed, "guest kernel panicked");
        let restarted = vm.spec.restart_policy != RestartPolicy::Never || self.ctl.ha().keeps_started(name);
        if restarted && vm.desired == DesiredState::Running {
            // The exit that follows restarts it (see on_exit; HA's keeper for an HA VM).
            let _ = instance.kill().await;
        }
    }

    async fn on_exit(&self, name: &str, instance: &Arc<dyn Instance>, shutdown: Option<(bool, String)>) {
        {
            let slot = self.ctl.inner.slot(name);
            let mut current = lock(&slot.instance);
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, instance)) {
                // An older QEMU of this VM (e.g. before a reboot): the VM has moved on.
                return;
            }
            *current = None;
        }
        // An operation in progress records its own outcome (a stop knows whether it had to
        // force); anything it leaves is the reconciler's to settle. Held from here, so that an
        // operation ending meanwhile is seen in the record read next.
        let Ok(_op) = self.ctl.inner.slot(name).op.clone().try_lock_owned() else { return };
        let Ok(vm) = self.get_vm(name) else { return };
        let crashed = vm.status.state == VmState::Crashed;
        let by_user = vm.desired == DesiredState::Stopped;
        // A VM that migrated away is its new host's: this QEMU's end is not the VM's.
        if self.ctl.hosts().check_local(&vm).is_err() || vm.status.state == VmState::Stopped {
            return;
        }
        let reason = match (&shutdown, by_user, crashed) {
            (_, true, _) => "stopped by request".to_string(),
            (_, _, true) => "guest kernel panicked".to_string(),
            (Some((true, why)), _, _) => format!("guest shut down ({why})"),
            (Some((false, why)), _, _) => format!("QEMU shut down ({why})"),
            (None, _, _) => "QEMU exited unexpectedly".to_string(),
        };
        tracing::info!(vm = name, pid = instance.pid(), "QEMU exited: {reason}");
        if by_user {
            self.mark_stopped(name, &reason);
            return;
        }
        // An HA VM kept started is the HA keeper's: it stays desired running (a failure, which
        // the keeper counts against its restarts) and the keeper looks at once.
        if self.ctl.ha().keeps_started(name) {
            self.mark_stopped(name, &reason);
            self.ctl.ha().kick();
            return;
        }
        let clean = matches!(shutdown, Some((true, _))) && !crashed;
        let restart = match vm.spec.restart_policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Always => true,
        };
        // Desired state first, so the reconciler never sees "desired running" on a VM that stays off.
        if !restart {
            let _ = self.set_desired(name, DesiredState::Stopped);
        }
        self.mark_stopped(name, &reason);
        if restart {
            self.restart_in_background(name, &reason);
        }
    }

    /// Starts a VM again after it stopped on its own, as its restart policy asks.
    pub(crate) fn restart_in_background(&self, name: &str, why: &str) {
        let me = self.clone();
        let name = name.to_string();
        let why = why.to_string();
        tokio::spawn(async move {
            // Give an operation that is ending a moment, then take the VM's lock.
            let slot = me.ctl.inner.slot(&name);
            let Ok(_guard) = tokio::time::timeout(Duration::from_secs(30), slot.op.clone().lock_owned()).await else {
                return;
            };
            let Ok(vm) = me.get_vm(&name) else { return };
            if vm.status.state != VmState::Stopped || vm.desired != DesiredState::Running {
                return;
            }
            let Ok(task) = me.ctl.inner.tasks.create("vm.restart", &format!("vms/{name}")) else { return };
            task.progress(5, &format!("restarting by policy: {why}"));
            let r = me.do_start(&name, &task).await.map_err(|e| e.to_string());
            task.finish(r);
        });
    }

    pub(crate) fn mark_stopped(&self, name: &str, reason: &str) {
        if let Ok(vm) = self.get_vm(name) {
            self.ctl.nbd().stop_mpaths(&vm.id);
            self.ctl.networks().release_network(&vm.id, &vm.spec);
            self.ctl.resources().release_hugepages(&vm.id);
        }
        // One write: no reader ever sees a VM "running" without a process.
        self.set_state_with(name, VmState::Stopped, reason, |vm| {
            vm.status.placement = None;
            vm.status.pid = None;
            vm.status.accel = None;
            vm.status.started_at = None;
        });
    }

    pub(crate) fn set_desired(&self, name: &str, desired: DesiredState) -> Result<(), ControlError> {
        let found = self.ctl.inner.store.update_record::<Vm>(name, |vm| vm.desired = desired)?;
        found.map(|_| ()).ok_or_else(|| ControlError::vm_not_found(name))
    }

    /// Records an observed state and announces it when it changed.
    pub(crate) fn set_state(&self, name: &str, state: VmState, reason: &str) {
        self.set_state_with(name, state, reason, |_| {});
    }

    /// [`Controller::set_state`], with other status changes made in the same write.
    fn set_state_with(&self, name: &str, state: VmState, reason: &str, mut also: impl FnMut(&mut Vm)) {
        let mut changed = false;
        self.update_vm_record(name, |vm| {
            also(vm);
            changed = vm.status.state != state || vm.status.reason != reason;
            if changed {
                vm.status.state = state;
                vm.status.reason = reason.to_string();
                vm.status.changed_at = now_millis();
            }
        });
        if changed {
            tracing::info!(vm = %name, state = state.as_str(), "{reason}");
            self.ctl.inner.emit(Event::VmState {
                vm: name.to_string(),
                state,
                reason: reason.to_string(),
                time: now_millis(),
            });
        }
    }

    fn update_vm_record(&self, name: &str, f: impl FnMut(&mut Vm)) {
        if let Err(e) = self.ctl.inner.store.update_record::<Vm>(name, f) {
            tracing::error!(vm = %name, "could not record VM status: {e}");
        }
    }

    fn emit_guest(&self, name: &str, what: &str) {
        self.ctl.inner.emit(Event::VmGuest { vm: name.to_string(), what: what.to_string(), time: now_millis() });
    }
}

/// Settings made over QMP before the guest runs (QEMU was started paused for them).
async fn apply_setup(
    spec: &oxvirt_model::VmSpec,
    instance: &Arc<dyn Instance>,
) -> Result<(), oxvirt_hypervisor::HvError> {
    if !oxvirt_hypervisor::qemu::cmdline::needs_setup_before_run(spec) {
        return Ok(());
    }
    for (id, q) in disk_limits(spec) {
        instance.set_disk_qos(&id, q).await?;
    }
    instance.resume().await
}

/// The disks of a spec that have I/O limits, by the disk id QEMU knows them by. QEMU keeps them
/// neither before the guest runs nor across a migration: they are set at both.
pub(crate) fn disk_limits(spec: &oxvirt_model::VmSpec) -> impl Iterator<Item = (String, &oxvirt_model::DiskQos)> {
    spec.disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((oxvirt_hypervisor::qemu::cmdline::disk_id(d, i), d.qos.as_ref()?)))
}
