//! Rebalancing (as vSphere DRS does it): from where VMs are now, a short list of migrations that
//! even out the hosts' load (`spread`) or empty the least used hosts onto the others (`pack`),
//! keeping every placement rule (room under over-commit, pools, networks, anti-affinity; a VM of
//! an affinity group stays with its group, so it is not moved alone).
//!
//! A host's load is the larger of its memory and vCPU shares under the over-commit ratios.

use crate::{Host, Policy, Request, Strategy};
use std::collections::HashMap;

/// A VM where it runs now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placed {
    pub request: Request,
    pub host: String,
}

/// One migration of a plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Clone)]
struct State<'a> {
    hosts: Vec<Host>,
    vms: Vec<Placed>,
    policy: &'a Policy,
    /// Each VM's host (index), and each host's VMs.
    host_of: Vec<usize>,
    on_host: Vec<Vec<usize>>,
    /// How many VMs of each anti-affinity group each host holds.
    groups: HashMap<(usize, String), u32>,
}

impl<'a> State<'a> {
    fn new(hosts: Vec<Host>, vms: Vec<Placed>, policy: &'a Policy) -> State<'a> {
        let index: HashMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
        let mut on_host = vec![Vec::new(); hosts.len()];
        let mut host_of = Vec::with_capacity(vms.len());
        let mut groups = HashMap::new();
        for (k, v) in vms.iter().enumerate() {
            // A VM on a host the plan does not know stays out of it.
            let i = index.get(v.host.as_str()).copied().unwrap_or(usize::MAX);
            host_of.push(i);
            if i != usize::MAX {
                on_host[i].push(k);
                if let Some(g) = &v.request.anti_affinity {
                    *groups.entry((i, g.clone())).or_insert(0) += 1;
                }
            }
        }
        State { hosts, vms, policy, host_of, on_host, groups }
    }

    fn caps(&self, h: &Host) -> (f64, f64) {
        (
            (h.memory as f64 * self.policy.memory_overcommit).max(1.0),
            (f64::from(h.cpus) * self.policy.cpu_overcommit).max(1.0),
        )
    }

    /// Host `i`'s load with `mem` bytes and `vcpus` more (or less).
    fn load_with(&self, i: usize, mem: i128, vcpus: i64) -> f64 {
        let h = &self.hosts[i];
        let (m, c) = self.caps(h);
        let used_mem = (i128::from(h.used_memory) + mem).max(0) as f64;
        let used_cpu = (i64::from(h.used_vcpus) + vcpus).max(0) as f64;
        (used_mem / m).max(used_cpu / c)
    }

    fn load(&self, i: usize) -> f64 {
        self.load_with(i, 0, 0)
    }

    /// Hosts that take part: online and not in maintenance (draining is maintenance's job).
    fn active(&self) -> Vec<usize> {
        (0..self.hosts.len()).filter(|&i| self.hosts[i].online && !self.hosts[i].maintenance).collect()
    }

    fn fits(&self, v: &Request, to: usize) -> bool {
        let h = &self.hosts[to];
        let (mem, cpu) = self.caps(h);
        h.online
            && !h.maintenance
            && (h.used_memory + v.memory) as f64 <= mem
            && f64::from(h.used_vcpus + v.vcpus) <= cpu
            && v.pools.iter().all(|p| h.pools.contains(p))
            && v.networks.iter().all(|n| h.networks.contains(n))
            && v.anti_affinity.as_ref().is_none_or(|g| self.groups.get(&(to, g.clone())).copied().unwrap_or(0) == 0)
    }

    /// The VMs of a host that may move alone (not in an affinity group).
    fn movable(&self, from: usize) -> Vec<usize> {
        self.on_host[from].iter().copied().filter(|&k| self.vms[k].request.affinity.is_none()).collect()
    }

    fn apply(&mut self, k: usize, to: usize) -> Move {
        let from = self.host_of[k];
        let r = self.vms[k].request.clone();
        self.hosts[from].used_memory = self.hosts[from].used_memory.saturating_sub(r.memory);
        self.hosts[from].used_vcpus = self.hosts[from].used_vcpus.saturating_sub(r.vcpus);
        self.hosts[to].used_memory += r.memory;
        self.hosts[to].used_vcpus += r.vcpus;
        self.on_host[from].retain(|&x| x != k);
        self.on_host[to].push(k);
        self.host_of[k] = to;
        if let Some(g) = &r.anti_affinity {
            if let Some(n) = self.groups.get_mut(&(from, g.clone())) {
                *n = n.saturating_sub(1);
            }
            *self.groups.entry((to, g.clone())).or_insert(0) += 1;
        }
        self.vms[k].host = self.hosts[to].name.clone();
        Move { vm: r.name, from: self.hosts[from].name.clone(), to: self.hosts[to].name.clone(), reason: String::new() }
    }
}

/// Plans at most `max_moves` migrations. `spread`: while the most and least loaded hosts differ
/// by more than `threshold` (a share, 0..1), the move of one VM off the most loaded host (to one
/// of the least loaded few) that lowers the spread of loads (their standard deviation) most. `pack`: the least used hosts are emptied
/// onto the fullest others that take their VMs, a whole host at a time (or not at all).
pub fn plan(hosts: Vec<Host>, vms: Vec<Placed>, policy: &Policy, max_moves: usize, threshold: f64) -> Vec<Move> {
    let mut st = State::new(hosts, vms, policy);
    match policy.strategy {
        Strategy::Spread => plan_spread(&mut st, max_moves, threshold),
        Strategy::Pack => plan_pack(&mut st, max_moves),
    }
}

/// How many of the least loaded hosts a spread move considers.
const TARGETS: usize = 8;

fn plan_spread(st: &mut State, max_moves: usize, threshold: f64) -> Vec<Move> {
    let active = st.active();
    let n = active.len() as f64;
    let mut out = Vec::new();
    while out.len() < max_moves && active.len() > 1 {
        let mut loads: Vec<(f64, usize)> = active.iter().map(|&i| (st.load(i), i)).collect();
        loads.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (top, busiest) = loads[loads.len() - 1];
        let gap = top - loads[0].0;
        if gap <= threshold {
            break;
        }
        // The measure a move must lower: the standard deviation of the hosts' loads (as DRS
        // does), which every move from a busier to an idler host lowers, however many hosts
        // share the highest load.
        let (sum, sumsq) = loads.iter().fold((0.0, 0.0), |(s, q), l| (s + l.0, q + l.0 * l.0));
        let std = |sum: f64, sumsq: f64| (sumsq / n - (sum / n).powi(2)).max(0.0).sqrt();
        let before = std(sum, sumsq);
        let mut best: Option<(f64, usize, usize)> = None;
        for &(to_load, to) in loads.iter().filter(|&&(_, i)| i != busiest).take(TARGETS) {
            for k in st.movable(busiest) {
                let r = &st.vms[k].request;
                if !st.fits(r, to) {
                    continue;
                }
                let (mem, cpu) = (i128::from(r.memory), i64::from(r.vcpus));
                let (from_after, to_after) = (st.load_with(busiest, -mem, -cpu), st.load_with(to, mem, cpu));
                // A move that only swaps which host is busiest is no gain.
                if to_after >= top {
                    continue;
                }
                let s2 = sum - top - to_load + from_after + to_after;
                let q2 = sumsq - top * top - to_load * to_load + from_after * from_after + to_after * to_after;
                let after = std(s2, q2);
                if after < before - 1e-9 && best.is_none_or(|(b, _, _)| after < b) {
                    best = Some((after, k, to));
                }
            }
        }
        let Some((after, k, to)) = best else { break };
        let mut m = st.apply(k, to);
        m.reason = format!(
            "evens out load: hosts' loads {:.0}% apart, spread (std. dev.) {:.2}% -> {:.2}%",
            gap * 100.0,
            before * 100.0,
            after * 100.0
        );
        out.push(m);
    }
    out
}

fn plan_pack(st: &mut State, max_moves: usize) -> Vec<Move> {
    let mut out = Vec::new();
    loop {
        // The least used host that has VMs, whose VMs all fit elsewhere (fullest first).
        let mut used: Vec<usize> = st.active().into_iter().filter(|&i| st.load(i) > 0.0).collect();
        used.sort_by(|&a, &b| st.load(a).total_cmp(&st.load(b)));
        let mut emptied = false;
        for &from in &used {
            let vms = st.on_host[from].len();
            let movable = st.movable(from);
            if movable.len() != vms || out.len() + vms > max_moves {
                continue;
            }
            let saved = st.clone();
            let mut moves = Vec::new();
            for k in movable {
                let mut targets: Vec<usize> =
                    used.iter().copied().filter(|&t| t != from && st.fits(&st.vms[k].request, t)).collect();
                targets.sort_by(|&a, &b| st.load(b).total_cmp(&st.load(a)));
                let Some(&to) = targets.first() else { break };
                let mut m = st.apply(k, to);
                m.reason = format!("consolidates: empties host {}", st.hosts[from].name);
                moves.push(m);
            }
            if moves.len() == vms {
                out.extend(moves);
                emptied = true;
                break;
            }
            *st = saved;
        }
        if !emptied {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            cpus: 8,
            memory: 16 * GIB,
            used_vcpus: 0,
            used_memory: 0,
            pools: vec![],
            networks: vec![],
            online: true,
            maintenance: false,
            cpu_pressure: 0.0,
        }
    }

    fn placed(hosts: &mut [Host], name: &str, at: &str, mem_gib: u64) -> Placed {
        let h = hosts.iter_mut().find(|h| h.name == at).unwrap();
        h.used_memory += mem_gib * GIB;
        h.used_vcpus += 1;
        Placed {
            request: Request { name: name.into(), vcpus: 1, memory: mem_gib * GIB, ..Default::default() },
            host: at.into(),
        }
    }

    fn policy(strategy: Strategy) -> Policy {
        Policy { strategy, cpu_overcommit: 4.0, memory_overcommit: 1.0 }
    }

    #[test]
    fn spread_moves_load_off_the_busiest_host_and_stops_when_even() {
        let mut hosts = vec![host("a"), host("b"), host("c")];
        let vms: Vec<Placed> = (0..6).map(|i| placed(&mut hosts, &format!("v{i}"), "a", 2)).collect();
        let moves = plan(hosts.clone(), vms.clone(), &policy(Strategy::Spread), 10, 0.1);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert!(moves.iter().all(|m| m.from == "a"));
        assert_eq!(moves.iter().filter(|m| m.to == "b").count(), 2);
        assert!(moves[0].reason.contains("evens out load"), "{}", moves[0].reason);
        // A limit holds; an even cluster needs nothing.
        assert_eq!(plan(hosts.clone(), vms.clone(), &policy(Strategy::Spread), 1, 0.1).len(), 1);
        let mut even = vec![host("a"), host("b")];
        let vms = vec![placed(&mut even, "x", "a", 2), placed(&mut even, "y", "b", 2)];
        assert!(plan(even, vms, &policy(Strategy::Spread), 10, 0.1).is_empty());
    }

    #[test]
    fn spread_keeps_the_rules() {
        let mut hosts = vec![host("a"), host("b"), host("c")];
        hosts[1].maintenance = true;
        hosts[2].pools = vec!["other".into()];
        let mut vms: Vec<Placed> = (0..4).map(|i| placed(&mut hosts, &format!("v{i}"), "a", 2)).collect();
        for v in &mut vms {
            v.request.pools = vec!["local".into()];
        }
        assert!(plan(hosts.clone(), vms.clone(), &policy(Strategy::Spread), 10, 0.1).is_empty(), "nowhere to go");
        hosts[2].pools.push("local".into());
        vms[0].request.affinity = Some("web".into());
        let moves = plan(hosts.clone(), vms.clone(), &policy(Strategy::Spread), 10, 0.1);
        assert!(moves.iter().all(|m| m.to == "c" && m.vm != "v0"), "{moves:?}");
        // Anti-affinity: a group member already on c keeps the others off it.
        let mut hosts = vec![host("a"), host("c")];
        let mut vms: Vec<Placed> = (0..3).map(|i| placed(&mut hosts, &format!("d{i}"), "a", 2)).collect();
        vms.push(placed(&mut hosts, "d9", "c", 1));
        for v in &mut vms {
            v.request.anti_affinity = Some("db".into());
        }
        assert!(plan(hosts, vms, &policy(Strategy::Spread), 10, 0.1).is_empty());
    }

    #[test]
    fn pack_empties_the_least_used_hosts_whole() {
        let mut hosts = vec![host("a"), host("b"), host("c")];
        let mut vms = vec![placed(&mut hosts, "big", "a", 8)];
        vms.push(placed(&mut hosts, "m1", "b", 2));
        vms.push(placed(&mut hosts, "m2", "b", 2));
        vms.push(placed(&mut hosts, "s1", "c", 1));
        let moves = plan(hosts.clone(), vms.clone(), &policy(Strategy::Pack), 10, 0.0);
        assert!(moves.iter().all(|m| m.to == "a"), "{moves:?}");
        let emptied: std::collections::BTreeSet<&str> = moves.iter().map(|m| m.from.as_str()).collect();
        assert_eq!(emptied, ["b", "c"].into());
        // Not half a host: with room for two moves only c (one VM) is emptied.
        let moves = plan(hosts, vms, &policy(Strategy::Pack), 2, 0.0);
        assert_eq!(moves.iter().map(|m| m.vm.as_str()).collect::<Vec<_>>(), ["s1"]);
    }
}
