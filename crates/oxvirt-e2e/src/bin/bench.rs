//! `make bench`: oxvirt's benchmarks, printed as figures and as ratios against a baseline
//! measured in the same run. Nothing here asserts: speed targets are read, not tested.
//!
//! 1. Start overhead (hypervisor layer): time from `start` to the guest's READY marker through
//!    oxvirt, against the very same QEMU command line launched directly. 5 rounds each.
//! 4. Monitoring: scrape time and size with 100 VMs defined and 10 running.
//! 3. Storage: I/O limits against guest-measured rates, linked-clone time, import throughput.
//! 5. Network: time to create a nat network (against making its bridge by hand with `ip`), to
//!    hot-plug a NIC (against a no-op API request), and guest-to-guest throughput with and
//!    without a bandwidth limit (against the limit set), and on a vlan network (Open vSwitch)
//!    against the Linux bridge. In a network namespace of its own.
//! 6. Host resources: CPU weight 2:1 and cap 0.5 accuracy (against the ratio set), balloon
//!    reclaim speed, KSM saving for 4 identical guests.
//! 7. Scheduler: 100,000 VMs placed on 10,000 simulated hosts (time), and hosts used when packing
//!    against the lower bound (total memory asked / host memory).
//! 8. Live migration of an idle 1 GiB guest between two hosts (daemons on one etcd): total time
//!    and downtime, against a raw QEMU-to-QEMU migration of the same guest in the same run; and
//!    the same over TLS (etcd with client certificates, TLS migration stream) against plaintext
//!    (`oxvirt-bench migration-tls` runs only that comparison).
//! 10. High availability: a host of three killed with an HA VM on it, 10 rounds: the time until the
//!     guest is ready elsewhere against the lease's TTL plus a cold start by hand (`oxvirt-bench ha`).
//! 9. Draining a host of 8 guests (2 migrations at a time by the cluster policy), against the
//!    same 8 moves by hand with QEMU, one after another and 2 at a time (`oxvirt-bench drain`).
//! 11. Lean defaults: oxvirt's default VM and a microvm kernel boot against a minimal plain-QEMU
//!     launch of the same guest (`oxvirt-bench defaults`).
//! 12. SDN: flows installed in Open vSwitch through oxvirt's OpenFlow connection against
//!     `ovs-ofctl add-flows` of the same flows (`oxvirt-bench openflow`).
//! 2. Control plane at scale: 10,000 VM definitions created through the API (create rate against
//!    a no-op API request rate), time to list all of them, and the daemon's RSS.

use oxvirt_e2e::*;
use oxvirt_hypervisor::qemu::QemuDriver;
use oxvirt_hypervisor::{AccelDecision, RuntimePaths};
use std::time::{Duration, Instant};

#[path = "bench/backup.rs"]
mod backup;
#[path = "bench/defaults.rs"]
mod defaults;
#[path = "bench/openflow.rs"]
mod openflow;
#[path = "bench/templates.rs"]
mod templates;

const ROUNDS: usize = 5;

/// Rounds of a live migration: cheap (half a second each), and a pause's p90 needs more than
/// five (of five it is the largest).
const MIGRATION_ROUNDS: usize = 11;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How far rounds of one figure spread: `min..max of n` in the figure's unit.
fn spread(v: &[f64], unit: &str, decimals: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.decimals$}..{max:.decimals$}{unit} over {} rounds", v.len())
}

/// The middle of some figures (the upper one of an even count).
fn median_f(v: &[f64]) -> f64 {
    let mut x = v.to_vec();
    x.sort_by(f64::total_cmp);
    x.get(x.len() / 2).copied().unwrap_or(0.0)
}

/// Milliseconds of some durations, for [`spread`].
fn ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

