//! What the controller's integration tests share: a host of their own on a fake hypervisor.
//! (Each test crate uses a part of it.)
#![allow(dead_code)]

use oxvirt_controller::{Controller, ControllerConfig};
use oxvirt_hypervisor::fake::FakeHypervisor;
use oxvirt_hypervisor::Hypervisor;
use oxvirt_model::{TaskState, VmAction};
use oxvirt_store::{ClusterSession, SqliteStore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A controller on a SQLite store in a directory of its own, with a kernel file its VMs may
/// name (a host path under the allowed roots; the fake reads nothing of it).
pub struct FakeHost {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub controller: Controller,
    pub kernel: PathBuf,
    /// The hypervisor behind `controller`, to look at its guests.
    #[allow(dead_code)]
    pub fake: Arc<FakeHypervisor>,
}

/// A directory of a test's own with a store in it and a kernel file VMs may name (under
/// `boot/`, the host path root the test's controllers allow).
pub struct TestRoot {
    pub dir: tempfile::TempDir,
    pub boot: PathBuf,
    pub kernel: PathBuf,
    pub store: Arc<SqliteStore>,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        let kernel = boot.join("vmlinuz");
        std::fs::write(&kernel, b"").unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        TestRoot { dir, boot, kernel, store }
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let TestRoot { dir, boot, kernel, store } = TestRoot::new();
        let mut config = ControllerConfig::new(dir.path());
        config.host_path_roots = vec![boot];
        let fake = FakeHypervisor::new();
        let hv: Arc<dyn Hypervisor> = fake.clone();
        let controller = Controller::new(store.clone(), hv, config).unwrap();
        FakeHost { dir, store, controller, kernel, fake }
    }
}

/// Membership held by hand, for hosts of one cluster on one store: `host-a` leads, and every
/// host's lease is always just renewed.
pub struct Member;

#[async_trait::async_trait]
impl ClusterSession for Member {
    async fn leader(&self) -> Option<String> {
        Some("host-a".into())
    }

    fn lease_renewed(&self) -> Option<std::time::Instant> {
        Some(std::time::Instant::now())
    }
}

/// Runs an action to its end; the task's final state and error. (The watcher of a guest that
/// just exited holds the VM for a moment: busy is said, not waited.)
pub async fn act(c: &Controller, vm: &str, action: VmAction) -> (TaskState, Option<String>) {
    let start = Instant::now();
    let t = loop {
        match c.vms().vm_action(vm, action) {
            Err(e) if e.to_string().contains("another operation is in progress") => {
                assert!(start.elapsed() < Duration::from_secs(5), "{e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => break r.unwrap(),
        }
    };
    let t = c.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap();
    (t.state, t.error)
}
