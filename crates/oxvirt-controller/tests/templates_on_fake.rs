//! Templates on a fake hypervisor and a real SQLite store: taking one, VMs made from it started
//! by restoring its state, and a removal racing the creation of a VM from it.

mod common;

use common::act;
use oxvirt_controller::Controller;
use oxvirt_model::{TaskState, TemplateRequest, VmAction, VmSpec, VmState, ROOT};
use std::time::Duration;

fn micro(kernel: &std::path::Path, name: &str) -> VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "cpus": 1, "memory": "64MiB", "machine": "microvm",
        "kernel": { "kernel": kernel },
    }))
    .unwrap()
}

fn from_template(name: &str, template: &str) -> VmSpec {
    serde_json::from_value(serde_json::json!({ "name": name, "cpus": 1, "memory": "32MiB", "template": template }))
        .unwrap()
}

async fn take(c: &Controller, name: &str, from: &str) {
    let req = TemplateRequest { name: name.into(), from: from.into() };
    let t = c.templates().create(ROOT, req).await.unwrap();
    let t = c.tasks().wait(&t.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
}

/// A host whose microvm `src` runs.
async fn host_running_src() -> (common::FakeHost, Controller) {
    let host = common::FakeHost::new();
    let c = host.controller.clone();
    c.vms().create_vm(ROOT, micro(&host.kernel, "src")).unwrap();
    assert_eq!(act(&c, "src", VmAction::Start).await.0, TaskState::Succeeded);
    (host, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_from_a_template_has_its_shape_and_starts_by_restoring_it() {
    let (host, c) = host_running_src().await;
    take(&c, "t", "src").await;
    // The source runs on after its state was saved.
    assert_eq!(c.vms().get_vm("src").unwrap().status.state, VmState::Running);
    // What the request said of the shape gives way to the template's.
    let vm = c.vms().create_vm(ROOT, from_template("c1", "t")).unwrap();
    assert_eq!((vm.spec.memory.0, vm.spec.machine), (64 << 20, oxvirt_model::MachineType::Microvm));
    assert_eq!(act(&c, "c1", VmAction::Start).await.0, TaskState::Succeeded);
    assert_eq!(c.vms().get_vm("c1").unwrap().status.state, VmState::Running);
    // Its state file gone, a start says so and leaves the VM stopped.
    std::fs::remove_file(host.dir.path().join("templates/t/state")).unwrap();
    act(&c, "c1", VmAction::Kill).await;
    let (state, error) = act(&c, "c1", VmAction::Start).await;
    assert_eq!(state, TaskState::Failed);
    assert!(error.clone().unwrap_or_default().contains("templates/t/state"), "{error:?}");
    assert_eq!(c.vms().get_vm("c1").unwrap().status.state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_racing_a_create_never_leaves_a_vm_without_its_template() {
    let (_host, c) = host_running_src().await;
    for round in 0..8 {
        let t = format!("t{round}");
        take(&c, &t, "src").await;
        let (a, b) = (c.clone(), c.clone());
        let (t1, t2) = (t.clone(), t.clone());
        let vm = format!("v{round}");
        let create = tokio::task::spawn_blocking(move || a.vms().create_vm(ROOT, from_template(&vm, &t1)).is_ok());
        let remove = tokio::task::spawn_blocking(move || b.templates().remove(&t2).is_ok());
        let (created, removed) = (create.await.unwrap(), remove.await.unwrap());
        assert!(!(created && removed), "round {round}: both a VM from {t} and its removal succeeded");
        let exists = c.templates().get(&t).is_ok();
        let users = c.vms().list_vms().unwrap().into_iter().filter(|v| v.spec.template.as_deref() == Some(&t)).count();
        assert!(users == 0 || exists, "round {round}: a VM names {t}, which is gone");
        assert_eq!(exists, !removed);
    }
}
