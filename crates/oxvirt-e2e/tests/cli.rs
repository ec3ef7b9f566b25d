//! The `oxvirt` CLI end to end against a real daemon and a real guest.

use oxvirt_e2e::*;
use std::process::Command;

fn oxvirt(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    d.cli(args)
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
    // An argument the CLI itself refuses: the flag and the rule, before anything is sent.
    assert!(err.starts_with("error: --memory \"512XB\": unknown unit \"XB\""), "{err}");
    let (code, _, err) = oxvirt(&d, &["volume", "create", "p/v", "--size", "10XB"]);
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert!(err.starts_with("error: --size \"10XB\": unknown unit"), "{err}");
    let (code, _, err) = oxvirt(&d, &["pool", "create", "p", "--path", "/tmp/p", "--kind", "tape"]);
    assert!(code == 1 && err.contains("--kind \"tape\"") && err.contains("nbd"), "{err}");
    let (code, _, err) = oxvirt(&d, &["vm", "show", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let out = Command::new(bin("oxvirt")).args(["--socket", "/nonexistent/sock", "vm", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach oxvirtd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_from_the_cli() {
    let d = Daemon::start();
    let g = guest();
    let pool_dir = d.path().join("clipool");
    let run = |args: &[&str]| {
        let (code, out, err) = oxvirt(&d, args);
        assert_eq!(code, 0, "oxvirt {args:?}: {out}{err}");
        out
    };
    run(&["pool", "create", "p1", "--path", pool_dir.to_str().unwrap()]);
    let out = run(&["volume", "import", "p1/base", "--source", g.disk.to_str().unwrap()]);
    assert!(out.contains("p1/base"), "{out}");
    run(&["volume", "clone", "p1/base", "root"]);
    run(&["volume", "create", "p1/data", "--size", "32MiB"]);
    let out = run(&["vm", "create", "svm", "--memory", "256MiB", "--volume", "p1/root", "--start"]);
    assert!(out.contains("running"), "{out}");
    wait_console(&d.client, "svm", READY, 1, BOOT_TIMEOUT).await;
    let out = run(&["vm", "attach", "svm", "--volume", "p1/data"]);
    assert!(out.contains("p1/data"), "{out}");
    run(&["vm", "snapshot", "svm", "before"]);
    run(&["vm", "qos", "svm", "disk1", "--bps-read", "10MiB"]);
    let out = run(&["volume", "list", "p1", "--output", "json"]);
    let vols: serde_json::Value = serde_json::from_str(&out).unwrap();
    let root = vols.as_array().unwrap().iter().find(|v| v["name"] == "root").unwrap();
    assert_eq!(root["backing"], "p1/base");
    assert_eq!(root["snapshots"][0]["name"], "before");
    let out = run(&["pool", "list"]);
    assert!(out.starts_with("NAME") && out.contains("p1"), "{out}");
    let (code, _, err) = oxvirt(&d, &["volume", "delete", "p1/root"]);
    assert_eq!(code, 1);
    assert!(err.contains("attached to VM svm"), "{err}");
    run(&["vm", "kill", "svm"]);
}
