//! `GET /metrics`: Prometheus metrics (OpenMetrics text) of the host, VMs, disks, pools, tasks
//! and the API itself. VM and disk figures come from the controller's short-lived cache.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use oxvirt_controller::Controller;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;
type FCounter = Counter<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The API's own figures, kept for the daemon's life.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics { requests: Family::default(), latency: Family::new_with_constructor(latency_histogram) }
    }
}

/// Counts every request by method, route (its template, not the concrete path) and status.
pub async fn track(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    // Labels stay bounded: a method of the caller's own invention is counted as `other`.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    m.requests
        .get_or_create(&vec![
            ("method".into(), method.clone()),
            ("route".into(), route.clone()),
            ("status".into(), status),
        ])
        .inc();
    m.latency
        .get_or_create(&vec![("method".into(), method), ("route".into(), route)])
        .observe(start.elapsed().as_secs_f64());
    resp
}

fn gauge(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
    let f = Family::<Labels, FGauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(v);
    }
    reg.register(name, help, f);
}

/// A gauge without labels.
fn single(reg: &mut Registry, name: &str, help: &str, value: f64) {
    let g = FGauge::default();
    g.set(value);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
    let f = Family::<Labels, FCounter>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const STATES: &[&str] = &["stopped", "starting", "running", "paused", "stopping", "crashed"];

/// The whole exposition, in OpenMetrics text.
pub async fn render(c: &Controller, api: &ApiMetrics) -> String {
    let s = c.monitoring().stats().await;
    let host = c.resources().host_info().ok();
    let mut reg = Registry::default();
    if let Some(h) = &host {
        single(&mut reg, "oxvirt_host_cpus", "Host CPUs", h.cpus as f64);
        single(&mut reg, "oxvirt_host_memory_bytes", "Host memory", h.memory_bytes as f64);
    }
    counter(
        &mut reg,
        "oxvirt_host_cpu_busy_seconds",
        "CPU time the host spent busy, all CPUs",
        [(vec![], s.host_cpu_busy_seconds)],
    );
    single(&mut reg, "oxvirt_host_memory_available_bytes", "Host memory available", s.host_memory_available as f64);
    single(&mut reg, "oxvirt_host_ksm_pages_sharing", "Pages KSM shares", s.ksm_pages_sharing as f64);
    single(&mut reg, "oxvirt_host_hugepages_total", "Huge pages reserved", s.hugepages_total as f64);
    single(&mut reg, "oxvirt_host_hugepages_free", "Huge pages free", s.hugepages_free as f64);

    let vms = &s.vms;
    gauge(
        &mut reg,
        "oxvirt_vm_state",
        "1 for the state the VM is in",
        vms.iter().flat_map(|v| {
            STATES
                .iter()
                .map(move |st| (l(&[("vm", &v.vm.name), ("state", st)]), (v.vm.state.as_str() == *st) as u8 as f64))
        }),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_up",
        "1 when the VM's QEMU runs",
        vms.iter().map(|v| (l(&[("vm", &v.vm.name)]), v.vm.pid.is_some() as u8 as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_vcpus",
        "vCPUs of the VM",
        vms.iter().map(|v| (l(&[("vm", &v.vm.name)]), v.vm.cpus as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_memory_bytes",
        "Memory configured",
        vms.iter().map(|v| (l(&[("vm", &v.vm.name)]), v.vm.memory_bytes as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_cpu_seconds",
        "CPU time the VM's QEMU used",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.cpu_seconds?))),
    );
    counter(
        &mut reg,
        "oxvirt_vm_cpu_ready_seconds",
        "Time the VM's vCPUs waited runnable but not running (CPU ready)",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.cpu_ready_seconds?))),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_ksm_merged_bytes",
        "Guest memory KSM merged with identical pages (kernel 6.1+)",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.ksm_merged_bytes? as f64))),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_balloon_bytes",
        "Memory the guest has now (balloon)",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.balloon_bytes? as f64))),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_guest_free_bytes",
        "Free memory inside the guest, as its balloon driver reports it",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.guest_free_bytes? as f64))),
    );
    gauge(
        &mut reg,
        "oxvirt_vm_rss_bytes",
        "Resident memory of the VM's QEMU",
        vms.iter().filter_map(|v| Some((l(&[("vm", &v.vm.name)]), v.rss_bytes? as f64))),
    );
    let disks: Vec<(&str, &oxvirt_controller::monitoring::stats::DiskStats)> =
        vms.iter().flat_map(|v| v.disks.iter().map(move |d| (v.vm.name.as_str(), d))).collect();
    let dl = |vm: &str, d: &oxvirt_controller::monitoring::stats::DiskStats| l(&[("vm", vm), ("disk", &d.id)]);
    counter(
        &mut reg,
        "oxvirt_vm_disk_read_bytes",
        "Bytes read",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.read_bytes as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_disk_write_bytes",
        "Bytes written",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.write_bytes as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_disk_read_ops",
        "Read operations",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.read_ops as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_disk_write_ops",
        "Write operations",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.write_ops as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_disk_read_time_seconds",
        "Time spent reading (divide by ops for latency)",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.read_time_ns as f64 / 1e9)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_disk_write_time_seconds",
        "Time spent writing",
        disks.iter().map(|(vm, d)| (dl(vm, d), d.write_time_ns as f64 / 1e9)),
    );

    // vlan networks' flow rules, as the switch counts them now (nothing when it does not run).
    let flows = c.networks().all_flow_rules().await;
    let fl = |f: &oxvirt_model::FlowRuleView| l(&[("network", &f.rule.network), ("rule", &f.rule.id)]);
    counter(
        &mut reg,
        "oxvirt_network_flow_packets",
        "Packets a vlan network's flow rule matched",
        flows.iter().map(|f| (fl(f), f.packets as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_network_flow_bytes",
        "Bytes a vlan network's flow rule matched",
        flows.iter().map(|f| (fl(f), f.bytes as f64)),
    );

    let nics: Vec<(&str, &oxvirt_controller::network::NicStats)> =
        vms.iter().flat_map(|v| v.nics.iter().map(move |n| (v.vm.name.as_str(), n))).collect();
    let nl = |vm: &str, n: &oxvirt_controller::network::NicStats| l(&[("vm", vm), ("nic", &n.nic)]);
    counter(
        &mut reg,
        "oxvirt_vm_nic_rx_bytes",
        "Bytes the guest received",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.rx_bytes as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_nic_tx_bytes",
        "Bytes the guest sent",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.tx_bytes as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_nic_rx_packets",
        "Packets the guest received",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.rx_packets as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_nic_tx_packets",
        "Packets the guest sent",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.tx_packets as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_nic_rx_drops",
        "Packets for the guest dropped",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.rx_dropped as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_vm_nic_tx_drops",
        "Packets from the guest dropped",
        nics.iter().map(|(vm, n)| (nl(vm, n), n.tx_dropped as f64)),
    );

    let pl = |p: &oxvirt_model::Pool| l(&[("pool", &p.spec.name)]);
    gauge(
        &mut reg,
        "oxvirt_pool_size_bytes",
        "Size of the pool's file system",
        s.pools.iter().map(|(p, u)| (pl(p), u.size as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_pool_free_bytes",
        "Free on the pool's file system",
        s.pools.iter().map(|(p, u)| (pl(p), u.free as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_pool_provisioned_bytes",
        "Sum of the volumes' virtual sizes",
        s.pools.iter().map(|(p, u)| (pl(p), u.provisioned as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_pool_allocated_bytes",
        "Blocks the volumes take",
        s.pools.iter().map(|(p, u)| (pl(p), u.allocated as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_tasks",
        "Tasks by state",
        [(l(&[("state", "running")]), s.tasks_running as f64), (l(&[("state", "failed")]), s.tasks_failed as f64)],
    );

    let ha = c.ha().figures();
    gauge(
        &mut reg,
        "oxvirt_ha_resources",
        "HA resources by the state HA keeps them at (the cluster's)",
        ha.resources.iter().map(|(state, n)| (l(&[("state", state)]), *n as f64)),
    );
    single(
        &mut reg,
        "oxvirt_ha_resources_with_problems",
        "HA resources left off or not recoverable",
        ha.with_problems as f64,
    );
    single(
        &mut reg,
        "oxvirt_ha_fenced",
        "1 while this host has fenced its HA VMs (it cannot renew its cluster lease)",
        if ha.fenced { 1.0 } else { 0.0 },
    );
    single(
        &mut reg,
        "oxvirt_ha_hosts_lost",
        "Hosts whose cluster lease ended, as the leader sees them (0 on other hosts)",
        ha.hosts_lost as f64,
    );
    counter(
        &mut reg,
        "oxvirt_ha_recoveries",
        "HA VMs this host recovered from lost hosts, as leader",
        [(vec![], ha.recoveries as f64)],
    );

    let bj = c.backups().job_figures();
    let bl = |n: &str| l(&[("job", n)]);
    gauge(
        &mut reg,
        "oxvirt_backup_job_last_run_ok",
        "1 when the backup job's last run backed up every VM (or it never ran), else 0",
        bj.iter().map(|(n, ok, ..)| (bl(n), if *ok { 1.0 } else { 0.0 })),
    );
    gauge(
        &mut reg,
        "oxvirt_backup_job_last_success_timestamp_seconds",
        "When the backup job last backed up every VM (0: never)",
        bj.iter().map(|(n, _, at, ..)| (bl(n), *at)),
    );
    gauge(
        &mut reg,
        "oxvirt_backup_job_next_run_timestamp_seconds",
        "When the backup job runs next",
        bj.iter().map(|(n, _, _, next, _)| (bl(n), *next)),
    );
    gauge(
        &mut reg,
        "oxvirt_backup_job_interval_seconds",
        "The time between two runs of the backup job's schedule",
        bj.iter().map(|(n, .., every)| (bl(n), *every)),
    );

    let templates: Vec<_> =
        c.templates().list().unwrap_or_default().into_iter().map(|t| c.templates().view(t)).collect();
    let tl = |t: &oxvirt_model::TemplateView| l(&[("template", &t.template.name)]);
    gauge(
        &mut reg,
        "oxvirt_template_pool_size",
        "VMs the template's warm pool is to keep ready",
        templates.iter().map(|t| (tl(t), t.template.pool_size as f64)),
    );
    gauge(
        &mut reg,
        "oxvirt_template_pool_ready",
        "VMs restored and paused in the template's warm pool on this host",
        templates.iter().map(|t| (tl(t), t.pool_ready as f64)),
    );

    let jobs = c.job_figures();
    let jl = |j: &oxvirt_controller::Job| l(&[("job", j.name())]);
    counter(
        &mut reg,
        "oxvirt_job_runs",
        "Runs of the daemon's background jobs",
        jobs.iter().map(|(j, f)| (jl(j), f.runs as f64)),
    );
    counter(
        &mut reg,
        "oxvirt_job_seconds",
        "Time the daemon's background jobs ran",
        jobs.iter().map(|(j, f)| (jl(j), f.seconds)),
    );
    gauge(
        &mut reg,
        "oxvirt_job_last_duration_seconds",
        "How long a background job's last run took",
        jobs.iter().map(|(j, f)| (jl(j), f.last_seconds)),
    );
    gauge(
        &mut reg,
        "oxvirt_job_last_run_timestamp_seconds",
        "When a background job's last run ended (0: never ran)",
        jobs.iter().map(|(j, f)| (jl(j), f.last_run_ms as f64 / 1000.0)),
    );

    reg.register("oxvirt_api_requests", "API requests by method, route and status", api.requests.clone());
    reg.register("oxvirt_api_request_duration_seconds", "API request latency", api.latency.clone());
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::error!("metrics encoding: {e}");
    }
    out
}

pub async fn serve(
    State(c): State<Controller>,
    axum::Extension(api): axum::Extension<Arc<ApiMetrics>>,
) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&c, &api).await)
}