fn wait_file_marker(path: &std::path::Path, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if std::fs::read(path).map(|b| b.windows(READY.len()).any(|w| w == READY.as_bytes())).unwrap_or(false) {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "no marker in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_pidfile(p: &std::path::Path) {
    if let Ok(s) = std::fs::read_to_string(p) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            while process_alive(pid as u32) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

async fn start_overhead() {
    println!("== start overhead: start -> {READY}, {ROUNDS} rounds each (median)");
    let d = Daemon::start();
    let spec_json = kernel_spec("bench", "");
    d.client.create_vm(&spec_json, false).await.expect("create");
    let vm = d.client.get_vm("bench").await.expect("get");

    // The same command line oxvirt builds, launched by hand.
    let driver = tcg_driver();
    let dir = tempfile::Builder::new().prefix("oxb").tempdir_in("/tmp").expect("tmp");
    let paths = RuntimePaths::new(dir.path().join("direct"));
    std::fs::create_dir_all(paths.dir()).expect("dir");

    let mut direct = Vec::new();
    let mut oxvirt = Vec::new();
    for round in 0..ROUNDS {
        // Direct.
        let _ = std::fs::remove_file(paths.console_log());
        let t0 = Instant::now();
        raw_qemu(&driver, &vm.id, &vm.spec, None, &paths);
        let _ = wait_file_marker(&paths.console_log(), BOOT_TIMEOUT);
        direct.push(t0.elapsed());
        kill_pidfile(&paths.pidfile());

        // Through oxvirt: the API call, the task, QEMU, the guest; marker read through the API.
        let base = d.client.console_log("bench", 1 << 22).await.expect("log").len();
        let t0 = Instant::now();
        d.client.vm_action("bench", "start").await.expect("start");
        loop {
            let log = d.client.console_log("bench", 1 << 22).await.expect("log");
            if log.len() > base && log[base.min(log.len())..].windows(READY.len()).any(|w| w == READY.as_bytes()) {
                break;
            }
            if log.len() < base && log.windows(READY.len()).any(|w| w == READY.as_bytes()) {
                break;
            }
            assert!(t0.elapsed() < BOOT_TIMEOUT, "oxvirt start: no marker");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        oxvirt.push(t0.elapsed());
        d.client.vm_action_wait("bench", "kill", Duration::from_secs(30)).await.expect("kill");
        println!("   round {}: direct {:?}, oxvirt {:?}", round + 1, direct[round], oxvirt[round]);
    }
    let (ds, os) = (spread(&ms(&direct), " ms", 0), spread(&ms(&oxvirt), " ms", 0));
    let (md, mo) = (median(direct), median(oxvirt));
    println!("   direct QEMU (baseline): {md:?} ({ds})");
    println!("   through oxvirt:         {mo:?} ({os})");
    println!("   ratio oxvirt/direct:    {:.3} (target <= 1.02)", mo.as_secs_f64() / md.as_secs_f64());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn control_plane_scale() {
    const N: usize = 10_000;
    const CONCURRENCY: usize = 8;
    println!("== control plane: {N} VM definitions through the API ({CONCURRENCY} clients), {ROUNDS} rounds, a fresh daemon each");
    let (mut noops, mut creates, mut lists, mut rss, mut idle) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let r = scale_round(N, CONCURRENCY).await;
        noops.push(r.0);
        creates.push(r.1);
        lists.push(r.2);
        rss.push(r.3);
        idle.push(r.4);
    }
    let (noop, create) = (median_f(&noops), median_f(&creates));
    println!("   no-op requests (baseline): {noop:.0}/s ({})", spread(&noops, "/s", 0));
    println!(
        "   creates:                   {create:.0}/s ({}; ratio to no-op {:.2}; target >= 10000/s)",
        spread(&creates, "/s", 0),
        create / noop
    );
    println!("   list all {N}:            {:.1} ms ({}; target <= 20 ms)", median_f(&lists), spread(&lists, " ms", 1));
    let (rss, idle) = (median_f(&rss), median_f(&idle));
    println!(
        "   daemon RSS:                {rss:.1} MiB with {N} VMs, {idle:.1} MiB idle (ratio {:.2}; target <= 30 MiB)",
        rss / idle.max(1.0)
    );
}

/// One round of the scale bench on a fresh daemon: no-op rate, create rate, list ms (median),
/// RSS MiB with the VMs, RSS MiB idle.
async fn scale_round(n: usize, concurrency: usize) -> (f64, f64, f64, f64, f64) {
    let d = Daemon::start();
    let pid = d.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let rss_idle = rss_kib(pid);

    // Baseline: the same number of no-op API requests.
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let c = d.client.clone();
        handles.push(tokio::spawn(async move {
            for _ in (w..n).step_by(concurrency) {
                c.raw(hyper::Method::GET, "/api/v1", None).await.expect("noop");
            }
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    let noop_rate = n as f64 / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let c = d.client.clone();
        handles.push(tokio::spawn(async move {
            for i in (w..n).step_by(concurrency) {
                c.create_vm(&kernel_spec(&format!("vm-{i}"), ""), false).await.expect("create");
            }
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    let create_rate = n as f64 / t0.elapsed().as_secs_f64();

    let mut lists = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let (status, body) = d.client.raw(hyper::Method::GET, "/api/v1/vms", None).await.expect("list");
        lists.push(t0.elapsed());
        assert_eq!(status, 200);
        assert!(body.len() > n * 100);
    }
    let list = median(lists).as_secs_f64() * 1000.0;
    d.client.raw(hyper::Method::GET, "/api/v1/host", None).await.expect("host");
    let rss = rss_kib(pid);
    (noop_rate, create_rate, list, rss as f64 / 1024.0, rss_idle as f64 / 1024.0)
}

/// Guest-measured seconds of a command, between two reads of /proc/uptime.
async fn guest_seconds(c: &oxvirt_client::Client, vm: &str, cmd: &str, tag: u32) -> f64 {
    let full = format!(
        "a=$(cut -d' ' -f1 /proc/uptime); {cmd}; b=$(cut -d' ' -f1 /proc/uptime); echo TIMED-$(({tag}+0)) $a $b E''ND-$(({tag}+0))"
    );
    // The end marker names the round: an earlier round's output the console shows again is no end.
    let out = run_in_guest(c, vm, &full, &format!("END-{tag}")).await;
    // (The shell's prompt may share the line.)
    let mark = format!("TIMED-{tag} ");
    let line =
        out.lines().find_map(|l| l.find(&mark).map(|at| &l[at..])).unwrap_or_else(|| panic!("timed line: {out}"));
    let f: Vec<f64> = line.split_whitespace().skip(1).take(2).map(|x| x.parse().expect("number")).collect();
    f[1] - f[0]
}

async fn storage() {
    use serde_json::json;
    println!("== storage");
    let d = Daemon::start();
    let c = &d.client;
    let pool_dir = d.path().join("pool");
    let _: serde_json::Value = c.post("/api/v1/pools", &json!({ "name": "b", "path": pool_dir })).await.expect("pool");

    // I/O limits against what the guest measures.
    let _: serde_json::Value =
        c.post("/api/v1/pools/b/volumes", &json!({ "name": "q", "size": "256MiB" })).await.expect("vol");
    let mut spec = kernel_spec("qos", "");
    spec["disks"] = json!([{ "volume": "b/q", "qos": { "bps_read": 4 << 20 } }]);
    d.client.create_vm(&spec, true).await.expect("vm");
    wait_console(c, "qos", READY, 1, BOOT_TIMEOUT).await;
    // Each round reads other blocks (16 MiB at 4 MiB/s: about 4 s).
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let cmd = format!("dd if=/dev/vda of=/dev/null bs=64k count=256 skip={} iflag=direct 2>/dev/null", round * 256);
        let secs = guest_seconds(c, "qos", &cmd, round as u32 + 1).await;
        rates.push(16.0 / secs / 4.0);
    }
    println!(
        "   read limit 4 MiB/s: measured {:.2} MiB/s, ratio {:.3} ({}; target 0.95..1.05)",
        median_f(&rates) * 4.0,
        median_f(&rates),
        spread(&rates, "", 3)
    );
    let _: serde_json::Value = c
        .call(hyper::Method::PUT, "/api/v1/vms/qos/disks/disk0/qos", Some(&json!({ "iops_read": 200 })))
        .await
        .expect("qos");
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let cmd = format!(
            "dd if=/dev/vda of=/dev/null bs=4k skip={} count=1000 iflag=direct 2>/dev/null",
            32768 + round * 1000
        );
        let secs = guest_seconds(c, "qos", &cmd, 100 + round as u32).await;
        ratios.push(1000.0 / secs / 200.0);
    }
    println!(
        "   read limit 200 IOPS: measured {:.0} IOPS, ratio {:.3} ({}; target 0.95..1.05)",
        median_f(&ratios) * 200.0,
        median_f(&ratios),
        spread(&ratios, "", 3)
    );
    d.client.vm_action_wait("qos", "kill", Duration::from_secs(30)).await.expect("kill");

    // Linked clone of a 10 GiB template, against qemu-img creating the same overlay by hand.
    let _: serde_json::Value =
        c.post("/api/v1/pools/b/volumes", &json!({ "name": "tmpl", "size": "10GiB" })).await.expect("tmpl");
    let mut by_hand = Vec::new();
    let mut through = Vec::new();
    for i in 0..ROUNDS {
        let overlay = d.path().join(format!("hand{i}.qcow2"));
        let t0 = Instant::now();
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(pool_dir.join("tmpl.qcow2"))
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(st.success());
        by_hand.push(t0.elapsed());
        let t0 = Instant::now();
        let _: serde_json::Value =
            c.post("/api/v1/pools/b/volumes/tmpl/clone", &json!({ "name": format!("c{i}") })).await.expect("clone");
        through.push(t0.elapsed());
    }
    let (hs, os) = (spread(&ms(&by_hand), " ms", 1), spread(&ms(&through), " ms", 1));
    let (h, o) = (median(by_hand), median(through));
    println!(
        "   linked clone of 10 GiB: {o:?} through oxvirt ({os}), {h:?} qemu-img by hand ({hs}) (ratio {:.2})",
        o.as_secs_f64() / h.as_secs_f64()
    );

    // Import throughput against plain qemu-img convert of the same file.
    let src = d.path().join("src.raw");
    let data: Vec<u8> = (0..1024u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(&src, data).expect("src");
    // Rounds alternate, each after `sync`, so that neither side pays for the other's dirty pages.
    let sync = || {
        let _ = std::process::Command::new("sync").status();
    };
    let (mut plains, mut imps) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let plain_out = d.path().join("plain.qcow2");
        let _ = std::fs::remove_file(&plain_out);
        sync();
        let t0 = Instant::now();
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&src)
            .arg(&plain_out)
            .status()
            .expect("convert");
        assert!(st.success());
        plains.push(t0.elapsed());
        let _ = std::fs::remove_file(&plain_out);
        sync();
        let t0 = Instant::now();
        let t: oxvirt_model::Task = c
            .post("/api/v1/pools/b/import", &json!({ "name": format!("imp{i}"), "source": src }))
            .await
            .expect("import");
        let t = c.wait_task(&t.id, Duration::from_secs(300)).await.expect("wait");
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded);
        imps.push(t0.elapsed());
        c.delete(&format!("/api/v1/pools/b/volumes/imp{i}")).await.expect("delete");
    }
    let rate = |v: &[Duration]| v.iter().map(|d| 1024.0 / d.as_secs_f64()).collect::<Vec<f64>>();
    let (ps, is) = (spread(&rate(&plains), " MiB/s", 0), spread(&rate(&imps), " MiB/s", 0));
    let (plain, imp) = (median(plains), median(imps));
    println!(
        "   import 1 GiB: {:.0} MiB/s through oxvirt ({is}), {:.0} MiB/s plain qemu-img convert ({ps}) (ratio {:.3}, target >= 0.95)",
        1024.0 / imp.as_secs_f64(),
        1024.0 / plain.as_secs_f64(),
        plain.as_secs_f64() / imp.as_secs_f64()
    );
}

/// Scrape time and size with 100 VMs defined and 10 running, against a no-op request.
async fn scrape() {
    println!("== monitoring: /metrics with 100 VMs defined, 10 running");
    let d = Daemon::start();
    let c = &d.client;
    // Ten 1-vCPU guests on a 2-CPU machine: more than the default over-commit (4) admits.
    let _: serde_json::Value =
        c.put("/api/v1/host/policy", &serde_json::json!({ "cpu_overcommit": 8.0 })).await.expect("policy");
    for i in 0..100 {
        c.create_vm(&kernel_spec(&format!("m{i}"), ""), i < 10).await.expect("create");
    }
    for i in 0..10 {
        wait_console(c, &format!("m{i}"), READY, 1, BOOT_TIMEOUT).await;
    }
    let time = |path: &'static str| async move {
        let mut v = Vec::new();
        let mut size = 0;
        for _ in 0..20 {
            let t0 = Instant::now();
            let (_, body) = c.raw(hyper::Method::GET, path, None).await.expect("get");
            v.push(t0.elapsed());
            size = body.len();
        }
        (median(v), size)
    };
    let (noop, _) = time("/api/v1").await;
    let (warm, size) = time("/metrics").await;
    // Scrapes spread over more than the cache's age: some of them gather the figures afresh
    // (every running VM asked over QMP), unless the 5 s history sampler just did.
    let mut spread = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let t0 = Instant::now();
        let _ = c.raw(hyper::Method::GET, "/metrics", None).await.expect("get");
        spread.push(t0.elapsed());
    }
    let cold = spread.into_iter().max().unwrap_or_default();
    println!("   no-op request (baseline): {noop:?}");
    println!(
        "   scrape, cached figures:   {warm:?} ({:.1}x the no-op), {size} bytes",
        warm.as_secs_f64() / noop.as_secs_f64()
    );
    println!(
        "   slowest of 4 scrapes 2.6 s apart: {cold:?} ({:.1}x the no-op)",
        cold.as_secs_f64() / noop.as_secs_f64()
    );
    for i in 0..10 {
        let _ = c.vm_action(&format!("m{i}"), "kill").await;
    }
}

async fn network() {
    use serde_json::json;
    println!("== network (in a namespace of its own)");
    let ns = Netns::new("bench");
    let d = Daemon::start_in_netns(&ns, "stop_timeout_secs = 5\n");
    let c = &d.client;
    let mut by_hand = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        ns.run(&["ip", "link", "add", "hbr0", "type", "bridge"]);
        ns.run(&["ip", "addr", "add", "10.61.0.1/24", "dev", "hbr0"]);
        ns.run(&["ip", "link", "set", "hbr0", "up"]);
        by_hand.push(t.elapsed());
        ns.run(&["ip", "link", "del", "hbr0"]);
    }
    let mut create = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let _: serde_json::Value = c
            .post("/api/v1/networks", &json!({ "name": "bn", "kind": "nat", "subnet": "10.61.0.0/24" }))
            .await
            .unwrap();
        create.push(t.elapsed());
        c.delete("/api/v1/networks/bn").await.unwrap();
    }
    let (hs, cs) = (spread(&ms(&by_hand), " ms", 1), spread(&ms(&create), " ms", 1));
    let (h, cr) = (median(by_hand), median(create));
    println!("   bridge + address by hand with ip (baseline): {h:?} ({hs})");
    println!(
        "   nat network through oxvirt (bridge, address, dnsmasq, nftables): {cr:?} ({cs}), ratio {:.2}",
        cr.as_secs_f64() / h.as_secs_f64()
    );

    let _: serde_json::Value = c
        .post("/api/v1/networks", &json!({ "name": "bn", "kind": "isolated", "subnet": "10.62.0.0/24" }))
        .await
        .unwrap();
    for vm in ["na", "nb"] {
        let mut spec = kernel_spec(vm, "");
        spec["nics"] = json!([{ "network": "bn" }]);
        let created = c.create_vm(&spec, true).await.unwrap();
        c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    }
    for vm in ["na", "nb"] {
        wait_console(c, vm, READY, 1, BOOT_TIMEOUT).await;
    }
    let t = Instant::now();
    for _ in 0..20 {
        let _ = c.host().await.unwrap();
    }
    let noop = t.elapsed() / 20;
    let mut plug = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let _: serde_json::Value = c.post("/api/v1/vms/na/nics", &json!({ "network": "bn" })).await.unwrap();
        plug.push(t.elapsed());
        let _: serde_json::Value = c.delete_json("/api/v1/vms/na/nics/nic1").await.unwrap();
    }
    let ps = spread(&ms(&plug), " ms", 1);
    let p = median(plug);
    println!("   no-op API request (baseline): {noop:?}");
    println!("   NIC hot-plug (TAP, firewall, QMP): {p:?} ({ps}), ratio {:.1}", p.as_secs_f64() / noop.as_secs_f64());

    let nb = c.get_vm("nb").await.unwrap();
    let nb_ip = nb.spec.nics[0].ip.unwrap().to_string();
    run_in_guest(c, "nb", "mkdir -p /w && dd if=/dev/zero of=/w/big bs=1024 count=4096 2>/dev/null && httpd -p 80 -h /w && echo U$((1+1))P", "U2P").await;
    let mbits = |secs: f64| 4.0 * 8.0 * 1.048576 / secs;
    let fetch = format!("wget -q -O /dev/null http://{nb_ip}/big");
    // Three fetches of each, tagged apart (an earlier round's output is no end).
    let mut tag = 60;
    let mut fetches = |n: usize| {
        let fetch = fetch.clone();
        let tags: Vec<u32> = (0..n)
            .map(|_| {
                tag += 1;
                tag
            })
            .collect();
        async move {
            let mut v = Vec::new();
            for t in tags {
                v.push(mbits(guest_seconds(c, "na", &fetch, t).await));
            }
            v
        }
    };
    // The same fetch between two guests of a vlan network on oxvirt's Open vSwitch (userspace
    // datapath), rounds interleaved with the Linux bridge's.
    let _: serde_json::Value = c
        .post("/api/v1/networks", &json!({ "name": "bv", "kind": "vlan", "vlan": 40, "subnet": "10.63.0.0/24" }))
        .await
        .unwrap();
    for vm in ["oa", "ob"] {
        let mut spec = kernel_spec(vm, "");
        spec["nics"] = json!([{ "network": "bv" }]);
        let created = c.create_vm(&spec, true).await.unwrap();
        c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    }
    let ob_ip = c.get_vm("ob").await.unwrap().spec.nics[0].ip.unwrap().to_string();
    let oa_ip = c.get_vm("oa").await.unwrap().spec.nics[0].ip.unwrap().to_string();
    for (vm, ip) in [("oa", &oa_ip), ("ob", &ob_ip)] {
        wait_console(c, vm, READY, 1, BOOT_TIMEOUT).await;
        wait_guest_address(c, vm, ip).await;
    }
    run_in_guest(c, "ob", "mkdir -p /w && dd if=/dev/zero of=/w/big bs=1024 count=4096 2>/dev/null && httpd -p 80 -h /w && echo U$((1+1))P", "U2P").await;
    let ovs_fetch = format!("wget -q -O /dev/null http://{ob_ip}/big");
    let mut free = Vec::new();
    let mut ovs = Vec::new();
    for round in 0..3u32 {
        free.extend(fetches(1).await);
        ovs.push(mbits(guest_seconds(c, "oa", &ovs_fetch, 90 + round).await));
    }
    println!("   guest to guest, no limit: {:.0} Mbit/s ({})", median_f(&free), spread(&free, " Mbit/s", 0));
    println!(
        "   guest to guest on a vlan network (Open vSwitch, userspace): {:.0} Mbit/s ({}), ratio to the Linux bridge {:.2}",
        median_f(&ovs),
        spread(&ovs, " Mbit/s", 0),
        median_f(&ovs) / median_f(&free)
    );
    for vm in ["oa", "ob"] {
        let _ = c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await;
    }
    for limit in [50u64, 10] {
        let _: serde_json::Value =
            c.patch("/api/v1/vms/nb/nics/nic0", &json!({ "qos": { "egress": format!("{limit}mbit") } })).await.unwrap();
        let got: Vec<f64> = fetches(3).await.iter().map(|m| m / limit as f64).collect();
        println!(
            "   limit {limit} Mbit/s: {:.1} Mbit/s, ratio to the limit {:.3} ({}; target <= 1.0)",
            median_f(&got) * limit as f64,
            median_f(&got),
            spread(&got, "", 3)
        );
    }
    for vm in ["na", "nb"] {
        let _ = c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await;
    }
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn host_resources() {
    use serde_json::{json, Value};
    println!("== host resources");
    let d = Daemon::start();
    let c = &d.client;
    let boot = |name: &'static str, memory: &'static str, resources: Value| async move {
        let mut spec = kernel_spec(name, "");
        spec["memory"] = json!(memory);
        spec["resources"] = resources;
        let created = c.create_vm(&spec, true).await.unwrap();
        c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
        wait_console(c, name, READY, 1, BOOT_TIMEOUT).await;
        c.get_vm(name).await.unwrap().status.pid.unwrap()
    };
    let p1 = boot("r1", "128MiB", json!({ "vcpu_pins": [1], "emulator_cpus": "1", "cpu_weight": 200 })).await;
    let p2 = boot("r2", "128MiB", json!({ "vcpu_pins": [1], "emulator_cpus": "1" })).await;
    for vm in ["r1", "r2"] {
        run_in_guest(c, vm, "(while :; do :; done) & echo S$((2+3))PIN", "S5PIN").await;
    }
    // CPU shares over five 2 s windows: each window's [r1, r2] in CPUs.
    let rates = || async move {
        let mut windows = Vec::new();
        for _ in 0..ROUNDS {
            let b = [proc_cpu_seconds(p1), proc_cpu_seconds(p2)];
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let el = t.elapsed().as_secs_f64();
            windows.push([(proc_cpu_seconds(p1) - b[0]) / el, (proc_cpu_seconds(p2) - b[1]) / el]);
        }
        windows
    };
    let w = rates().await;
    let ratios: Vec<f64> = w.iter().map(|r| r[0] / r[1].max(1e-9) / 2.0).collect();
    println!(
        "   weights 200:100 on one CPU: {:.3} : {:.3}, ratio against 2.0 set: {:.3} ({})",
        median_f(&w.iter().map(|r| r[0]).collect::<Vec<_>>()),
        median_f(&w.iter().map(|r| r[1]).collect::<Vec<_>>()),
        median_f(&ratios),
        spread(&ratios, "", 3)
    );
    let _: Value = c
        .put("/api/v1/vms/r1/resources", &json!({ "vcpu_pins": [1], "emulator_cpus": "1", "cpu_limit": 0.5 }))
        .await
        .unwrap();
    c.vm_action_wait("r2", "kill", Duration::from_secs(30)).await.unwrap();
    let capped: Vec<f64> = rates().await.iter().map(|r| r[0] / 0.5).collect();
    println!(
        "   cap 0.5 CPU alone on the CPU: {:.3} CPU, ratio to the cap {:.3} ({}; target <= 1.0)",
        median_f(&capped) * 0.5,
        median_f(&capped),
        spread(&capped, "", 3)
    );
    c.vm_action_wait("r1", "kill", Duration::from_secs(30)).await.unwrap();

    boot("rb", "512MiB", json!({})).await;
    let actual = || async { c.get::<Value>("/api/v1/vms/rb/balloon").await.unwrap()["actual"].as_u64().unwrap() };
    let t = Instant::now();
    let _: Value = c.put("/api/v1/vms/rb/balloon", &json!({ "target": "128MiB" })).await.unwrap();
    while actual().await > 129 << 20 && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let el = t.elapsed();
    println!("   balloon 512MiB -> 128MiB: {el:?}, {:.0} MiB/s reclaimed", 384.0 / el.as_secs_f64());
    c.vm_action_wait("rb", "kill", Duration::from_secs(30)).await.unwrap();

    let ksm_before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default();
    let mut policy: Value = c.get("/api/v1/host/policy").await.unwrap();
    policy["ksm"] = json!("on");
    let _: Value = c.put("/api/v1/host/policy", &policy).await.unwrap();
    let names = ["k1", "k2", "k3", "k4"];
    let mut pids = Vec::new();
    for n in names {
        pids.push(boot(n, "128MiB", json!({})).await);
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let merged: u64 = pids
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/ksm_merging_pages"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 4096
        })
        .sum();
    let rss: u64 = pids
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/statm"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
                * 4096
        })
        .sum();
    println!(
        "   KSM, 4 identical guests after 20 s: {} MiB of their memory merged, {:.1} % of their {} MiB resident",
        merged >> 20,
        merged as f64 * 100.0 / (rss + merged).max(1) as f64,
        (rss + merged) >> 20
    );
    for n in names {
        let _ = c.vm_action_wait(n, "kill", Duration::from_secs(30)).await;
    }
    let _ = std::fs::write("/sys/kernel/mm/ksm/run", ksm_before.trim());
}

