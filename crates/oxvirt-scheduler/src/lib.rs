//! Where a new VM goes in a cluster, as a pure function of what the hosts have (the scheduler of
//! the leader; no I/O, so it is tested alone and simulated at scale).
//!
//! First the filters: a host must be online and not in maintenance, have room for the VM's vCPUs
//! and memory under the over-commit ratios, reach its storage pools and networks, hold no VM of
//! its anti-affinity group and, once its affinity group has a VM, be where that VM is. Then the
//! weights: `spread` prefers the host with most room left (and least CPU pressure), `pack` the
//! one with least (best fit), so that whole hosts stay free. Hosts are kept in an index ordered
//! by free memory, so one placement costs a logarithmic search, not a scan of every host.
//!
//! Every decision says why: the host chosen and the score, or, when none fits, how many hosts
//! each filter turned away.

use std::collections::{BTreeSet, HashMap};

mod rebalance;
pub use rebalance::{plan as plan_rebalance, Move, Placed};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Even out load: the host with most room.
    #[default]
    Spread,
    /// Consolidate: the fullest host the VM fits on.
    Pack,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub strategy: Strategy,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { strategy: Strategy::Spread, cpu_overcommit: 4.0, memory_overcommit: 1.0 }
    }
}

/// A host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    pub name: String,
    pub cpus: u32,
    pub memory: u64,
    pub used_vcpus: u32,
    pub used_memory: u64,
    pub pools: Vec<String>,
    pub networks: Vec<String>,
    pub online: bool,
    pub maintenance: bool,
    /// CPU ready share (0..1): how much its vCPUs wait for a CPU.
    pub cpu_pressure: f64,
}

/// What a VM needs.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub name: String,
    pub vcpus: u32,
    pub memory: u64,
    pub pools: Vec<String>,
    pub networks: Vec<String>,
    /// VMs of one affinity group run on one host.
    pub affinity: Option<String>,
    /// VMs of one anti-affinity group run on different hosts.
    pub anti_affinity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub host: String,
    pub score: f64,
    pub reason: String,
}

/// No host fits: how many hosts each filter turned away.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NoHost {
    pub offline_or_maintenance: usize,
    pub cpu: usize,
    pub memory: usize,
    pub pools: usize,
    pub networks: usize,
    pub affinity: usize,
    pub anti_affinity: usize,
}

impl std::fmt::Display for NoHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no host fits: {} offline or in maintenance, {} without room for the vCPUs, {} without room for the memory, \
             {} missing a storage pool, {} missing a network, {} outside the affinity group's host, {} holding its anti-affinity group",
            self.offline_or_maintenance, self.cpu, self.memory, self.pools, self.networks, self.affinity, self.anti_affinity
        )
    }
}

/// The cluster's hosts and where groups' VMs are, indexed for placement.
pub struct Cluster {
    pub policy: Policy,
    hosts: Vec<Host>,
    /// (free memory under the policy, host index), ordered.
    by_free: BTreeSet<(u64, usize)>,
    affinity_hosts: HashMap<String, usize>,
    anti_affinity_hosts: HashMap<String, BTreeSet<usize>>,
}

