//! High availability across three hosts on etcd (three members), with a real guest on a disk all hosts reach:
//! a host that crashes (oxvirtd and its QEMUs killed) has its HA VM run again on another, the
//! counter on the disk going on from where it was; a host whose oxvirtd freezes (SIGSTOP) is
//! fenced by its watchdog before the VM is started elsewhere, and does not start its copy again
//! when it thaws.

use oxvirt_e2e::*;
use oxvirt_watchdog::kernel::StandIn as WatchdogStandIn;
use serde_json::json;
use std::time::{Duration, Instant};

/// A host's config on etcd at `endpoints` (comma-separated quoted URLs are made of them).
fn config(endpoints: &str, host: &str) -> String {
    let eps: Vec<String> = endpoints.split(',').map(|e| format!("\"{e}\"")).collect();
    format!(
        "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"ha/\"\nhost_name = \"{host}\"\nmember_ttl_secs = 2\n",
        eps.join(", ")
    )
}

/// The same with a kernel watchdog device (a stand-in) kept by the host's watchdog.
fn config_with_device(endpoints: &str, host: &str, device: &WatchdogStandIn) -> String {
    format!("{}[ha]\nkernel_watchdog = \"{}\"\n", config(endpoints, host), device.path.display())
}

/// Waits until `device` has an open session with pets in it (armed, not disarmed).
async fn armed(device: &WatchdogStandIn, what: &str) {
    let begun = Instant::now();
    loop {
        let s = device.sessions();
        if s.last().is_some_and(|l| l.len() >= 2 && !l.ends_with(b"V")) {
            return;
        }
        assert!(begun.elapsed() < Duration::from_secs(30), "{what}: not armed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A VM `name` for `host` whose disk is a file in `dir`, which every host reaches.
fn on_a_shared_disk(dir: &tempfile::TempDir, name: &str, host: &str) -> serde_json::Value {
    let disk = dir.path().join("shared.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut spec = kernel_spec(name, "");
    spec["host"] = json!(host);
    spec["disks"] = json!([{ "path": disk, "format": "raw" }]);
    spec
}

/// The counter the guest writes to its disk's first sector.
async fn disk_counter(d: &Daemon, vm: &str) -> u64 {
    guest_number(&d.client, vm, "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1 | tr -dc 0-9").await
}

/// Waits (through `watcher`) until VM `vm` runs on a host other than `not_on`, watching QEMU
/// `qemu` of `not_on` meanwhile: (the other host, when the QEMU was seen gone, when the VM was
/// seen running). Panics with `explain()` after 90 s.
async fn fenced_then_elsewhere(
    watcher: &Daemon,
    vm: &str,
    not_on: &str,
    qemu: u32,
    explain: impl Fn() -> String,
) -> (String, Option<Instant>, Instant) {
    let (mut qemu_gone, start) = (None, Instant::now());
    loop {
        if qemu_gone.is_none() && !alive(qemu) {
            qemu_gone = Some(Instant::now());
        }
        if let Ok(v) = watcher.client.get_vm(vm).await {
            if v.status.state.as_str() == "running" && v.host.as_deref() != Some(not_on) {
                return (v.host.unwrap_or_default(), qemu_gone, Instant::now());
            }
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{vm} not recovered from {not_on}: {}", explain());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host (of a, b, c) that is neither b (killed first) nor `frozen`.
fn third_of(frozen: usize) -> usize {
    if frozen == 0 {
        2
    } else {
        0
    }
}

fn alive(pid: u32) -> bool {
    process_alive(pid) && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_ha_vm_runs_again_elsewhere_and_never_twice() {
    // A three-member etcd, as a cluster runs it.
    let etcd = EtcdCluster::start(3);
    let ep = etcd.endpoints().join(",");
    // Each host's watchdog keeps a kernel watchdog device (stand-ins: FIFOs read by the test).
    let devices_dir = tempfile::tempdir_in("/tmp").unwrap();
    let devices: Vec<WatchdogStandIn> =
        ["a", "b", "c"].iter().map(|h| WatchdogStandIn::new(&devices_dir.path().join(h)).unwrap()).collect();
    let mut hosts: Vec<Daemon> = ["host-a", "host-b", "host-c"]
        .iter()
        .zip(&devices)
        .map(|(h, dev)| Daemon::start_with_config(&config_with_device(&ep, h, dev)))
        .collect();
    let by_name = |hosts: &[Daemon], h: &str| {
        ["host-a", "host-b", "host-c"].iter().position(|n| *n == h).map(|i| i.min(hosts.len() - 1)).unwrap()
    };
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let spec = on_a_shared_disk(&dir, "guarded", "host-b");
    let writers = DiskWriters::watch(&dir.path().join("shared.raw"));
    let b = &hosts[1];
    let qemu_b = start_counting_guest(&b.client, &spec).await;
    assert!(devices.iter().all(|d| d.sessions().is_empty()), "armed with nothing guarded");
    let (code, out, err) = b.cli(&["ha", "add", "guarded"]);
    assert_eq!(code, 0, "{out}{err}");
    armed(&devices[1], "host-b guards an HA QEMU").await;
    // host-b holds the VM's run lease in etcd.
    let r = b.client.ha().get_resource("guarded").await.unwrap();
    assert_eq!(r.status.run_lease.as_deref(), Some("host-b"), "{:?}", r.status);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = disk_counter(b, "guarded").await;
    assert!(before > 0);

    // host-b crashes: its oxvirtd and its QEMU are killed at once.
    let lost_at = Instant::now();
    hosts[1].kill9();
    unsafe { libc::kill(qemu_b as i32, libc::SIGKILL) };
    let a = &hosts[0];
    let (now_on, _, seen) = fenced_then_elsewhere(a, "guarded", "host-b", qemu_b, || a.log()).await;
    let d = &hosts[by_name(&hosts, &now_on)];
    wait_console(&d.client, "guarded", READY, 1, BOOT_TIMEOUT).await;
    eprintln!(
        "host-b lost -> running on {now_on} after {:?}, guest ready after {:?}",
        seen - lost_at,
        lost_at.elapsed()
    );
    // The disk kept what the guest wrote on host-b: the counter goes on from there.
    let after = disk_counter(d, "guarded").await;
    assert!(after >= before, "the disk went back: {before} -> {after}");
    let r = a.client.ha().get_resource("guarded").await.unwrap();
    assert_eq!(
        r.status.run_lease.as_deref(),
        Some(now_on.as_str()),
        "the new host holds the run lease: {:?}",
        r.status
    );
    let rec = r.status.last_recovery.expect("the recovery recorded");
    assert_eq!((rec.from.as_str(), rec.to.as_str()), ("host-b", now_on.as_str()));
    assert!(rec.reason.contains("host host-b lost"), "{}", rec.reason);
    // The leader counted it on /metrics (the leader is one of the two left).
    let mut recovered = 0.0;
    for h in [&hosts[0], &hosts[2]] {
        let (_, body) = h.client.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(text.contains("oxvirt_ha_resources{state=\"started\"} 1"), "{text}");
        recovered += text
            .lines()
            .find(|l| l.starts_with("oxvirt_ha_recoveries_total"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert_eq!(recovered, 1.0);
    let (_, show, _) = d.cli(&["vm", "show", "guarded"]);
    assert!(show.contains("last recovery: host-b -> "), "{show}");

    // Its oxvirtd freezes: the watchdog kills its QEMU (the lease cannot be renewed), then the
    // leader starts the VM on the third host — never both at once.
    let frozen = by_name(&hosts, &now_on);
    let qemu = d.client.get_vm("guarded").await.unwrap().status.pid.unwrap();
    let daemon_pid = hosts[frozen].child.as_ref().unwrap().id();
    // Back within its lease (frozen for 0.4 s): nothing is fenced, nothing moves.
    unsafe { libc::kill(daemon_pid as i32, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(400)).await;
    unsafe { libc::kill(daemon_pid as i32, libc::SIGCONT) };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(alive(qemu), "a short freeze fenced the guest");
    let v = hosts[third_of(frozen)].client.get_vm("guarded").await.unwrap();
    assert_eq!((v.host.as_deref(), v.status.pid), (Some(now_on.as_str()), Some(qemu)), "a short freeze moved it");

    let frozen_at = Instant::now();
    unsafe { libc::kill(daemon_pid as i32, libc::SIGSTOP) };
    let third = third_of(frozen);
    let (moved_to, qemu_gone, started) =
        fenced_then_elsewhere(&hosts[third], "guarded", &now_on, qemu, || hosts[third].log()).await;
    let gone = qemu_gone.expect("the frozen host's QEMU was fenced before the VM ran elsewhere");
    assert!(gone < started, "fenced after the start elsewhere");
    eprintln!(
        "{now_on} frozen -> its QEMU fenced after {:?}, running on {moved_to} after {:?}",
        gone - frozen_at,
        started - frozen_at
    );
    let wlog = std::fs::read_to_string(hosts[frozen].path().join("watchdog.log")).unwrap_or_default();
    assert!(wlog.contains(&format!("QEMU {qemu} killed")), "the watchdog fenced it: {wlog}");
    // Its QEMU dead, the frozen host's device was disarmed (closed with the magic 'V'): no
    // reset; the new host's is armed.
    let s = devices[frozen].sessions();
    assert!(s.last().is_some_and(|l| l.ends_with(b"V") && l.len() > 2), "{s:?}\n{wlog}");
    armed(&devices[third], "the host the VM moved to").await;
    // Thawed, it finds the VM elsewhere and starts nothing of it.
    unsafe { libc::kill(daemon_pid as i32, libc::SIGCONT) };
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v = hosts[third].client.get_vm("guarded").await.unwrap();
    assert_eq!((v.host.as_deref(), v.status.state.as_str()), (Some(moved_to.as_str()), "running"));
    let vm_id = v.id.clone();
    let stale = std::fs::read_to_string(hosts[frozen].path().join("run").join(&vm_id[..13]).join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| alive(*p) && *p != v.status.pid.unwrap_or(0));
    assert_eq!(stale, None, "the thawed host started its copy again");
    // The disk's writers, as the host saw them: host-b's QEMU, the first recovery's, the
    // third host's, one after another.
    let writers = writers.stop();
    assert_eq!(writers.len(), 3, "{writers:?}");
    assert_one_writer_at_a_time(&writers);
}

/// A host's link to etcd is cut while it and its guest live on: the host kills the HA QEMU
/// (oxvirtd or its watchdog, at the same deadline: its lease cannot be renewed) before the VM
/// runs on another host; mended, the host
/// rejoins and starts nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_etcd_fences_itself_before_its_vm_runs_elsewhere() {
    let etcd = EtcdCluster::start(1);
    let ep = etcd.endpoints()[0].clone();
    let link = oxvirt_e2e::proxy::CuttableLink::to(ep.trim_start_matches("http://"));
    let a = Daemon::start_with_config(&config(&ep, "host-a"));
    let b = Daemon::start_with_config(&config(&link.url, "host-b"));
    let c = Daemon::start_with_config(&config(&ep, "host-c"));
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let spec = on_a_shared_disk(&dir, "isolated", "host-b");
    let writers = DiskWriters::watch(&dir.path().join("shared.raw"));
    let qemu = start_counting_guest(&b.client, &spec).await;
    let (code, out, err) = b.cli(&["ha", "add", "isolated"]);
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cut_at = Instant::now();
    link.cut();
    let explain = || {
        let tail = |d: &Daemon| {
            d.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        format!(
            "host-b's QEMU {qemu} alive: {}\n== a\n{}\n== c\n{}\n== b (HA)\n{}\n== b watchdog\n{}",
            alive(qemu),
            tail(&a),
            tail(&c),
            b.log().lines().filter(|l| l.contains("HA") || l.contains("ha::")).collect::<Vec<_>>().join("\n"),
            std::fs::read_to_string(b.path().join("watchdog.log")).unwrap_or_default()
        )
    };
    let (moved_to, qemu_gone, started) = fenced_then_elsewhere(&a, "isolated", "host-b", qemu, explain).await;
    let gone = qemu_gone.expect("host-b's QEMU was fenced before the VM ran elsewhere");
    assert!(gone < started, "fenced after the start elsewhere");
    eprintln!(
        "host-b cut -> its QEMU fenced after {:?}, running on {moved_to} after {:?}",
        gone - cut_at,
        started - cut_at
    );
    // oxvirtd and its watchdog both kill at the same deadline; whichever came first did.
    let wlog = std::fs::read_to_string(b.path().join("watchdog.log")).unwrap_or_default();
    assert!(
        b.log().contains("HA fenced") || wlog.contains(&format!("QEMU {qemu} killed")),
        "neither oxvirtd nor its watchdog says it fenced:\n{}\n{wlog}",
        b.log()
    );
    let disk_now = c.client.get_vm("isolated").await.unwrap();
    assert_eq!(disk_now.host.as_deref(), Some(moved_to.as_str()));

    // Mended: host-b is back in the cluster and runs nothing of the VM.
    link.mend();
    let start = Instant::now();
    loop {
        let (_, out, _) = a.cli(&["--output", "json", "cluster", "hosts"]);
        let hosts: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let online = hosts.as_array().into_iter().flatten().any(|h| h["name"] == "host-b" && h["online"] == true);
        if online {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "host-b did not rejoin: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(b.qemu_pids().is_empty(), "host-b runs a copy again: {:?}", b.qemu_pids());
    let v = a.client.get_vm("isolated").await.unwrap();
    assert_eq!((v.host.as_deref(), v.status.state.as_str()), (Some(moved_to.as_str()), "running"));

    // Fenced by hand (its storage is failing, say): the host kills the QEMU, then the VM runs
    // elsewhere; the host runs no HA VM until unfenced.
    let qemu = v.status.pid.unwrap();
    let (code, out, err) = a.cli(&["cluster", "fence", &moved_to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("host {moved_to} is fenced")), "{out}");
    let (refuge, qemu_gone, started) = fenced_then_elsewhere(&a, "isolated", &moved_to, qemu, || a.log()).await;
    assert!(qemu_gone.is_some_and(|g| g < started), "the fenced host's QEMU outlived the start on {refuge}");
    let (_, out, _) = a.cli(&["cluster", "hosts"]);
    assert!(out.lines().any(|l| l.starts_with(moved_to.as_str()) && l.contains("fenced")), "{out}");
    let r = a.client.ha().get_resource("isolated").await.unwrap();
    assert!(r.status.last_recovery.is_some_and(|rec| rec.reason.contains("fenced by an operator")));
    let (code, out, err) = a.cli(&["cluster", "unfence", &moved_to]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = a.cli(&["cluster", "hosts"]);
    assert!(out.lines().any(|l| l.starts_with(moved_to.as_str()) && l.contains("online")), "{out}");
    // The disk's writers, as the host saw them: host-b's QEMU, the one after the cut, the one
    // after the fence by hand, one after another.
    let writers = writers.stop();
    assert_eq!(writers.len(), 3, "{writers:?}");
    assert_one_writer_at_a_time(&writers);
    // Moved live to another host (both QEMUs hold the disk a moment then: the target's waits,
    // unlocked, until the switch-over), the VM's run lease follows it: the old host gives it up,
    // the new one takes it.
    let to = if refuge == "host-a" { "host-c" } else { "host-a" };
    let owner = match refuge.as_str() {
        "host-a" => &a,
        "host-b" => &b,
        _ => &c,
    };
    let t = owner.client.migrate_vm("isolated", to).await.unwrap();
    let t = owner.client.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    let begun = Instant::now();
    loop {
        let r = a.client.ha().get_resource("isolated").await.unwrap();
        if r.status.run_lease.as_deref() == Some(to) {
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(20), "the run lease did not follow to {to}: {:?}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not a host of the cluster: named and refused.
    let (code, _, err) = a.cli(&["cluster", "fence", "host-z"]);
    assert_ne!(code, 0);
    assert!(err.contains("host-z"), "{err}");
}
