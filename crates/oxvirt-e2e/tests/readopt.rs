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
