//! Templates on a fake hypervisor and a real SQLite store: taking one, VMs made from it started
//! by restoring its state, and a removal racing the creation of a VM from it.

mod common;

use common::act;
use oxvirt_controller::Controller;
use oxvirt_model::{TaskState, TemplatePool, TemplateRequest, VmAction, VmSpec, VmState, ROOT};
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
    // Its guest agent (the source's answered when the template was taken) was told who it is.
    assert!(c.templates().get("t").unwrap().agent);
    let told = host.fake.instance(&vm.id).unwrap().told_identity().expect("an identity given");
    assert_eq!((told.hostname.as_str(), told.machine_id.len(), told.seed.len()), ("c1", 32, 32));
    assert_eq!(told.machine_id, vm.id.replace('-', ""));
    // The source, booted, was told nothing.
    let src = c.vms().get_vm("src").unwrap();
    assert!(host.fake.instance(&src.id).unwrap().told_identity().is_none());
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
        let remove = tokio::spawn(async move { b.templates().remove(&t2).await.is_ok() });
        let (created, removed) = (create.await.unwrap(), remove.await.unwrap());
        assert!(!(created && removed), "round {round}: both a VM from {t} and its removal succeeded");
        let exists = c.templates().get(&t).is_ok();
        let users = c.vms().list_vms().unwrap().into_iter().filter(|v| v.spec.template.as_deref() == Some(&t)).count();
        assert!(users == 0 || exists, "round {round}: a VM names {t}, which is gone");
        assert_eq!(exists, !removed);
    }
}

/// Waits until template `t`'s warm pool holds `n` VMs.
async fn pool_holds(c: &Controller, t: &str, n: u32) {
    let start = std::time::Instant::now();
    loop {
        let ready = c.templates().view(c.templates().get(t).unwrap()).pool_ready;
        if ready == n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "pool of {t} holds {ready}, not {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_fills_hands_out_its_vms_to_creates_that_start_and_refills() {
    let (host, c) = host_running_src().await;
    take(&c, "t", "src").await;
    // Bad sizes are refused by name and change nothing.
    let e = c.templates().set_pool("t", TemplatePool { size: 65 }).unwrap_err();
    assert!(e.to_string().contains("size") && e.to_string().contains("64"), "{e}");
    assert!(c.templates().set_pool("nosuch", TemplatePool { size: 1 }).is_err());
    assert_eq!(c.templates().get("t").unwrap().pool_size, 0);

    let v = c.templates().set_pool("t", TemplatePool { size: 2 }).unwrap();
    assert_eq!(v.template.pool_size, 2);
    pool_holds(&c, "t", 2).await;
    assert_eq!(c.resources().host_resources().unwrap().templates.pool_vms, 2);
    // A create that does not start leaves the pool alone.
    c.vms().create_vm(ROOT, from_template("cold", "t")).unwrap();
    assert_eq!(c.templates().view(c.templates().get("t").unwrap()).pool_ready, 2);
    // One that starts takes a member: the VM is that QEMU (its id), resumed by its start. (Its
    // id is one of the members' markers before; the count is no proof: the fake refills at once.)
    let markers = std::fs::read_dir(host.dir.path().join("templates/t/pool")).unwrap();
    let members: Vec<String> = markers.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(members.len(), 2, "{members:?}");
    let vm = c.vms().create_vm_to_start(ROOT, from_template("w1", "t")).unwrap();
    assert!(members.contains(&vm.id), "{} is no member of {members:?}: not taken from the pool", vm.id);
    assert_eq!(act(&c, "w1", VmAction::Start).await.0, TaskState::Succeeded);
    let w1 = c.vms().get_vm("w1").unwrap();
    assert_eq!((w1.id, w1.status.state), (vm.id, VmState::Running));
    pool_holds(&c, "t", 2).await;
    // A create that fails gives its member back.
    assert!(c.vms().create_vm_to_start(ROOT, from_template("w1", "t")).is_err());
    pool_holds(&c, "t", 2).await;
    // Size 0 ends the members; the template then goes with no pool left behind.
    c.templates().set_pool("t", TemplatePool { size: 0 }).unwrap();
    pool_holds(&c, "t", 0).await;
    assert_eq!(c.resources().host_resources().unwrap().templates.pool_vms, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_from_one_template_at_once_all_succeed() {
    let (_host, c) = host_running_src().await;
    take(&c, "t", "src").await;
    let creates: Vec<_> = (0..12)
        .map(|i| {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.vms().create_vm(ROOT, from_template(&format!("p{i}"), "t")))
        })
        .collect();
    for (i, create) in creates.into_iter().enumerate() {
        let r = create.await.unwrap();
        assert!(r.is_ok(), "create {i}: {:?}", r.err());
    }
    assert_eq!(c.vms().list_vms().unwrap().len(), 13);
}
