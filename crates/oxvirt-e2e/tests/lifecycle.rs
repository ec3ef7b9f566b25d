//! Lifecycle through the API with a real guest: pause, resume, reset, reboot, kill; a guest that
//! powers itself off or panics is noticed; restart policies act.

use oxvirt_e2e::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_reset_reboot_kill() {
    let d = Daemon::start();
    let c = &d.client;
    c.create_vm(&kernel_spec("life", ""), false).await.unwrap();
    // Illegal transitions are clear errors, and change nothing.
    let err = c.vm_action("life", "pause").await.unwrap_err().to_string();
    assert_eq!(err, "cannot pause a VM that is stopped");
    c.vm_action_wait("life", "start", T).await.unwrap();
    wait_console(c, "life", READY, 1, BOOT_TIMEOUT).await;
    assert!(c.vm_action("life", "start").await.unwrap_err().to_string().contains("cannot start a VM that is running"));

    c.vm_action_wait("life", "pause", T).await.unwrap();
    assert_eq!(c.get_vm("life").await.unwrap().status.state.as_str(), "paused");
    // A paused guest prints nothing: its console does not grow.
    let before = c.console_log("life", 1 << 20).await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.console_log("life", 1 << 20).await.unwrap().len(), before);
    c.vm_action_wait("life", "resume", T).await.unwrap();
    assert_eq!(c.get_vm("life").await.unwrap().status.state.as_str(), "running");

    // Reset: the same QEMU, the guest boots again.
    let pid = c.get_vm("life").await.unwrap().status.pid.unwrap();
    c.vm_action_wait("life", "reset", T).await.unwrap();
    wait_console(c, "life", READY, 2, BOOT_TIMEOUT).await;
    assert_eq!(c.get_vm("life").await.unwrap().status.pid, Some(pid));

    // Reboot: graceful stop, then a new QEMU.
    c.vm_action_wait("life", "reboot", Duration::from_secs(120)).await.unwrap();
    wait_console(c, "life", READY, 3, BOOT_TIMEOUT).await;
    let vm = c.get_vm("life").await.unwrap();
    assert_eq!(vm.status.state.as_str(), "running");
    assert_ne!(vm.status.pid, Some(pid));
    assert!(!process_alive(pid));

    let pid = vm.status.pid.unwrap();
    c.vm_action_wait("life", "kill", T).await.unwrap();
    let vm = c.get_vm("life").await.unwrap();
    assert_eq!((vm.status.state.as_str(), vm.status.reason.as_str()), ("stopped", "killed by request"));
    assert!(!process_alive(pid));
    c.delete_vm("life").await.unwrap();
    assert!(c.get_vm("life").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_poweroff_is_noticed() {
    let d = Daemon::start();
    let c = &d.client;
    let created = c.create_vm(&kernel_spec("selfoff", "oxvirt.poweroff"), true).await.unwrap();
    // Stopped before the start too: wait for the start, then for the guest to power off.
    c.wait_task(&created.task.unwrap().id, T).await.unwrap();
    let vm = wait_state(c, "selfoff", "stopped", BOOT_TIMEOUT).await;
    assert!(vm.status.reason.starts_with("guest shut down"), "{}", vm.status.reason);
    assert_eq!(vm.desired, oxvirt_model::DesiredState::Stopped);
    let log = String::from_utf8_lossy(&c.console_log("selfoff", 1 << 20).await.unwrap()).into_owned();
    assert!(log.contains(READY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_panic_is_recorded_and_restarted_by_policy() {
    let d = Daemon::start();
    let c = &d.client;
    let mut events = Vec::new();
    let mut spec = kernel_spec("panicky", "oxvirt.panic");
    spec["restart_policy"] = json!("on-failure");
    c.create_vm(&spec, true).await.unwrap();
    // It panics after its marker; the policy starts it again, and it panics again.
    wait_console(c, "panicky", READY, 2, Duration::from_secs(240)).await;
    for t in c.list_tasks().await.unwrap() {
        events.push(t.kind);
    }
    assert!(events.iter().any(|k| k == "vm.restart"), "{events:?}");
    c.vm_action_wait("panicky", "kill", T).await.ok();

    let mut spec = kernel_spec("crashes", "oxvirt.panic");
    spec["restart_policy"] = json!("never");
    c.create_vm(&spec, true).await.unwrap();
    let vm = wait_state(c, "crashes", "crashed", BOOT_TIMEOUT).await;
    assert_eq!(vm.status.reason, "guest kernel panicked");
    // A crashed guest is kept for inspection, and can be forced off.
    assert!(process_alive(vm.status.pid.unwrap()));
    c.vm_action_wait("crashes", "kill", T).await.unwrap();
    assert_eq!(c.get_vm("crashes").await.unwrap().status.state.as_str(), "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_forces_off_a_guest_that_ignores_the_power_button() {
    let d = Daemon::start_with_config("stop_timeout_secs = 2\n");
    let c = &d.client;
    c.create_vm(&kernel_spec("stubborn", ""), true).await.unwrap();
    wait_console(c, "stubborn", READY, 1, BOOT_TIMEOUT).await;
    // A paused guest cannot answer the ACPI power button.
    c.vm_action_wait("stubborn", "pause", T).await.unwrap();
    let pid = c.get_vm("stubborn").await.unwrap().status.pid.unwrap();
    let t = c.vm_action_wait("stubborn", "stop", T).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded);
    let vm = c.get_vm("stubborn").await.unwrap();
    assert_eq!((vm.status.state.as_str(), vm.status.reason.as_str()), ("stopped", "forced off after the stop timeout"));
    assert!(!process_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_reports_state_changes_and_tasks() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let d = Daemon::start();
    let mut s = tokio::net::UnixStream::connect(d.path().join("oxvirtd.sock")).await.unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    // The stream is open (its headers came) before anything happens.
    while let Some(l) = tokio::time::timeout(T, lines.next_line()).await.expect("headers in time").unwrap() {
        if l.is_empty() {
            break;
        }
    }
    d.client.create_vm(&kernel_spec("ev", ""), true).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while !(got.iter().any(|l: &String| l.contains("\"vm-state\"") && l.contains("\"running\""))
        && got.iter().any(|l| l.contains("\"succeeded\"")))
    {
        let line =
            tokio::time::timeout_at(deadline, lines.next_line()).await.expect("events in time").unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            got.push(data.to_string());
        }
    }
    assert!(got.iter().any(|l| l.contains("\"vm-lifecycle\"") && l.contains("created")), "{got:?}");
    c_kill(&d, "ev").await;
}

async fn c_kill(d: &Daemon, name: &str) {
    d.client.vm_action_wait(name, "kill", T).await.unwrap();
}
