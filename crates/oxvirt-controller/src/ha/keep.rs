//! Keeping each HA resource at its state, on the host its VM belongs to: a `started` VM that is
//! off is started (one that failed counts a restart, up to `max_restarts`; past them it is
//! relocated to another host, up to `max_relocations`); a `stopped` one that runs is stopped. Runs
//! every reconcile round, and at once when an HA VM's QEMU exits.

use super::Ha;
use crate::lock;
use oxvirt_model::{DesiredState, HaRecovery, HaResource, HaState, Vm, VmAction, VmState};
use oxvirt_store::{Expect, StoreExt};

/// Running this long (ms) without a failure clears an HA resource's counts of tries.
const STEADY_MS: u64 = 60_000;

/// What the keeper does with one resource this round.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Nothing,
    /// Start it: `failed` when it stopped against its desired state (counted as a restart).
    Start {
        failed: bool,
    },
    Stop,
    /// Move it to another host (its restarts here are used up).
    Relocate,
    /// Leave it, with why.
    GiveUp(String),
    /// It has run steadily: the counts start again.
    ClearCounts,
}

/// The keeper's decision for a resource and its VM (pure: the fake tests it alone).
pub(crate) fn step(r: &HaResource, vm: &Vm, now: u64, in_cluster: bool) -> Step {
    // (A crashed guest's QEMU is killed when HA keeps it started: its exit makes it stopped.)
    let off = vm.status.state == VmState::Stopped;
    match r.spec.state {
        HaState::Disabled => Step::Nothing,
        HaState::Stopped if !off => Step::Stop,
        HaState::Stopped => Step::Nothing,
        HaState::Started if off => {
            // Off against its desired state (QEMU died, the guest crashed, a start failed): a
            // failure. Off as desired (it was added or set `started` while off): just started.
            let failed = vm.desired == DesiredState::Running;
            if !failed {
                return Step::Start { failed: false };
            }
            if r.status.restarts < r.spec.max_restarts {
                Step::Start { failed: true }
            } else if in_cluster && r.status.relocations < r.spec.max_relocations {
                Step::Relocate
            } else {
                Step::GiveUp(format!(
                    "stays off: {} restart(s) and {} relocation(s) did not keep it running (last: {})",
                    r.status.restarts, r.status.relocations, vm.status.reason
                ))
            }
        }
        HaState::Started => {
            let steady = vm.status.state == VmState::Running && now.saturating_sub(vm.status.changed_at) >= STEADY_MS;
            let counted =
                r.status.restarts > 0 || r.status.relocations > 0 || r.status.problem.starts_with("stays off");
            if steady && counted {
                Step::ClearCounts
            } else {
                Step::Nothing
            }
        }
    }
}

impl Ha {
    /// Brings every HA resource whose VM is this host's to its state.
    pub(crate) async fn keep_round(&self) {
        let _one = self.state().round.lock().await;
        self.refresh_guarded();
        let me = self.ctl.hosts().host_name();
        // An operator's fence of this host is carried out first; while it holds, nothing starts.
        if let Some(name) = &me {
            if !self.follow_fence_request(name) {
                return;
            }
        }
        // A host that fenced itself, or whose lease renewals lag (past half its fencing time),
        // starts nothing: its VMs may be the leader's to recover.
        if self.fenced() || self.time_left().is_some_and(|l| l < self.ctl.inner.config.ha.fence_after / 2) {
            return;
        }
        // In a cluster, only while this host's presence is in the store: the leader recovers
        // a host's VMs only in a transaction that finds it absent (or the host fenced by an
        // operator, which starts nothing meanwhile), so once it is read here (and the VMs after
        // it), no VM read as this host's can have been given to another.
        if let Some(name) = &me {
            if !matches!(self.ctl.inner.store.get(&format!("alive/{name}")), Ok(Some(_))) {
                return;
            }
        }
        let Ok(resources) = self.ctl.inner.store.list_records::<HaResource>() else { return };
        for (r, rev) in resources {
            let Ok(vm) = self.ctl.vms().get_vm(&r.spec.vm) else { continue };
            if me.is_some() && vm.host != me {
                continue;
            }
            // A VM an operation holds (a start, a migration) is looked at next round.
            if self.ctl.inner.slot(&vm.spec.name).op.try_lock().is_err() {
                continue;
            }
            let s = step(&r, &vm, crate::now_millis(), me.is_some());
            if s != Step::Nothing {
                tracing::info!(vm = %vm.spec.name, "HA: {s:?}");
            }
            self.take(s, r, rev, &vm);
        }
    }

