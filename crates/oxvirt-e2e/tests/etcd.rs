//! The store on a real three-member etcd cluster on loopback: the same behaviour as the SQLite
//! store (revisions, compare-and-swap, whole-or-nothing transactions, ordered watches), and it
//! keeps working when one member stops.

use oxvirt_e2e::*;
use oxvirt_store::{ClusterSession, EtcdStore, Expect, Op, Store, StoreError, WatchEvent};
use serde_json::json;
use std::time::Duration;

fn store(c: &EtcdCluster, prefix: &str) -> EtcdStore {
    EtcdStore::connect(&c.endpoints(), prefix).expect("connect to etcd")
}

#[test]
fn etcd_store_behaves_like_the_store_and_survives_a_member_stopping() {
    let mut c = EtcdCluster::start(3);
    let s = store(&c, "t1/");
    // Put, get, list (in key order, only under the prefix), delete with revisions.
    let r1 = s.put("vms/a", b"1".to_vec(), Expect::Absent).unwrap();
    let r2 = s.put("vms/b", b"2".to_vec(), Expect::Absent).unwrap();
    s.put("vmsx", b"x".to_vec(), Expect::Any).unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get("vms/a").unwrap().unwrap().revision, r1);
    let keys: Vec<String> = s.list("vms/").unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["vms/a", "vms/b"]);
    // Another prefix is another store on the same cluster.
    assert!(store(&c, "t2/").list("").unwrap().is_empty());

    // Compare-and-swap.
    assert!(
        matches!(s.put("vms/a", b"x".to_vec(), Expect::Absent), Err(StoreError::Conflict { key, .. }) if key == "vms/a")
    );
    let r3 = s.put("vms/a", b"3".to_vec(), Expect::Revision(r1)).unwrap();
    assert!(matches!(s.put("vms/a", b"4".to_vec(), Expect::Revision(r1)), Err(StoreError::Conflict { .. })));
    assert_eq!(s.get("vms/a").unwrap().unwrap().value, b"3");

    // A transaction happens whole or not at all, and names the key that failed.
    let before = s.revision().unwrap();
    let r = s.txn(vec![
        Op::Put { key: "n/1".into(), value: b"1".to_vec(), expect: Expect::Absent },
        Op::Delete { key: "vms/b".into(), expect: Expect::Revision(r1) },
    ]);
    assert!(matches!(r, Err(StoreError::Conflict { key, .. }) if key == "vms/b"));
    assert!(s.get("n/1").unwrap().is_none());
    assert_eq!(s.revision().unwrap(), before);

    // Watchers see changes in order.
    let mut w = s.watch();
    s.put("w/1", b"1".to_vec(), Expect::Any).unwrap();
    s.delete("w/1", Expect::Any).unwrap();
    let next = |w: &mut tokio::sync::broadcast::Receiver<WatchEvent>| {
        let start = std::time::Instant::now();
        loop {
            if let Ok(e) = w.try_recv() {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no watch event");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert!(matches!(next(&mut w), WatchEvent::Put(e) if e.key == "w/1"));
    assert!(matches!(next(&mut w), WatchEvent::Delete { key, .. } if key == "w/1"));

    // One member of three stops: the store goes on (reads and writes).
    c.kill(0);
    let r4 = s.put("vms/a", b"5".to_vec(), Expect::Revision(r3)).unwrap();
    assert!(r4 > r3);
    assert_eq!(s.get("vms/a").unwrap().unwrap().value, b"5");
    // ... and a store whose endpoint list starts with the dead member still connects.
    let s2 = store(&c, "t1/");
    assert_eq!(s2.get("vms/a").unwrap().unwrap().revision, r4);
    // The member comes back and catches up.
    c.restart(0);
    c.wait_healthy(Duration::from_secs(30));
    let only_m0 = EtcdStore::connect(&c.endpoints()[..1], "t1/").unwrap();
    let start = std::time::Instant::now();
    while only_m0.get("vms/a").unwrap().map(|e| e.revision) != Some(r4) {
        assert!(start.elapsed() < Duration::from_secs(20), "member 0 did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Called from inside a tokio runtime (as the daemon does), the store still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_works_from_async_code() {
    let c = EtcdCluster::start(1);
    let s = store(&c, "async/");
    s.put("k", b"v".to_vec(), Expect::Absent).unwrap();
    assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
}

/// oxvirtd with its state in etcd: a VM is created and boots; the daemon is killed and started
/// again and finds the VM (in etcd) and its guest (re-adopted); the records are etcd's, not a
/// local file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_its_state_in_etcd() {
    let cluster = EtcdCluster::start(3);
    let eps: Vec<String> = cluster.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    let config = format!(
        "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"d1/\"\n",
        eps.join(", ")
    );
    let mut d = Daemon::start_with_config(&config);
    let c = &d.client;
    let created = c.create_vm(&kernel_spec("on-etcd", ""), true).await.unwrap();
    c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    wait_console(c, "on-etcd", READY, 1, BOOT_TIMEOUT).await;
    assert!(!d.path().join("store.db").exists(), "no local store in etcd mode");
    let raw = EtcdStore::connect(&cluster.endpoints(), "d1/").unwrap();
    assert!(raw.get("vms/on-etcd").unwrap().is_some());
    let pid = c.get_vm("on-etcd").await.unwrap().status.pid;
    d.respawn_after_kill9();
    let vm = wait_state(&d.client, "on-etcd", "running", Duration::from_secs(30)).await;
    assert_eq!(vm.status.pid, pid, "the same guest, re-adopted");
    d.client.vm_action_wait("on-etcd", "kill", Duration::from_secs(30)).await.unwrap();
}

/// Two members join: both are alive, exactly one leads; the leader's process goes (its lease
/// lapses after the TTL): its key disappears and the other member leads.
#[test]
fn members_are_alive_while_they_live_and_one_leads() {
    let c = EtcdCluster::start(3);
    let a = store(&c, "m/");
    let b = store(&c, "m/");
    let sa = a.join("host-a", 2);
    std::thread::sleep(Duration::from_millis(300));
    let sb = b.join("host-b", 2);
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let alive = |s: &EtcdStore| -> Vec<String> { s.list("alive/").unwrap().into_iter().map(|e| e.key).collect() };
    wait("both alive", &|| alive(&b).len() == 2);
    wait("one leader", &|| sa.is_leader() ^ sb.is_leader());
    assert!(sa.is_leader(), "the first to campaign leads");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(sb.leader()).as_deref(), Some("host-a"));
    // host-a's daemon dies: nothing renews its lease.
    drop(sa);
    drop(a);
    wait("host-a gone after its TTL", &|| alive(&b) == vec!["alive/host-b".to_string()]);
    wait("host-b leads", &|| sb.is_leader());
    assert_eq!(rt.block_on(sb.leader()).as_deref(), Some("host-b"));
}

/// Two daemons on one etcd cluster are two hosts: both online, one leads; a VM belongs to the
/// host that made it (the other refuses to run it and leaves it alone); a host with VMs cannot
/// leave; a host whose daemon dies goes offline after its TTL and the other leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_are_two_hosts_of_one_cluster() {
    let cluster = EtcdCluster::start(3);
    let config = |host: &str| cluster.host_config("c2/", host);
    let mut a = Daemon::start_with_config(&config("host-a"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = Daemon::start_with_config(&config("host-b"));
    let hosts = |d: &Daemon| d.cli(&["--output", "json", "cluster", "hosts"]);
    let start = std::time::Instant::now();
    loop {
        let (_, out, _) = hosts(&b);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let online = v.as_array().map(|h| h.iter().filter(|h| h["online"] == true).count()).unwrap_or(0);
        let leaders = v.as_array().map(|h| h.iter().filter(|h| h["leader"] == true).count()).unwrap_or(0);
        if online == 2 && leaders == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A VM of host-a: b sees it, will not run it.
    let mut on_a = kernel_spec("on-a", "");
    on_a["host"] = json!("host-a");
    b.client.create_vm(&on_a, false).await.unwrap();
    let vm = b.client.get_vm("on-a").await.unwrap();
    assert_eq!(vm.host.as_deref(), Some("host-a"));
    let err = b.client.vm_action("on-a", "start").await.unwrap_err().to_string();
    assert!(err.contains("belongs to host host-a"), "{err}");
    let (code, _, err) = b.cli(&["cluster", "leave", "host-a"]);
    assert!(code != 0 && err.contains("still has VM(s) on-a"), "{err}");
    // A VM made without a host: the scheduler spreads it to the host with most room (host-b
    // already holds a big VM), and that host boots it.
    let mut big = kernel_spec("big-on-b", "");
    big["memory"] = json!("8GiB");
    big["host"] = json!("host-b");
    b.client.create_vm(&big, false).await.unwrap();
    let created = b.client.create_vm(&kernel_spec("placed", ""), true).await.unwrap();
    assert!(created.task.is_none(), "started by its own host");
    assert_eq!(created.vm.host.as_deref(), Some("host-a"), "{:?}", created.vm.host_reason);
    assert!(created.vm.host_reason.as_deref().unwrap_or("").contains("scheduler"));
    wait_state(&a.client, "placed", "running", Duration::from_secs(30)).await;
    wait_console(&a.client, "placed", READY, 1, BOOT_TIMEOUT).await;
    let (_, out, _) = b.cli(&["vm", "show", "placed"]);
    assert!(out.contains("host:        host-a (placed by host-b's scheduler"), "{out}");
    let mut bad = kernel_spec("nowhere", "");
    bad["host"] = json!("host-z");
    let err = b.client.create_vm(&bad, false).await.unwrap_err().to_string();
    assert!(err.contains("host: there is no host named host-z"), "{err}");
    a.client.vm_action_wait("placed", "kill", Duration::from_secs(30)).await.unwrap();
    a.client.delete_vm("placed").await.unwrap();
    b.client.delete_vm("big-on-b").await.unwrap();
    // host-a's daemon dies: offline after its TTL, host-b leads.
    a.kill9();
    let start = std::time::Instant::now();
    loop {
        let (_, out, _) = hosts(&b);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let find = |n: &str| v.as_array().and_then(|h| h.iter().find(|h| h["name"] == n).cloned()).unwrap_or_default();
        if find("host-a")["online"] == false && find("host-b")["leader"] == true {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.client.delete_vm("on-a").await.unwrap();
    let (code, _, err) = b.cli(&["cluster", "leave", "host-a"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = b.cli(&["cluster", "hosts"]);
    assert!(!out.contains("host-a") && out.contains("host-b") && out.contains("leader"), "{out}");
}

/// `oxvirtd --join ENDPOINTS` makes a host a member in one command; a host with VMs of its own
/// is refused (they would be left behind) and stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_joins_with_one_flag_and_only_when_empty() {
    let cluster = EtcdCluster::start(1);
    let eps = cluster.endpoints().join(",");
    let mut local = Daemon::start();
    local.client.create_vm(&kernel_spec("mine", ""), false).await.unwrap();
    local.terminate();
    let out = std::process::Command::new(bin("oxvirtd"))
        .arg("--data-dir")
        .arg(local.path())
        .args(["--join", &eps, "--host-name", "host-j"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has VM(s) mine in its own store"), "{err}");
    let bad = std::process::Command::new(bin("oxvirtd"))
        .args(["--data-dir", "/tmp/oxv-nowhere", "--join", "10.0.0.1:2379"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--join: store.etcd_endpoints"), "{err}");
    local.restart();
    assert_eq!(local.client.get_vm("mine").await.unwrap().spec.name, "mine", "still a host of its own");

    let joined = Daemon::start_with_args("stop_timeout_secs = 5\n", &["--join", &eps, "--host-name", "host-j"]);
    let (code, out, err) = joined.cli(&["cluster", "hosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("host-j") && out.contains("online"), "{out}");
}

/// A guest counting in memory and on its (shared) disk moves from host-a to host-b while it
/// counts: the counter never goes back and goes on; a migration whose target dies leaves the VM
/// running where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_moves_a_running_guest_and_a_failed_one_leaves_it() {
    let cluster = EtcdCluster::start(3);
    let config = |host: &str| cluster.host_config("mig/", host);
    let a = Daemon::start_with_config(&config("host-a"));
    let b = Daemon::start_with_config(&config("host-b"));
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let disk = dir.path().join("shared.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut spec = kernel_spec("mover", "");
    spec["host"] = json!("host-a");
    spec["disks"] = json!([{ "path": disk, "format": "raw" }]);
    let pid_a = start_counting_guest(&a.client, &spec).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = guest_number(&a.client, "mover", "cat /tmp/c").await;
    assert!(before > 0);

    // Bad requests: named, nothing starts.
    let (status, body) = a
        .client
        .raw(hyper::Method::POST, "/api/v1/vms/mover/migrate", Some(br#"{"to":"host-z"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let err = b.client.migrate_vm("mover", "host-a").await.unwrap_err().to_string();
    assert!(err.contains("belongs to host host-a"), "{err}");

    let t: oxvirt_model::Task = a.client.post("/api/v1/vms/mover/migrate", &json!({ "to": "host-b" })).await.unwrap();
    let t = a.client.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    let vm = wait_state(&b.client, "mover", "running", Duration::from_secs(30)).await;
    assert_eq!(vm.host.as_deref(), Some("host-b"));
    let reason = vm.host_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("migrated from host-a") && reason.contains("paused"), "{reason}");
    eprintln!("migration: {reason}");
    let pid_b = vm.status.pid.unwrap();
    assert_ne!(pid_a, pid_b);
    let start = std::time::Instant::now();
    while process_alive(pid_a) {
        assert!(start.elapsed() < Duration::from_secs(10), "the source QEMU stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The guest goes on counting from where it was, in memory and on disk.
    let after = guest_number(&b.client, "mover", "cat /tmp/c").await;
    assert!(after >= before, "the counter went back: {before} -> {after}");
    let on_disk = guest_number(&b.client, "mover", "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1").await;
    assert!(on_disk >= before, "{on_disk} < {before}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(guest_number(&b.client, "mover", "cat /tmp/c").await > after, "it goes on");

    // Back to host-a, slowly; host-a's waiting QEMU dies: the VM stays on host-b, running.
    let t: oxvirt_model::Task =
        b.client.post("/api/v1/vms/mover/migrate", &json!({ "to": "host-a", "bandwidth_mibs": 1 })).await.unwrap();
    let id = b.client.get_vm("mover").await.unwrap().id;
    let pidfile = a.path().join("run").join(&id[..13]).join("qemu.pid");
    let start = std::time::Instant::now();
    let target_pid = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "host-a never got ready:\n{}\n{}", a.log(), b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    unsafe { libc::kill(target_pid, libc::SIGKILL) };
    let t = b.client.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Failed, "{t:?}");
    let vm = b.client.get_vm("mover").await.unwrap();
    assert_eq!((vm.host.as_deref(), vm.status.state.as_str(), vm.status.pid), (Some("host-b"), "running", Some(pid_b)));
    let later = guest_number(&b.client, "mover", "cat /tmp/c").await;
    assert!(later > after, "still counting on host-b: {after} -> {later}");

    // Draining host-b: in maintenance, its VM moves to host-a; new VMs go elsewhere.
    let raw = EtcdStore::connect(&cluster.endpoints(), "mig/").unwrap();
    let start = std::time::Instant::now();
    while raw.get("migrations/mover").unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(20), "host-a did not clear the failed migration");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = b.cli(&["cluster", "drain", "host-b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("moved 1 VM(s) away: mover to host-a"), "{out}");
    let vm = wait_state(&a.client, "mover", "running", Duration::from_secs(30)).await;
    assert_eq!(vm.host.as_deref(), Some("host-a"));
    assert!(guest_number(&a.client, "mover", "cat /tmp/c").await >= later);
    let placed = b.client.create_vm(&kernel_spec("fresh", ""), false).await.unwrap().vm;
    assert_eq!(placed.host.as_deref(), Some("host-a"), "host-b is in maintenance");
    let mut pinned = kernel_spec("pinned", "");
    pinned["host"] = json!("host-b");
    let err = b.client.create_vm(&pinned, false).await.unwrap_err().to_string();
    assert!(err.contains("host-b is in maintenance"), "{err}");
    let (code, _, err) = b.cli(&["cluster", "undrain", "host-b"]);
    assert_eq!(code, 0, "{err}");
    a.client.vm_action_wait("mover", "kill", Duration::from_secs(30)).await.unwrap();
}

/// Hosts started at the same instant on an empty etcd all start and join (#17 point 6: one used
/// to exit with a lost compare-and-swap on the administrator token), 20 times over, each round on
/// a keyspace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_started_at_once_on_an_empty_etcd_all_join() {
    let cluster = EtcdCluster::start(1);
    let eps: Vec<String> = cluster.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    for round in 0..20 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let starting: Vec<_> = ["host-a", "host-b", "host-c"]
            .into_iter()
            .map(|host| {
                let config = format!(
                    "stop_timeout_secs = 2\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"once{round}/\"\nhost_name = \"{host}\"\nmember_ttl_secs = 2\n",
                    eps.join(", ")
                );
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    Daemon::start_with_config(&config)
                })
            })
            .collect();
        let daemons: Vec<Daemon> = starting
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("round {round}: a host did not start")))
            .collect();
        let start = std::time::Instant::now();
        loop {
            let hosts = daemons[0].client.cluster().cluster_hosts().await.unwrap();
            if hosts.iter().filter(|h| h.online).count() == 3 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "round {round}: {hosts:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
