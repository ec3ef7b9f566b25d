//! The `oxvirt` CLI end to end against a real daemon and a real guest.

use oxvirt_e2e::*;
use std::process::Command;

fn oxvirt(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(bin("oxvirt")).env("OXVIRT_SOCKET", d.path().join("oxvirtd.sock")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_console_stop_delete() {
    let d = Daemon::start();
    let g = guest();
    let (code, out, err) = oxvirt(
        &d,
        &[
            "vm",
            "create",
            "cli-vm",
            "--cpus",
            "1",
            "--memory",
            "256MiB",
            "--kernel",
            g.kernel.to_str().unwrap(),
            "--initrd",
            g.initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
            "--nic",
            "--start",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state:       running"), "{out}");
    wait_console(&d.client, "cli-vm", READY, 1, BOOT_TIMEOUT).await;
    let (code, out, _) = oxvirt(&d, &["vm", "console-log", "cli-vm"]);
    assert_eq!(code, 0);
    assert!(out.contains(READY));

    let (code, out, _) = oxvirt(&d, &["vm", "list", "--output", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["spec"]["name"], "cli-vm");
    assert_eq!(list[0]["status"]["state"], "running");
    let (_, table, _) = oxvirt(&d, &["vm", "list"]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(table.contains("cli-vm") && table.contains("running"));

    let (code, out, err) = oxvirt(&d, &["vm", "stop", "cli-vm"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state:       stopped"));
    let (code, out, _) = oxvirt(&d, &["task", "list", "--output", "json"]);
    assert_eq!(code, 0);
    let tasks: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(tasks.as_array().unwrap().iter().any(|t| t["kind"] == "vm.stop" && t["state"] == "succeeded"));
    let (code, _, _) = oxvirt(&d, &["vm", "delete", "cli-vm"]);
    assert_eq!(code, 0);

    let (code, out, _) = oxvirt(&d, &["host", "show"]);
    assert_eq!(code, 0);
    assert!(out.contains("accelerator: tcg"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_fail() {
    let d = Daemon::start();
    let g = guest();
    let (code, out, err) =
        oxvirt(&d, &["vm", "create", "x", "--memory", "512XB", "--kernel", g.kernel.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: memory: unknown unit \"XB\""), "{err}");
    let (code, _, err) = oxvirt(&d, &["vm", "show", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let out = Command::new(bin("oxvirt")).args(["--socket", "/nonexistent/sock", "vm", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach oxvirtd"));
}
