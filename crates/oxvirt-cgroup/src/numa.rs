//! The host's NUMA topology (from sysfs) and where a VM's vCPUs and memory go: on one node when
//! it fits (the node with most free memory after what is placed there already, as
//! `numactl --cpubind --membind` would), else spread over the fewest nodes as guest NUMA nodes.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub memory_total: u64,
    pub memory_free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub nodes: Vec<Node>,
}

/// What is placed on a node already (running VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    pub node: u32,
    pub vcpus: u32,
    pub memory: u64,
}

/// A guest NUMA node: vCPUs `first..first+count`, `memory` bytes, backed by host node `host_node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNodePlan {
    pub first_vcpu: u32,
    pub vcpus: u32,
    pub memory: u64,
    pub host_node: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Host nodes used (empty: no placement).
    pub nodes: Vec<u32>,
    pub cpus: Vec<u32>,
    pub guest_nodes: Vec<GuestNodePlan>,
    pub reason: String,
}

fn parse_cpulist(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            out.extend(a..=b.min(a + 4096));
        }
    }
    out
}

/// `Node 0 MemTotal:  16384 kB` → bytes.
fn node_meminfo(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.split_whitespace().nth(2) == Some(key))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Topology {
    /// Reads `<sys>/devices/system/node/node*/{cpulist,meminfo}`; nothing there means one node
    /// that is the whole host (`fallback_cpus`, `fallback_memory`).
    pub fn read(sys: &Path, fallback_cpus: u32, fallback_memory: (u64, u64)) -> Topology {
        let mut nodes = Vec::new();
        if let Ok(rd) = std::fs::read_dir(sys.join("devices/system/node")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix("node").and_then(|n| n.parse::<u32>().ok()) else { continue };
                let cpus = parse_cpulist(&std::fs::read_to_string(e.path().join("cpulist")).unwrap_or_default());
                let mi = std::fs::read_to_string(e.path().join("meminfo")).unwrap_or_default();
                nodes.push(Node {
                    id,
                    cpus,
                    memory_total: node_meminfo(&mi, "MemTotal:"),
                    memory_free: node_meminfo(&mi, "MemFree:"),
                });
            }
        }
        nodes.sort_by_key(|n| n.id);
        if nodes.is_empty() {
            nodes.push(Node {
                id: 0,
                cpus: (0..fallback_cpus).collect(),
                memory_total: fallback_memory.0,
                memory_free: fallback_memory.1,
            });
        }
        Topology { nodes }
    }

    pub fn host(fallback_cpus: u32, fallback_memory: (u64, u64)) -> Topology {
        Self::read(Path::new("/sys"), fallback_cpus, fallback_memory)
    }

    /// Where a VM with `vcpus` and `memory` goes, given what is placed already.
    pub fn place(&self, vcpus: u32, memory: u64, committed: &[Committed]) -> Plan {
        if self.nodes.len() < 2 {
            return Plan { reason: "the host has one NUMA node".into(), ..Plan::default() };
        }
        let used = |id: u32| {
            committed.iter().filter(|c| c.node == id).fold((0u32, 0u64), |(v, m), c| (v + c.vcpus, m + c.memory))
        };
        // Memory left on a node once what is placed there has all it may use.
        let room = |n: &Node| n.memory_free.saturating_sub(used(n.id).1);
        let mut fitting: Vec<&Node> =
            self.nodes.iter().filter(|n| n.cpus.len() as u32 >= vcpus && room(n) >= memory).collect();
        fitting.sort_by(|a, b| room(b).cmp(&room(a)).then(used(a.id).0.cmp(&used(b.id).0)).then(a.id.cmp(&b.id)));
        if let Some(n) = fitting.first() {
            return Plan {
                nodes: vec![n.id],
                cpus: n.cpus.clone(),
                guest_nodes: vec![],
                reason: format!(
                    "fits host node {} ({} CPUs, {} MiB free after {} MiB placed there)",
                    n.id,
                    n.cpus.len(),
                    n.memory_free >> 20,
                    used(n.id).1 >> 20
                ),
            };
        }
        // Too big for one node: the fewest nodes, most room first, as guest NUMA nodes.
        let mut by_room: Vec<&Node> = self.nodes.iter().collect();
        by_room.sort_by(|a, b| room(b).cmp(&room(a)).then(a.id.cmp(&b.id)));
        let mut chosen: Vec<&Node> = Vec::new();
        for n in by_room {
            chosen.push(n);
            let cpus: usize = chosen.iter().map(|n| n.cpus.len()).sum();
            let mem: u64 = chosen.iter().map(|n| room(n)).sum();
            if cpus as u32 >= vcpus && mem >= memory {
                break;
            }
        }
        chosen.sort_by_key(|n| n.id);
        let k = chosen.len() as u32;
        let huge = 2 << 20;
        let per_mem = (memory / u64::from(k)) / huge * huge;
        let mut guest_nodes = Vec::new();
        let mut first = 0;
        for (i, n) in chosen.iter().enumerate() {
            let i = i as u32;
            let count = vcpus / k + u32::from(i < vcpus % k);
            let mem = if i + 1 == k { memory - per_mem * u64::from(k - 1) } else { per_mem };
            guest_nodes.push(GuestNodePlan { first_vcpu: first, vcpus: count, memory: mem, host_node: n.id });
            first += count;
        }
        let ids: Vec<String> = chosen.iter().map(|n| n.id.to_string()).collect();
        Plan {
            nodes: chosen.iter().map(|n| n.id).collect(),
            cpus: chosen.iter().flat_map(|n| n.cpus.clone()).collect(),
            guest_nodes,
            reason: format!("too big for one host node: spans nodes {} as {k} guest NUMA nodes", ids.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A recorded sysfs tree: nodes with CPU lists and memory (total, free) in GiB.
    fn tree(nodes: &[(&str, u64, u64)]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root =
            std::env::temp_dir().join(format!("oxv-sys-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        for (i, (cpus, total, free)) in nodes.iter().enumerate() {
            let d = root.join(format!("devices/system/node/node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), format!("{cpus}\n")).unwrap();
            std::fs::write(
                d.join("meminfo"),
                format!(
                    "Node {i} MemTotal:       {} kB\nNode {i} MemFree:        {} kB\nNode {i} MemUsed:  1 kB\n",
                    total * 1024 * 1024,
                    free * 1024 * 1024
                ),
            )
            .unwrap();
        }
        // Not a node: ignored.
        std::fs::create_dir_all(root.join("devices/system/node/power")).unwrap();
        root
    }

    #[test]
    fn a_two_socket_host_is_read_from_sysfs() {
        let root = tree(&[("0-7,16-23", 64, 60), ("8-15,24-31", 64, 50)]);
        let t = Topology::read(&root, 1, (0, 0));
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[1].cpus.len(), 16);
        assert_eq!(t.nodes[1].cpus[8], 24);
        assert_eq!(t.nodes[0].memory_free, 60 * GIB);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_vm_that_fits_goes_to_the_node_with_most_room() {
        let root = tree(&[("0-7", 64, 60), ("8-15", 64, 50)]);
        let t = Topology::read(&root, 1, (0, 0));
        let p = t.place(4, 8 * GIB, &[]);
        assert_eq!(p.nodes, vec![0]);
        assert_eq!(p.cpus, (0..8).collect::<Vec<_>>());
        assert!(p.guest_nodes.is_empty());
        // Once 20 GiB are placed on node 0, node 1 has more room.
        let p = t.place(4, 8 * GIB, &[Committed { node: 0, vcpus: 4, memory: 20 * GIB }]);
        assert_eq!(p.nodes, vec![1], "{}", p.reason);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_vm_too_big_for_one_node_gets_guest_numa_nodes() {
        let root = tree(&[("0-3", 16, 14), ("4-7", 16, 15), ("8-11", 16, 2), ("12-15", 16, 13)]);
        let t = Topology::read(&root, 1, (0, 0));
        let p = t.place(6, 24 * GIB, &[]);
        assert_eq!(p.nodes, vec![0, 1], "{}", p.reason);
        assert_eq!(p.guest_nodes.len(), 2);
        assert_eq!(p.guest_nodes.iter().map(|g| g.vcpus).sum::<u32>(), 6);
        assert_eq!(p.guest_nodes.iter().map(|g| g.memory).sum::<u64>(), 24 * GIB);
        assert_eq!(p.guest_nodes[1].first_vcpu, 3);
        assert_eq!(p.guest_nodes[1].host_node, 1);
        // Too many vCPUs for two nodes: three.
        let p = t.place(10, 4 * GIB, &[]);
        assert_eq!(p.nodes.len(), 3, "{}", p.reason);
        assert_eq!(p.guest_nodes.iter().map(|g| g.vcpus).collect::<Vec<_>>(), vec![4, 3, 3]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn one_node_hosts_place_nothing() {
        let t = Topology::read(Path::new("/nonexistent"), 2, (GIB, GIB));
        assert_eq!(t.nodes.len(), 1);
        assert!(t.place(2, GIB / 2, &[]).nodes.is_empty());
    }
}
