//! The reference guest boots under oxvirt with real QEMU: direct kernel boot on q35 and microvm,
//! and firmware boot from the bootable disk image.

use oxvirt_e2e::*;
use serde_json::json;
use std::time::Duration;

async fn boot_and_stop(d: &Daemon, spec: serde_json::Value) {
    let name = spec["name"].as_str().unwrap().to_string();
    let created = d.client.create_vm(&spec, true).await.expect("create");
    let task = d.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(task.state, oxvirt_model::TaskState::Succeeded, "{task:?}\n{}", d.log());
    let vm = d.client.get_vm(&name).await.unwrap();
    assert_eq!(vm.status.state.as_str(), "running");
    assert_eq!(vm.status.accel.as_deref(), Some("tcg"), "no hardware virtualization here: TCG");
    let pid = vm.status.pid.unwrap();
    assert!(process_alive(pid));
    // QEMU runs in a cgroup of its own, below oxvirt's, in every hierarchy (cpu, memory, pids...).
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mine = format!("/oxvirt/vm-{}", vm.id);
    for ctrl in ["cpu", "memory", "pids"] {
        let line =
            cgroups.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|x| x == ctrl))).unwrap();
        assert!(line.ends_with(&mine), "{ctrl}: {line}");
    }
    let memory_dir = format!(
        "/sys/fs/cgroup/memory{}",
        cgroups.lines().find(|l| l.contains(":memory:")).unwrap().rsplit(':').next().unwrap()
    );
    assert!(std::path::Path::new(&memory_dir).exists());
    wait_console(&d.client, &name, READY, 1, BOOT_TIMEOUT).await;
    // Graceful stop: the guest answers the ACPI power button.
    d.client.vm_action_wait(&name, "stop", Duration::from_secs(60)).await.expect("stop");
    let vm = d.client.get_vm(&name).await.unwrap();
    assert_eq!(vm.status.state.as_str(), "stopped");
    assert_eq!(
        vm.status.reason, "shut down by request",
        "the guest should power off on the ACPI button, not be forced"
    );
    assert!(!process_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_direct_kernel_boot() {
    let d = Daemon::start();
    let mut spec = kernel_spec("q35-kernel", "");
    spec["nics"] = json!([{}]);
    boot_and_stop(&d, spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_direct_kernel_boot() {
    let d = Daemon::start();
    let mut spec = kernel_spec("micro", "");
    spec["machine"] = json!("microvm");
    let created = d.client.create_vm(&spec, true).await.expect("create");
    let task = d.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(task.state, oxvirt_model::TaskState::Succeeded, "{task:?}");
    wait_console(&d.client, "micro", READY, 1, BOOT_TIMEOUT).await;
    // The TSC frequency was passed, or the guest would hang calibrating.
    let pid = d.client.get_vm("micro").await.unwrap().status.pid.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("tsc_early_khz="), "{cmdline}");
    d.client.vm_action_wait("micro", "kill", Duration::from_secs(30)).await.unwrap();
    assert!(!process_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_boot_from_disk_image() {
    let d = Daemon::start();
    let g = guest();
    // Each test boots its own overlay so that the shared image stays untouched.
    let overlay = d.path().join("disk.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&g.disk)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(st.success());
    let spec = json!({ "name": "from-disk", "cpus": 1, "memory": "256MiB", "disks": [{ "path": overlay, "format": "qcow2" }], "nics": [{}] });
    boot_and_stop(&d, spec).await;
}
