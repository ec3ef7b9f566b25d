//! Live migration's record transitions, on two hosts of one cluster: two controllers, each on a
//! fake hypervisor of its own, sharing one store (as hosts share etcd), their membership held by
//! hand. What the end-to-end tests show with two QEMUs and etcd, here in milliseconds and with the
//! stream's fate chosen by the test: the record goes Requested -> Ready -> Completed and the VM
//! with it; a stream that breaks, or a target that cannot start, leaves the VM running where it was.

use oxvirt_controller::{Controller, ControllerConfig};
use oxvirt_hypervisor::fake::{FakeHypervisor, FakeInstance};
use oxvirt_hypervisor::{Hypervisor, Instance, RunState};
use oxvirt_model::{MigrateRequest, Migration, MigrationState, TaskState, Vm, VmAction, VmSpec, VmState, ROOT};
use oxvirt_store::{Expect, Record, SqliteStore, Store, WatchEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::Member;

struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    kernel: std::path::PathBuf,
    a: Controller,
    b: Controller,
    hv_a: Arc<FakeHypervisor>,
    hv_b: Arc<FakeHypervisor>,
}

impl Cluster {
    async fn new() -> Cluster {
        let common::TestRoot { dir, boot, kernel, store } = common::TestRoot::new();
        let host = |name: &str, hv: Arc<FakeHypervisor>| {
            let mut config = ControllerConfig::new(dir.path().join(name));
            config.host_path_roots = vec![boot.clone()];
            config.reconcile_interval = Duration::from_millis(200);
            let hv: Arc<dyn Hypervisor> = hv;
            let c = Controller::new(store.clone(), hv, config).unwrap();
            c.hosts().join_cluster(name, "127.0.0.1:8443", Member).unwrap();
            // What a host's lease keeps in etcd: it is online.
            store.put(&format!("alive/{name}"), name.as_bytes().to_vec(), Expect::Any).unwrap();
            c
        };
        let (hv_a, hv_b) = (FakeHypervisor::new(), FakeHypervisor::new());
        let (a, b) = (host("host-a", hv_a.clone()), host("host-b", hv_b.clone()));
        a.start_background().await;
        b.start_background().await;
        Cluster { dir, store, kernel, a, b, hv_a, hv_b }
    }

    fn spec(&self, name: &str) -> VmSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "cpus": 1, "memory": "64MiB", "host": "host-a",
            "kernel": { "kernel": self.kernel },
        }))
        .unwrap()
    }

    /// A VM running on host-a.
    async fn running_on_a(&self, name: &str) -> (Vm, Arc<FakeInstance>) {
        self.a.vms().create_vm(ROOT, self.spec(name)).unwrap();
        let t = self.a.vms().vm_action(name, VmAction::Start).unwrap();
        let t = self.a.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        let vm = self.a.vms().get_vm(name).unwrap();
        assert_eq!((vm.host.as_deref(), vm.status.state), (Some("host-a"), VmState::Running));
        let guest = self.hv_a.instance(&vm.id).expect("a guest on host-a");
        (vm, guest)
    }

    /// Migrates `name` to host-b; the task's end and the migration record's states on the way
    /// (`None` for its removal), as the store saw them.
    async fn migrate(&self, name: &str) -> (oxvirt_model::Task, Vec<Option<MigrationState>>) {
        self.migrate_from(&self.a, name, "host-b").await
    }

    /// Migrates `name` from the host `from` to `to`, as [`Cluster::migrate`].
    async fn migrate_from(
        &self,
        from: &Controller,
        name: &str,
        to: &str,
    ) -> (oxvirt_model::Task, Vec<Option<MigrationState>>) {
        let mut watch = self.store.watch();
        let req = MigrateRequest {
            to: to.into(),
            downtime_ms: 100,
            bandwidth_mibs: 0,
            auto_converge: false,
            postcopy: false,
        };
        let t = from.migrations().migrate_vm(name, req).unwrap();
        let t = from.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap();
        // Every end removes the record: wait for that, then read what changed on the way.
        let key = Migration::key_of(name);
        let start = Instant::now();
        while self.store.get(&key).unwrap().is_some() {
            assert!(start.elapsed() < Duration::from_secs(10), "the migration record stays");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut states = Vec::new();
        while let Ok(e) = watch.try_recv() {
            match e {
                WatchEvent::Put(e) if e.key == key => {
                    let m: Migration = serde_json::from_slice(&e.value).unwrap();
                    if states.last() != Some(&Some(m.state)) {
                        states.push(Some(m.state));
                    }
                }
                WatchEvent::Delete { key: k, .. } if k == key => states.push(None),
                _ => {}
            }
        }
        (t, states)
    }
}

