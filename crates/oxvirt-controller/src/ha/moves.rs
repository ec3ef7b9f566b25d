//! Moving an HA VM that is off to another host — a relocation after failures (`keep.rs`) or a
//! recovery from a lost host (`recover.rs`) — in one transaction with its HA record, so that
//! where the VM is and how it got there never disagree.

use super::Ha;
use crate::lock;
use oxvirt_model::{DesiredState, HaRecovery, HaResource, Vm, VmState};
use oxvirt_store::{Expect, Op, Record, StoreError, StoreExt};

/// One move: from where to where, why, and what else the transaction expects.
pub(crate) struct Move<'a> {
    pub vm: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub why: &'a str,
    /// Counted against the resource's `max_relocations` (a relocation; a recovery is not).
    pub relocation: bool,
    /// What the transaction also expects (the lost host still gone, say).
    pub guard: Vec<Op>,
}

/// Why a move did not happen.
#[derive(Debug)]
pub(crate) enum MoveError {
    /// A guard's key changed: its expectation no longer holds.
    Guard(String),
    Other(String),
}

impl Ha {
    /// Gives the VM to `to` (off as asked there: that host's keeper starts it) and records the
    /// move in its HA record, both or neither; records changed meanwhile are read again.
    pub(crate) fn move_vm(&self, m: Move) -> Result<HaRecovery, MoveError> {
        let store = &self.ctl.inner.store;
        let now = crate::now_millis();
        let rec = HaRecovery { from: m.from.into(), to: m.to.into(), at: now, reason: m.why.into() };
        let said = format!("recovered by HA from {}: {}", m.from, m.why);
        for _ in 0..10 {
            let other = |e: StoreError| MoveError::Other(format!("the store: {e}"));
            let (mut vm, vm_rev) = store
                .get_record::<Vm>(m.vm)
                .map_err(other)?
                .ok_or_else(|| MoveError::Other("the VM is gone".into()))?;
            if vm.host.as_deref() != Some(m.from) {
                return Err(MoveError::Other(format!("it is on {} now", vm.host.unwrap_or_default())));
            }
            let (mut r, ha_rev) = store
                .get_record::<HaResource>(m.vm)
                .map_err(other)?
                .ok_or_else(|| MoveError::Other("it is no longer an HA resource".into()))?;
            vm.host = Some(m.to.into());
            vm.host_reason = Some(said.clone());
            vm.desired = DesiredState::Stopped;
            vm.status.state = VmState::Stopped;
            vm.status.pid = None;
            vm.status.reason = said.clone();
            vm.status.changed_at = now;
            if r.status.guarded_by.as_deref() == Some(m.from) {
                r.status.guarded_by = None;
            }
            if m.relocation {
                r.status.relocations += 1;
                r.status.restarts = 0;
            }
            r.status.last_recovery = Some(rec.clone());
            r.status.problem.clear();
            let mut ops = vec![
                Op::Put { key: Vm::key_of(m.vm), value: oxvirt_store::encode(&vm), expect: Expect::Revision(vm_rev) },
                Op::Put {
                    key: HaResource::key_of(m.vm),
                    value: oxvirt_store::encode(&r),
                    expect: Expect::Revision(ha_rev),
                },
            ];
            ops.extend(m.guard.iter().cloned());
            match store.txn(ops) {
                Ok(_) => {
                    // This host's slot forgets it: its new host runs it.
                    *lock(&self.ctl.inner.slot(m.vm).instance) = None;
                    return Ok(rec);
                }
                Err(StoreError::Conflict { key, .. }) if key == Vm::key_of(m.vm) || key == HaResource::key_of(m.vm) => {
                }
                Err(StoreError::Conflict { key, .. }) => return Err(MoveError::Guard(key)),
                Err(e) => return Err(MoveError::Other(format!("the store: {e}"))),
            }
        }
        Err(MoveError::Other("its records kept changing; next round".into()))
    }
}
