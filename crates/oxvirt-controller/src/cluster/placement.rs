//! The cluster's scheduler at work: where a new VM goes, and rebalancing (a plan from the
//! scheduler library, migrations asked for through the store and started by each VM's host,
//! never more than the policy's `max_migrations` at once). The leader rebalances on its own
//! when the policy says `auto`.

use crate::ControlError;
use oxvirt_model::{
    ClusterPolicy, Migration, MigrationState, PlacementStrategy, RebalanceMode, RebalanceView, Vm, VmSpec,
};
use oxvirt_scheduler::{Cluster, Host, Placed, Policy, Request, Strategy};
use oxvirt_store::{Expect, Op, StoreExt};

/// Counts placements; each one's transaction expects the count it read (see `create_vm`).
pub(crate) const PLACEMENT_COUNTER: &str = "cluster/placements";

/// What a VM needs of a host, for the scheduler.
pub(super) fn request_of(spec: &VmSpec) -> Request {
    let pools = spec
        .disks
        .iter()
        .filter_map(|d| d.volume.as_deref())
        .filter_map(|r| r.split_once('/').map(|(p, _)| p.to_string()))
        .collect();
    let networks = spec
        .nics
        .iter()
        .filter_map(|n| n.network.clone().or_else(|| n.bridge.as_ref().map(|b| format!("bridge:{b}"))))
        .collect();
    Request {
        name: spec.name.clone(),
        vcpus: spec.cpus,
        memory: spec.memory.0,
        pools,
        networks,
        affinity: spec.affinity.clone(),
        anti_affinity: spec.anti_affinity.clone(),
    }
}

impl crate::Hosts {
    /// In a cluster: the write that takes the next placement turn, expecting the counter as it
    /// is now.
    pub(crate) fn placement_counter(&self) -> Result<Option<Op>, ControlError> {
        if self.host_name().is_none() {
            return Ok(None);
        }
        let now = self.ctl.inner.store.get(PLACEMENT_COUNTER)?;
        let (n, expect) = match &now {
            Some(e) => (String::from_utf8_lossy(&e.value).parse::<u64>().unwrap_or(0), Expect::Revision(e.revision)),
            None => (0, Expect::Absent),
        };
        Ok(Some(Op::Put { key: PLACEMENT_COUNTER.into(), value: (n + 1).to_string().into_bytes(), expect }))
    }

    pub fn cluster_policy(&self) -> Result<ClusterPolicy, ControlError> {
        Ok(self.ctl.inner.store.get_record::<ClusterPolicy>("policy")?.map(|(p, _)| p).unwrap_or_default())
    }

    pub fn set_cluster_policy(&self, p: ClusterPolicy) -> Result<ClusterPolicy, ControlError> {
        p.validate()?;
        self.in_cluster()?;
        self.ctl.inner.store.put_record("policy", &p, Expect::Any)?;
        Ok(p)
    }

    fn in_cluster(&self) -> Result<String, ControlError> {
        self.host_name().ok_or_else(|| {
            ControlError::Conflict(
                "this host is not in a cluster (the store is SQLite): see [store] in oxvirtd.toml".into(),
            )
        })
    }

