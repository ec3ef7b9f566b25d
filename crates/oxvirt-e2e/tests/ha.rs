//! High availability on one host with real guests, through the CLI: an HA VM is started, its
//! QEMU killed is restarted, a panicking guest is restarted until its tries are used up, a user's
//! stop makes it stay stopped, and an HA VM is not deleted behind HA's back.

use oxvirt_e2e::*;
use std::time::{Duration, Instant};

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_vm_is_started_restarted_and_follows_a_users_stop() {
    let d = Daemon::start();
    let c = &d.client;
    c.create_vm(&kernel_spec("web", ""), false).await.unwrap();
    let (code, out, err) = d.cli(&["ha", "add", "web", "--max-restarts", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("started, priority 0, restarts 0/2"), "{out}");
    // HA starts it.
    wait_console(c, "web", READY, 1, BOOT_TIMEOUT).await;
    let pid = c.get_vm("web").await.unwrap().status.pid.unwrap();
    // Its QEMU killed from outside: HA starts it again, one restart counted.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_console(c, "web", READY, 2, BOOT_TIMEOUT).await;
    let vm = c.get_vm("web").await.unwrap();
    assert_eq!(vm.status.state.as_str(), "running");
    assert_ne!(vm.status.pid, Some(pid));
    let (_, out, _) = d.cli(&["vm", "show", "web"]);
    assert!(out.contains("ha:          started") && out.contains("restarts 1/2"), "{out}");
    let (_, out, _) = d.cli(&["ha", "list"]);
    assert!(out.lines().any(|l| l.starts_with("web") && l.contains("started") && l.contains("1/2")), "{out}");
    // A user's stop: HA keeps it stopped from now on.
    let (code, out, err) = d.cli(&["vm", "stop", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.get_vm("web").await.unwrap().status.state.as_str(), "stopped");
    assert_eq!(c.ha().get_resource("web").await.unwrap().spec.state, oxvirt_model::HaState::Stopped);
    // Not deleted behind HA's back; out of HA, it is.
    let (code, _, err) = d.cli(&["vm", "delete", "web"]);
    assert_ne!(code, 0);
    assert!(err.contains("HA resource") && err.contains("ha remove web"), "{err}");
    let (code, out, err) = d.cli(&["ha", "remove", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = d.cli(&["vm", "delete", "web"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_keeps_panicking_is_restarted_until_its_tries_are_used_up() {
    let d = Daemon::start();
    let c = &d.client;
    c.create_vm(&kernel_spec("panicky", "oxvirt.panic"), false).await.unwrap();
    let (code, out, err) = d.cli(&["ha", "add", "panicky", "--max-restarts", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    // Started by HA, panics; restarted once, panics again; then left off, with why.
    let r = wait_for("HA gave up", Duration::from_secs(240), async || {
        let r = c.ha().get_resource("panicky").await.ok()?;
        (!r.status.problem.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(r.status.restarts, 1);
    assert!(r.status.problem.contains("1 restart(s)") && r.status.problem.contains("panicked"), "{}", r.status.problem);
    let log = String::from_utf8_lossy(&c.console_log("panicky", 1 << 20).await.unwrap()).into_owned();
    assert_eq!(log.matches(READY).count(), 2, "booted twice: {log}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.get_vm("panicky").await.unwrap().status.state.as_str(), "stopped");
    // Bad input names the field and changes nothing.
    let (code, _, err) = d.cli(&["ha", "add", "ghost"]);
    assert_ne!(code, 0);
    assert!(err.contains("no VM named ghost"), "{err}");
    let (code, _, err) = d.cli(&["ha", "set", "panicky", "--max-restarts", "11"]);
    assert_ne!(code, 0);
    assert!(err.contains("max_restarts") && err.contains("0..10"), "{err}");
    let (code, _, err) = d.cli(&["ha", "set", "panicky", "--state", "running"]);
    assert_ne!(code, 0);
    assert!(err.contains("--state"), "{err}");
}