    /// Asks for a round now (an HA VM's QEMU exited), unless one runs.
    pub(crate) fn kick(&self) {
        let me = self.clone();
        tokio::spawn(async move { me.keep_round().await });
    }

    /// Whether VM `name` is kept `started` by HA (its exits are the keeper's to handle).
    pub(crate) fn keeps_started(&self, name: &str) -> bool {
        matches!(
            self.ctl.inner.store.get_record::<HaResource>(name),
            Ok(Some((r, _))) if r.spec.state == HaState::Started
        )
    }

    fn take(&self, s: Step, mut r: HaResource, rev: u64, vm: &Vm) {
        let name = vm.spec.name.as_str();
        match s {
            Step::Nothing => {}
            // A QEMU of it runs here (its record says otherwise): never a second one.
            Step::Start { .. } if lock(&self.ctl.inner.slot(name).instance).is_some() => {}
            Step::Start { failed } => {
                if failed {
                    r.status.restarts += 1;
                }
                // (What stands whatever it does, a disk on this host only, is still said.)
                r.status.problem = self.not_recoverable(name).unwrap_or_default();
                // In a cluster, only the holder of its run lease runs it.
                if let Some(me) = self.ctl.hosts().host_name() {
                    if let Err(holder) = self.hold_run_lease(name, &me) {
                        let why = format!("not started here: its run lease is held by {holder}");
                        if r.status.problem != why {
                            tracing::warn!(vm = name, "HA: {why}");
                            r.status.problem = why;
                            self.save(&r, rev);
                        }
                        return;
                    }
                }
                // Counted before the start: a start that fails is seen as a failure next round.
                if self.save(&r, rev) {
                    if let Err(e) = self.ctl.vms().vm_action(name, VmAction::Start) {
                        tracing::warn!(vm = name, "HA start: {e}");
                    }
                }
            }
            Step::Stop => {
                if let Err(e) = self.ctl.vms().vm_action(name, VmAction::Stop) {
                    tracing::warn!(vm = name, "HA stop: {e}");
                }
            }
            Step::Relocate => {
                // (The move records itself in the HA record, in one transaction.)
                if let Err(why) =
                    self.relocate(vm, &format!("its restarts on this host are used up ({})", vm.status.reason))
                {
                    r.status.problem = why;
                    self.save(&r, rev);
                }
            }
            Step::GiveUp(why) => {
                if r.status.problem != why {
                    r.status.problem = why;
                    self.save(&r, rev);
                }
            }
            Step::ClearCounts => {
                r.status.restarts = 0;
                r.status.relocations = 0;
                r.status.problem = self.not_recoverable(name).unwrap_or_default();
                self.save(&r, rev);
            }
        }
    }

    /// Writes the resource's status; false when it changed meanwhile (next round sees it anew).
    fn save(&self, r: &HaResource, rev: u64) -> bool {
        self.ctl.inner.store.put_record(&r.spec.vm, r, Expect::Revision(rev)).is_ok()
    }