    /// The hosts and VMs (`vms`, all of them) as the scheduler sees them, under the cluster's
    /// policy.
    pub(super) fn scheduler_view(&self, vms: &[Vm]) -> Result<(Vec<Host>, Vec<Placed>, Policy), ControlError> {
        let alive = self.alive_hosts()?;
        let host_policy = self.ctl.resources().host_policy()?;
        let policy = Policy {
            strategy: match self.cluster_policy()?.strategy {
                PlacementStrategy::Spread => Strategy::Spread,
                PlacementStrategy::Pack => Strategy::Pack,
            },
            cpu_overcommit: host_policy.cpu_overcommit,
            memory_overcommit: host_policy.memory_overcommit,
        };
        let placed: Vec<Placed> = vms
            .iter()
            .filter_map(|v| v.host.clone().map(|host| Placed { request: request_of(&v.spec), host }))
            .collect();
        let hosts = self
            .host_records()?
            .into_iter()
            .map(|r| {
                let mine = placed.iter().filter(|p| p.host == r.name);
                Host {
                    used_vcpus: mine.clone().map(|p| p.request.vcpus).sum(),
                    used_memory: mine.map(|p| p.request.memory).sum(),
                    online: alive.contains(&r.name),
                    maintenance: r.maintenance,
                    cpu_pressure: r.cpu_pressure,
                    pools: r.pools,
                    networks: r.networks,
                    name: r.name,
                    cpus: r.cpus,
                    memory: r.memory,
                }
            })
            .collect();
        Ok((hosts, placed, policy))
    }

    /// Where a new VM goes: the host it asks for (which must be usable), or the scheduler's pick
    /// among the hosts (filters, then spread or pack per the cluster policy, under the host
    /// policy's over-commit ratios), with the reason. `None` on a single host.
    pub(crate) fn place_vm(&self, spec: &VmSpec) -> Result<Option<(String, String)>, ControlError> {
        let Some(me) = self.host_name() else {
            if spec.host.is_some() {
                return Err(ControlError::invalid("host", "this host is not in a cluster"));
            }
            return Ok(None);
        };
        if let Some(h) = &spec.host {
            self.usable_host("host", h)?;
            self.ctl.storage().local_volumes_host(spec, Some(h))?;
            return Ok(Some((h.clone(), "asked for".into())));
        }
        if let Some(h) = self.ctl.storage().local_volumes_host(spec, None)? {
            self.usable_host("disks", &h)?;
            return Ok(Some((h, "where its local disks are".into())));
        }
        let (hosts, placed, policy) = self.scheduler_view(&self.ctl.vms().list_vms()?)?;
        let mut cluster = Cluster::new(hosts, policy);
        for p in placed.iter().filter(|p| p.request.name != spec.name) {
            cluster.note_groups(&p.host, p.request.affinity.as_deref(), p.request.anti_affinity.as_deref());
        }
        match cluster.choose(&request_of(spec)) {
            Ok(d) => Ok(Some((d.host, format!("placed by {me}'s scheduler: {}", d.reason)))),
            Err(e) => Err(ControlError::Conflict(e.to_string())),
        }
    }

    /// Where VM `vm`, off, may run instead of on host `from` (lost, or where it keeps failing):
    /// the scheduler's pick among the other hosts, those of its HA group first, by the group's
    /// priorities (a restricted group's only).
    pub(crate) fn pick_other_host(&self, vm: &Vm, from: &str) -> Result<String, ControlError> {
        let group = self
            .ctl
            .inner
            .store
            .get_record::<oxvirt_model::HaResource>(&vm.spec.name)?
            .and_then(|(r, _)| r.spec.group)
            .and_then(|g| self.ctl.inner.store.get_record::<oxvirt_model::HaGroup>(&g).ok().flatten())
            .map(|(g, _)| g.spec);
        let vms = self.ctl.vms().list_vms()?;
        let (hosts, placed, policy) = self.scheduler_view(&vms)?;
        let request = request_of(&oxvirt_model::VmSpec { host: None, ..vm.spec.clone() });
        // Tiers of hosts to try in turn: the group's by priority, then (unless restricted) any.
        let mut tiers: Vec<Vec<String>> = Vec::new();
        if let Some(g) = &group {
            let mut prios: Vec<u32> = g.hosts.iter().map(|h| h.priority).collect();
            prios.sort_unstable_by(|a, b| b.cmp(a));
            prios.dedup();
            for p in prios {
                tiers.push(g.hosts.iter().filter(|h| h.priority == p).map(|h| h.host.clone()).collect());
            }
        }
        if !group.as_ref().is_some_and(|g| g.restricted) {
            tiers.push(hosts.iter().map(|h| h.name.clone()).collect());
        }
        let mut last = String::from("no host to try");
        for tier in tiers {
            let view: Vec<Host> = hosts
                .iter()
                .cloned()
                .map(|mut h| {
                    h.maintenance |= h.name == from || !tier.contains(&h.name);
                    h
                })
                .collect();
            let mut cluster = Cluster::new(view, policy.clone());
            for p in placed.iter().filter(|p| p.request.name != vm.spec.name) {
                cluster.note_groups(&p.host, p.request.affinity.as_deref(), p.request.anti_affinity.as_deref());
            }
            match cluster.choose(&request) {
                Ok(d) => return Ok(d.host),
                Err(e) => last = e.to_string(),
            }
        }
        Err(ControlError::Conflict(last))
    }

