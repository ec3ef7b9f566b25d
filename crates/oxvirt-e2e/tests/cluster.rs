//! Three oxvirt hosts (daemons with their own data dirs and ports) on a three-member etcd
//! cluster: placement by policy (anti-affinity, affinity), live migration with a local disk
//! copied while the guest counts in memory, on disk and on its console, the cluster working on
//! with an etcd member stopped, and rebalancing by the leader.

use oxvirt_e2e::*;
use oxvirt_store::Store;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(endpoints: &[String], host: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"three/\"\nhost_name = \"{host}\"\nmember_ttl_secs = 3\n",
        eps.join(", ")
    )
}

fn hosts_json(d: &Daemon) -> serde_json::Value {
    let (_, out, _) = d.cli(&["--output", "json", "cluster", "hosts"]);
    serde_json::from_str(&out).unwrap_or_default()
}

/// The `TICK-n` lines of a console log, in order.
fn ticks(log: &str) -> Vec<u64> {
    log.split("TICK-")
        .skip(1)
        .filter_map(|t| {
            let n: String = t.chars().take_while(char::is_ascii_digit).collect();
            // Only whole lines: the number ends its line.
            t[n.len()..].starts_with(['\r', '\n']).then(|| n.parse().ok()).flatten()
        })
        .collect()
}

/// Every tick once, in order, from the first to the last: the guest never went back or skipped.
fn assert_consecutive(t: &[u64], what: &str) {
    assert!(t.len() > 3, "{what}: too few ticks {t:?}");
    for w in t.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: the console went from {} to {}: {t:?}", w[0], w[1]);
    }
}