    /// Gives an HA VM that is off to the scheduler's pick among the other hosts, to run there
    /// (its new host's keeper starts it). Only VMs on shared storage move.
    pub(crate) fn relocate(&self, vm: &Vm, why: &str) -> Result<HaRecovery, String> {
        let name = vm.spec.name.as_str();
        let from = vm.host.clone().unwrap_or_default();
        if let Some(p) = self.not_recoverable(name) {
            return Err(p);
        }
        let to = self.ctl.hosts().pick_other_host(vm, &from).map_err(|e| format!("no other host can take it: {e}"))?;
        // (Its run lease, this host's, is given up in the same transaction.)
        let guard = vec![super::run_lease::give_up(name)];
        let m = super::moves::Move { vm: name, from: &from, to: &to, why, relocation: true, guard };
        let rec = self.move_vm(m).map_err(|e| match e {
            super::moves::MoveError::Guard(k) | super::moves::MoveError::Other(k) => k,
        })?;
        tracing::info!(vm = name, from = %from, to = %to, "HA relocated: {why}");
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxvirt_model::{HaResourceSpec, HaStatus, VmSpec, VmStatus};

    fn resource(state: HaState, restarts: u32, relocations: u32) -> HaResource {
        HaResource {
            spec: HaResourceSpec {
                vm: "web".into(),
                group: None,
                priority: 0,
                max_restarts: 1,
                max_relocations: 1,
                state,
            },
            created_at: 0,
            status: HaStatus { restarts, relocations, ..Default::default() },
        }
    }

    fn vm(state: VmState, desired: DesiredState, changed_at: u64) -> Vm {
        let spec: VmSpec =
            serde_json::from_value(serde_json::json!({"name": "web", "cpus": 1, "memory": "64MiB"})).unwrap();
        Vm {
            id: "id".into(),
            uid: None,
            host: Some("h1".into()),
            host_reason: None,
            spec,
            desired,
            status: VmStatus { state, changed_at, reason: "QEMU exited unexpectedly".into(), ..Default::default() },
            created_at: 0,
        }
    }

    #[test]
    fn a_started_resource_is_started_restarted_then_relocated_then_left() {
        use DesiredState::*;
        let off_as_asked = vm(VmState::Stopped, Stopped, 0);
        let failed = vm(VmState::Stopped, Running, 0);
        let crashed = vm(VmState::Crashed, Running, 0);
        assert_eq!(step(&resource(HaState::Started, 0, 0), &crashed, 0, true), Step::Nothing, "killed first");
        assert_eq!(step(&resource(HaState::Started, 0, 0), &off_as_asked, 0, true), Step::Start { failed: false });
        // Even past its restarts: being started is no failure.
        assert_eq!(step(&resource(HaState::Started, 1, 1), &off_as_asked, 0, true), Step::Start { failed: false });
        assert_eq!(step(&resource(HaState::Started, 0, 0), &failed, 0, true), Step::Start { failed: true });
        assert_eq!(step(&resource(HaState::Started, 1, 0), &failed, 0, true), Step::Relocate);
        // A single host has nowhere to relocate to.
        assert!(matches!(step(&resource(HaState::Started, 1, 0), &failed, 0, false), Step::GiveUp(_)));
        let Step::GiveUp(why) = step(&resource(HaState::Started, 1, 1), &failed, 0, true) else { panic!() };
        assert!(why.contains("1 restart(s) and 1 relocation(s)") && why.contains("QEMU exited unexpectedly"), "{why}");
    }

    #[test]
    fn stopped_and_disabled_resources() {
        let running = vm(VmState::Running, DesiredState::Running, 0);
        assert_eq!(step(&resource(HaState::Stopped, 0, 0), &running, 0, true), Step::Stop);
        assert_eq!(
            step(&resource(HaState::Stopped, 0, 0), &vm(VmState::Stopped, DesiredState::Stopped, 0), 0, true),
            Step::Nothing
        );
        assert_eq!(step(&resource(HaState::Disabled, 0, 0), &running, 0, true), Step::Nothing);
        assert_eq!(
            step(&resource(HaState::Disabled, 0, 0), &vm(VmState::Stopped, DesiredState::Running, 0), 0, true),
            Step::Nothing
        );
    }

    #[test]
    fn counts_clear_once_it_ran_steadily() {
        let r = resource(HaState::Started, 1, 1);
        let running = vm(VmState::Running, DesiredState::Running, 1_000);
        assert_eq!(step(&r, &running, 1_000 + STEADY_MS - 1, true), Step::Nothing);
        assert_eq!(step(&r, &running, 1_000 + STEADY_MS, true), Step::ClearCounts);
        assert_eq!(step(&resource(HaState::Started, 0, 0), &running, 1_000 + STEADY_MS, true), Step::Nothing);
    }
}