    /// The rebalancing plan now; with `start`, the first moves are asked for, as many as the
    /// policy lets run at once.
    pub fn rebalance(&self, start: bool) -> Result<RebalanceView, ControlError> {
        self.in_cluster()?;
        let policy = self.cluster_policy()?;
        let vms = self.ctl.vms().list_vms()?;
        let (hosts, placed, sched) = self.scheduler_view(&vms)?;
        let running: Vec<Migration> =
            self.ctl.inner.store.list_records::<Migration>()?.into_iter().map(|(m, _)| m).collect();
        // Only running VMs move; those migrating already stay out of the plan.
        let movable: std::collections::HashSet<&str> = vms
            .iter()
            .filter(|v| v.status.state == oxvirt_model::VmState::Running)
            .map(|v| v.spec.name.as_str())
            .filter(|n| !running.iter().any(|m| m.vm == *n))
            .collect();
        let movable: Vec<Placed> = placed.into_iter().filter(|p| movable.contains(p.request.name.as_str())).collect();
        let threshold = f64::from(policy.threshold_percent) / 100.0;
        let moves = oxvirt_scheduler::plan_rebalance(hosts, movable, &sched, 64, threshold);
        let mut started = Vec::new();
        if start {
            let room = (policy.max_migrations as usize).saturating_sub(running.len());
            for m in moves.iter().take(room) {
                let asked = Migration::new(&m.vm, &m.from, &m.to, MigrationState::Asked, crate::now_millis());
                if self.ctl.inner.store.put_record(&m.vm, &asked, Expect::Absent).is_ok() {
                    tracing::info!(vm = %m.vm, from = %m.from, to = %m.to, "rebalancing: {}", m.reason);
                    started.push(m.vm.clone());
                }
            }
        }
        let moves = moves
            .into_iter()
            .map(|m| oxvirt_model::PlannedMove { vm: m.vm, from: m.from, to: m.to, reason: m.reason })
            .collect();
        Ok(RebalanceView { policy, moves, started, running: running.len() })
    }

    /// The leader, each reconcile round: rebalances when the policy says `auto` and its interval
    /// has passed.
    pub(crate) async fn rebalance_round(&self) {
        let Some(m) = crate::lock(&self.state().membership).clone() else { return };
        let Ok(policy) = self.cluster_policy() else { return };
        if policy.rebalance != RebalanceMode::Auto {
            return;
        }
        {
            let last = crate::lock(&self.state().last_rebalance);
            if last.is_some_and(|t| t.elapsed().as_secs() < policy.interval_secs) {
                return;
            }
        }
        if m.session.leader().await.as_deref() != Some(m.name.as_str()) {
            return;
        }
        *crate::lock(&self.state().last_rebalance) = Some(std::time::Instant::now());
        match self.rebalance(true) {
            Ok(v) if !v.started.is_empty() => tracing::info!("rebalancing: migrating {}", v.started.join(", ")),
            Ok(_) => {}
            Err(e) => tracing::warn!("rebalancing: {e}"),
        }
    }
}