fn scheduler() {
    use oxvirt_scheduler::{Cluster, Host, Policy, Request, Strategy};
    println!("== scheduler: 100,000 VMs on 10,000 simulated hosts");
    let gib = 1u64 << 30;
    let hosts: Vec<Host> = (0..10_000)
        .map(|i| Host {
            name: format!("h{i}"),
            cpus: 64,
            memory: 512 * gib,
            used_vcpus: 0,
            used_memory: 0,
            pools: vec!["shared".into()],
            networks: vec!["lan".into()],
            online: true,
            maintenance: false,
            cpu_pressure: 0.0,
        })
        .collect();
    let mut seed = 42u64;
    let mut rnd = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let reqs: Vec<Request> = (0..100_000)
        .map(|i| Request {
            name: format!("vm{i}"),
            vcpus: 1 + rnd(16) as u32,
            memory: (1 + rnd(64)) * gib,
            pools: vec!["shared".into()],
            networks: vec!["lan".into()],
            anti_affinity: (i % 100 == 0).then(|| format!("g{}", i / 1000)),
            ..Default::default()
        })
        .collect();
    let mut packed = None;
    for strategy in [Strategy::Spread, Strategy::Pack] {
        let mut c = Cluster::new(hosts.clone(), Policy { strategy, cpu_overcommit: 4.0, memory_overcommit: 1.0 });
        let t = Instant::now();
        let placed =
            if strategy == Strategy::Pack { c.place_all(&reqs) } else { reqs.iter().map(|r| c.place(r)).collect() };
        let el = t.elapsed();
        if strategy == Strategy::Pack {
            packed = Some((c.hosts().to_vec(), placed.clone(), el));
        }
        let ok = placed.iter().filter(|p| p.is_ok()).count();
        let total: u64 = reqs.iter().map(|r| r.memory).sum();
        let bound = total.div_ceil(512 * gib);
        println!(
            "   {strategy:?}: {ok} placed in {el:?} (target <= 2 s, ratio {:.2}); {} hosts used, lower bound {bound}, efficiency {:.3}{}",
            el.as_secs_f64() / 2.0,
            c.hosts_used(),
            bound as f64 / c.hosts_used() as f64,
            if strategy == Strategy::Pack { " (target >= 0.95)" } else { " (spread uses them all on purpose)" }
        );
    }
    // Rebalancing the packed cluster (full hosts and empty ones) towards spread: 64 moves.
    let Some((hosts, placed, place_time)) = packed else { return };
    let vms: Vec<oxvirt_scheduler::Placed> = reqs
        .iter()
        .zip(&placed)
        .filter_map(|(r, d)| {
            d.as_ref().ok().map(|d| oxvirt_scheduler::Placed { request: r.clone(), host: d.host.clone() })
        })
        .collect();
    let policy = Policy { strategy: Strategy::Spread, cpu_overcommit: 4.0, memory_overcommit: 1.0 };
    let t = Instant::now();
    let moves = oxvirt_scheduler::plan_rebalance(hosts, vms, &policy, 64, 0.1);
    let el = t.elapsed();
    println!(
        "   rebalancing plan (spread, from the packed cluster): {} moves in {el:?}, {:.3} of the time to place all 100,000 VMs; last: {}",
        moves.len(),
        el.as_secs_f64() / place_time.as_secs_f64(),
        moves.last().map(|m| m.reason.as_str()).unwrap_or("none")
    );
}

