//! Confined QEMU, the controller's part: each VM gets a uid of its own at its first start (from a
//! counter in the store, so no two VMs ever share one); what QEMU must still reach after giving up
//! root (NBD and multipath sockets) is shared with the QEMU group.

use crate::ControlError;
use oxvirt_hypervisor::qemu::confine::{share_with_qemus, QEMU_GID, UID_BASE};
use oxvirt_model::Vm;
use oxvirt_store::{Expect, Op, StoreExt};
use std::path::Path;

const COUNTER: &str = "counters/qemu-uid";

impl crate::Vms {
    /// The uid and gid a VM's QEMU runs as, given now if it has none; `None` when QEMU is not
    /// confined (config `confine_qemu = false`).
    pub(crate) fn run_as(&self, name: &str) -> Result<Option<(u32, u32)>, ControlError> {
        if !self.ctl.inner.config.confine_qemu {
            return Ok(None);
        }
        let vm = self.get_vm(name)?;
        if let Some(uid) = vm.uid {
            return Ok(Some((uid, QEMU_GID)));
        }
        for _ in 0..20 {
            let (next, spend) = self.next_uid()?;
            let (vm_now, rev) =
                self.ctl.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
            if let Some(uid) = vm_now.uid {
                return Ok(Some((uid, QEMU_GID)));
            }
            let with_uid = Vm { uid: Some(next), ..vm_now };
            let ops = vec![
                spend,
                Op::Put {
                    key: <Vm as oxvirt_store::Record>::key_of(name),
                    value: oxvirt_store::encode(&with_uid),
                    expect: Expect::Revision(rev),
                },
            ];
            match self.ctl.inner.store.txn(ops) {
                Ok(_) => return Ok(Some((next, QEMU_GID))),
                Err(oxvirt_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Busy(format!("could not give VM {name} a uid: the store kept changing")))
    }

    /// The next uid the counter gives, and the write that spends it (it fails if another took
    /// that uid meanwhile).
    fn next_uid(&self) -> Result<(u32, Op), ControlError> {
        let cur = self.ctl.inner.store.get(COUNTER)?;
        let next: u32 = cur.as_ref().and_then(|e| std::str::from_utf8(&e.value).ok()?.parse().ok()).unwrap_or(UID_BASE);
        let expect = cur.as_ref().map(|e| Expect::Revision(e.revision)).unwrap_or(Expect::Absent);
        Ok((next, Op::Put { key: COUNTER.into(), value: (next + 1).to_string().into_bytes(), expect }))
    }

    /// A uid no VM has had, for a QEMU started before its VM exists (a template's warm pool's):
    /// the VM that takes that QEMU keeps it. `None` when QEMU is not confined.
    pub(crate) fn fresh_uid(&self) -> Result<Option<(u32, u32)>, ControlError> {
        if !self.ctl.inner.config.confine_qemu {
            return Ok(None);
        }
        for _ in 0..20 {
            let (next, spend) = self.next_uid()?;
            match self.ctl.inner.store.txn(vec![spend]) {
                Ok(_) => return Ok(Some((next, QEMU_GID))),
                Err(oxvirt_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Busy("could not take a uid: the store kept changing".into()))
    }

    /// A socket every confined QEMU may connect to (NBD exports, multipath proxies).
    pub(crate) fn share_socket(&self, path: &Path) {
        if self.ctl.inner.config.confine_qemu {
            if let Err(e) = share_with_qemus(path, &self.ctl.inner.config.data_dir) {
                tracing::warn!(socket = %path.display(), "cannot share with the QEMU group: {e}");
            }
        }
    }
}