/// Waits until the guest's console on host `d` counts past `past` (it runs there), and gives
/// the console log; says what the host saw when it does not.
async fn wait_counting(d: &Daemon, past: u64) -> String {
    let start = Instant::now();
    loop {
        let log = String::from_utf8_lossy(&d.client.console_log("mover", 1 << 20).await.unwrap()).into_owned();
        if ticks(&log).last().is_some_and(|t| *t > past) {
            return log;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let vm = d.client.get_vm("mover").await.unwrap();
            let tail: String = log.chars().rev().take(500).collect::<String>().chars().rev().collect();
            panic!("the guest does not count past {past} on {:?}: {:?}\n{tail}\n{}", vm.host, vm.status, d.log());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the old copy of a migrated disk is gone.
async fn wait_gone(p: &Path) {
    let start = Instant::now();
    while p.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{} stayed", p.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates VM `name` (the reference guest) on `host` through `d`, and waits until it has booted.
async fn booted_on(d: &Daemon, host: &str, name: &str) {
    let mut spec = kernel_spec(name, "");
    spec["host"] = json!(host);
    let created = d.client.create_vm(&spec, true).await.unwrap();
    d.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    wait_console(&d.client, name, READY, 1, BOOT_TIMEOUT).await;
}

async fn migrate(d: &Daemon, vm: &str, to: &str) {
    let (code, out, err) = d.cli(&["vm", "migrate", vm, "--to", to]);
    assert_eq!(code, 0, "{out}{err}\n{}", d.log());
    assert!(out.contains(&format!("on {to} now")) && out.contains("memory sent"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_place_by_policy_move_local_disks_and_outlive_an_etcd_member() {
    let mut etcd = EtcdCluster::start(3);
    let names = ["host-a", "host-b", "host-c"];
    let d: Vec<Daemon> = names.iter().map(|h| Daemon::start_with_config(&config(&etcd.endpoints(), h))).collect();
    let start = Instant::now();
    loop {
        let v = hosts_json(&d[0]);
        let all = v.as_array().cloned().unwrap_or_default();
        if all.iter().filter(|h| h["online"] == true).count() == 3
            && all.iter().filter(|h| h["leader"] == true).count() == 1
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Placement by policy: an anti-affinity group spreads over the three hosts, even when its
    // members are created at once through the three hosts (placements are serialized), and a
    // fourth member has nowhere to go; an affinity group stays together. Nothing is started.
    let creates = (0..3).map(|i| {
        let mut s = kernel_spec(&format!("db{i}"), "");
        s["anti_affinity"] = json!("db");
        let c = &d[i].client;
        async move { c.create_vm(&s, false).await.unwrap().vm }
    });
    let seen: std::collections::BTreeSet<String> =
        futures_util::future::join_all(creates).await.into_iter().filter_map(|v| v.host).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let mut s = kernel_spec("db3", "");
    s["anti_affinity"] = json!("db");
    let err = d[1].client.create_vm(&s, false).await.unwrap_err().to_string();
    assert!(err.contains("3 holding its anti-affinity group"), "{err}");
    let kernel = guest().kernel.to_string_lossy().into_owned();
    let (code, out, err) = d[2].cli(&["vm", "create", "web0", "--affinity", "web", "--kernel", &kernel]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = d[0].cli(&["vm", "create", "web1", "--affinity", "web", "--kernel", &kernel]);
    assert_eq!(code, 0, "{out}{err}");
    let w0 = d[0].client.get_vm("web0").await.unwrap();
    let w1 = d[0].client.get_vm("web1").await.unwrap();
    assert_eq!(w0.host, w1.host, "{:?}", w1.host_reason);
    assert!(w1.host_reason.as_deref().unwrap_or("").contains("with its affinity group"), "{:?}", w1.host_reason);
    for vm in ["db0", "db1", "db2", "web0", "web1"] {
        d[0].client.delete_vm(vm).await.unwrap();
    }

    // A local pool: each host has its own directory.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let at = |h: &str| dir.path().join(h).to_string_lossy().into_owned();
    local_pool_on_three_hosts(&d[0], dir.path());
    let file = |h: &str| Path::new(&at(h)).join("data.qcow2");
    assert!(file("a").exists());

    // A guest on host-a counting in memory, on its local disk and on its console.
    let mut spec = kernel_spec("mover", "");
    spec["host"] = json!("host-a");
    spec["disks"] = json!([{ "volume": "local/data" }]);
    let created = d[0].client.create_vm(&spec, true).await.unwrap();
    d[0].client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    wait_console(&d[0].client, "mover", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(
        &d[0].client,
        "mover",
        "(sleep 1; i=0; while :; do i=$((i+1)); echo $i > /tmp/c; echo $i | dd of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null; echo TICK-$i; sleep 0.3; done) & echo L$((2+2))OOP",
        "L4OOP",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = guest_number(&d[0].client, "mover", "cat /tmp/c").await;
    assert!(before > 0);

    // A migration whose target QEMU dies: the VM runs on where it was, its disk untouched, the
    // target's copy removed.
    let pid_a = d[0].client.get_vm("mover").await.unwrap().status.pid.unwrap();
    let t = d[0].client.migrate_vm("mover", "host-b").await.unwrap();
    let id = d[0].client.get_vm("mover").await.unwrap().id;
    let pidfile = d[1].path().join("run").join(&id[..13]).join("qemu.pid");
    let start = Instant::now();
    let target_pid = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "host-b never got ready:\n{}", d[1].log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    unsafe { libc::kill(target_pid, libc::SIGKILL) };
    let t = d[0].client.wait_task(&t.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Failed, "{t:?}");
    let vm = d[0].client.get_vm("mover").await.unwrap();
    assert_eq!((vm.host.as_deref(), vm.status.state.as_str(), vm.status.pid), (Some("host-a"), "running", Some(pid_a)));
    let raw = oxvirt_store::EtcdStore::connect(&etcd.endpoints(), "three/").unwrap();
    let start = Instant::now();
    while raw.get("migrations/mover").unwrap().is_some() || file("b").exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "host-b did not clear the failed migration");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(file("a").exists());
    let still = guest_number(&d[0].client, "mover", "cat /tmp/c").await;
    assert!(still > before, "still counting on host-a: {before} -> {still}");

    // To host-b, the disk copied while the guest runs.
    migrate(&d[0], "mover", "host-b").await;
    let vm = wait_state(&d[1].client, "mover", "running", Duration::from_secs(30)).await;
    assert_eq!(vm.host.as_deref(), Some("host-b"));
    eprintln!("local-disk migration: {:?}", vm.host_reason);
    assert!(file("b").exists(), "the disk moved");
    wait_gone(&file("a")).await;
    // The guest goes on counting there: its console log grows past what it had counted before.
    let log = wait_counting(&d[1], still).await;
    assert!(log.contains(READY), "the console log goes on from the boot on host-a");
    let t = ticks(&log);
    assert_consecutive(&t, "after host-a -> host-b");
    assert!(t[0] <= 2, "the log starts on host-a: {t:?}");
    let after = guest_number(&d[1].client, "mover", "cat /tmp/c").await;
    assert!(after > still, "{still} -> {after}");
    let on_disk = guest_number(&d[1].client, "mover", "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1").await;
    assert!(
        on_disk >= still && on_disk <= after + 5,
        "the disk holds what the guest wrote: {on_disk} ({still}..{after})"
    );
    assert!(vm.host_reason.as_deref().unwrap_or("").contains("1 local disk(s) copied"), "{:?}", vm.host_reason);
    // The volume's record follows (it is on host-b now): host-a refuses to change it; a new VM
    // with a local volume goes where that volume is.
    let vol: oxvirt_model::Volume = d[0].client.get("/api/v1/pools/local/volumes/data").await.unwrap();
    assert_eq!(vol.host.as_deref(), Some("host-b"));
    let (code, _, err) = d[0].cli(&["volume", "delete", "local/data"]);
    assert!(code != 0 && err.contains("is on host host-b"), "{err}");
    let (code, out, err) = d[1].cli(&["volume", "create", "local/extra", "--size", "8MiB"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(file("b").with_file_name("extra.qcow2").exists());
    let mut follower = kernel_spec("follower", "");
    follower["disks"] = json!([{ "volume": "local/extra" }]);
    let placed = d[0].client.create_vm(&follower, false).await.unwrap().vm;
    assert_eq!(placed.host.as_deref(), Some("host-b"), "{:?}", placed.host_reason);
    assert!(placed.host_reason.as_deref().unwrap_or("").contains("where its local disks are"));
    follower["name"] = json!("stray");
    follower["host"] = json!("host-c");
    follower["disks"] = json!([]);
    d[0].client.create_vm(&follower, false).await.unwrap();
    let err = d[2]
        .client
        .post::<serde_json::Value>("/api/v1/vms/stray/disks", &json!({ "volume": "local/data" }))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("disks[0].volume") && err.contains("is on host host-b"), "{err}");
    for vm in ["follower", "stray"] {
        d[0].client.delete_vm(vm).await.unwrap();
    }
    let (code, out, err) = d[1].cli(&["volume", "delete", "local/extra"]);
    assert_eq!(code, 0, "{out}{err}");

    // One etcd member stops: the cluster goes on, the VM moves on to host-c.
    etcd.kill(0);
    migrate(&d[1], "mover", "host-c").await;
    let vm = wait_state(&d[2].client, "mover", "running", Duration::from_secs(30)).await;
    assert_eq!(vm.host.as_deref(), Some("host-c"));
    assert!(file("c").exists());
    wait_gone(&file("b")).await;
    let log = wait_counting(&d[2], after + 5).await;
    assert_consecutive(&ticks(&log), "after host-b -> host-c");
    let on_disk = guest_number(&d[2].client, "mover", "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1").await;
    assert!(on_disk > after, "{on_disk} <= {after}");

    // Rebalancing: a second VM on host-c; the plan moves one of the two away, and the leader
    // does it once the policy says auto.
    let mut second = kernel_spec("second", "");
    second["host"] = json!("host-c");
    let created = d[2].client.create_vm(&second, true).await.unwrap();
    d[2].client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    let (code, out, err) = d[0].cli(&["cluster", "rebalance"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("host-c") && out.contains("planned") && out.contains("evens out load"), "{out}");
    let (code, out, err) = d[0].cli(&["--output", "json", "cluster", "rebalance"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["moves"].as_array().map(Vec::len), Some(1), "{plan}");
    assert_eq!(plan["started"], json!([]), "only planned");
    let (code, _, err) = d[1].cli(&["cluster", "policy", "--threshold", "1000"]);
    assert!(code != 0 && err.contains("threshold_percent"), "{err}");
    let (code, out, err) =
        d[1].cli(&["cluster", "policy", "--rebalance", "auto", "--interval", "1", "--max-migrations", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let start = Instant::now();
    let moved = loop {
        let vms = d[0].client.list_vms().await.unwrap();
        let on_c = vms.iter().filter(|v| v.host.as_deref() == Some("host-c")).count();
        let running = vms.iter().filter(|v| v.status.state.as_str() == "running").count();
        if on_c == 1 && running == 2 {
            break vms.into_iter().find(|v| v.host.as_deref() != Some("host-c")).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "no rebalancing: {}\n{}", d[2].log(), d[0].log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!("rebalanced: {} to {:?}", moved.spec.name, moved.host);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, out, _) = d[0].cli(&["--output", "json", "cluster", "rebalance"]);
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["moves"], json!([]), "balanced now: {plan}");
    // Rebalancing off before the VMs go: a plan made meanwhile would migrate one as it is killed.
    let (code, out, err) = d[1].cli(&["cluster", "policy", "--rebalance", "off"]);
    assert_eq!(code, 0, "{out}{err}");
    for vm in ["mover", "second"] {
        // A move the rebalancer began before it was turned off ends first (the VM is busy
        // until then, and may be on another host after).
        let start = Instant::now();
        loop {
            let owner = d[0].client.get_vm(vm).await.unwrap().host.unwrap();
            let i = names.iter().position(|h| *h == owner).unwrap();
            match d[i].client.vm_action_wait(vm, "kill", Duration::from_secs(30)).await {
                Ok(_) => break,
                Err(oxvirt_client::ClientError::Api(e))
                    if e.code == "busy" && start.elapsed() < Duration::from_secs(60) =>
                {
                    eprintln!("{vm} busy: {}", e.message);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("kill {vm}: {e:?}"),
            }
        }
    }
}

/// Two hosts in network namespaces of their own (linked like two machines; etcd runs in the
/// first): a VM on a VXLAN network migrates and its network follows it — the target makes the
/// network it had not made (its VXLAN end and peers from the hosts' addresses), with the same
/// gateway (address and MAC); the VM keeps its address, reaches its gateway and, across the
/// segment, the VM that stayed; the source's TAP device goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_vm_takes_its_network_along() {
    let ha = Netns::new("ha");
    let hb = Netns::new("hb");
    ha.link("m0", "10.77.0.1/24", &hb, "m0", "10.77.0.2/24");
    let etcd_dir = tempfile::tempdir_in("/tmp").unwrap();
    let ep = "http://10.77.0.1:2379";
    let log = std::fs::File::create(etcd_dir.path().join("etcd.log")).unwrap();
    let mut etcd = std::process::Command::new("ip")
        .args(["netns", "exec", &ha.name, "etcd", "--name=m0"])
        .arg(format!("--data-dir={}", etcd_dir.path().join("m0").display()))
        .args([
            &format!("--listen-client-urls={ep}"),
            &format!("--advertise-client-urls={ep}"),
            "--listen-peer-urls=http://10.77.0.1:2380",
            "--initial-advertise-peer-urls=http://10.77.0.1:2380",
            "--initial-cluster=m0=http://10.77.0.1:2380",
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while ha.try_run(&["etcdctl", "--endpoints", ep, "endpoint", "health"]).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "etcd in {} did not start", ha.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = |host: &str, ip: &str| {
        format!(
            "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{ep}\"]\nhost_name = \"{host}\"\naddress = \"{ip}:8443\"\nmember_ttl_secs = 3\n"
        )
    };
    let a = Daemon::start_in_netns(&ha, &config("host-a", "10.77.0.1"));
    let b = Daemon::start_in_netns(&hb, &config("host-b", "10.77.0.2"));
    let seg = json!({ "name": "seg", "kind": "vxlan", "subnet": "10.98.0.0/24", "vxlan": { "vni": 42, "local": "10.77.0.1" } });
    let _: oxvirt_model::NetworkView = a.client.post("/api/v1/networks", &seg).await.unwrap();
    let bridge = |ns: &Netns| ns.links().into_iter().find(|l| l.starts_with("oxb"));
    let br = bridge(&ha).expect("host-a made the network");
    assert_eq!(bridge(&hb), None, "host-b has not made it yet");

    let mut ips = Vec::new();
    for name in ["roamer", "anchor"] {
        let mut spec = kernel_spec(name, "");
        spec["host"] = json!("host-a");
        spec["nics"] = json!([{ "network": "seg" }]);
        let created = a.client.create_vm(&spec, true).await.unwrap();
        a.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
        ips.push(a.client.get_vm(name).await.unwrap().spec.nics[0].ip.unwrap().to_string());
    }
    let (ip, anchor) = (ips[0].clone(), ips[1].clone());
    wait_console(&a.client, "anchor", READY, 1, BOOT_TIMEOUT).await;
    wait_guest_address(&a.client, "anchor", &anchor).await;
    wait_console(&a.client, "roamer", READY, 1, BOOT_TIMEOUT).await;
    wait_guest_address(&a.client, "roamer", &ip).await;
    run_in_guest(&a.client, "roamer", &guest_check("ping -c 1 -W 2 10.98.0.1"), GUEST_OK).await;
    run_in_guest(&a.client, "roamer", &guest_check(&format!("ping -c 1 -W 2 {anchor}")), GUEST_OK).await;
    assert!(ha.links().iter().any(|l| l.starts_with("oxv")), "host-a has its TAP device");

    let (code, out, err) = a.cli(&["vm", "migrate", "roamer", "--to", "host-b"]);
    assert_eq!(code, 0, "{out}{err}\n{}\n{}", a.log(), b.log());
    // The user is told where the time went, phase by phase.
    for phase in ["on host-b now", "ms in all", "paused", "target ready", "memory sent", "handed over"] {
        assert!(out.contains(phase), "{phase}: {out}");
    }
    wait_state(&b.client, "roamer", "running", Duration::from_secs(30)).await;
    assert_eq!(bridge(&hb).as_deref(), Some(br.as_str()), "host-b made the network");
    let mac = |ns: &Netns| ns.run(&["cat", &format!("/sys/class/net/{br}/address")]);
    assert_eq!(mac(&ha), mac(&hb), "one gateway MAC on every host");
    assert!(hb.links().iter().any(|l| l.starts_with("oxv")), "host-b has the TAP device");
    let fdb = |ns: &Netns| {
        let dev = ns.links().into_iter().find(|l| l.starts_with("oxx")).expect("a VXLAN device");
        ns.run(&["bridge", "fdb", "show", "dev", &dev])
    };
    assert!(fdb(&hb).contains("dst 10.77.0.1"), "host-b's end sends to host-a: {}", fdb(&hb));
    let start = Instant::now();
    while !fdb(&ha).contains("dst 10.77.0.2") {
        assert!(start.elapsed() < Duration::from_secs(20), "host-a's end does not send to host-b: {}", fdb(&ha));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    while ha.links().iter().filter(|l| l.starts_with("oxv")).count() > 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "host-a kept roamer's TAP device: {:?}", ha.links());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Same address, and the gateway (now host-b's) answers; DHCP there knows the VM's lease.
    wait_guest_address(&b.client, "roamer", &ip).await;
    run_in_guest(&b.client, "roamer", &guest_check("ping -c 1 -W 2 10.98.0.1"), GUEST_OK).await;
    run_in_guest(&b.client, "roamer", &guest_check(&format!("ping -c 1 -W 2 {anchor}")), GUEST_OK).await;
    let leases: Vec<oxvirt_model::LeaseView> = b.client.get("/api/v1/networks/seg/leases").await.unwrap();
    assert!(leases.iter().any(|l| l.lease.ip.to_string() == ip), "{leases:?}");
    // Back to host-a, where it was before: its console log reads on once, without the output of
    // its first stay there twice.
    let (code, out, err) = b.cli(&["vm", "migrate", "roamer", "--to", "host-a"]);
    assert_eq!(code, 0, "{out}{err}\n{}\n{}", a.log(), b.log());
    wait_state(&a.client, "roamer", "running", Duration::from_secs(30)).await;
    let log = String::from_utf8_lossy(&a.client.console_log("roamer", 1 << 20).await.unwrap()).into_owned();
    assert_eq!(log.matches("Linux version").count(), 1, "the boot banner once:\n{log}");
    a.client.vm_action_wait("roamer", "kill", Duration::from_secs(30)).await.unwrap();
    a.client.vm_action_wait("anchor", "kill", Duration::from_secs(30)).await.unwrap();
    drop(b);
    drop(a);
    let _ = etcd.kill();
    let _ = etcd.wait();
}

/// The pid in a daemon's runtime dir for a VM, once there.
async fn wait_pidfile(d: &Daemon, vm_id: &str) -> i32 {
    let pidfile = d.path().join("run").join(&vm_id[..13]).join("qemu.pid");
    let start = Instant::now();
    loop {
        if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no QEMU started:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon that dies in the middle of a migration (source or target) undoes it when it comes
/// back: the VM runs on where it was, once, and the target's QEMU is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarting_mid_migration_undoes_it() {
    let etcd = EtcdCluster::start(1);
    let config = |host: &str| config(&etcd.endpoints(), host).replace("three/", "restart/");
    let mut a = Daemon::start_with_config(&config("host-a"));
    let mut b = Daemon::start_with_config(&config("host-b"));
    let raw = oxvirt_store::EtcdStore::connect(&etcd.endpoints(), "restart/").unwrap();
    let mut spec = kernel_spec("steady", "");
    spec["host"] = json!("host-a");
    let created = a.client.create_vm(&spec, true).await.unwrap();
    a.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    wait_console(&a.client, "steady", READY, 1, BOOT_TIMEOUT).await;
    let vm = a.client.get_vm("steady").await.unwrap();
    let pid = vm.status.pid.unwrap();
    let slow = json!({ "to": "host-b", "bandwidth_mibs": 1 });

    for restarting in ["source", "target"] {
        let t: oxvirt_model::Task = a.client.post("/api/v1/vms/steady/migrate", &slow).await.unwrap();
        let target_pid = wait_pidfile(&b, &vm.id).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if restarting == "source" {
            a.respawn_after_kill9();
        } else {
            b.respawn_after_kill9();
            let t = a.client.wait_task(&t.id, Duration::from_secs(60)).await.unwrap();
            assert_eq!(t.state, oxvirt_model::TaskState::Failed, "{t:?}");
        }
        let start = Instant::now();
        while raw.get("migrations/steady").unwrap().is_some() || process_alive(target_pid as u32) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{restarting} restarted: the migration was not undone\n{}\n{}",
                a.log(),
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let now = wait_state(&a.client, "steady", "running", Duration::from_secs(30)).await;
        assert_eq!((now.host.as_deref(), now.status.pid), (Some("host-a"), Some(pid)), "{restarting}");
        run_in_guest(&a.client, "steady", "echo AL$((1+1))VE", "AL2VE").await;
        let said = if restarting == "source" { a.log() } else { b.log() };
        assert!(said.contains("migration") && said.contains("oxvirtd's restart interrupted"), "{said}");
        let _ = std::fs::remove_file(b.path().join("run").join(&vm.id[..13]).join("qemu.pid"));
    }
    a.client.vm_action_wait("steady", "kill", Duration::from_secs(30)).await.unwrap();
}

/// A guest that keeps changing its memory over a slow link: pre-copy alone would not finish, the
/// switch to post-copy does (the target runs it and fetches the rest). A target whose confined
/// QEMU cannot use userfaultfd refuses post-copy up front, and the VM stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_copy_finishes_what_pre_copy_cannot() {
    let etcd = EtcdCluster::start(1);
    let config = |host: &str| config(&etcd.endpoints(), host).replace("three/", "postcopy/");
    // host-b's QEMU runs as root (so it may use userfaultfd); host-a's is confined as usual.
    let a = Daemon::start_with_config(&config("host-a"));
    let b = Daemon::start_with_config(&format!("confine_qemu = false\n{}", config("host-b")));
    booted_on(&a, "host-a", "busy").await;
    run_in_guest(
        &a.client,
        "busy",
        "(while :; do dd if=/dev/urandom of=/tmp/d bs=64k count=16 2>/dev/null; done) & echo D$((2+2))IRTY",
        "D4IRTY",
    )
    .await;
    let t: oxvirt_model::Task = a
        .client
        .post("/api/v1/vms/busy/migrate", &json!({ "to": "host-b", "bandwidth_mibs": 1, "postcopy": true }))
        .await
        .unwrap();
    let t = a.client.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}\n{}\n{}", a.log(), b.log());
    let vm = wait_state(&b.client, "busy", "running", Duration::from_secs(30)).await;
    let reason = vm.host_reason.unwrap_or_default();
    assert!(reason.contains("finished by post-copy"), "{reason}");
    run_in_guest(&b.client, "busy", "echo AL$((1+1))VE", "AL2VE").await;

    // Back to host-a with post-copy: refused by host-a, named; the VM runs on on host-b.
    let pid = vm.status.pid;
    let t: oxvirt_model::Task =
        b.client.post("/api/v1/vms/busy/migrate", &json!({ "to": "host-a", "postcopy": true })).await.unwrap();
    let t = b.client.wait_task(&t.id, Duration::from_secs(60)).await.unwrap();
    let err = t.error.clone().unwrap_or_default();
    assert!(
        t.state == oxvirt_model::TaskState::Failed && err.contains("postcopy") && err.contains("userfaultfd"),
        "{t:?}\n{}\n{}",
        a.log(),
        b.log()
    );
    let vm = b.client.get_vm("busy").await.unwrap();
    assert_eq!((vm.host.as_deref(), vm.status.state.as_str(), vm.status.pid), (Some("host-b"), "running", pid));
    b.client.vm_action_wait("busy", "kill", Duration::from_secs(30)).await.unwrap();
}

/// A console client that stopped reading while the guest printed leaves QEMU's serial port
/// waiting to send a byte at the switch-over; the target, which has no client of its own yet,
/// would never send it (QEMU retries only on a connected client) and the guest's console stays
/// silent for good. The target holds its console until the guest runs: the guest prints on,
/// and answers on host-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_stalled_at_the_switch_over_talks_on_after_it() {
    let etcd = EtcdCluster::start(1);
    let config = |host: &str| config(&etcd.endpoints(), host).replace("three/", "stalled/");
    let a = Daemon::start_with_config(&config("host-a"));
    let b = Daemon::start_with_config(&config("host-b"));
    booted_on(&a, "host-a", "talker").await;
    // In 2 s the guest prints 256 KiB; by then a client that reads nothing holds its console.
    run_in_guest(
        &a.client,
        "talker",
        "(sleep 2; head -c 262144 /dev/zero | tr '\\0' x; echo; echo PRI$((1+1))NTED) & echo ST$((1+1))ART",
        "ST2ART",
    )
    .await;
    let id = a.client.get_vm("talker").await.unwrap().id;
    let log = a.path().join("run").join(&id[..13]).join("console.log");
    let stalled = std::os::unix::net::UnixStream::connect(log.with_file_name("console.sock")).unwrap();
    let (start, mut last, mut still) = (Instant::now(), 0, Instant::now());
    loop {
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if len != last {
            (last, still) = (len, Instant::now());
        }
        // (QEMU's log holds what it sent: it stops where the socket's buffer filled, before the
        // guest's last word.)
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        assert!(!text.contains("PRI2NTED"), "the guest printed all while a client read nothing");
        if text.contains("xxxxxxxxxxxxxxxx") && still.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the guest's output did not stall: {len} bytes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    migrate(&a, "talker", "host-b").await;
    drop(stalled);
    // The guest prints the rest (its log on host-b has it) and answers.
    wait_console(&b.client, "talker", "PRI2NTED", 1, Duration::from_secs(60)).await;
    run_in_guest(&b.client, "talker", "echo AL$((1+1))VE", "AL2VE").await;
    b.client.vm_action_wait("talker", "kill", Duration::from_secs(30)).await.unwrap();
}
