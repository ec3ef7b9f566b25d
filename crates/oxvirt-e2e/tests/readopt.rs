//! VMs outlive the daemon: kill -9 of oxvirtd while guests run, restart, guests re-adopted and
//! still controllable; a guest that died while the daemon was away is marked stopped.

use oxvirt_e2e::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_daemon_then_readopt() {
    let mut d = Daemon::start();
    for name in ["keep", "lost"] {
        d.client.create_vm(&kernel_spec(name, ""), true).await.unwrap();
    }
    for name in ["keep", "lost"] {
        wait_state(&d.client, name, "running", Duration::from_secs(60)).await;
        wait_console(&d.client, name, READY, 1, BOOT_TIMEOUT).await;
    }
    let keep_pid = d.client.get_vm("keep").await.unwrap().status.pid.unwrap();
    let lost_pid = d.client.get_vm("lost").await.unwrap().status.pid.unwrap();

    d.kill9();
    // The guests run on without the daemon.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(process_alive(keep_pid) && process_alive(lost_pid));
    // One of them dies while the daemon is away.
    unsafe { libc::kill(lost_pid as i32, libc::SIGKILL) };
    while process_alive(lost_pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    d.respawn_after_kill9();
    let keep = d.client.get_vm("keep").await.unwrap();
    assert_eq!(keep.status.state.as_str(), "running");
    assert_eq!(keep.status.pid, Some(keep_pid), "same QEMU, re-adopted");
    let lost = d.client.get_vm("lost").await.unwrap();
    assert_eq!(lost.status.state.as_str(), "stopped");
    assert!(lost.status.reason.contains("while oxvirtd was away"), "{}", lost.status.reason);
    // Still controllable through QMP: pause, resume, graceful stop.
    d.client.vm_action_wait("keep", "pause", Duration::from_secs(30)).await.unwrap();
    d.client.vm_action_wait("keep", "resume", Duration::from_secs(30)).await.unwrap();
    d.client.vm_action_wait("keep", "stop", Duration::from_secs(60)).await.unwrap();
    let keep = d.client.get_vm("keep").await.unwrap();
    assert_eq!(keep.status.reason, "shut down by request");
    assert!(!process_alive(keep_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_record() {
    let mut d = Daemon::start();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("rec-{i}");
        d.client.create_vm(&kernel_spec(&name, ""), false).await.unwrap();
        names.push(name);
    }
    let before = d.client.list_vms().await.unwrap();
    d.restart();
    let after = d.client.list_vms().await.unwrap();
    assert_eq!(before, after);
    d.respawn_after_kill9();
    assert_eq!(d.client.list_vms().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_that_died_while_away_is_restarted_by_policy() {
    let mut d = Daemon::start();
    let mut spec = kernel_spec("phoenix", "");
    spec["restart_policy"] = serde_json::json!("always");
    d.client.create_vm(&spec, true).await.unwrap();
    wait_console(&d.client, "phoenix", READY, 1, BOOT_TIMEOUT).await;
    let pid = d.client.get_vm("phoenix").await.unwrap().status.pid.unwrap();
    d.kill9();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    while process_alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.respawn_after_kill9();
    wait_console(&d.client, "phoenix", READY, 2, BOOT_TIMEOUT).await;
    let vm = wait_state(&d.client, "phoenix", "running", Duration::from_secs(30)).await;
    assert_ne!(vm.status.pid, Some(pid));
    d.client.vm_action_wait("phoenix", "kill", Duration::from_secs(30)).await.unwrap();
}

/// Desired state lives in the store: a VM whose record says "running" is started by the
/// reconciler, whoever wrote the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_starts_what_the_store_wants_running() {
    let mut d = Daemon::start();
    d.client.create_vm(&kernel_spec("wanted", ""), false).await.unwrap();
    d.terminate();
    {
        use oxvirt_store::StoreExt;
        let store = oxvirt_store::SqliteStore::open(&d.path().join("store.db")).unwrap();
        store
            .update_record::<oxvirt_model::Vm>("wanted", |vm| vm.desired = oxvirt_model::DesiredState::Running)
            .unwrap()
            .unwrap();
    }
    d.respawn_after_kill9();
    wait_console(&d.client, "wanted", READY, 1, BOOT_TIMEOUT).await;
    assert_eq!(d.client.get_vm("wanted").await.unwrap().status.state.as_str(), "running");
    d.client.vm_action_wait("wanted", "kill", Duration::from_secs(30)).await.unwrap();
}

/// kill -9 in the middle of a burst of creates: every create that was answered is there after
/// the restart, and the store reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_writes_leaves_the_store_consistent() {
    let mut d = Daemon::start();
    let client = d.client.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000 {
            let name = format!("burst-{i}");
            match client.create_vm(&kernel_spec(&name, ""), false).await {
                Ok(_) => acked.push(name),
                Err(_) => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.kill9();
    let acked = writer.await.unwrap();
    assert!(acked.len() > 10, "only {} creates before the crash", acked.len());
    d.respawn_after_kill9();
    let names: std::collections::HashSet<String> =
        d.client.list_vms().await.unwrap().into_iter().map(|v| v.spec.name).collect();
    for n in &acked {
        assert!(names.contains(n), "{n} was acknowledged but is gone");
    }
    assert!(names.len() <= acked.len() + 1);
}
