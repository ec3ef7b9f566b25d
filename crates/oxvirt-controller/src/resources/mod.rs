//! A VM's share of the host: admission against the host's over-commit policy, NUMA placement and
//! pinning, huge pages reserved as needed, cgroup limits changed live. The balloon and automatic
//! ballooning are in `balloon.rs`, KSM by policy in `ksm.rs`.

mod balloon;
mod ksm;

pub(crate) use ksm::apply_ksm;
pub use ksm::{ksm_merging_bytes, ksm_view};

use crate::host::{meminfo, meminfo_field, read_u64};
use crate::network::HostObject;
use crate::vms::busy;
use crate::ControlError;
use oxvirt_cgroup::numa::{Committed, Topology};
use oxvirt_hypervisor::{limits_of, Instance};
use oxvirt_model::{
    format_cpulist, parse_cpulist, ByteSize, GuestNode, HostPolicy, HostResources, NumaMode, NumaNodeView, Placement,
    Resources, Vm, VmSpec, HUGEPAGE,
};
use oxvirt_store::{Expect, StoreExt};
use std::sync::Arc;

crate::service! {
    /// Host resources: admission by over-commit policy, NUMA, pinning, huge pages, live limits, the balloon, KSM.
    ResourceControl, resources, state = resources
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// VMs automatic ballooning shrank, with the target it set.
    pub auto_ballooned: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl ResourceControl {
    fn topology(&self) -> Topology {
        let h = &self.ctl.inner.host;
        Topology::host(h.cpus, (h.memory_bytes, meminfo("MemAvailable:").unwrap_or(0)))
    }

    pub fn host_policy(&self) -> Result<HostPolicy, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .get_record::<HostPolicy>(&self.ctl.hosts().local_key("host"))?
            .map(|(p, _)| p)
            .unwrap_or_default())
    }

    /// Replaces the host policy; KSM follows at once, ballooning at its next round.
    pub fn set_host_policy(&self, p: HostPolicy) -> Result<HostPolicy, ControlError> {
        p.validate()?;
        self.ctl.inner.store.put_record(&self.ctl.hosts().local_key("host"), &p, Expect::Any)?;
        apply_ksm(p.ksm)?;
        Ok(p)
    }

    pub fn host_resources(&self) -> Result<HostResources, ControlError> {
        let running: Vec<Vm> =
            self.ctl.vms().list_vms()?.into_iter().filter(|v| v.status.state.has_process()).collect();
        Ok(HostResources {
            policy: self.host_policy()?,
            cpus: self.ctl.inner.host.cpus,
            memory_bytes: self.ctl.inner.host.memory_bytes,
            memory_available_bytes: meminfo("MemAvailable:").unwrap_or(0),
            committed_vcpus: running.iter().map(|v| v.spec.cpus).sum(),
            committed_memory: running.iter().map(|v| v.spec.memory.0).sum(),
            numa_nodes: self
                .topology()
                .nodes
                .into_iter()
                .map(|n| NumaNodeView {
                    id: n.id,
                    cpus: format_cpulist(&n.cpus),
                    memory_total: n.memory_total,
                    memory_free: n.memory_free,
                })
                .collect(),
            ksm: ksm_view(),
            hugepages_total: meminfo_field("HugePages_Total:").unwrap_or(0),
            hugepages_free: meminfo_field("HugePages_Free:").unwrap_or(0),
            hugepage_size: HUGEPAGE,
            templates: {
                let (pool_vms, pool_private_bytes) = self.ctl.templates().pool_figures();
                oxvirt_model::TemplatesMemoryView {
                    shared_memory_bytes: self.ctl.templates().shared_memory_bytes(),
                    pool_vms,
                    pool_private_bytes,
                }
            },
        })
    }

    /// The host refuses a VM its policy has no room for, naming the resource.
    pub(crate) fn admit(&self, vm: &Vm) -> Result<(), ControlError> {
        self.check_memory_encryption(vm)?;
        let policy = self.host_policy()?;
        let others: Vec<Vm> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v| v.spec.name != vm.spec.name && v.status.state.has_process())
            .collect();
        let host = &self.ctl.inner.host;
        let vcpus: u32 = others.iter().map(|v| v.spec.cpus).sum::<u32>() + vm.spec.cpus;
        let cpu_room = (f64::from(host.cpus) * policy.cpu_overcommit).floor() as u32;
        if vcpus > cpu_room {
            return Err(ControlError::invalid(
                "cpus",
                format!(
                    "starting {} would commit {vcpus} vCPUs on {} host CPUs, above the over-commit ratio {} ({cpu_room} vCPUs)",
                    vm.spec.name, host.cpus, policy.cpu_overcommit
                ),
            ));
        }
        let memory: u64 = others.iter().map(|v| v.spec.memory.0).sum::<u64>() + vm.spec.memory.0;
        let mem_room = (host.memory_bytes as f64 * policy.memory_overcommit) as u64;
        if host.memory_bytes > 0 && memory > mem_room {
            return Err(ControlError::invalid(
                "memory",
                format!(
                    "starting {} would commit {} of memory on a host of {}, above the over-commit ratio {} ({})",
                    vm.spec.name,
                    ByteSize(memory),
                    ByteSize(host.memory_bytes),
                    policy.memory_overcommit,
                    ByteSize(mem_room)
                ),
            ));
        }
        Ok(())
    }

    /// Encrypted memory is passed to QEMU only where the host has it; elsewhere a clear refusal.
    pub(crate) fn check_memory_encryption(&self, vm: &Vm) -> Result<(), ControlError> {
        let Some(enc) = vm.spec.memory_encryption else { return Ok(()) };
        let (what, param) = match enc {
            oxvirt_model::MemoryEncryption::Sev => ("SEV", "sev"),
            oxvirt_model::MemoryEncryption::SevSnp => ("SEV-SNP", "sev_snp"),
        };
        let accel = oxvirt_hypervisor::accel::resolve(vm.spec.accel, self.ctl.inner.hv.accel());
        let reason = if accel != oxvirt_hypervisor::Accel::Kvm {
            Some(
                "guests here run under TCG (software emulation), and only KVM on an AMD CPU encrypts memory"
                    .to_string(),
            )
        } else {
            let v = std::fs::read_to_string(format!("/sys/module/kvm_amd/parameters/{param}")).unwrap_or_default();
            (!matches!(v.trim(), "Y" | "1"))
                .then(|| format!("kvm_amd does not offer {what} (/sys/module/kvm_amd/parameters/{param})"))
        };
        match reason {
            Some(r) => Err(ControlError::invalid(
                "memory_encryption",
                format!("this host cannot encrypt guest memory with {what}: {r}"),
            )),
            None => Ok(()),
        }
    }

    /// Where the VM's threads and memory go: pinned CPUs, or a NUMA node chosen for it.
    pub(crate) fn place(&self, vm: &Vm) -> Result<Option<Placement>, ControlError> {
        let r = &vm.spec.resources;
        let host_cpus = self.ctl.inner.host.cpus;
        for (i, c) in r.vcpu_pins.iter().enumerate() {
            if *c >= host_cpus {
                return Err(ControlError::invalid(
                    format!("resources.vcpu_pins[{i}]"),
                    format!("the host has CPUs 0..{}", host_cpus - 1),
                ));
            }
        }
        let emulator = r
            .emulator_cpus
            .as_deref()
            .map(parse_cpulist)
            .transpose()
            .map_err(|e| ControlError::invalid("resources.emulator_cpus", e))?;
        if let Some(c) = emulator.as_ref().and_then(|e| e.iter().find(|c| **c >= host_cpus)) {
            return Err(ControlError::invalid(
                "resources.emulator_cpus",
                format!("CPU {c} does not exist: the host has 0..{}", host_cpus - 1),
            ));
        }
        if !r.vcpu_pins.is_empty() {
            let mut all = r.vcpu_pins.clone();
            all.extend(emulator.clone().unwrap_or_else(|| r.vcpu_pins.clone()));
            return Ok(Some(Placement {
                cpus: Some(format_cpulist(&all)),
                mems: None,
                guest_nodes: vec![],
                reason: format!("vCPUs pinned to host CPUs {}", format_cpulist(&r.vcpu_pins)),
            }));
        }
        if r.numa == NumaMode::Off {
            return Ok(None);
        }
        let committed: Vec<Committed> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v| v.spec.name != vm.spec.name && v.status.state.has_process())
            .filter_map(|v| {
                let p = v.status.placement?;
                let node: u32 = p.mems?.split(',').next()?.parse().ok()?;
                Some(Committed { node, vcpus: v.spec.cpus, memory: v.spec.memory.0 })
            })
            .collect();
        let plan = self.topology().place(vm.spec.cpus, vm.spec.memory.0, &committed);
        if plan.nodes.is_empty() {
            return Ok(None);
        }
        let ids: Vec<String> = plan.nodes.iter().map(u32::to_string).collect();
        Ok(Some(Placement {
            cpus: Some(format_cpulist(&plan.cpus)),
            mems: Some(ids.join(",")),
            guest_nodes: plan
                .guest_nodes
                .iter()
                .map(|g| GuestNode {
                    first_vcpu: g.first_vcpu,
                    vcpus: g.vcpus,
                    memory: g.memory,
                    host_node: g.host_node,
                })
                .collect(),
            reason: plan.reason,
        }))
    }

    /// Makes sure the host has the huge pages a VM needs, raising `vm.nr_hugepages` if it must
    /// (and recording by how much, to give them back when the VM stops).
    pub(crate) fn reserve_hugepages(&self, vm: &Vm) -> Result<(), ControlError> {
        if !vm.spec.resources.hugepages {
            return Ok(());
        }
        let need = vm.spec.memory.0 / HUGEPAGE;
        let free = meminfo_field("HugePages_Free:").unwrap_or(0);
        if free >= need {
            return Ok(());
        }
        let missing_bytes = (need - free) * HUGEPAGE;
        let available = meminfo("MemAvailable:").unwrap_or(0);
        if missing_bytes > available / 10 * 9 {
            return Err(ControlError::invalid(
                "resources.hugepages",
                format!(
                    "the VM needs {need} free 2 MiB huge pages; the host has {free}, and too little free memory ({}) to reserve {} more",
                    ByteSize(available),
                    need - free
                ),
            ));
        }
        let total = read_u64(NR_HUGEPAGES);
        let want = total + (need - free);
        let key = self.ctl.hosts().local_key(&format!("hugepages-{}", vm.id));
        self.ctl.inner.store.put_record(
            &key,
            &HostObject { kind: "hugepages".into(), owner: vm.id.clone(), count: need - free },
            Expect::Any,
        )?;
        let _ = std::fs::write(NR_HUGEPAGES, want.to_string());
        let free_now = meminfo_field("HugePages_Free:").unwrap_or(0);
        if free_now < need {
            self.release_hugepages(&vm.id);
            return Err(ControlError::invalid(
                "resources.hugepages",
                format!(
                    "the VM needs {need} free 2 MiB huge pages and the host has {free_now} (vm.nr_hugepages could not be raised enough: too little contiguous free memory)"
                ),
            ));
        }
        Ok(())
    }

    /// Gives back the huge pages reserved for a VM that stopped.
    pub(crate) fn release_hugepages(&self, vm_id: &str) {
        let key = self.ctl.hosts().local_key(&format!("hugepages-{vm_id}"));
        let Ok(Some((obj, _))) = self.ctl.inner.store.get_record::<HostObject>(&key) else { return };
        let total = read_u64(NR_HUGEPAGES);
        let _ = std::fs::write(NR_HUGEPAGES, total.saturating_sub(obj.count).to_string());
        let _ = self.ctl.inner.store.delete_record::<HostObject>(&key, Expect::Any);
    }

    /// Pins vCPU threads (one host CPU each) and QEMU's other threads, as the spec says.
    /// With `unpin`, a VM without pins gets every thread's affinity widened again (after a live
    /// change that removed its pins).
    pub(crate) async fn pin_threads(
        &self,
        vm_id: &str,
        spec: &VmSpec,
        instance: &Arc<dyn Instance>,
        unpin: bool,
    ) -> Result<(), ControlError> {
        let r = &spec.resources;
        let pin = |tid: u32, cpus: &[u32]| {
            oxvirt_cgroup::set_affinity(tid, cpus)
                .map_err(|e| ControlError::Host(format!("pin thread {tid} of VM {vm_id}: {e}")))
        };
        if r.vcpu_pins.is_empty() && r.emulator_cpus.is_none() {
            if unpin {
                // Every thread may run on every CPU its placement (or the host) allows again.
                let all: Vec<u32> = match r.placement.as_ref().and_then(|p| p.cpus.as_deref()) {
                    Some(c) => parse_cpulist(c).unwrap_or_default(),
                    None => (0..self.ctl.inner.host.cpus).collect(),
                };
                for t in std::fs::read_dir(format!("/proc/{}/task", instance.pid())).into_iter().flatten().flatten() {
                    if let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() {
                        pin(tid, &all)?;
                    }
                }
            }
            return Ok(());
        }
        let vcpus = instance.vcpu_threads().await?;
        for (tid, cpu) in vcpus.iter().zip(r.vcpu_pins.iter()) {
            pin(*tid, &[*cpu])?;
        }
        if let Some(e) = &r.emulator_cpus {
            let cpus = parse_cpulist(e).map_err(|e| ControlError::invalid("resources.emulator_cpus", e))?;
            let tasks = std::fs::read_dir(format!("/proc/{}/task", instance.pid()))
                .map_err(|e| ControlError::Host(format!("threads of VM {vm_id}: {e}")))?;
            for t in tasks.flatten() {
                if let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() {
                    if !vcpus.contains(&tid) {
                        pin(tid, &cpus)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Changes a VM's resources; a running VM gets the new CPU weight, cap, memory limit and
    /// pinning at once (NUMA placement and huge pages take effect at its next start).
    pub async fn set_resources(&self, name: &str, resources: Resources) -> Result<Vm, ControlError> {
        let _guard = self.ctl.inner.slot(name).op.clone().try_lock_owned().map_err(|_| busy(name))?;
        let (vm, rev) = self.ctl.inner.store.get_record::<Vm>(name)?.ok_or_else(|| ControlError::vm_not_found(name))?;
        let mut spec = vm.spec.clone();
        let running = vm.status.state.has_process();
        if running && (resources.hugepages != spec.resources.hugepages || resources.numa != spec.resources.numa) {
            return Err(ControlError::Conflict(format!(
                "VM {name} runs: huge pages and NUMA mode change only while it is stopped"
            )));
        }
        spec.resources = resources;
        spec.validate()?;
        let mut new = Vm { spec, ..vm.clone() };
        if running {
            let placement = if new.spec.resources.vcpu_pins != vm.spec.resources.vcpu_pins
                || new.spec.resources.emulator_cpus != vm.spec.resources.emulator_cpus
            {
                self.place(&new)?
            } else {
                vm.status.placement.clone()
            };
            new.status.placement = placement.clone();
            let mut live = new.spec.clone();
            live.resources.placement = placement;
            let missing = self.ctl.inner.hv.set_limits(&vm.id, &limits_of(&live))?;
            if !missing.is_empty() {
                tracing::warn!(vm = name, ?missing, "this host cannot enforce these limits");
            }
            self.pin_threads(&vm.id, &live, &self.ctl.vms().instance(name)?, true).await?;
        }
        self.ctl.inner.store.put_record(name, &new, Expect::Revision(rev)).map_err(|_| busy(name))?;
        Ok(new)
    }
}