impl Cluster {
    pub fn new(hosts: Vec<Host>, policy: Policy) -> Cluster {
        let mut c = Cluster {
            policy,
            hosts,
            by_free: BTreeSet::new(),
            affinity_hosts: HashMap::new(),
            anti_affinity_hosts: HashMap::new(),
        };
        for i in 0..c.hosts.len() {
            c.by_free.insert((c.free_memory(i), i));
        }
        c
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Notes the groups of a VM already on `host` (its usage is in the host's figures already),
    /// so that later placements keep to them.
    pub fn note_groups(&mut self, host: &str, affinity: Option<&str>, anti_affinity: Option<&str>) {
        let Some(i) = self.hosts.iter().position(|h| h.name == host) else { return };
        if let Some(g) = affinity {
            self.affinity_hosts.entry(g.to_string()).or_insert(i);
        }
        if let Some(g) = anti_affinity {
            self.anti_affinity_hosts.entry(g.to_string()).or_default().insert(i);
        }
    }

    fn memory_cap(&self, h: &Host) -> u64 {
        (h.memory as f64 * self.policy.memory_overcommit) as u64
    }

    fn free_memory(&self, i: usize) -> u64 {
        let h = &self.hosts[i];
        self.memory_cap(h).saturating_sub(h.used_memory)
    }

    fn free_vcpus(&self, h: &Host) -> u64 {
        ((f64::from(h.cpus) * self.policy.cpu_overcommit) as u64).saturating_sub(u64::from(h.used_vcpus))
    }

    /// Which filter (if any) turns host `i` away for `r`.
    fn refuse(&self, i: usize, r: &Request) -> Option<&'static str> {
        let h = &self.hosts[i];
        if !h.online || h.maintenance {
            return Some("offline_or_maintenance");
        }
        if self.free_vcpus(h) < u64::from(r.vcpus) {
            return Some("cpu");
        }
        if self.free_memory(i) < r.memory {
            return Some("memory");
        }
        if !r.pools.iter().all(|p| h.pools.contains(p)) {
            return Some("pools");
        }
        if !r.networks.iter().all(|n| h.networks.contains(n)) {
            return Some("networks");
        }
        if let Some(g) = &r.affinity {
            if self.affinity_hosts.get(g).is_some_and(|&at| at != i) {
                return Some("affinity");
            }
        }
        if let Some(g) = &r.anti_affinity {
            if self.anti_affinity_hosts.get(g).is_some_and(|s| s.contains(&i)) {
                return Some("anti_affinity");
            }
        }
        None
    }

    fn score(&self, i: usize, r: &Request) -> f64 {
        let h = &self.hosts[i];
        let mem_left = (self.free_memory(i) - r.memory) as f64 / self.memory_cap(h).max(1) as f64;
        let cpu_cap = (f64::from(h.cpus) * self.policy.cpu_overcommit).max(1.0);
        let cpu_left = (self.free_vcpus(h) - u64::from(r.vcpus)) as f64 / cpu_cap;
        match self.policy.strategy {
            Strategy::Spread => mem_left + cpu_left - h.cpu_pressure,
            Strategy::Pack => 2.0 - mem_left - cpu_left,
        }
    }

    /// Picks a host for `r` (without placing it).
    pub fn choose(&self, r: &Request) -> Result<Decision, NoHost> {
        // An affinity group with a VM already: only its host can do.
        if let Some(&at) = r.affinity.as_ref().and_then(|g| self.affinity_hosts.get(g)) {
            return match self.refuse(at, r) {
                None => Ok(self.decide(at, r, "with its affinity group")),
                Some(_) => Err(self.explain(r)),
            };
        }
        // Spread: from most free memory down, the first few that pass the filters scored (memory,
        // CPU, pressure); pack: from the least free memory that fits up, the first that passes.
        let from = (r.memory, 0usize);
        let candidates: Box<dyn Iterator<Item = &(u64, usize)>> = match self.policy.strategy {
            Strategy::Spread => Box::new(self.by_free.range(from..).rev()),
            Strategy::Pack => Box::new(self.by_free.range(from..)),
        };
        let mut best: Option<(f64, usize)> = None;
        let mut passed = 0;
        for &(_, i) in candidates {
            if self.refuse(i, r).is_some() {
                continue;
            }
            let s = self.score(i, r);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
            passed += 1;
            // Packing is best fit: the tightest host that passes. Spreading weighs a few.
            if self.policy.strategy == Strategy::Pack || passed >= 8 {
                break;
            }
        }
        match best {
            Some((_, i)) => Ok(self.decide(
                i,
                r,
                match self.policy.strategy {
                    Strategy::Spread => "most room left",
                    Strategy::Pack => "fullest host it fits on",
                },
            )),
            None => Err(self.explain(r)),
        }
    }

    fn decide(&self, i: usize, r: &Request, why: &str) -> Decision {
        let h = &self.hosts[i];
        Decision {
            host: h.name.clone(),
            score: self.score(i, r),
            reason: format!(
                "{why}: {} of {} MiB and {} of {} vCPUs free before it, CPU pressure {:.2}",
                self.free_memory(i) >> 20,
                self.memory_cap(h) >> 20,
                self.free_vcpus(h),
                (f64::from(h.cpus) * self.policy.cpu_overcommit) as u64,
                h.cpu_pressure
            ),
        }
    }

    fn explain(&self, r: &Request) -> NoHost {
        let mut n = NoHost::default();
        for i in 0..self.hosts.len() {
            match self.refuse(i, r) {
                Some("offline_or_maintenance") => n.offline_or_maintenance += 1,
                Some("cpu") => n.cpu += 1,
                Some("memory") => n.memory += 1,
                Some("pools") => n.pools += 1,
                Some("networks") => n.networks += 1,
                Some("affinity") => n.affinity += 1,
                Some("anti_affinity") => n.anti_affinity += 1,
                _ => {}
            }
        }
        n
    }

    /// Chooses a host for `r` and records the VM there.
    pub fn place(&mut self, r: &Request) -> Result<Decision, NoHost> {
        let d = self.choose(r)?;
        let i = self.hosts.iter().position(|h| h.name == d.host).unwrap_or(0);
        self.by_free.remove(&(self.free_memory(i), i));
        self.hosts[i].used_vcpus += r.vcpus;
        self.hosts[i].used_memory += r.memory;
        self.by_free.insert((self.free_memory(i), i));
        if let Some(g) = &r.affinity {
            self.affinity_hosts.entry(g.clone()).or_insert(i);
        }
        if let Some(g) = &r.anti_affinity {
            self.anti_affinity_hosts.entry(g.clone()).or_default().insert(i);
        }
        Ok(d)
    }

    /// Places many VMs, largest first (as initial placement and rebalancing plans do): returns
    /// the decisions in the order given.
    pub fn place_all(&mut self, requests: &[Request]) -> Vec<Result<Decision, NoHost>> {
        // Largest first, by the VM's share of a typical host in its larger dimension.
        let (mem, cpu) = self
            .hosts
            .first()
            .map(|h| (self.memory_cap(h).max(1) as f64, (f64::from(h.cpus) * self.policy.cpu_overcommit).max(1.0)))
            .unwrap_or((1.0, 1.0));
        let size = |r: &Request| (r.memory as f64 / mem).max(f64::from(r.vcpus) / cpu);
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| size(&requests[b]).total_cmp(&size(&requests[a])));
        let mut out: Vec<Option<Result<Decision, NoHost>>> = vec![None; requests.len()];
        for i in order {
            out[i] = Some(self.place(&requests[i]));
        }
        out.into_iter().map(|d| d.unwrap_or_else(|| Err(NoHost::default()))).collect()
    }

