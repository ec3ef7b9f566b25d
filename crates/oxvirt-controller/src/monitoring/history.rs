//! A short history of the main figures of the host and each VM (the last hour at 5 s steps), for
//! `oxvirt vm top`, `oxvirt host top` and the web console.

use crate::{lock, now_millis};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Samples kept per series.
pub const KEEP: usize = 720;
pub const STEP: Duration = Duration::from_secs(5);

use oxvirt_model::{HostSample, VmSample};

#[derive(Default)]
pub(crate) struct History {
    vms: HashMap<String, VecDeque<VmSample>>,
    host: VecDeque<HostSample>,
    /// Counters at the last sample: VM → (when, cpu s, read B, written B); host → (busy, total) jiffies.
    last_vm: HashMap<String, (Instant, f64, u64, u64, f64)>,
    last_host: Option<(u64, u64)>,
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(v);
}

/// (busy, total) jiffies of the host from /proc/stat.
pub(crate) fn host_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

impl crate::Monitoring {
    /// One sample (the `history` job, every [`STEP`]).
    pub(crate) async fn sample(&self) {
        let stats = self.stats_max_age(STEP).await;
        let now = Instant::now();
        let time = now_millis();
        let mut h = lock(&self.state().history);
        let names: std::collections::HashSet<String> = stats.vms.iter().map(|v| v.vm.name.clone()).collect();
        h.vms.retain(|k, _| names.contains(k));
        h.last_vm.retain(|k, _| names.contains(k));
        // Only VMs with a QEMU are sampled: thousands of VMs that are off cost no memory.
        for v in stats.vms.iter().filter(|v| v.vm.pid.is_some()) {
            let name = v.vm.name.clone();
            let cpu_s = v.cpu_seconds.unwrap_or(0.0);
            let rd: u64 = v.disks.iter().map(|d| d.read_bytes).sum();
            let wr: u64 = v.disks.iter().map(|d| d.write_bytes).sum();
            let ready_s = v.cpu_ready_seconds.unwrap_or(0.0);
            let prev = h.last_vm.insert(name.clone(), (now, cpu_s, rd, wr, ready_s));
            let (cpu, rbps, wbps, ready) = match prev {
                Some((t0, c0, r0, w0, q0)) => {
                    let dt = now.duration_since(t0).as_secs_f64().max(0.001);
                    (
                        (cpu_s - c0).max(0.0) / dt,
                        rd.saturating_sub(r0) as f64 / dt,
                        wr.saturating_sub(w0) as f64 / dt,
                        (ready_s - q0).max(0.0) / dt,
                    )
                }
                _ => (0.0, 0.0, 0.0, 0.0),
            };
            let sample = VmSample {
                time,
                state: v.vm.state,
                cpu,
                rss_bytes: v.rss_bytes.unwrap_or(0),
                disk_read_bps: rbps,
                disk_write_bps: wbps,
                cpu_ready: ready,
            };
            push(h.vms.entry(name).or_default(), sample);
        }
        let jiffies = host_jiffies();
        let cpu = match (h.last_host, jiffies) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        h.last_host = jiffies;
        let sample = HostSample {
            time,
            cpu,
            memory_used_bytes: stats.host_memory_total.saturating_sub(stats.host_memory_available),
            memory_total_bytes: stats.host_memory_total,
            vms_running: stats.vms.iter().filter(|v| v.vm.pid.is_some()).count(),
        };
        push(&mut h.host, sample);
    }

    /// A VM's samples, oldest first (empty for a VM not yet sampled).
    pub fn vm_history(&self, name: &str) -> Result<Vec<VmSample>, crate::ControlError> {
        self.ctl.vms().get_vm(name)?;
        Ok(lock(&self.state().history).vms.get(name).map(|q| q.iter().cloned().collect()).unwrap_or_default())
    }

    /// The latest sample of every VM.
    pub fn vm_latest(&self) -> Vec<(String, VmSample)> {
        let h = lock(&self.state().history);
        let mut v: Vec<(String, VmSample)> =
            h.vms.iter().filter_map(|(k, q)| Some((k.clone(), q.back()?.clone()))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn host_history(&self) -> Vec<HostSample> {
        lock(&self.state().history).host.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last() {
        let mut q = VecDeque::new();
        for i in 0..KEEP + 10 {
            push(&mut q, i);
        }
        assert_eq!(q.len(), KEEP);
        assert_eq!(q.front(), Some(&10));
        let (busy, total) = host_jiffies().unwrap();
        assert!(busy <= total && total > 0);
    }
}
