//! What a request names besides its own target, checked against who asks: a VM's volumes, its
//! networks, security groups and host bridges, its kernel and host-path disks, an import's source,
//! an export's destination, a pool's directory. The route's ACL check covers only the object in
//! the URL; this covers everything else a body references, so a tenant cannot reach another
//! tenant's objects or the host through a VM spec.

use crate::ControlError;
use oxvirt_model::{DiskSpec, NicSpec, Privilege, VmSpec};
use oxvirt_storage::host_paths::Want;
use std::path::PathBuf;

impl crate::Access {
    /// `path` from request field `field`: only an administrator may name a host path, and only
    /// one the host-path policy allows. Returns it with its links resolved.
    pub fn host_path(&self, caller: &str, field: &str, path: &str, want: Want) -> Result<PathBuf, ControlError> {
        self.admin_only(
            caller,
            format!("{field}: only an administrator may name a host path; use a volume of a pool you are granted"),
        )?;
        Ok(self.ctl.inner.host_paths.check(field, path, want)?)
    }

    /// [`Controller::host_path`] as the text a spec keeps.
    pub(crate) fn host_path_string(
        &self,
        caller: &str,
        field: &str,
        path: &str,
        want: Want,
    ) -> Result<String, ControlError> {
        let p = self.host_path(caller, field, path, want)?;
        p.into_os_string().into_string().map_err(|_| ControlError::invalid(field, "must be UTF-8"))
    }

    /// Refuses (403, `refusal`) a caller who is not an administrator.
    pub(crate) fn admin_only(&self, caller: &str, refusal: String) -> Result<(), ControlError> {
        self.authorize(caller, Privilege::Admin, "/").map_err(|_| ControlError::Forbidden(refusal))
    }

    /// Checks what `new` names that `old` (the VM as stored, if any) did not, against `caller`'s
    /// rights; host paths come back resolved in `new`. Nothing is changed on a refusal.
    pub(crate) fn check_references(
        &self,
        caller: &str,
        old: Option<&VmSpec>,
        new: &mut VmSpec,
    ) -> Result<(), ControlError> {
        if let Some(p) = &new.project {
            if old.and_then(|o| o.project.as_ref()) != Some(p) {
                self.authorize(caller, Privilege::Modify, &format!("/projects/{p}"))?;
            }
        }
        if let Some(k) = &mut new.kernel {
            let before = old.and_then(|o| o.kernel.as_ref());
            if before.map(|b| &b.kernel) != Some(&k.kernel) {
                k.kernel = self.host_path_string(caller, "kernel.kernel", &k.kernel, Want::File)?;
            }
            if let Some(initrd) = &mut k.initrd {
                if before.and_then(|b| b.initrd.as_ref()) != Some(initrd) {
                    *initrd = self.host_path_string(caller, "kernel.initrd", initrd, Want::File)?;
                }
            }
        }
        for (i, d) in new.disks.iter_mut().enumerate() {
            // Known only as it was: a host-path disk made writable or read in another format
            // is a new disk (an administrator's to give).
            let known = old.is_some_and(|o| {
                o.disks.iter().any(|b| {
                    b.volume == d.volume && b.path == d.path && b.format == d.format && (!b.readonly || d.readonly)
                })
            });
            if !known {
                self.check_disk(caller, &format!("disks[{i}]"), d)?;
            }
        }
        for (i, n) in new.nics.iter().enumerate() {
            let before = old.and_then(|o| o.nics.iter().find(|b| !n.id.is_empty() && b.id == n.id));
            self.check_nic(caller, &format!("nics[{i}]"), before, n)?;
        }
        Ok(())
    }

    /// A disk a request adds: a volume needs the right to change its pool, a host path is an
    /// administrator's (resolved in place).
    pub(crate) fn check_disk(&self, caller: &str, field: &str, d: &mut DiskSpec) -> Result<(), ControlError> {
        if let Some(r) = &d.volume {
            let pool = r.split_once('/').map(|(p, _)| p).unwrap_or(r);
            return self.authorize(caller, Privilege::Modify, &format!("/pools/{pool}")).map_err(|e| named(field, e));
        }
        if !d.path.is_empty() {
            d.path = self.host_path_string(caller, &format!("{field}.path"), &d.path, Want::File)?;
            // Files the image names are host paths too (QEMU opens them by path, as root).
            self.check_image_chain(&format!("{field}.path"), d)?;
        }
        Ok(())
    }

    /// A NIC a request adds or changes: its network and security groups need the caller's right
    /// to use them; a host bridge is an administrator's.
    pub(crate) fn check_nic(
        &self,
        caller: &str,
        field: &str,
        before: Option<&NicSpec>,
        n: &NicSpec,
    ) -> Result<(), ControlError> {
        if let Some(net) = &n.network {
            if before.and_then(|b| b.network.as_ref()) != Some(net) {
                self.authorize(caller, Privilege::Operate, &format!("/networks/{net}"))
                    .map_err(|e| named(&format!("{field}.network"), e))?;
            }
        }
        if let Some(bridge) = &n.bridge {
            if before.and_then(|b| b.bridge.as_ref()) != Some(bridge) {
                self.admin_only(
                    caller,
                    format!("{field}.bridge: only an administrator may put a NIC on a host bridge; use a network you are granted"),
                )?;
            }
        }
        for (j, g) in n.security_groups.iter().enumerate() {
            if !before.is_some_and(|b| b.security_groups.contains(g)) {
                self.authorize(caller, Privilege::Operate, &format!("/security-groups/{g}"))
                    .map_err(|e| named(&format!("{field}.security_groups[{j}]"), e))?;
            }
        }
        Ok(())
    }

    /// A host-path disk's image and every backing file down its chain must be files the
    /// host-path policy allows; an external data file is refused. The chain is walked as the
    /// start walks it (`handoff::walk_chain`: recorded formats, no link at a layer's last step,
    /// at most 16 deep), so an image accepted here is one that starts.
    pub(crate) fn check_image_chain(&self, field: &str, d: &DiskSpec) -> Result<(), ControlError> {
        use oxvirt_hypervisor::qemu::{confine, handoff};
        let bad = |e: String| ControlError::invalid(field, e);
        confine::open_host_disk(d).map_err(|e| bad(e.to_string()))?;
        if d.format != oxvirt_model::DiskFormat::Qcow2 {
            return Ok(());
        }
        let allowed = |p: &std::path::Path| {
            self.ctl.inner.host_paths.check(field, &p.to_string_lossy(), Want::File).map(drop).map_err(|e| e.rule)
        };
        handoff::walk_chain(std::path::Path::new(&d.path), allowed).map(drop).map_err(|e| bad(e.to_string()))
    }
}

/// A refusal that says which field it is about.
pub(crate) fn named(field: &str, e: ControlError) -> ControlError {
    match e {
        ControlError::Forbidden(m) => ControlError::Forbidden(format!("{field}: {m}")),
        e => e,
    }
}