    /// Hosts with at least one VM.
    pub fn hosts_used(&self) -> usize {
        self.hosts.iter().filter(|h| h.used_memory > 0 || h.used_vcpus > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(name: &str, cpus: u32, mem_gib: u64) -> Host {
        Host {
            name: name.into(),
            cpus,
            memory: mem_gib * GIB,
            used_vcpus: 0,
            used_memory: 0,
            pools: vec!["shared".into()],
            networks: vec!["lan".into()],
            online: true,
            maintenance: false,
            cpu_pressure: 0.0,
        }
    }

    fn vm(name: &str, vcpus: u32, mem_gib: u64) -> Request {
        Request { name: name.into(), vcpus, memory: mem_gib * GIB, ..Default::default() }
    }

    #[test]
    fn spread_uses_the_emptiest_host_and_pack_the_fullest() {
        let hosts = vec![host("a", 8, 32), host("b", 8, 32)];
        let mut spread = Cluster::new(hosts.clone(), Policy::default());
        assert_ne!(spread.place(&vm("1", 1, 4)).unwrap().host, spread.place(&vm("2", 1, 4)).unwrap().host);
        let mut pack = Cluster::new(hosts, Policy { strategy: Strategy::Pack, ..Policy::default() });
        assert_eq!(pack.place(&vm("1", 1, 4)).unwrap().host, pack.place(&vm("2", 1, 4)).unwrap().host);
    }

    #[test]
    fn filters_turn_hosts_away_and_say_why() {
        let mut hosts = vec![host("a", 2, 8), host("b", 8, 64), host("c", 8, 64), host("d", 8, 64)];
        hosts[1].maintenance = true;
        hosts[2].pools.clear();
        hosts[3].online = false;
        let c = Cluster::new(hosts, Policy { cpu_overcommit: 1.0, ..Policy::default() });
        let mut r = vm("big", 4, 16);
        r.pools = vec!["shared".into()];
        let e = c.choose(&r).unwrap_err();
        assert_eq!((e.offline_or_maintenance, e.cpu, e.pools), (2, 1, 1), "{e}");
        assert!(e.to_string().contains("2 offline or in maintenance"));
    }

    #[test]
    fn affinity_together_anti_affinity_apart() {
        let mut c = Cluster::new((0..4).map(|i| host(&format!("h{i}"), 8, 32)).collect(), Policy::default());
        let with = |n: &str, a: Option<&str>, aa: Option<&str>| Request {
            affinity: a.map(Into::into),
            anti_affinity: aa.map(Into::into),
            ..vm(n, 1, 1)
        };
        let db1 = c.place(&with("db1", None, Some("db"))).unwrap().host;
        let db2 = c.place(&with("db2", None, Some("db"))).unwrap().host;
        let db3 = c.place(&with("db3", None, Some("db"))).unwrap().host;
        assert!(db1 != db2 && db2 != db3 && db1 != db3);
        let w1 = c.place(&with("web1", Some("web"), None)).unwrap().host;
        let w2 = c.place(&with("web2", Some("web"), None)).unwrap().host;
        assert_eq!(w1, w2);
        assert!(c.place(&with("db4", None, Some("db"))).is_ok(), "a fourth host is left");
        assert_eq!(c.place(&with("db5", None, Some("db"))).unwrap_err().anti_affinity, 4);
        // A cluster made anew from the same hosts learns the groups from the VMs already there.
        let mut again = Cluster::new((0..2).map(|i| host(&format!("h{i}"), 8, 32)).collect(), Policy::default());
        again.note_groups("h0", Some("web"), Some("db"));
        again.note_groups("h1", None, Some("db"));
        assert_eq!(again.choose(&with("web3", Some("web"), None)).unwrap().host, "h0");
        assert_eq!(again.choose(&with("db6", None, Some("db"))).unwrap_err().anti_affinity, 2);
    }

    #[test]
    fn over_commit_ratios_bound_what_fits() {
        let mut c = Cluster::new(
            vec![host("a", 2, 4)],
            Policy { cpu_overcommit: 2.0, memory_overcommit: 1.0, ..Policy::default() },
        );
        for i in 0..4 {
            c.place(&vm(&i.to_string(), 1, 1)).unwrap();
        }
        assert_eq!(c.place(&vm("5", 1, 0)).unwrap_err().cpu, 1, "4 vCPUs on 2 CPUs at 2.0");
    }

    /// Packing many VMs largest first comes close to the lower bound of hosts.
    #[test]
    fn packing_is_close_to_the_lower_bound() {
        let hosts: Vec<Host> = (0..200).map(|i| host(&format!("h{i}"), 64, 256)).collect();
        let mut c =
            Cluster::new(hosts, Policy { strategy: Strategy::Pack, cpu_overcommit: 4.0, memory_overcommit: 1.0 });
        let mut seed = 7u64;
        let mut rnd = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let reqs: Vec<Request> = (0..2000).map(|i| vm(&i.to_string(), 1 + rnd(8) as u32, 1 + rnd(32))).collect();
        let placed = c.place_all(&reqs);
        assert!(placed.iter().all(|p| p.is_ok()));
        let total: u64 = reqs.iter().map(|r| r.memory).sum();
        let bound = total.div_ceil(256 * GIB) as usize;
        let eff = bound as f64 / c.hosts_used() as f64;
        assert!(eff >= 0.95, "{} hosts used, lower bound {bound}: {eff:.3}", c.hosts_used());
    }
}
