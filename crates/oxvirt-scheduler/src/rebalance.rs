//! Rebalancing (as vSphere DRS does it): from where VMs are now, a short list of migrations that
//! even out the hosts' load (`spread`) or empty the least used hosts onto the others (`pack`),
//! keeping every placement rule (room under over-commit, pools, networks, anti-affinity; a VM of
//! an affinity group stays with its group, so it is not moved alone).
//!
//! A host's load is the larger of its memory and vCPU shares under the over-commit ratios.

use crate::{Host, Policy, Request, Strategy};

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

struct State<'a> {
    hosts: Vec<Host>,
    vms: Vec<Placed>,
    policy: &'a Policy,
}

impl State<'_> {
    fn idx(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    fn caps(&self, h: &Host) -> (f64, f64) {
        (
            (h.memory as f64 * self.policy.memory_overcommit).max(1.0),
            (f64::from(h.cpus) * self.policy.cpu_overcommit).max(1.0),
        )
    }

    fn load(&self, i: usize) -> f64 {
        let h = &self.hosts[i];
        let (mem, cpu) = self.caps(h);
        (h.used_memory as f64 / mem).max(f64::from(h.used_vcpus) / cpu)
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
            && v.anti_affinity.as_ref().is_none_or(|g| {
                !self.vms.iter().any(|o| o.host == h.name && o.request.anti_affinity.as_ref() == Some(g))
            })
    }

    fn movable(&self, from: usize) -> Vec<usize> {
        (0..self.vms.len())
            .filter(|&k| self.vms[k].host == self.hosts[from].name && self.vms[k].request.affinity.is_none())
            .collect()
    }

    fn apply(&mut self, k: usize, to: usize) -> Move {
        let from = self.idx(&self.vms[k].host).unwrap_or(to);
        let r = self.vms[k].request.clone();
        self.hosts[from].used_memory = self.hosts[from].used_memory.saturating_sub(r.memory);
        self.hosts[from].used_vcpus = self.hosts[from].used_vcpus.saturating_sub(r.vcpus);
        self.hosts[to].used_memory += r.memory;
        self.hosts[to].used_vcpus += r.vcpus;
        let m = Move {
            vm: r.name,
            from: self.hosts[from].name.clone(),
            to: self.hosts[to].name.clone(),
            reason: String::new(),
        };
        self.vms[k].host = self.hosts[to].name.clone();
        m
    }

    fn spread(&self) -> f64 {
        let loads: Vec<f64> = self.active().into_iter().map(|i| self.load(i)).collect();
        let max = loads.iter().copied().fold(0.0, f64::max);
        let min = loads.iter().copied().fold(f64::INFINITY, f64::min);
        if loads.is_empty() {
            0.0
        } else {
            max - min
        }
    }
}

/// Plans at most `max_moves` migrations. `spread`: while the most and least loaded hosts differ
/// by more than `threshold` (a share, 0..1), the move of one VM off the most loaded host that
/// narrows that gap most. `pack`: the least used hosts are emptied onto the fullest others that
/// take their VMs, a whole host at a time (or not at all).
pub fn plan(hosts: Vec<Host>, vms: Vec<Placed>, policy: &Policy, max_moves: usize, threshold: f64) -> Vec<Move> {
    let mut st = State { hosts, vms, policy };
    match policy.strategy {
        Strategy::Spread => plan_spread(&mut st, max_moves, threshold),
        Strategy::Pack => plan_pack(&mut st, max_moves),
    }
}

fn plan_spread(st: &mut State, max_moves: usize, threshold: f64) -> Vec<Move> {
    let mut out = Vec::new();
    while out.len() < max_moves {
        let active = st.active();
        let Some(&busiest) = active.iter().max_by(|&&a, &&b| st.load(a).total_cmp(&st.load(b))) else { break };
        let before = st.spread();
        if before <= threshold {
            break;
        }
        // The (VM, target) that leaves the smallest gap.
        let mut best: Option<(f64, usize, usize)> = None;
        for k in st.movable(busiest) {
            for &to in active.iter().filter(|&&t| t != busiest) {
                if !st.fits(&st.vms[k].request, to) {
                    continue;
                }
                let from_load = st.load(busiest);
                let undo = (st.hosts[busiest].clone(), st.hosts[to].clone(), st.vms[k].host.clone());
                st.apply(k, to);
                let after = st.spread();
                // A move that only swaps which host is busiest is no gain.
                let gain = before - after;
                let ok = st.load(to) < from_load;
                (st.hosts[busiest], st.hosts[to], st.vms[k].host) = undo;
                if ok && gain > 1e-6 && best.is_none_or(|(b, _, _)| after < b) {
                    best = Some((after, k, to));
                }
            }
        }
        let Some((after, k, to)) = best else { break };
        let mut m = st.apply(k, to);
        m.reason = format!("evens out load: gap between hosts {:.0}% -> {:.0}%", before * 100.0, after * 100.0);
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
            let vms = st.vms.iter().filter(|v| v.host == st.hosts[from].name).count();
            let movable = st.movable(from);
            if movable.len() != vms || out.len() + vms > max_moves {
                continue;
            }
            let saved = (st.hosts.clone(), st.vms.clone());
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
            (st.hosts, st.vms) = saved;
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
        assert!(moves[0].reason.contains("gap"));
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
