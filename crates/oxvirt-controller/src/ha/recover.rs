//! Recovery: the leader gives the HA VMs of a lost host to the others. A host is lost when its
//! lease ended (`alive/<host>` is gone); `recover_after` past the moment the leader saw that —
//! by then the host has fenced itself, `fence.rs` — each of its HA VMs kept started goes to the
//! scheduler's pick (its group's hosts first), highest priority first, in one transaction that
//! expects the host still gone: a host that came back keeps its VMs. VMs on a lost host's local
//! disks are reported as not recoverable.

use super::fence::{fenced_key, FENCED_PREFIX};
use super::moves::{Move, MoveError};
use super::Ha;
use crate::lock;
use oxvirt_model::{Event, HaRecovery, HaResource, HaState, Vm, VmState};
use oxvirt_store::{Expect, Op, Record, StoreExt};
use std::collections::HashMap;
use std::time::Instant;

/// What a recovery's transaction expects of the host it takes a VM from.
#[derive(Debug, Clone, Copy)]
enum Guard {
    /// Its lease ended, and it has not come back.
    LeaseEnded,
    /// An operator fenced it and it said it is done (`ha/fenced/<host>` at this revision).
    Fenced { revision: u64 },
}

/// What recovery keeps between rounds.
#[derive(Default)]
pub(crate) struct RecoverState {
    /// Hosts seen without their lease, since when (as the leader saw it).
    pub lost: std::sync::Mutex<HashMap<String, Instant>>,
    /// VMs recovered by this host as leader.
    pub recoveries: std::sync::atomic::AtomicU64,
    /// One recovery round at a time (the reconcile round's and those a lease's end wakes).
    pub round: tokio::sync::Mutex<()>,
}

