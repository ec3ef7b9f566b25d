//! The balloon: a guest's memory as it has it now, changed on request, and automatic
//! ballooning — under host memory pressure, memory taken from the VMs that allow it (most slack
//! first, down to their floor) and given back once the pressure is gone.

use crate::host::meminfo;
use crate::{lock, ControlError};
use oxvirt_model::{BalloonView, ByteSize, Vm, VmState, MIB};

impl crate::ResourceControl {
    pub async fn balloon(&self, name: &str) -> Result<BalloonView, ControlError> {
        let vm = self.ctl.vms().get_vm(name)?;
        if !vm.spec.balloon {
            return Err(ControlError::Conflict(format!("VM {name} has no balloon device")));
        }
        let i = self.ctl.vms().instance(name)?;
        let actual = i.memory().balloon_actual().await?;
        let guest = i.memory().guest_memory().await.unwrap_or_default();
        Ok(BalloonView {
            actual,
            memory: vm.spec.memory.0,
            guest_free: guest.free,
            guest_total: guest.total,
            auto: lock(&self.state().auto_ballooned).contains_key(name),
        })
    }

    /// Asks the guest to give memory back (or take it again) down or up to `target`.
    pub async fn set_balloon(&self, name: &str, target: ByteSize) -> Result<BalloonView, ControlError> {
        let vm = self.ctl.vms().get_vm(name)?;
        if target.0 > vm.spec.memory.0 || target.0 < 32 * MIB {
            return Err(ControlError::invalid(
                "target",
                format!("must be 32MiB..{} (the VM's memory)", vm.spec.memory),
            ));
        }
        if !vm.spec.balloon {
            return Err(ControlError::Conflict(format!("VM {name} has no balloon device")));
        }
        self.ctl.vms().instance(name)?.memory().set_balloon(target.0).await?;
        lock(&self.state().auto_ballooned).remove(name);
        self.balloon(name).await
    }

    /// One round of automatic ballooning: under pressure (host memory use above the policy's
    /// target) take memory from VMs that allow it, most slack first, down to their floor; when
    /// the pressure is well gone, give it back.
    pub(crate) async fn auto_balloon_round(&self) {
        let Ok(policy) = self.host_policy() else { return };
        let total = self.ctl.inner.host.memory_bytes;
        let avail = meminfo("MemAvailable:").unwrap_or(total);
        if total == 0 {
            return;
        }
        let use_now = 1.0 - avail as f64 / total as f64;
        let vms: Vec<Vm> = self
            .ctl
            .vms()
            .list_vms()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.status.state == VmState::Running && v.spec.balloon && v.spec.resources.balloon_min.is_some())
            .collect();
        if policy.auto_balloon && use_now > policy.memory_target_use {
            let mut need = ((use_now - policy.memory_target_use) * total as f64) as u64;
            let mut slack: Vec<(u64, u64, &Vm)> = Vec::new();
            for v in &vms {
                let Ok(i) = self.ctl.vms().instance(&v.spec.name) else { continue };
                let Ok(actual) = i.memory().balloon_actual().await else { continue };
                let floor = v.spec.resources.balloon_min.map(|m| m.0).unwrap_or(actual);
                if actual > floor {
                    slack.push((actual - floor, actual, v));
                }
            }
            slack.sort_by_key(|s| std::cmp::Reverse(s.0));
            for (s, actual, v) in slack {
                if need == 0 {
                    break;
                }
                let take = s.min(need);
                let target = actual - take;
                let name = &v.spec.name;
                if let Ok(i) = self.ctl.vms().instance(name) {
                    if i.memory().set_balloon(target).await.is_ok() {
                        tracing::info!(vm = %name, target = %ByteSize(target), "memory pressure: ballooned down");
                        lock(&self.state().auto_ballooned).insert(name.clone(), target);
                        need -= take;
                    }
                }
            }
        } else if !policy.auto_balloon || use_now < policy.memory_target_use - 0.05 {
            let taken: Vec<String> = lock(&self.state().auto_ballooned).keys().cloned().collect();
            for name in taken {
                let Some(v) = vms.iter().find(|v| v.spec.name == name) else {
                    lock(&self.state().auto_ballooned).remove(&name);
                    continue;
                };
                if let Ok(i) = self.ctl.vms().instance(&name) {
                    if i.memory().set_balloon(v.spec.memory.0).await.is_ok() {
                        tracing::info!(vm = %name, "memory pressure over: memory given back");
                        lock(&self.state().auto_ballooned).remove(&name);
                    }
                }
            }
        }
    }
}
