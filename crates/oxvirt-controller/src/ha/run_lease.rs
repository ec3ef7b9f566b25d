//! Per-VM run leases, in a cluster: `ha/run/<vm>` names the only host allowed to run the HA VM,
//! and is tied to that host's cluster lease, so it goes by itself when the host crashes, hangs
//! or is cut off. A host takes it before starting the VM (its keeper) and whenever it guards the
//! VM; gives it up when the VM is no longer its own (moved, migrated), when it moves the VM
//! itself (a relocation), and when an operator's fence of it is done; a recovery by the leader
//! moves a VM only in a transaction that finds the lease gone. Outside a cluster there is none.

use super::Ha;
use oxvirt_store::{Expect, Op};

const RUN_PREFIX: &str = "ha/run/";

/// The store key of VM `vm`'s run lease.
pub(crate) fn run_key(vm: &str) -> String {
    format!("{RUN_PREFIX}{vm}")
}

/// The guard a move adds to its transaction: the VM's run lease is gone (its host's cluster
/// lease lapsed, or the host gave it up).
pub(crate) fn lease_gone(vm: &str) -> Op {
    Op::Delete { key: run_key(vm), expect: Expect::Absent }
}

/// The op with which the host that moves VM `vm` itself gives up its run lease.
pub(crate) fn give_up(vm: &str) -> Op {
    Op::Delete { key: run_key(vm), expect: Expect::Any }
}

impl Ha {
    /// The host holding VM `vm`'s run lease, if any.
    pub fn run_lease_holder(&self, vm: &str) -> Option<String> {
        let e = self.ctl.inner.store.get(&run_key(vm)).ok()??;
        Some(String::from_utf8_lossy(&e.value).into_owned())
    }

    /// Takes VM `vm`'s run lease for host `me` (kept if it holds it already); the holder when
    /// another host does (or the store's answer when it cannot be asked).
    pub(crate) fn hold_run_lease(&self, vm: &str, me: &str) -> Result<(), String> {
        let store = &self.ctl.inner.store;
        for _ in 0..3 {
            match store.get(&run_key(vm)) {
                Ok(Some(e)) if e.value == me.as_bytes() => return Ok(()),
                Ok(Some(e)) => return Err(format!("host {}", String::from_utf8_lossy(&e.value))),
                Ok(None) => {
                    let op = Op::PutLeased { key: run_key(vm), value: me.as_bytes().to_vec(), expect: Expect::Absent };
                    match store.txn(vec![op]) {
                        Ok(_) => return Ok(()),
                        Err(oxvirt_store::StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(format!("the store: {e}")),
                    }
                }
                Err(e) => return Err(format!("the store: {e}")),
            }
        }
        Err("the store: it kept changing".into())
    }

    /// Gives up the run leases host `me` holds for VMs other than `mine` (no longer its own).
    pub(crate) fn release_run_leases(&self, me: &str, mine: &[String]) {
        let Ok(held) = self.ctl.inner.store.list(RUN_PREFIX) else { return };
        for e in held.into_iter().filter(|e| e.value == me.as_bytes()) {
            let vm = &e.key[RUN_PREFIX.len()..];
            if !mine.iter().any(|m| m == vm) {
                tracing::info!(vm, "HA: run lease given up (the VM is not this host's now)");
                let _ = self.ctl.inner.store.delete(&e.key, Expect::Revision(e.revision));
            }
        }
    }
}