impl Ha {
    /// In a cluster: the store's changes wake HA at once instead of at the next round — a
    /// host's lease ending (the leader notes it, and looks again when `recover_after` has
    /// passed), a VM record given to this host (its keeper starts it).
    pub(crate) fn watch_cluster(&self) {
        if self.ctl.hosts().host_name().is_none() {
            return;
        }
        let mut changes = self.ctl.inner.store.watch();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(oxvirt_store::WatchEvent::Delete { key, .. }) if key.starts_with("alive/") => {
                        let me = me.clone();
                        tokio::spawn(async move {
                            me.recover_round().await;
                            tokio::time::sleep(me.ctl.inner.config.ha.recover_after).await;
                            me.recover_round().await;
                        });
                    }
                    // An HA resource added or changed: guarded at once, not at the next round.
                    Ok(oxvirt_store::WatchEvent::Put(e)) if e.key.starts_with(HaResource::PREFIX) => {
                        let already = serde_json::from_slice::<HaResource>(&e.value)
                            .is_ok_and(|r| r.status.guarded_by == me.ctl.hosts().host_name());
                        if !already {
                            me.refresh_guarded();
                        }
                    }
                    Ok(oxvirt_store::WatchEvent::Put(e)) if e.key.starts_with(Vm::PREFIX) => {
                        let mine = serde_json::from_slice::<Vm>(&e.value)
                            .is_ok_and(|v| v.host == me.ctl.hosts().host_name() && v.status.state == VmState::Stopped);
                        if mine && me.keeps_started(&e.key[Vm::PREFIX.len()..]) {
                            me.kick();
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// The leader, each round: notes lost hosts and recovers their HA VMs once it may.
    pub(crate) async fn recover_round(&self) {
        let Some(m) = lock(&self.ctl.hosts().state().membership).clone() else { return };
        let _one = self.state().recover.round.lock().await;
        if m.session.leader().await.as_deref() != Some(m.name.as_str()) {
            lock(&self.state().recover.lost).clear();
            return;
        }
        let (Ok(alive), Ok(hosts)) = (self.ctl.hosts().alive_hosts(), self.ctl.hosts().host_records()) else { return };
        let due: Vec<(String, f64)> = {
            let mut lost = lock(&self.state().recover.lost);
            lost.retain(|h, _| !alive.contains(h));
            for h in hosts.iter().filter(|h| !alive.contains(&h.name)) {
                lost.entry(h.name.clone()).or_insert_with(|| {
                    tracing::warn!(host = %h.name, "HA: host lost (its cluster lease ended)");
                    self.ctl.inner.emit(Event::Ha {
                        what: "host-lost".into(),
                        host: h.name.clone(),
                        vm: None,
                        message: format!("host {} lost: its cluster lease ended", h.name),
                        time: crate::now_millis(),
                    });
                    Instant::now()
                });
            }
            lost.iter()
                .filter(|(_, since)| since.elapsed() >= self.ctl.inner.config.ha.recover_after)
                .map(|(h, since)| (h.clone(), since.elapsed().as_secs_f64()))
                .collect()
        };
        for (host, secs) in due {
            self.recover_host(&host, secs, Guard::LeaseEnded);
        }
        // Hosts an operator fenced, once they said it is done.
        let Ok(fenced) = self.ctl.inner.store.list(FENCED_PREFIX) else { return };
        for e in fenced {
            let host = e.key[FENCED_PREFIX.len()..].to_string();
            if alive.contains(&host) {
                self.recover_host(&host, 0.0, Guard::Fenced { revision: e.revision });
            }
        }
    }

    /// Gives every HA VM kept started on `host` to another host, highest priority first.
    fn recover_host(&self, host: &str, lost_for: f64, guard: Guard) {
        let Ok(resources) = self.ctl.inner.store.list_records::<HaResource>() else { return };
        let mut theirs: Vec<(HaResource, u64, Vm)> = resources
            .into_iter()
            .filter(|(r, _)| r.spec.state == HaState::Started)
            .filter_map(|(r, rev)| {
                let vm = self.ctl.vms().get_vm(&r.spec.vm).ok()?;
                (vm.host.as_deref() == Some(host)).then_some((r, rev, vm))
            })
            .collect();
        theirs.sort_by(|a, b| b.0.spec.priority.cmp(&a.0.spec.priority).then(a.0.spec.vm.cmp(&b.0.spec.vm)));
        for (mut r, rev, vm) in theirs {
            // A VM its host never said it guards may still run there: it stays, reported.
            if r.status.guarded_by.as_deref() != Some(host) {
                let why = format!(
                    "not recovered: host {host} had not said it guards it (it may still run it); when that host is known to be off, start the VM elsewhere by hand"
                );
                if r.status.problem != why {
                    tracing::warn!(vm = %vm.spec.name, "HA: {why}");
                    r.status.problem = why;
                    let _ = self.ctl.inner.store.put_record(&r.spec.vm, &r, Expect::Revision(rev));
                }
                continue;
            }
            let why = match guard {
                Guard::LeaseEnded => format!("host {host} lost (its cluster lease ended {lost_for:.1} s ago)"),
                Guard::Fenced { .. } => format!("host {host} fenced by an operator"),
            };
            match self.recover_vm(&vm, host, &why, guard) {
                Ok(rec) => {
                    let message = format!("VM {} recovered: {} -> {} ({why})", vm.spec.name, rec.from, rec.to);
                    tracing::warn!(vm = %vm.spec.name, "HA: {message}");
                    self.ctl.inner.emit(Event::Ha {
                        what: "vm-recovered".into(),
                        host: host.into(),
                        vm: Some(vm.spec.name.clone()),
                        message,
                        time: crate::now_millis(),
                    });
                    self.state().recover.recoveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(why) if r.status.problem != why => {
                    tracing::warn!(vm = %vm.spec.name, "HA: not recovered: {why}");
                    r.status.problem = why;
                    let _ = self.ctl.inner.store.put_record(&r.spec.vm, &r, Expect::Revision(rev));
                }
                Err(_) => {}
            }
        }
    }

    /// Gives VM `vm` of lost host `from` to another, in one transaction that expects `from`
    /// still without its lease and the VM unchanged.
    fn recover_vm(&self, vm: &Vm, from: &str, why: &str, guard: Guard) -> Result<HaRecovery, String> {
        if let Some(p) = self.not_recoverable(&vm.spec.name) {
            return Err(p);
        }
        let to = self
            .ctl
            .hosts()
            .pick_other_host(vm, from)
            .map_err(|e| format!("not recoverable now: no other host can take it: {e}"))?;
        let guard_op = match guard {
            // (A delete that expects the key absent: the host has not come back meanwhile.)
            Guard::LeaseEnded => Op::Delete { key: format!("alive/{from}"), expect: Expect::Absent },
            // (The host's word rewritten as read: it has not been unfenced meanwhile.)
            Guard::Fenced { revision } => Op::Put {
                key: fenced_key(from),
                value: crate::now_millis().to_string().into_bytes(),
                expect: Expect::Revision(revision),
            },
        };
        // ...and its run lease gone with the host's own lease (or given up by a fenced host).
        let guard = vec![guard_op, super::run_lease::lease_gone(&vm.spec.name)];
        let m = Move { vm: &vm.spec.name, from, to: &to, why, relocation: false, guard };
        match self.move_vm(m) {
            Ok(rec) => Ok(rec),
            Err(MoveError::Guard(key)) if key == super::run_lease::run_key(&vm.spec.name) => Err(format!(
                "not yet: its run lease is still held by {}",
                self.run_lease_holder(&vm.spec.name).unwrap_or_else(|| "its host".into())
            )),
            Err(MoveError::Guard(key)) if key.starts_with("alive/") => {
                Err(format!("host {from} came back: it keeps the VM"))
            }
            Err(MoveError::Guard(_)) => Err(format!("host {from} was unfenced: it keeps the VM")),
            Err(MoveError::Other(e)) => Err(e),
        }
    }
}
