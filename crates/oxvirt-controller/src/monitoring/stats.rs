//! Figures of the host and its VMs for monitoring, gathered at most every few seconds (a scrape
//! must not set off a storm of QMP calls).

use crate::host::{meminfo, meminfo_field, read_u64};
use crate::lock;
use oxvirt_model::{Pool, PoolUsage, Task, TaskState};
use std::time::{Duration, Instant};

/// How old cached figures may be.
pub const MAX_AGE: Duration = Duration::from_secs(5);

pub use oxvirt_hypervisor::ops::DiskStats;

/// What monitoring needs of a VM's record (kept small: the cache holds one per VM).
#[derive(Debug, Clone)]
pub struct VmBrief {
    pub name: String,
    pub id: String,
    pub state: oxvirt_model::VmState,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct VmStats {
    pub vm: VmBrief,
    /// CPU time QEMU used (all its threads), seconds.
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// Time the vCPU threads waited runnable but not running (CPU ready), seconds.
    pub cpu_ready_seconds: Option<f64>,
    /// Memory the guest has now, as the balloon reports it.
    pub balloon_bytes: Option<u64>,
    /// Free memory inside the guest, where its balloon driver reports it.
    pub guest_free_bytes: Option<u64>,
    /// Guest memory KSM merged with identical pages elsewhere.
    pub ksm_merged_bytes: Option<u64>,
    pub disks: Vec<DiskStats>,
    /// Counters of NICs with a host device (bridged), as the guest sees them.
    pub nics: Vec<crate::network::NicStats>,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub vms: Vec<VmStats>,
    pub pools: Vec<(Pool, PoolUsage)>,
    pub tasks_running: usize,
    pub tasks_failed: usize,
    /// CPU time the host spent busy (all CPUs), seconds.
    pub host_cpu_busy_seconds: f64,
    pub host_memory_total: u64,
    pub host_memory_available: u64,
    pub ksm_pages_sharing: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (cpu seconds, rss bytes) of a process, from /proc.
fn proc_figures(pid: u32) -> (Option<f64>, Option<u64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let cpu = stat.as_deref().and_then(|s| {
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3; utime and stime are 14 and 15.
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / clk_tck())
    });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        l.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    });
    (cpu, rss)
}

/// Run-queue wait of one thread (second field of /proc/PID/task/TID/schedstat), in ns.
fn thread_wait_ns(pid: u32, tid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// vCPU thread ids from QMP `query-cpus-fast`.
impl super::Monitoring {
    /// The figures, from a cache no older than [`MAX_AGE`].
    pub async fn stats(&self) -> Stats {
        self.stats_max_age(MAX_AGE).await
    }

    /// The figures, from a cache no older than `max_age`.
    pub async fn stats_max_age(&self, max_age: Duration) -> Stats {
        if let Some((at, s)) = lock(&self.state().stats_cache).as_ref() {
            if at.elapsed() < max_age {
                return s.clone();
            }
        }
        let s = self.gather_stats().await;
        *lock(&self.state().stats_cache) = Some((Instant::now(), s.clone()));
        s
    }

    async fn gather_stats(&self) -> Stats {
        let mut out = Stats {
            host_cpu_busy_seconds: crate::monitoring::history::host_jiffies()
                .map(|(busy, _)| busy as f64 / clk_tck())
                .unwrap_or(0.0),
            host_memory_total: meminfo("MemTotal:").unwrap_or(0),
            host_memory_available: meminfo("MemAvailable:").unwrap_or(0),
            ksm_pages_sharing: read_u64("/sys/kernel/mm/ksm/pages_sharing"),
            hugepages_total: meminfo_field("HugePages_Total:").unwrap_or(0),
            hugepages_free: meminfo_field("HugePages_Free:").unwrap_or(0),
            ..Default::default()
        };
        for vm in self.ctl.vms().list_vms().unwrap_or_default() {
            let (mut cpu, mut rss, mut disks, mut ready, mut balloon, mut guest_free) =
                (None, None, Vec::new(), None, None, None);
            if let Some(pid) = vm.status.pid {
                (cpu, rss) = proc_figures(pid);
                let instance = lock(&self.ctl.inner.slot(&vm.spec.name).instance).clone();
                if let Some(i) = instance {
                    if let Ok(d) = i.disks().disk_stats().await {
                        disks = d;
                    }
                    if let Ok(threads) = i.vcpu_threads().await {
                        let waits: Vec<u64> =
                            threads.into_iter().filter_map(|t| thread_wait_ns(pid, u64::from(t))).collect();
                        if !waits.is_empty() {
                            ready = Some(waits.iter().sum::<u64>() as f64 / 1e9);
                        }
                    }
                    if vm.spec.balloon {
                        balloon = i.memory().balloon_actual().await.ok();
                        guest_free = i.memory().guest_memory().await.ok().and_then(|g| g.free);
                    }
                }
            }
            let nics = if vm.status.pid.is_some() { crate::Networks::nic_stats(&vm.id, &vm.spec) } else { Vec::new() };
            let ksm = vm.status.pid.and_then(crate::resources::ksm_merging_bytes);
            let vm = VmBrief {
                name: vm.spec.name,
                id: vm.id,
                state: vm.status.state,
                cpus: vm.spec.cpus,
                memory_bytes: vm.spec.memory.0,
                pid: vm.status.pid,
            };
            out.vms.push(VmStats {
                nics,
                vm,
                cpu_seconds: cpu,
                rss_bytes: rss,
                cpu_ready_seconds: ready,
                balloon_bytes: balloon,
                guest_free_bytes: guest_free,
                ksm_merged_bytes: ksm,
                disks,
            });
        }
        for pv in self.ctl.storage().list_pools().unwrap_or_default() {
            out.pools.push((pv.pool, pv.usage));
        }
        let tasks: Vec<Task> = self.ctl.tasks().list().unwrap_or_default();
        out.tasks_running = tasks.iter().filter(|t| t.state == TaskState::Running).count();
        out.tasks_failed = tasks.iter().filter(|t| t.state == TaskState::Failed).count();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_wait_of_this_thread() {
        let me = std::process::id();
        assert!(thread_wait_ns(me, me as u64).is_some());
    }

    #[test]
    fn own_process_figures() {
        let (cpu, rss) = proc_figures(std::process::id());
        assert!(cpu.is_some() && rss.unwrap() > 0);
        assert_eq!(proc_figures(u32::MAX - 3), (None, None));
    }
}
