//! The VM lifecycle state machine, restart policies and re-adoption after a daemon restart, on
//! a fake hypervisor and a real SQLite store: what the end-to-end tests show with QEMU, here in
//! milliseconds and with the guest's every move chosen by the test.

mod common;

use common::act;
use oxvirt_controller::{Controller, ControllerConfig};
use oxvirt_hypervisor::fake::FakeHypervisor;
use oxvirt_hypervisor::{Hypervisor, Instance};
use oxvirt_model::{DesiredState, Event, TaskState, Vm, VmAction, VmSpec, VmState, ROOT};
use oxvirt_store::SqliteStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Host {
    dir: tempfile::TempDir,
    hv: Arc<FakeHypervisor>,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        Host { dir, hv: FakeHypervisor::new() }
    }

    /// A controller of this host (a daemon): the same store and the same guests each time.
    fn controller(&self, stop_timeout: Duration) -> Controller {
        let store = Arc::new(SqliteStore::open(&self.dir.path().join("store.db")).unwrap());
        let mut config = ControllerConfig::new(self.dir.path());
        config.stop_timeout = stop_timeout;
        // The kernel VMs boot (the fake reads nothing of it) is a host path of the administrator's.
        std::fs::write(self.dir.path().join("boot").join("vmlinuz"), b"").unwrap();
        config.host_path_roots = vec![self.dir.path().join("boot")];
        let hv: Arc<dyn Hypervisor> = self.hv.clone();
        Controller::new(store, hv, config).unwrap()
    }

    fn guest(&self, vm: &Vm) -> Arc<oxvirt_hypervisor::fake::FakeInstance> {
        self.hv.instance(&vm.id).expect("a running fake guest")
    }
}

impl Host {
    fn spec(&self, name: &str, restart: &str) -> VmSpec {
        let kernel = self.dir.path().join("boot").join("vmlinuz");
        serde_json::from_value(serde_json::json!({
            "name": name, "cpus": 1, "memory": "64MiB", "restart_policy": restart,
            "kernel": { "kernel": kernel },
        }))
        .unwrap()
    }
}

