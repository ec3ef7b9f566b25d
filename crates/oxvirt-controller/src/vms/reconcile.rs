//! The reconciler: makes what runs on the host match the store.
//!
//! At daemon start it finds every guest it owns and re-attaches to it through its QMP socket; a
//! guest whose QEMU died while the daemon was away is marked stopped and restarted where its
//! policy says so. Afterwards it runs every few seconds to catch anything missed (the `vms` job
//! of the reconcile round, `jobs.rs`).

use crate::lock;
use oxvirt_hypervisor::RunState;
use oxvirt_model::{DesiredState, RestartPolicy, Vm, VmState};

impl crate::Vms {
    /// Looks at every VM. After the first round, VMs that are off and meant to be off are skipped.
    pub async fn reconcile_all(&self) {
        self.reconcile(true).await
    }

    pub(crate) async fn reconcile(&self, full: bool) {
        let vms = match self.list_vms() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("reconcile: cannot list VMs: {e}");
                return;
            }
        };
        // In a cluster each host looks after its own VMs only.
        let me = self.ctl.hosts().host_name();
        for vm in vms.into_iter().filter(|v| me.is_none() || v.host == me) {
            let settled = vm.status.state == VmState::Stopped && vm.desired == DesiredState::Stopped;
            if full || !settled {
                self.reconcile_vm(&vm).await;
            }
            self.rotate_console_log(&vm);
        }
    }

    async fn reconcile_vm(&self, vm: &Vm) {
        let name = vm.spec.name.as_str();
        let slot = self.ctl.inner.slot(name);
        // An operation in progress owns the VM; look again next round.
        let Ok(_guard) = slot.op.clone().try_lock_owned() else { return };
        // (A VM whose record took a warm pool's QEMU gets it from its start, not as a stranger.)
        if lock(&slot.instance).is_some()
            || self.ctl.migrations().is_arriving(name)
            || self.ctl.templates().is_held(&vm.id)
        {
            return;
        }
        let paths = self.ctl.inner.paths(&vm.id);
        match self.ctl.inner.hv.adopt(&vm.id, &paths).await {
            Ok(Some(instance)) => {
                let state = instance.run_state().await;
                tracing::info!(vm = %name, pid = instance.pid(), "re-adopted running guest");
                self.attach(name, instance);
                match state {
                    Ok(RunState::Paused) => self.set_state(name, VmState::Paused, "paused"),
                    Ok(RunState::Panicked) => self.set_state(name, VmState::Crashed, "guest kernel panicked"),
                    _ => {}
                }
            }
            // An HA VM kept started: starting it again (or not) is the HA keeper's, which counts
            // its restarts.
            Ok(None) if self.ctl.ha().keeps_started(name) => {
                if vm.status.state.has_process() {
                    self.mark_stopped(name, "QEMU was gone when oxvirtd looked (it exited while oxvirtd was away)");
                }
            }
            Ok(None) if !vm.status.state.has_process() => {
                // Desired running but nothing runs and nobody is starting it (e.g. the daemon
                // died in the middle of a start): make the host match the store.
                if vm.desired == DesiredState::Running {
                    drop(_guard);
                    self.restart_in_background(name, "desired state is running");
                }
            }
            Ok(None) => {
                self.mark_stopped(name, "QEMU was gone when oxvirtd looked (it exited while oxvirtd was away)");
                if vm.desired == DesiredState::Running && vm.spec.restart_policy != RestartPolicy::Never {
                    drop(_guard);
                    self.restart_in_background(name, "QEMU exited while oxvirtd was away");
                } else {
                    let _ = self.set_desired(name, DesiredState::Stopped);
                }
            }
            Err(e) => tracing::warn!(vm = %name, "cannot re-adopt guest: {e}"),
        }
    }
}
