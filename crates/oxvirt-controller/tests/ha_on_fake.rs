//! High availability's keeper on a fake hypervisor: an HA VM kept started is started, restarted
//! when its QEMU dies (up to its `max_restarts`), then left with the reason on one host or moved
//! to another in a cluster; a user's stop makes it `stopped`; an HA VM cannot be deleted.

use oxvirt_controller::{Controller, ControllerConfig};
use oxvirt_hypervisor::fake::FakeHypervisor;
use oxvirt_hypervisor::Hypervisor;
use oxvirt_model::{HaResourceSpec, HaState, TaskState, Vm, VmAction, VmSpec, VmState, ROOT};
use oxvirt_store::{Expect, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::Member;

fn spec(kernel: &std::path::Path, name: &str, host: Option<&str>) -> VmSpec {
    let mut j = serde_json::json!({ "name": name, "cpus": 1, "memory": "64MiB", "kernel": { "kernel": kernel } });
    if let Some(h) = host {
        j["host"] = serde_json::json!(h);
    }
    serde_json::from_value(j).unwrap()
}

fn ha(vm: &str, json: serde_json::Value) -> HaResourceSpec {
    let mut j = json;
    j["vm"] = serde_json::json!(vm);
    serde_json::from_value(j).unwrap()
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn running_pid(c: &Controller, name: &str) -> Option<u32> {
    let v = c.vms().get_vm(name).ok()?;
    (v.status.state == VmState::Running).then_some(v.status.pid).flatten()
}

async fn one_host() -> (common::TestRoot, Controller, Arc<FakeHypervisor>) {
    let root = common::TestRoot::new();
    let mut config = ControllerConfig::new(root.dir.path().join("host"));
    config.host_path_roots = vec![root.boot.clone()];
    config.reconcile_interval = Duration::from_millis(100);
    let fake = FakeHypervisor::new();
    let hv: Arc<dyn Hypervisor> = fake.clone();
    let c = Controller::new(root.store.clone(), hv, config).unwrap();
    c.start_background().await;
    (root, c, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_vm_is_restarted_up_to_its_tries_then_left_with_the_reason() {
    let (root, c, fake) = one_host().await;
    c.vms().create_vm(ROOT, spec(&root.kernel, "web", None)).unwrap();
    let r = c.ha().add_resource(ha("web", serde_json::json!({}))).unwrap();
    assert_eq!((r.spec.state, r.spec.max_restarts), (HaState::Started, 1));
    // Added while off: the keeper starts it (no failure, nothing counted).
    let first = until("started by HA", || running_pid(&c, "web")).await;
    assert_eq!(c.ha().get_resource("web").unwrap().status.restarts, 0);
    // Its QEMU dies: restarted, one restart counted.
    let vm: Vm = c.vms().get_vm("web").unwrap();
    fake.instance(&vm.id).unwrap().crash();
    let second = until("restarted by HA", || running_pid(&c, "web").filter(|p| *p != first)).await;
    assert_eq!(c.ha().get_resource("web").unwrap().status.restarts, 1);
    // Dies again: its one restart is used up and a single host has nowhere to move it.
    fake.instance(&vm.id).unwrap().crash();
    let problem = until("given up", || {
        let r = c.ha().get_resource("web").ok()?;
        (!r.status.problem.is_empty()).then_some(r.status.problem)
    })
    .await;
    assert!(problem.contains("1 restart(s) and 0 relocation(s)"), "{problem}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.vms().get_vm("web").unwrap().status.state, VmState::Stopped, "not started a third time");
    assert_ne!(running_pid(&c, "web"), Some(second));
    // An HA VM is not deleted behind HA's back.
    let err = c.vms().delete_vm("web").unwrap_err().to_string();
    assert!(err.contains("HA resource") && err.contains("ha remove web"), "{err}");
    c.ha().remove_resource("web").unwrap();
    c.vms().delete_vm("web").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_stop_and_start_change_the_ha_state() {
    let (root, c, _fake) = one_host().await;
    c.vms().create_vm(ROOT, spec(&root.kernel, "db", None)).unwrap();
    c.ha().add_resource(ha("db", serde_json::json!({}))).unwrap();
    until("started by HA", || running_pid(&c, "db")).await;
    let t = c.vms().vm_action("db", VmAction::Stop).unwrap();
    assert_eq!(c.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap().state, TaskState::Succeeded);
    assert_eq!(c.ha().get_resource("db").unwrap().spec.state, HaState::Stopped);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.vms().get_vm("db").unwrap().status.state, VmState::Stopped, "HA keeps it stopped now");
    let t = c.vms().vm_action("db", VmAction::Start).unwrap();
    assert_eq!(c.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap().state, TaskState::Succeeded);
    assert_eq!(c.ha().get_resource("db").unwrap().spec.state, HaState::Started);
    // Set `stopped` through HA: the keeper stops it; `disabled`: it is left alone.
    let mut s = c.ha().get_resource("db").unwrap().spec;
    s.state = HaState::Stopped;
    c.ha().set_resource("db", s.clone()).unwrap();
    until("stopped by HA", || (c.vms().get_vm("db").ok()?.status.state == VmState::Stopped).then_some(())).await;
    s.state = HaState::Disabled;
    c.ha().set_resource("db", s).unwrap();
    let t = c.vms().vm_action("db", VmAction::Start).unwrap();
    c.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.ha().get_resource("db").unwrap().spec.state, HaState::Disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ha_requests_name_the_field_and_change_nothing() {
    let (root, c, _fake) = one_host().await;
    c.vms().create_vm(ROOT, spec(&root.kernel, "web", None)).unwrap();
    let err = c.ha().add_resource(ha("nope", serde_json::json!({}))).unwrap_err().to_string();
    assert!(err.contains("vm") && err.contains("no VM named nope"), "{err}");
    let err = c.ha().add_resource(ha("web", serde_json::json!({ "group": "g" }))).unwrap_err().to_string();
    assert!(err.contains("group") && err.contains("no HA group named g"), "{err}");
    assert!(c.ha().list_resources().unwrap().is_empty());
    c.ha().add_resource(ha("web", serde_json::json!({ "state": "disabled" }))).unwrap();
    let err = c.ha().add_resource(ha("web", serde_json::json!({}))).unwrap_err().to_string();
    assert!(err.contains("already"), "{err}");
    let err = c.ha().set_resource("web", ha("other", serde_json::json!({}))).unwrap_err().to_string();
    assert!(err.contains("vm") && err.contains("in the path"), "{err}");
    let g: oxvirt_model::HaGroupSpec =
        serde_json::from_value(serde_json::json!({ "name": "g", "hosts": [{ "host": "h1" }] })).unwrap();
    c.ha().add_group(g).unwrap();
    c.ha().set_resource("web", ha("web", serde_json::json!({ "group": "g", "state": "disabled" }))).unwrap();
    let err = c.ha().remove_group("g").unwrap_err().to_string();
    assert!(err.contains("web"), "{err}");
}

/// Host `name` of a cluster on `root`'s store, holding its lease (`alive/<name>`).
fn cluster_host(root: &common::TestRoot, name: &str) -> (Controller, Arc<FakeHypervisor>) {
    let mut config = ControllerConfig::new(root.dir.path().join(name));
    config.host_path_roots = vec![root.boot.clone(), root.dir.path().to_path_buf()];
    config.reconcile_interval = Duration::from_millis(100);
    let fake = FakeHypervisor::new();
    let hv: Arc<dyn Hypervisor> = fake.clone();
    let c = Controller::new(root.store.clone(), hv, config).unwrap();
    c.hosts().join_cluster(name, "127.0.0.1:8443", Member).unwrap();
    root.store.put(&format!("alive/{name}"), name.as_bytes().to_vec(), Expect::Any).unwrap();
    (c, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_restarts_a_vm_moves_to_the_groups_preferred_host() {
    let root = common::TestRoot::new();
    let (a, fake_a) = cluster_host(&root, "host-a");
    let (b, fake_b) = cluster_host(&root, "host-b");
    let (c, fake_c) = cluster_host(&root, "host-c");
    for h in [&a, &b, &c] {
        h.start_background().await;
    }
    // host-c is preferred over host-b.
    let g: oxvirt_model::HaGroupSpec = serde_json::from_value(serde_json::json!({
        "name": "g", "hosts": [{ "host": "host-b", "priority": 1 }, { "host": "host-c", "priority": 2 }]
    }))
    .unwrap();
    a.ha().add_group(g).unwrap();
    a.vms().create_vm(ROOT, spec(&root.kernel, "web", Some("host-a"))).unwrap();
    a.ha().add_resource(ha("web", serde_json::json!({ "group": "g", "max_restarts": 0 }))).unwrap();
    until("started on host-a", || running_pid(&a, "web")).await;
    let vm = a.vms().get_vm("web").unwrap();
    fake_a.instance(&vm.id).unwrap().crash();
    let moved = until("running on host-c", || {
        let v = c.vms().get_vm("web").ok()?;
        (v.host.as_deref() == Some("host-c") && v.status.state == VmState::Running && fake_c.starts().len() == 1)
            .then_some(v)
    })
    .await;
    assert!(moved.host_reason.unwrap_or_default().contains("recovered by HA from host-a"));
    let r = a.ha().get_resource("web").unwrap();
    let rec = r.status.last_recovery.expect("a recovery recorded");
    assert_eq!((rec.from.as_str(), rec.to.as_str(), r.status.relocations), ("host-a", "host-c", 1));
    // host-a does not start it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake_a.starts().len(), 1, "host-a started it once");
    assert_eq!(fake_c.starts().len(), 1, "host-c started it once");
    assert!(fake_b.starts().is_empty(), "host-b, less preferred, never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_vm_on_its_local_disk_is_reported_not_recoverable_and_started_nowhere_else() {
    let root = common::TestRoot::new();
    let (a, fake_a) = cluster_host(&root, "host-a");
    let (b, fake_b) = cluster_host(&root, "host-b");
    for h in [&a, &b] {
        h.start_background().await;
    }
    let at = |h: &str| {
        let d = root.dir.path().join(h);
        std::fs::create_dir_all(&d).unwrap();
        d.to_string_lossy().into_owned()
    };
    let pool: oxvirt_model::PoolSpec = serde_json::from_value(serde_json::json!({
        "name": "local", "path": at("pa"), "host_paths": { "host-b": at("pb") }
    }))
    .unwrap();
    a.storage().create_pool(ROOT, pool).await.unwrap();
    let vol: oxvirt_model::VolumeSpec =
        serde_json::from_value(serde_json::json!({ "name": "data", "size": "16MiB" })).unwrap();
    // The volume is made on host-b, in its directory of the local pool.
    b.storage().create_volume("local", vol).await.unwrap();
    let mut s = spec(&root.kernel, "db", Some("host-b"));
    s.disks = serde_json::from_value(serde_json::json!([{ "volume": "local/data" }])).unwrap();
    b.vms().create_vm(ROOT, s).unwrap();
    b.ha().add_resource(ha("db", serde_json::json!({}))).unwrap();
    until("started on host-b", || running_pid(&b, "db")).await;
    // Said from the start, and still once the keeper started it.
    let why = "not recoverable on another host: its disks are on host host-b's local storage";
    let r = a.ha().get_resource("db").unwrap();
    assert!(r.status.problem.contains(why), "{:?}", r.status);

    // host-b's lease ends (it crashed): the leader, host-a, notes the loss and, once it may
    // recover, starts nothing.
    root.store.delete("alive/host-b", Expect::Any).unwrap();
    until("host-b seen lost", || (a.ha().figures().hosts_lost >= 1).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r = a.ha().get_resource("db").unwrap();
    assert!(r.status.problem.contains(why) && r.status.last_recovery.is_none(), "{:?}", r.status);
    let v = a.vms().get_vm("db").unwrap();
    assert_eq!(v.host.as_deref(), Some("host-b"), "the VM stays with its disk");
    assert!(fake_a.starts().is_empty(), "host-a never started it");
    assert_eq!(fake_b.starts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_vm_is_recovered_only_once_its_run_lease_is_gone() {
    let root = common::TestRoot::new();
    let (a, fake_a) = cluster_host(&root, "host-a");
    let (b, _fake_b) = cluster_host(&root, "host-b");
    for h in [&a, &b] {
        h.start_background().await;
    }
    b.vms().create_vm(ROOT, spec(&root.kernel, "web", Some("host-b"))).unwrap();
    b.ha().add_resource(ha("web", serde_json::json!({}))).unwrap();
    until("started on host-b", || running_pid(&b, "web")).await;
    // host-b holds the run lease of the VM it runs (shown, never stored in the record).
    until("host-b holds the run lease", || {
        (a.ha().get_resource("web").ok()?.status.run_lease.as_deref() == Some("host-b")).then_some(())
    })
    .await;
    let key = <oxvirt_model::HaResource as oxvirt_store::Record>::key_of("web");
    let stored = root.store.get(&key).unwrap().map(|e| String::from_utf8_lossy(&e.value).into_owned());
    assert!(stored.is_some_and(|s| !s.contains("run_lease")), "the holder is read, not stored");

    // host-b's presence ends; its run lease, on a store without leases, stays: the leader
    // (host-a) waits, and says why.
    root.store.delete("alive/host-b", Expect::Any).unwrap();
    let why = until("the wait said", || {
        let p = a.ha().get_resource("web").ok()?.status.problem;
        p.contains("run lease is still held by host-b").then_some(p)
    })
    .await;
    assert!(fake_a.starts().is_empty(), "{why}");
    assert_eq!(a.vms().get_vm("web").unwrap().host.as_deref(), Some("host-b"));
    // The lease lapses (as etcd ends it with host-b's own): recovered on host-a, which takes it.
    root.store.delete("ha/run/web", Expect::Any).unwrap();
    until("running on host-a", || (fake_a.starts().len() == 1).then_some(())).await;
    let r = a.ha().get_resource("web").unwrap();
    assert_eq!(r.status.last_recovery.map(|x| x.to), Some("host-a".to_string()));
    until("host-a holds the run lease", || (a.ha().run_lease_holder("web").as_deref() == Some("host-a")).then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_starts_no_ha_vm_whose_run_lease_another_holds() {
    let root = common::TestRoot::new();
    let (a, fake_a) = cluster_host(&root, "host-a");
    a.start_background().await;
    a.vms().create_vm(ROOT, spec(&root.kernel, "db", Some("host-a"))).unwrap();
    // Another host's lease on it (a stale record, say): host-a does not start it, and says why.
    root.store.put("ha/run/db", b"host-z".to_vec(), Expect::Absent).unwrap();
    a.ha().add_resource(ha("db", serde_json::json!({}))).unwrap();
    until("the refusal said", || {
        a.ha().get_resource("db").ok()?.status.problem.contains("run lease is held by host host-z").then_some(())
    })
    .await;
    assert!(fake_a.starts().is_empty());
    root.store.delete("ha/run/db", Expect::Any).unwrap();
    until("started once the lease is free", || running_pid(&a, "db")).await;
    assert_eq!(a.ha().run_lease_holder("db").as_deref(), Some("host-a"));
    // Out of HA, its run lease goes.
    a.ha().remove_resource("db").unwrap();
    assert_eq!(a.ha().run_lease_holder("db"), None);
}