/// Total and paused ms of a finished migration, from `query-migrate`, and the wall time from the
/// `migrate` command until the target runs the guest (asked of it every 2 ms).
async fn raw_migration(src: &oxvirt_qemu::qmp::Qmp, dst: &oxvirt_qemu::qmp::Qmp, uri: &str) -> (u64, u64, u64) {
    use serde_json::{json, Value};
    // The settings oxvirt uses: a 100 ms downtime target, no bandwidth cap.
    src.execute("migrate-set-parameters", json!({ "downtime-limit": 100, "max-bandwidth": 1u64 << 40 }))
        .await
        .expect("params");
    let begun = Instant::now();
    src.execute("migrate", json!({ "uri": uri })).await.expect("migrate");
    loop {
        let s: Value = dst.execute("query-status", Value::Null).await.expect("status");
        if s["status"] == "running" {
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(120), "the raw target never ran: {s}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = begun.elapsed().as_millis() as u64;
    loop {
        let q: Value = src.execute("query-migrate", Value::Null).await.expect("query");
        match q["status"].as_str().unwrap_or("") {
            "completed" if q["total-time"].as_u64().unwrap_or(0) > 0 => {
                return (q["total-time"].as_u64().unwrap_or(0), q["downtime"].as_u64().unwrap_or(0), wall)
            }
            "failed" | "cancelled" => panic!("raw migration failed: {q}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The middle of some milliseconds (the upper one of an even count).
fn median_ms(v: impl IntoIterator<Item = u64>) -> u64 {
    let mut x: Vec<u64> = v.into_iter().collect();
    x.sort();
    x.get(x.len() / 2).copied().unwrap_or(0)
}

/// The value below which 90 % of `v` fall (of 5 rounds: the largest but none).
fn p90(v: &[u64]) -> u64 {
    let mut x = v.to_vec();
    x.sort();
    x.get((x.len() * 9).div_ceil(10).saturating_sub(1)).copied().unwrap_or(0)
}

async fn migration() {
    use serde_json::json;
    println!("== live migration: idle 1 GiB guest, {MIGRATION_ROUNDS} rounds each, oxvirt and raw interleaved, each alone (median)");
    // Baseline: the same guest, QEMU to QEMU by hand.
    let driver = tcg_driver();
    let mut spec_json = kernel_spec("mig", "");
    spec_json["memory"] = json!("1GiB");
    let spec: oxvirt_model::VmSpec = serde_json::from_value(spec_json.clone()).expect("spec");
    let dir = oxvirt_e2e::operator_dir("oxm");
    // Through oxvirt: two hosts on one etcd, the VM moved back and forth. Each round moves
    // oxvirt's guest, then the same guest by hand, so that both meet the same moment of the
    // machine; each alone (oxvirt's guest paused while the raw pair boots and moves).
    let mut mover = Mover::new(&spec_json, None).await;
    let (mut raw, mut raw_walls, mut ours, mut our_walls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..MIGRATION_ROUNDS {
        let (times, wall) = mover.round().await;
        ours.push(times);
        our_walls.push(wall);
        mover.action("pause").await;
        let id = format!("{:08x}-0000-0000-0000-{round:012x}", std::process::id());
        let (src, dst) = raw_source(&driver, dir.path(), &id, round, &spec);
        // Idle, as oxvirt's guest is (it rests 3 s after each move): not moved while it still
        // settles after its boot.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let port = free_port();
        raw_qemu(&driver, &id, &spec, Some(format!("tcp:127.0.0.1:{port}")), &dst);
        let qmp = oxvirt_qemu::qmp::Qmp::connect(&src.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
        let to = oxvirt_qemu::qmp::Qmp::connect(&dst.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
        let (total, paused, wall) = raw_migration(&qmp, &to, &format!("tcp:127.0.0.1:{port}")).await;
        raw.push((total, paused));
        raw_walls.push(wall);
        kill_pidfile(&src.pidfile());
        kill_pidfile(&dst.pidfile());
        mover.action("resume").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    mover.end().await;
    let (rt, rd) = (median_ms(raw.iter().map(|p| p.0)), median_ms(raw.iter().map(|p| p.1)));
    let (ot, od) = (median_ms(ours.iter().map(|p| p.0)), median_ms(ours.iter().map(|p| p.1)));
    println!("   rounds raw {raw:?}, oxvirt {ours:?} (total, paused ms)");
    println!("   raw QEMU (baseline): {rt} ms in all, {rd} ms paused");
    println!("   through oxvirt:      {ot} ms in all, {od} ms paused (target <= 100 ms)");
    println!("   total ratio oxvirt/raw: {:.2} (target <= 1.1)", ot as f64 / rt.max(1) as f64);
    let pauses = |v: &[(u64, u64)]| v.iter().map(|p| p.1).collect::<Vec<u64>>();
    println!(
        "   pause p90: raw {} ms, oxvirt {} ms (target: no worse than raw)",
        p90(&pauses(&raw)),
        p90(&pauses(&ours))
    );
    let (rw, ow) = (median_ms(raw_walls.iter().copied()), median_ms(our_walls.iter().copied()));
    println!("   request to running on the target: raw {raw_walls:?} ms, oxvirt (the API's migrate until its task ends) {our_walls:?} ms");
    let f = |v: &[u64]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    println!(
        "   median raw {rw} ms ({}), oxvirt {ow} ms ({}): ratio oxvirt/raw {:.2} (target <= 1.2)",
        spread(&f(&raw_walls), " ms", 0),
        spread(&f(&our_walls), " ms", 0),
        ow as f64 / rw.max(1) as f64
    );
    // Rounds here fall in two groups (about 100 and 380 ms, raw and oxvirt alike): the fastest
    // of each says what each costs at best, steadier than a median that may land in either.
    let fastest = |v: &[(u64, u64)]| v.iter().map(|p| p.0).min().unwrap_or(0);
    println!(
        "   fastest rounds: raw {} ms, oxvirt {} ms, ratio {:.2}",
        fastest(&raw),
        fastest(&ours),
        fastest(&ours) as f64 / fastest(&raw).max(1) as f64
    );
    tls_against_plain(&spec_json, &ours).await;
}

/// Draining a host of 8 guests (`oxvirt cluster drain`, the policy letting 2 migrations run at
/// once) against the same 8 moves by hand with QEMU: one after another, and 2 at a time. Each
/// move by hand counts from starting the target's QEMU, as the drain's do.
async fn drain() {
    use serde_json::json;
    const N: usize = 8;
    const LIMIT: usize = 2;
    println!(
        "== drain: a host of {N} idle 256 MiB guests; {N} moves by hand in a row and {LIMIT} at a time (baselines)"
    );
    let driver = std::sync::Arc::new(tcg_driver());
    let spec_json = kernel_spec("d", "");
    let spec: oxvirt_model::VmSpec = serde_json::from_value(spec_json.clone()).expect("spec");
    let dir = oxvirt_e2e::operator_dir("oxd");
    let mut raw = Vec::new();
    for (set, at_once) in [(0, 1), (1, LIMIT)] {
        // The sources, booted together.
        let mut moves = Vec::new();
        for i in 0..N {
            let id = format!("{:08x}-0000-0000-{set:04x}-{i:012x}", std::process::id());
            let src = RuntimePaths::new(dir.path().join(format!("s{set}-{i}")));
            let dst = RuntimePaths::new(dir.path().join(format!("d{set}-{i}")));
            for p in [&src, &dst] {
                std::fs::create_dir_all(p.dir()).expect("dir");
            }
            raw_qemu(&driver, &id, &spec, None, &src);
            moves.push((id, src, dst));
        }
        for (_, src, _) in &moves {
            wait_file_marker(&src.console_log(), BOOT_TIMEOUT);
        }
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once));
        let begun = Instant::now();
        let mut all = tokio::task::JoinSet::new();
        for (id, src, dst) in moves.clone() {
            let (slots, driver, spec) = (slots.clone(), driver.clone(), spec.clone());
            all.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("slot");
                let port = free_port();
                raw_qemu(&driver, &id, &spec, Some(format!("tcp:127.0.0.1:{port}")), &dst);
                let from =
                    oxvirt_qemu::qmp::Qmp::connect(&src.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
                let to = oxvirt_qemu::qmp::Qmp::connect(&dst.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
                raw_migration(&from, &to, &format!("tcp:127.0.0.1:{port}")).await;
            });
        }
        while let Some(r) = all.join_next().await {
            r.expect("a raw move");
        }
        raw.push(begun.elapsed());
        for (_, src, dst) in &moves {
            kill_pidfile(&src.pidfile());
            kill_pidfile(&dst.pidfile());
        }
    }
    // Through oxvirt: the same guests on host-a, drained to host-b.
    let (_cluster, a, b) = two_hosts("bench-drain/");
    let policy = oxvirt_model::ClusterPolicy { max_migrations: LIMIT as u32, ..Default::default() };
    a.client.cluster().set_cluster_policy(&policy).await.expect("policy");
    for i in 0..N {
        let mut s = kernel_spec(&format!("d{i}"), "");
        s["host"] = json!("host-a");
        let created = a.client.create_vm(&s, true).await.expect("create");
        a.client.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("start");
    }
    for i in 0..N {
        wait_console(&a.client, &format!("d{i}"), READY, 1, BOOT_TIMEOUT).await;
    }
    let begun = Instant::now();
    let tasks = a.client.cluster().set_maintenance("host-a", true).await.expect("drain");
    for t in &tasks {
        let t = a.client.wait_task(&t.id, Duration::from_secs(600)).await.expect("wait");
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    }
    let ours = begun.elapsed();
    for i in 0..N {
        let _ = b.client.vm_action_wait(&format!("d{i}"), "kill", Duration::from_secs(30)).await;
    }
    println!("   by hand, one after another (baseline): {:?}", raw[0]);
    println!("   by hand, {LIMIT} at a time (baseline):       {:?}", raw[1]);
    println!("   oxvirt cluster drain ({LIMIT} at a time):     {ours:?}");
    println!(
        "   ratio drain / by hand {LIMIT} at a time: {:.2}; / one after another: {:.2}",
        ours.as_secs_f64() / raw[1].as_secs_f64(),
        ours.as_secs_f64() / raw[0].as_secs_f64()
    );
}

/// High availability: a host of three killed (oxvirtd and its QEMUs) with an HA VM on it, 10
/// rounds; the time until the guest is ready on another host, against the floor of the same run
/// (the lease's TTL plus a cold start of the same guest by hand), with where the time went.
async fn ha_recovery() {
    use oxvirt_store::Store;
    use serde_json::json;
    const ROUNDS_HA: usize = 10;
    const TTL_S: u64 = 2;
    println!("== HA: a host killed with an HA VM on it, {ROUNDS_HA} rounds (lease TTL {TTL_S} s, default budget)");
    // The floor's cold start: the same guest by hand, start to READY (median of 3).
    let driver = tcg_driver();
    let spec_json = kernel_spec("guarded", "");
    let spec: oxvirt_model::VmSpec = serde_json::from_value(spec_json.clone()).expect("spec");
    let dir = oxvirt_e2e::operator_dir("oxh");
    let mut cold = Vec::new();
    for i in 0..3 {
        let paths = RuntimePaths::new(dir.path().join(format!("cold{i}")));
        std::fs::create_dir_all(paths.dir()).expect("dir");
        let id = format!("{:08x}-0000-0000-0000-0000000000c{i}", std::process::id());
        let t0 = Instant::now();
        raw_qemu(&driver, &id, &spec, None, &paths);
        wait_file_marker(&paths.console_log(), BOOT_TIMEOUT);
        cold.push(t0.elapsed());
        kill_pidfile(&paths.pidfile());
    }
    let cold = median(cold);
    let floor = Duration::from_secs(TTL_S) + cold;

    let etcd = EtcdCluster::start(1);
    let ep = etcd.endpoints()[0].clone();
    let names = ["host-a", "host-b", "host-c"];
    let config = |h: &str| {
        format!("stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{ep}\"]\netcd_prefix = \"ha/\"\nhost_name = \"{h}\"\nmember_ttl_secs = {TTL_S}\n")
    };
    let mut hosts: Vec<Daemon> = names.iter().map(|h| Daemon::start_with_config(&config(h))).collect();
    let raw = oxvirt_store::EtcdStore::connect(&etcd.endpoints(), "ha/").expect("etcd");
    let disk = dir.path().join("shared.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let mut s = spec_json.clone();
    s["host"] = json!("host-a");
    s["disks"] = json!([{ "path": disk, "format": "raw" }]);
    let created = hosts[0].client.create_vm(&s, true).await.expect("create");
    hosts[0].client.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("start");
    wait_console(&hosts[0].client, "guarded", READY, 1, BOOT_TIMEOUT).await;
    let (code, out, err) = hosts[0].cli(&["ha", "add", "guarded", "--max-relocations", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut on = 0usize;
    let (mut totals, mut parts) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS_HA {
        let watcher = (on + 1) % 3;
        let qemu = hosts[on].client.get_vm("guarded").await.expect("vm").status.pid.expect("pid");
        // A host the VM ran on before keeps that stay's console: its new boot is a READY more.
        let mut readies = [0usize; 3];
        for (i, h) in hosts.iter().enumerate() {
            let log = h.client.console_log("guarded", 1 << 20).await.unwrap_or_default();
            readies[i] = log.windows(READY.len()).filter(|w| *w == READY.as_bytes()).count();
        }
        let t0 = Instant::now();
        hosts[on].kill9();
        unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
        let alive_key = format!("alive/{}", names[on]);
        let (mut gone, mut placed, mut running) = (None, None, None);
        let ready = loop {
            let now = t0.elapsed();
            if gone.is_none() && raw.get(&alive_key).ok().flatten().is_none() {
                gone = Some(now);
            }
            if let Ok(v) = hosts[watcher].client.get_vm("guarded").await {
                let elsewhere = v.host.as_deref().is_some_and(|h| h != names[on]);
                if placed.is_none() && elsewhere {
                    placed = Some(now);
                }
                if running.is_none() && elsewhere && v.status.state.as_str() == "running" {
                    running = Some(now);
                }
                if running.is_some() {
                    let to = names.iter().position(|n| Some(*n) == v.host.as_deref()).unwrap_or(watcher);
                    let log = hosts[to].client.console_log("guarded", 1 << 20).await.unwrap_or_default();
                    if log.windows(READY.len()).filter(|w| *w == READY.as_bytes()).count() > readies[to] {
                        on = to;
                        break t0.elapsed();
                    }
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "round {round}: not recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ms = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64() * 1000.0;
        parts.push([ms(gone), ms(placed), ms(running), ready.as_secs_f64() * 1000.0]);
        totals.push(ready);
        // The lost host comes back (its copy was killed with it) for the next rounds.
        for h in hosts.iter_mut() {
            if h.child.is_none() {
                h.respawn_after_kill9();
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let secs: Vec<f64> = totals.iter().map(|d| d.as_secs_f64()).collect();
    let worst = secs.iter().copied().fold(0.0, f64::max);
    let med = |i: usize| median_f(&parts.iter().map(|p| p[i]).collect::<Vec<f64>>());
    println!("   floor (baseline): lease TTL {TTL_S} s + cold start by hand {cold:?} = {floor:?}");
    println!(
        "   host loss -> guest ready elsewhere: median {:.2} s, worst {worst:.2} s ({}; goal <= 15 s); ratio to the floor {:.2}",
        median_f(&secs),
        spread(&secs, " s", 2),
        median_f(&secs) / floor.as_secs_f64()
    );
    println!(
        "   where the time went (median ms from the kill): lease ended {:.0}, VM given to another host {:.0} (fence wait and placement), running there {:.0}, guest ready {:.0}",
        med(0),
        med(1),
        med(2),
        med(3)
    );
    drop(hosts);
}

/// The same guest moved `rounds` times between two fresh hosts (with `pki`: etcd and migration
/// over TLS): (total, paused) ms of each move, from the VM's host reason.
/// A guest moved back and forth through oxvirt between two hosts on one etcd (with `pki`,
/// etcd and the migration stream over TLS), a round at a time.
struct Mover {
    _cluster: EtcdCluster,
    a: Daemon,
    b: Daemon,
    done: usize,
}

impl Mover {
    async fn new(spec_json: &serde_json::Value, pki: Option<&pki::TestPki>) -> Mover {
        let prefix = if pki.is_some() { "bench-tls/" } else { "bench/" };
        let (_cluster, a, b) = two_hosts_with(prefix, pki);
        let mut spec_json = spec_json.clone();
        spec_json["host"] = serde_json::json!("host-a");
        let created = a.client.create_vm(&spec_json, true).await.expect("create");
        a.client.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("start");
        wait_console(&a.client, "mig", READY, 1, BOOT_TIMEOUT).await;
        Mover { _cluster, a, b, done: 0 }
    }

    /// One move: ((total, paused) ms as oxvirt recorded them, request to task end ms).
    async fn round(&mut self) -> ((u64, u64), u64) {
        let (from, to) = if self.done.is_multiple_of(2) { (&self.a, "host-b") } else { (&self.b, "host-a") };
        let begun = Instant::now();
        let t = from.client.migrate_vm("mig", to).await.expect("migrate");
        let t = from.client.wait_task(&t.id, Duration::from_secs(300)).await.expect("wait");
        let wall = begun.elapsed().as_millis() as u64;
        if self.done == 0 {
            println!("   a round through oxvirt, in its words: {}", t.message);
        }
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
        let reason = from.client.get_vm("mig").await.expect("vm").host_reason.unwrap_or_default();
        let nums: Vec<u64> = reason
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        self.done += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ((nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0)), wall)
    }

    /// A lifecycle action on the guest, asked of the host it is on.
    async fn action(&self, action: &str) {
        let here = if self.done.is_multiple_of(2) { &self.a } else { &self.b };
        let t = here.client.vm_action_wait("mig", action, Duration::from_secs(30)).await.expect(action);
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{action}: {t:?}");
    }

    async fn end(self) {
        let _ = self.a.client.vm_action_wait("mig", "kill", Duration::from_secs(30)).await;
        let _ = self.b.client.vm_action_wait("mig", "kill", Duration::from_secs(30)).await;
    }
}

async fn oxvirt_rounds(
    spec_json: &serde_json::Value,
    pki: Option<&pki::TestPki>,
    rounds: usize,
) -> (Vec<(u64, u64)>, Vec<u64>) {
    let mut mover = Mover::new(spec_json, pki).await;
    let (mut ours, mut walls) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (times, wall) = mover.round().await;
        ours.push(times);
        walls.push(wall);
    }
    mover.end().await;
    (ours, walls)
}

/// The TLS variant (etcd with client certificates, the migration stream over TLS) against the
/// plaintext `plain` rounds of the same run.
async fn tls_against_plain(spec_json: &serde_json::Value, plain: &[(u64, u64)]) {
    let pki = pki::TestPki::new("bench");
    let (tls, _) = oxvirt_rounds(spec_json, Some(&pki), plain.len()).await;
    let (pt, pd) = (median_ms(plain.iter().map(|p| p.0)), median_ms(plain.iter().map(|p| p.1)));
    let (tt, td) = (median_ms(tls.iter().map(|p| p.0)), median_ms(tls.iter().map(|p| p.1)));
    println!("   rounds plaintext {plain:?}, over TLS (etcd and migration) {tls:?} (total, paused ms)");
    println!("   over TLS: {tt} ms in all, {td} ms paused; plaintext: {pt} ms in all, {pd} ms paused");
    println!("   total ratio TLS/plaintext: {:.2}", tt as f64 / pt.max(1) as f64);
}

/// Only the TLS comparison (`oxvirt-bench migration-tls`): plaintext and TLS rounds through
/// oxvirt, 5 each.
async fn migration_tls() {
    println!(
        "== live migration over TLS: idle 1 GiB guest, {MIGRATION_ROUNDS} rounds each (median), against plaintext"
    );
    let mut spec_json = kernel_spec("mig", "");
    spec_json["memory"] = serde_json::json!("1GiB");
    let (plain, _) = oxvirt_rounds(&spec_json, None, MIGRATION_ROUNDS).await;
    tls_against_plain(&spec_json, &plain).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var("OXVIRT_PROFILE").is_err() {
        std::env::set_var("OXVIRT_PROFILE", "release");
    }
    let only = std::env::args().nth(1).unwrap_or_default();
    if only.is_empty() || only == "start" {
        start_overhead().await;
    }
    if only.is_empty() || only == "scale" {
        control_plane_scale().await;
    }
    if only.is_empty() || only == "storage" {
        storage().await;
    }
    if only.is_empty() || only == "scrape" {
        scrape().await;
    }
    if only.is_empty() || only == "network" {
        network().await;
    }
    if only.is_empty() || only == "resources" {
        host_resources().await;
    }
    if only.is_empty() || only == "scheduler" {
        scheduler();
    }
    if only.is_empty() || only == "migration" {
        migration().await;
    }
    if only.is_empty() || only == "migration" || only == "migration-local" {
        local_disk_migration().await;
    }
    if only.is_empty() || only == "ha" {
        ha_recovery().await;
    }
    if only.is_empty() || only == "drain" {
        drain().await;
    }
    if only.is_empty() || only == "backup" {
        backup::backup().await;
    }
    if only.is_empty() || only == "templates" {
        templates::templates().await;
    }
    if only.is_empty() || only == "defaults" {
        defaults::defaults().await;
    }
    if only.is_empty() || only == "openflow" {
        openflow::openflow().await;
    }
    if only == "migration-tls" {
        migration_tls().await;
    }
}

/// The QEMU driver raw baselines take their argv from (TCG, as on this machine).
fn tcg_driver() -> QemuDriver {
    QemuDriver::new("qemu-system-x86_64", AccelDecision { accel: oxvirt_hypervisor::Accel::Tcg, reason: String::new() })
}

/// A raw (unmanaged) QEMU of `spec` in `paths`: the driver's own argv, daemonized by QEMU itself
/// (so it hands back once initialised, listening for a migration too) — which needs `spawn` and
/// `elevateprivileges` allowed in its sandbox; found later by its pidfile.
fn raw_qemu(
    driver: &QemuDriver,
    id: &str,
    spec: &oxvirt_model::VmSpec,
    incoming: Option<String>,
    paths: &RuntimePaths,
) {
    raw_qemu_with(driver, id, spec, &oxvirt_hypervisor::Launch { incoming, ..Default::default() }, paths)
}

/// The same, with a whole `launch`.
fn raw_qemu_with(
    driver: &QemuDriver,
    id: &str,
    spec: &oxvirt_model::VmSpec,
    launch: &oxvirt_hypervisor::Launch,
    paths: &RuntimePaths,
) {
    let mut args = driver.args(id, spec, launch, paths);
    // (-daemonize forks and calls setsid: neither is allowed in oxvirt's sandbox.)
    for a in args.iter_mut().filter(|a| a.contains("spawn=deny")) {
        *a = a.replace(",spawn=deny", "").replace(",elevateprivileges=deny", "");
    }
    args.push("-daemonize".into());
    let st = std::process::Command::new(driver.program()).args(&args).status().expect("qemu");
    assert!(st.success(), "raw QEMU did not start");
}

/// Round `round` of a raw migration: its source booted from `spec`, and the target's runtime dir.
fn raw_source(
    driver: &QemuDriver,
    dir: &std::path::Path,
    id: &str,
    round: usize,
    spec: &oxvirt_model::VmSpec,
) -> (RuntimePaths, RuntimePaths) {
    let src = RuntimePaths::new(dir.join(format!("s{round}")));
    let dst = RuntimePaths::new(dir.join(format!("d{round}")));
    for p in [&src, &dst] {
        std::fs::create_dir_all(p.dir()).expect("dir");
    }
    raw_qemu(driver, id, spec, None, &src);
    wait_file_marker(&src.console_log(), BOOT_TIMEOUT);
    (src, dst)
}

/// Two oxvirt hosts (host-a, host-b) on a one-member etcd, keys under `prefix`.
fn two_hosts(prefix: &str) -> (EtcdCluster, Daemon, Daemon) {
    two_hosts_with(prefix, None)
}

/// The same; with `pki`, etcd on TLS with client certificates and migration over TLS.
fn two_hosts_with(prefix: &str, pki: Option<&pki::TestPki>) -> (EtcdCluster, Daemon, Daemon) {
    let cluster = match pki {
        Some(p) => EtcdCluster::start_tls(1, p),
        None => EtcdCluster::start(1),
    };
    let tls = pki
        .map(|p| format!("{}migration_tls_dir = \"{}\"\n", p.etcd_settings(), p.migration_dir().display()))
        .unwrap_or_default();
    let config = |host: &str| {
        format!(
            "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{prefix}\"\nhost_name = \"{host}\"\nmember_ttl_secs = 3\n{tls}",
            cluster.endpoints()[0]
        )
    };
    let a = Daemon::start_with_config(&config("host-a"));
    let b = Daemon::start_with_config(&config("host-b"));
    (cluster, a, b)
}

/// A qcow2 image of `size` with its first `written` bytes filled (not zeros: they are copied).
fn filled_qcow2(path: &std::path::Path, size: &str, written: &str) {
    let ok = |c: &mut std::process::Command| assert!(c.status().expect("qemu tools").success());
    ok(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(path).arg(size));
    ok(std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0xab 0 {written}")])
        .arg(path)
        .stdout(std::process::Stdio::null()));
}

/// The raw sequence oxvirt automates, by hand: the target serves its empty copy over NBD, the
/// source mirrors into it, then migrates with a pause before the switch-over to finish the mirror.
/// Returns how long the disk took to copy (the mirror in sync).
async fn raw_local_disk_migration(
    src: &oxvirt_qemu::qmp::Qmp,
    dst: &oxvirt_qemu::qmp::Qmp,
    port: u16,
    nbd: u16,
) -> Duration {
    use serde_json::{json, Value};
    let t = |r: Result<Value, oxvirt_qemu::qmp::QmpError>| r.expect("qmp");
    t(dst
        .execute(
            "nbd-server-start",
            json!({ "addr": { "type": "inet", "data": { "host": "127.0.0.1", "port": nbd.to_string() } } }),
        )
        .await);
    t(dst
        .execute(
            "block-export-add",
            json!({ "type": "nbd", "id": "e0", "node-name": "disk0-fmt", "name": "disk0", "writable": true }),
        )
        .await);
    t(src
        .execute(
            "blockdev-add",
            json!({ "driver": "nbd", "node-name": "m0", "export": "disk0",
        "server": { "type": "inet", "host": "127.0.0.1", "port": nbd.to_string() } }),
        )
        .await);
    let copying = Instant::now();
    t(src.execute("blockdev-mirror", json!({ "job-id": "m0", "device": "disk0-fmt", "target": "m0", "sync": "full", "copy-mode": "write-blocking" })).await);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let jobs = t(src.execute("query-block-jobs", Value::Null).await);
        if jobs.as_array().into_iter().flatten().any(|j| j["ready"] == true) {
            break;
        }
    }
    let copied = copying.elapsed();
    t(src
        .execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "pause-before-switchover", "state": true }] }),
        )
        .await);
    t(src.execute("migrate-set-parameters", json!({ "downtime-limit": 100, "max-bandwidth": 1u64 << 40 })).await);
    t(src.execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") })).await);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let q = t(src.execute("query-migrate", Value::Null).await);
        match q["status"].as_str().unwrap_or("") {
            "completed" => break,
            "pre-switchover" => {
                t(src.execute("block-job-cancel", json!({ "device": "m0" })).await);
                while t(src.execute("query-block-jobs", Value::Null).await).as_array().is_some_and(|a| !a.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                t(src.execute("migrate-continue", json!({ "state": "pre-switchover" })).await);
            }
            "failed" | "cancelled" => panic!("raw migration failed: {q}"),
            _ => {}
        }
    }
    let _ = dst.execute("nbd-server-stop", Value::Null).await;
    copied
}

/// Writes every dirty page of the host to disk, so that a round does not pay for the writeback
/// of the one before it.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// One round of the raw baseline: a VM on `s_disk` (the copy the round before made, as with
/// oxvirt's VM moved back and forth) moved by hand into a fresh copy; (wall time, the disk
/// copy's part of it, the copy).
async fn raw_local_round(
    driver: &QemuDriver,
    dir: &std::path::Path,
    round: usize,
    s_disk: &std::path::Path,
) -> (Duration, Duration, std::path::PathBuf) {
    use serde_json::json;
    let d_disk = dir.join(format!("d{round}.qcow2"));
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&d_disk)
        .arg("1G")
        .status()
        .expect("qemu-img")
        .success());
    let mut spec_json = kernel_spec("mig", "");
    spec_json["memory"] = json!("512MiB");
    spec_json["disks"] = json!([{ "path": s_disk, "format": "qcow2" }]);
    let spec: oxvirt_model::VmSpec = serde_json::from_value(spec_json).expect("spec");
    let mut incoming = spec.clone();
    incoming.disks[0].path = d_disk.to_string_lossy().into_owned();
    let id = format!("{:08x}-0000-0000-0001-{round:012x}", std::process::id());
    let (src, dst) = raw_source(driver, dir, &id, round, &spec);
    let (port, nbd) = (free_port(), free_port());
    settle();
    let began = Instant::now();
    raw_qemu(driver, &id, &incoming, Some(format!("tcp:127.0.0.1:{port}")), &dst);
    let sq = oxvirt_qemu::qmp::Qmp::connect(&src.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
    let dq = oxvirt_qemu::qmp::Qmp::connect(&dst.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
    let copy = raw_local_disk_migration(&sq, &dq, port, nbd).await;
    let wall = began.elapsed();
    kill_pidfile(&src.pidfile());
    kill_pidfile(&dst.pidfile());
    let _ = std::fs::remove_file(s_disk);
    (wall, copy, d_disk)
}

/// The "disks copied" phase (ms) of a migration task's message.
fn copied_ms(message: &str) -> u64 {
    message.split("disks copied ").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

async fn local_disk_migration() {
    use serde_json::json;
    println!("== live migration with a local disk: idle 512 MiB guest, 1 GiB qcow2 with 256 MiB written, {ROUNDS} rounds each, interleaved, the host's writeback settled before each (median wall time)");
    let driver = tcg_driver();
    let dir = oxvirt_e2e::operator_dir("oxl");
    // Through oxvirt: two hosts, a local pool with a directory each, the VM moved back and forth.
    let (_cluster, a, b) = two_hosts("bench-local/");
    let at = |h: &str| dir.path().join(h).to_string_lossy().into_owned();
    let _: serde_json::Value = a
        .client
        .post("/api/v1/pools", &json!({ "name": "local", "path": at("pa"), "host_paths": { "host-b": at("pb") } }))
        .await
        .expect("pool");
    let _: serde_json::Value =
        a.client.post("/api/v1/pools/local/volumes", &json!({ "name": "data", "size": "1GiB" })).await.expect("volume");
    let file = std::path::Path::new(&at("pa")).join("data.qcow2");
    assert!(std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 256M"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("qemu-io")
        .success());
    let mut spec_json = kernel_spec("mig", "");
    spec_json["memory"] = json!("512MiB");
    spec_json["host"] = json!("host-a");
    spec_json["disks"] = json!([{ "volume": "local/data" }]);
    let created = a.client.create_vm(&spec_json, true).await.expect("create");
    a.client.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("start");
    wait_console(&a.client, "mig", READY, 1, BOOT_TIMEOUT).await;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    let mut raw_disk = dir.path().join("s.qcow2");
    filled_qcow2(&raw_disk, "1G", "256M");
    for round in 0..ROUNDS {
        let (wall, copy, copied) = raw_local_round(&driver, dir.path(), round, &raw_disk).await;
        raw_disk = copied;
        raw.push(wall);
        let (from, to) = if round % 2 == 0 { (&a, "host-b") } else { (&b, "host-a") };
        settle();
        let began = Instant::now();
        let t = from.client.migrate_vm("mig", to).await.expect("migrate");
        let t = from.client.wait_task(&t.id, Duration::from_secs(300)).await.expect("wait");
        ours.push(began.elapsed());
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
        println!(
            "   round {round}: raw {} ms (disk copied {} ms); oxvirt {} ms (disk copied {} ms): {}",
            wall.as_millis(),
            copy.as_millis(),
            began.elapsed().as_millis(),
            copied_ms(&t.message),
            t.message
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (r, o) = (median(raw.clone()), median(ours.clone()));
    println!("   raw QEMU by hand (baseline): {r:?} ({})", spread(&ms(&raw), " ms", 0));
    println!("   through oxvirt:              {o:?} ({})", spread(&ms(&ours), " ms", 0));
    println!("   ratio oxvirt/raw: {:.2}", o.as_secs_f64() / r.as_secs_f64());
    if std::env::var("OXVIRT_BENCH_LOGS").is_ok() {
        println!("{}\n{}", a.log(), b.log());
    }
    let _ = b.client.vm_action_wait("mig", "kill", Duration::from_secs(30)).await;
}