/// Waits until `what` holds of the VM's record (read through `c`).
async fn wait_vm(c: &Controller, name: &str, what: &str, ok: impl Fn(&Vm) -> bool) -> Vm {
    let start = Instant::now();
    loop {
        let vm = c.vms().get_vm(name).unwrap();
        if ok(&vm) {
            return vm;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {vm:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_moves_the_record_and_the_guest_in_order() {
    let c = Cluster::new().await;
    let (vm, source) = c.running_on_a("web").await;
    let (task, states) = c.migrate("web").await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    // The task's last word says how it went, phase by phase, with their durations.
    let said = &task.message;
    assert!(said.starts_with("on host-b now: "), "{said}");
    for phase in ["ms in all", "paused", "target ready", "memory sent", "handed over"] {
        assert!(said.contains(phase), "{phase}: {said}");
    }
    use MigrationState::*;
    assert_eq!(states, [Some(Requested), Some(Ready), Some(Completed), None]);
    // The VM is host-b's, run by host-b's guest, which was started waiting for the stream.
    let target = c.hv_b.instance(&vm.id).expect("a guest on host-b");
    assert_eq!(c.hv_b.starts()[0].launch.incoming.as_deref(), Some("defer"));
    let moved = wait_vm(&c.b, "web", "taken over by host-b", |v| v.status.pid == Some(target.pid())).await;
    assert_eq!((moved.host.as_deref(), moved.status.state), (Some("host-b"), VmState::Running));
    let how = moved.host_reason.unwrap_or_default();
    assert!(how.contains("migrated from host-a") && how.contains("ms in all") && how.contains("memory sent"), "{how}");
    assert_eq!(target.state(), RunState::Running);
    // Host-a's QEMU sent it once and is gone; host-a leaves the VM alone from now on.
    assert_eq!(source.migrations_sent(), 1);
    let start = Instant::now();
    while !source.has_exited() {
        assert!(start.elapsed() < Duration::from_secs(10), "host-a's QEMU stays");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // two reconcile rounds of each host
    let after = c.b.vms().get_vm("web").unwrap();
    assert_eq!(
        (after.host.as_deref(), after.status.state, after.status.pid),
        (Some("host-b"), VmState::Running, Some(target.pid()))
    );
    assert_eq!(c.hv_a.starts().len(), 1, "host-a never starts it again");
    assert!(!target.has_exited());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_leaves_the_vm_running_where_it_was() {
    let c = Cluster::new().await;
    let (vm, source) = c.running_on_a("web").await;
    source.fail_next_migration("connection reset by peer");
    let (task, states) = c.migrate("web").await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert!(task.error.as_deref().unwrap_or_default().contains("connection reset by peer"), "{task:?}");
    use MigrationState::*;
    assert_eq!(states, [Some(Requested), Some(Ready), Some(Failed), None]);
    // The source's guest runs on (resumed), the VM is host-a's; host-b's waiting guest is gone.
    assert_eq!(source.state(), RunState::Running);
    let target = c.hv_b.instance(&vm.id);
    assert!(target.is_none_or(|t| t.has_exited()), "host-b's waiting QEMU stays");
    let after = wait_vm(&c.a, "web", "running on host-a", |v| v.status.state == VmState::Running).await;
    assert_eq!((after.host.as_deref(), after.status.pid), (Some("host-a"), Some(source.pid())));
    // It can go again, and does.
    let (task, _) = c.migrate("web").await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_start_refuses_and_nothing_moves() {
    let c = Cluster::new().await;
    let (_, source) = c.running_on_a("web").await;
    c.hv_b.fail_next_start("not enough memory on host-b");
    let (task, states) = c.migrate("web").await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.unwrap_or_default();
    assert!(error.contains("the target refused") && error.contains("not enough memory on host-b"), "{error}");
    use MigrationState::*;
    assert_eq!(states, [Some(Requested), Some(Refused), None]);
    assert_eq!(source.migrations_sent(), 0, "nothing was sent");
    assert_eq!(source.state(), RunState::Running);
    let after = c.a.vms().get_vm("web").unwrap();
    assert_eq!((after.host.as_deref(), after.status.state), (Some("host-a"), VmState::Running));
}

/// Refused before any record is written: a VM that does not run, a host that is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_migrate_is_refused_before_a_record_is_written() {
    let c = Cluster::new().await;
    c.a.vms().create_vm(ROOT, c.spec("idle")).unwrap();
    let req = |to: &str| MigrateRequest {
        to: to.into(),
        downtime_ms: 100,
        bandwidth_mibs: 0,
        auto_converge: false,
        postcopy: false,
    };
    let e = c.a.migrations().migrate_vm("idle", req("host-b")).unwrap_err().to_string();
    assert!(e.contains("only a running VM migrates"), "{e}");
    c.running_on_a("web").await;
    c.store.delete("alive/host-b", Expect::Any).unwrap();
    let e = c.a.migrations().migrate_vm("web", req("host-b")).unwrap_err().to_string();
    assert!(e.contains("host host-b is offline"), "{e}");
    let e = c.a.migrations().migrate_vm("web", req("host-a")).unwrap_err().to_string();
    assert!(e.contains("runs on host-a already"), "{e}");
    assert!(c.store.get(&Migration::key_of("web")).unwrap().is_none());
    assert!(c.store.get(&Migration::key_of("idle")).unwrap().is_none());
}

/// Appends `text` to a file, as a guest's serial output reaches its console log.
fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// The console's output follows the VM exactly once: back on a host it left, its log there is
/// what it carried (the old stay's output included), not that plus the old stay again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_log_follows_the_vm_once() {
    let c = Cluster::new().await;
    let (vm, _) = c.running_on_a("web").await;
    let log = |host: &str| {
        oxvirt_hypervisor::RuntimePaths::new(c.dir.path().join(host).join("run").join(&vm.id[..13])).console_log()
    };
    // The run directories QEMU's driver makes at a start (the fake makes none).
    std::fs::create_dir_all(log("host-b").parent().unwrap()).unwrap();
    append(&log("host-a"), "boot\n");
    assert_eq!(c.migrate("web").await.0.state, TaskState::Succeeded);
    wait_vm(&c.b, "web", "on host-b", |v| v.host.as_deref() == Some("host-b") && v.status.pid.is_some()).await;
    append(&log("host-b"), "tick 1\n");
    let (task, _) = c.migrate_from(&c.b, "web", "host-a").await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    wait_vm(&c.a, "web", "back on host-a", |v| v.host.as_deref() == Some("host-a") && v.status.pid.is_some()).await;
    append(&log("host-a"), "tick 2\n");
    let text = String::from_utf8(c.a.vms().console_log("web", 1 << 20).unwrap()).unwrap();
    assert_eq!(text, "boot\ntick 1\ntick 2\n");
    // Host-b keeps nothing of it, once it has cleaned up behind the VM (after the hand-over).
    let start = Instant::now();
    while log("host-b").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "host-b kept the VM's console log");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Most migration records alive at once while `run` runs, as the store's watch saw them.
async fn most_at_once<T>(store: &SqliteStore, run: impl std::future::Future<Output = T>) -> (T, usize) {
    let mut watch = store.watch();
    let out = run.await;
    let (mut alive, mut most) = (std::collections::HashSet::new(), 0);
    while let Ok(e) = watch.try_recv() {
        match e {
            WatchEvent::Put(e) if e.key.starts_with(Migration::PREFIX) => {
                alive.insert(e.key);
            }
            WatchEvent::Delete { key, .. } if key.starts_with(Migration::PREFIX) => {
                alive.remove(&key);
            }
            _ => {}
        }
        most = most.max(alive.len());
    }
    (out, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_every_vm_no_more_at_once_than_the_policy_allows() {
    let c = Cluster::new().await;
    for limit in [1u32, 2] {
        let names: Vec<String> = (0..4).map(|i| format!("vm{limit}-{i}")).collect();
        for n in &names {
            c.running_on_a(n).await;
        }
        let policy = oxvirt_model::ClusterPolicy { max_migrations: limit, ..Default::default() };
        c.a.hosts().set_cluster_policy(policy).unwrap();
        // The last round's records are gone (a target deletes one after the source's task
        // ended): only this round's migrations are counted.
        let begun = Instant::now();
        while !c.store.list(Migration::PREFIX).unwrap().is_empty() {
            assert!(begun.elapsed() < Duration::from_secs(10), "the last round's migration records stay");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (task, most) = most_at_once(&c.store, async {
            let tasks = c.a.hosts().set_maintenance("host-a", true).unwrap();
            assert_eq!(tasks.len(), 1, "one task drains the host: {tasks:?}");
            assert_eq!(tasks[0].kind, "host.drain");
            c.a.tasks().wait(&tasks[0].id, Duration::from_secs(20)).await.unwrap()
        })
        .await;
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
        assert!(task.message.starts_with("moved 4 VM(s) away: "), "{}", task.message);
        assert!((1..=limit as usize).contains(&most), "limit {limit}: {most} migrations at once");
        for n in &names {
            let vm = wait_vm(&c.b, n, "running on host-b", |v| v.status.state == VmState::Running).await;
            assert_eq!(vm.host.as_deref(), Some("host-b"), "{n}");
        }
        // In maintenance, host-a takes no new VM; out of it, it does again.
        let err = c.a.vms().create_vm(ROOT, c.spec("late")).unwrap_err().to_string();
        assert!(err.contains("maintenance"), "{err}");
        assert!(c.a.hosts().set_maintenance("host-a", false).unwrap().is_empty());
        for n in &names {
            c.b.vms().vm_action(n, VmAction::Kill).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_no_host_can_take_is_refused_and_changes_nothing() {
    let c = Cluster::new().await;
    c.running_on_a("big").await;
    // host-b has no room for it: its record says it has a few MiB.
    let record = |name: &str| -> oxvirt_model::HostRecord {
        serde_json::from_slice(&c.store.get(&format!("hosts/{name}")).unwrap().unwrap().value).unwrap()
    };
    let mut b = record("host-b");
    b.memory = 1 << 20;
    c.store.put("hosts/host-b", oxvirt_store::encode(&b), Expect::Any).unwrap();
    let err = c.a.hosts().set_maintenance("host-a", true).unwrap_err().to_string();
    assert!(err.contains("cannot be drained") && err.contains("big"), "{err}");
    assert!(!record("host-a").maintenance, "a refused drain leaves the host as it was");
    assert_eq!(c.a.vms().get_vm("big").unwrap().host.as_deref(), Some("host-a"));
}