/// Waits until the VM runs again in another process than `before`'s.
async fn wait_restarted(c: &Controller, before: &Vm, what: &str) -> Vm {
    let start = Instant::now();
    loop {
        let v = c.vms().get_vm(&before.spec.name).unwrap();
        if v.status.state == VmState::Running && v.status.pid != before.status.pid {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not restarted: {:?}", v.status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every task has ended (a restart by policy holds the VM until its task ends).
async fn settle(c: &Controller) {
    let start = Instant::now();
    while c.tasks().list().unwrap().iter().any(|t| !t.state.is_final()) {
        assert!(start.elapsed() < Duration::from_secs(10), "tasks still running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the VM's record says `state`, `pid` (if given) aside.
async fn wait_state(c: &Controller, vm: &str, state: VmState, what: &str) -> Vm {
    let start = Instant::now();
    loop {
        let v = c.vms().get_vm(vm).unwrap();
        if v.status.state == state {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: still {:?}", v.status);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_pause_resume_stop_and_kill() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    c.vms().create_vm(ROOT, h.spec("web", "never")).unwrap();
    assert_eq!(act(&c, "web", VmAction::Start).await, (TaskState::Succeeded, None));
    let vm = c.vms().get_vm("web").unwrap();
    assert_eq!((vm.status.state, vm.desired), (VmState::Running, DesiredState::Running));
    assert_eq!(vm.status.pid, Some(h.guest(&vm).pid()));
    // Confined: the start ran as a uid of the VM's own, given once and kept.
    let uid = h.hv.starts()[0].launch.run_as.expect("a uid of its own").0;
    assert_eq!(vm.uid, Some(uid));
    assert_eq!(h.hv.starts()[0].launch.incoming, None);

    // An action the state does not allow is refused at once, naming the state.
    let err = c.vms().vm_action("web", VmAction::Start).unwrap_err().to_string();
    assert!(err.contains("running"), "{err}");

    assert_eq!(act(&c, "web", VmAction::Pause).await, (TaskState::Succeeded, None));
    assert_eq!(c.vms().get_vm("web").unwrap().status.state, VmState::Paused);
    assert_eq!(c.vms().get_vm("web").unwrap().desired, DesiredState::Paused);
    assert_eq!(act(&c, "web", VmAction::Resume).await, (TaskState::Succeeded, None));
    assert_eq!(c.vms().get_vm("web").unwrap().status.state, VmState::Running);

    // Stop: the guest obeys its power button.
    let mut events = c.subscribe();
    assert_eq!(act(&c, "web", VmAction::Stop).await, (TaskState::Succeeded, None));
    let vm = c.vms().get_vm("web").unwrap();
    assert_eq!((vm.status.state, vm.desired, vm.status.pid), (VmState::Stopped, DesiredState::Stopped, None));
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::VmState { state, reason, .. } = e {
            seen.push(format!("{state:?}: {reason}"));
        }
    }
    assert_eq!(vm.status.reason, "shut down by request", "{seen:?}");

    // Started again: the same uid; then killed.
    act(&c, "web", VmAction::Start).await;
    assert_eq!(h.hv.starts()[1].launch.run_as.map(|r| r.0), Some(uid));
    act(&c, "web", VmAction::Kill).await;
    let vm = c.vms().get_vm("web").unwrap();
    assert_eq!((vm.status.state, vm.status.reason.as_str()), (VmState::Stopped, "killed by request"));

    // A second VM gets another uid.
    c.vms().create_vm(ROOT, h.spec("db", "never")).unwrap();
    act(&c, "db", VmAction::Start).await;
    assert_ne!(h.hv.starts()[2].launch.run_as.map(|r| r.0), Some(uid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_ignores_the_power_button_is_forced_off() {
    let h = Host::new();
    let c = h.controller(Duration::from_millis(200));
    c.vms().create_vm(ROOT, h.spec("deaf", "always")).unwrap();
    act(&c, "deaf", VmAction::Start).await;
    h.guest(&c.vms().get_vm("deaf").unwrap()).behaviour.lock().unwrap().obeys_power_button = false;
    assert_eq!(act(&c, "deaf", VmAction::Stop).await, (TaskState::Succeeded, None));
    let vm = c.vms().get_vm("deaf").unwrap();
    assert_eq!(vm.status.state, VmState::Stopped);
    assert_eq!(vm.status.reason, "forced off after the stop timeout");
    // Stopped by request: even `always` does not start it again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.hv.starts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_tell_a_crash_from_a_poweroff() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    c.vms().create_vm(ROOT, h.spec("flaky", "on-failure")).unwrap();
    act(&c, "flaky", VmAction::Start).await;
    let first = c.vms().get_vm("flaky").unwrap();

    // The process dies: on-failure starts it again, another process.
    h.guest(&first).crash();
    let again = wait_restarted(&c, &first, "after the crash").await;
    assert_eq!(h.hv.starts().len(), 2);
    settle(&c).await;

    // The guest powers itself off: a clean stop, which on-failure leaves stopped.
    h.guest(&again).guest_poweroff();
    let vm = wait_state(&c, "flaky", VmState::Stopped, "after the guest's poweroff").await;
    assert!(vm.status.reason.contains("guest shut down"), "{}", vm.status.reason);
    assert_eq!(vm.desired, DesiredState::Stopped);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.hv.starts().len(), 2, "a clean poweroff was restarted");

    // Never: a crash leaves it stopped, and says so.
    c.vms().create_vm(ROOT, h.spec("once", "never")).unwrap();
    act(&c, "once", VmAction::Start).await;
    h.guest(&c.vms().get_vm("once").unwrap()).crash();
    let vm = wait_state(&c, "once", VmState::Stopped, "after the crash").await;
    assert_eq!((vm.status.reason.as_str(), vm.desired), ("QEMU exited unexpectedly", DesiredState::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_guest_is_recorded_and_restarted_by_policy() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    c.vms().create_vm(ROOT, h.spec("oops", "on-failure")).unwrap();
    act(&c, "oops", VmAction::Start).await;
    let first = c.vms().get_vm("oops").unwrap();
    let mut events = c.subscribe();
    h.guest(&first).guest_panic();
    wait_restarted(&c, &first, "after the panic").await;
    assert_eq!(h.hv.starts().len(), 2);
    // On the way: the panic said, the VM recorded as crashed, the old process killed.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e {
            Event::VmGuest { what, .. } => seen.push(what),
            Event::VmState { state, reason, .. } => seen.push(format!("{state:?}: {reason}")),
            _ => {}
        }
    }
    let at =
        |what: &str| seen.iter().position(|s| s.contains(what)).unwrap_or_else(|| panic!("no {what:?} in {seen:?}"));
    assert!(at("guest kernel panicked") < at("Crashed: guest kernel panicked"), "{seen:?}");
    assert!(at("Crashed") < at("Stopped"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_the_vm_stopped_and_says_why() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    c.vms().create_vm(ROOT, h.spec("bad", "always")).unwrap();
    h.hv.fail_next_start("the fake refuses this command line");
    let (state, error) = act(&c, "bad", VmAction::Start).await;
    assert_eq!(state, TaskState::Failed);
    assert!(error.unwrap_or_default().contains("the fake refuses"));
    let vm = c.vms().get_vm("bad").unwrap();
    assert_eq!((vm.status.state, vm.desired, vm.status.pid), (VmState::Stopped, DesiredState::Stopped, None));
    assert!(vm.status.reason.starts_with("start failed:"), "{}", vm.status.reason);
    // Nothing retries it behind the user's back, even with `always`.
    c.vms().reconcile_all().await;
    assert_eq!(c.vms().get_vm("bad").unwrap().status.state, VmState::Stopped);
    assert_eq!(h.hv.starts().len(), 1);
}

#[test]
fn a_restarted_daemon_readopts_running_guests_and_restarts_those_that_died() {
    let h = Host::new();
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The first daemon starts three guests, then dies (its runtime and every task of it go);
    // the guests run on.
    let first = runtime();
    first.block_on(async {
        let c = h.controller(Duration::from_secs(5));
        for (name, policy) in [("stays", "never"), ("dies", "on-failure"), ("gone", "never")] {
            c.vms().create_vm(ROOT, h.spec(name, policy)).unwrap();
            assert_eq!(act(&c, name, VmAction::Start).await.0, TaskState::Succeeded);
        }
    });
    first.shutdown_timeout(Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let c = h.controller(Duration::from_secs(5));
        let before = |n: &str| c.vms().get_vm(n).unwrap();
        let (stays, dies, gone) = (before("stays"), before("dies"), before("gone"));
        // While no daemon watched: two guests' processes died.
        h.guest(&dies).crash();
        h.guest(&gone).crash();
        c.vms().reconcile_all().await;
        // The one still running is this daemon's again, the same process, and followed: its
        // guest's poweroff is seen.
        let vm = c.vms().get_vm("stays").unwrap();
        assert_eq!((vm.status.state, vm.status.pid), (VmState::Running, stays.status.pid));
        // The one with a policy runs again (a new process); the other is stopped, and why.
        let restarted = wait_state(&c, "dies", VmState::Running, "restart after the daemon was away").await;
        settle(&c).await;
        assert_ne!(restarted.status.pid, dies.status.pid);
        let vm = c.vms().get_vm("gone").unwrap();
        assert_eq!((vm.status.state, vm.desired), (VmState::Stopped, DesiredState::Stopped));
        assert!(vm.status.reason.contains("while oxvirtd was away"), "{}", vm.status.reason);
        assert_eq!(h.hv.starts().len(), 4);
        h.guest(&stays).guest_poweroff();
        let vm = wait_state(&c, "stays", VmState::Stopped, "the re-adopted guest's poweroff").await;
        assert!(vm.status.reason.contains("guest shut down"), "{}", vm.status.reason);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_address_is_one_nics_until_its_vm_goes() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    let with_mac = |name: &str, mac: &str| {
        let mut s = h.spec(name, "never");
        s.nics = serde_json::from_value(serde_json::json!([{ "mode": "user", "mac": mac }])).unwrap();
        s
    };
    c.vms().create_vm(ROOT, with_mac("a", "52:54:00:AA:BB:CC")).unwrap();
    // Another VM: refused, naming the field and the holder (in any case), and nothing made.
    let err = c.vms().create_vm(ROOT, with_mac("b", "52:54:00:aa:bb:cc")).unwrap_err().to_string();
    assert!(err.contains("nics[0].mac") && err.contains("used by VM a"), "{err}");
    assert!(c.vms().get_vm("b").is_err());
    // MACs given by oxvirt differ from each other and from the one asked for.
    let mut generated = h.spec("g", "never");
    generated.nics = serde_json::from_value(serde_json::json!([{ "mode": "user" }, { "mode": "user" }])).unwrap();
    let g = c.vms().create_vm(ROOT, generated).unwrap();
    let macs: Vec<String> = g.spec.nics.iter().map(|n| n.mac.clone().unwrap()).collect();
    assert!(macs[0] != macs[1] && !macs.contains(&"52:54:00:aa:bb:cc".to_string()), "{macs:?}");
    // Once `a` is gone its MAC is free.
    c.vms().delete_vm("a").unwrap();
    c.vms().create_vm(ROOT, with_mac("b", "52:54:00:aa:bb:cc")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_holds_the_over_commit_ratio_and_starts_nothing_past_it() {
    let h = Host::new();
    let c = h.controller(Duration::from_secs(5));
    let cpus = c.resources().host_info().unwrap().cpus as usize;
    let mut policy = c.resources().host_policy().unwrap();
    policy.cpu_overcommit = 1.0;
    c.resources().set_host_policy(policy).unwrap();
    // One vCPU each: as many as the host has CPUs start, the next is refused.
    for i in 0..=cpus {
        c.vms().create_vm(ROOT, h.spec(&format!("vm{i}"), "never")).unwrap();
    }
    for i in 0..cpus {
        assert_eq!(act(&c, &format!("vm{i}"), VmAction::Start).await, (TaskState::Succeeded, None));
    }
    let last = format!("vm{cpus}");
    let (state, error) = act(&c, &last, VmAction::Start).await;
    let error = error.unwrap_or_default();
    assert_eq!(state, TaskState::Failed);
    assert!(error.contains("cpus") && error.contains("over-commit ratio 1"), "{error}");
    let vm = c.vms().get_vm(&last).unwrap();
    assert_eq!((vm.status.state, vm.desired, vm.status.pid), (VmState::Stopped, DesiredState::Stopped, None));
    assert_eq!(h.hv.starts().len(), cpus, "a refused start reached the hypervisor");
    // Room again once one stops.
    act(&c, "vm0", VmAction::Stop).await;
    assert_eq!(act(&c, &last, VmAction::Start).await, (TaskState::Succeeded, None));
}
