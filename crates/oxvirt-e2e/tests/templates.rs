//! Templates: a booted, quiet microvm saved once; VMs made from it restore its guest at each
//! start instead of booting, each with a memory of its own.

use oxvirt_client::ClientError;
use oxvirt_e2e::*;
use oxvirt_model::TaskState;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn api_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> oxvirt_model::ApiErrorBody {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn micro(name: &str) -> serde_json::Value {
    let mut spec = kernel_spec(name, "");
    spec["machine"] = json!("microvm");
    spec["memory"] = json!("128MiB");
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_restored_from_a_template_answer_apart_and_the_template_stays_while_used() {
    let d = Daemon::start();
    let c = &d.client;
    let created = c.create_vm(&micro("src"), true).await.unwrap();
    c.wait_task(&created.task.unwrap().id, T).await.unwrap();
    // Still booting: the guest is busy, and the template is refused saying so.
    let t = c.templates().create("early", "src").await.unwrap();
    let t = c.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let why = t.error.clone().unwrap_or_default();
    assert!(why.contains("busy") && why.contains("from"), "{t:?}");
    assert!(!d.path().join("templates/early").exists(), "nothing left of a refused template");
    wait_console(c, "src", READY, 1, BOOT_TIMEOUT).await;
    // What the template's clones should all see: written in the source's memory before.
    run_in_guest(c, "src", "echo tpl-$((6*7)) > /tmp/mark; echo M-$((1+1))", "M-2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, out, err) = d.cli(&["template", "create", "t1", "--from", "src"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("template t1 taken from src"), "{out}");
    let tpl = c.templates().get("t1").await.unwrap();
    assert_eq!((tpl.from.as_str(), tpl.spec.machine), ("src", oxvirt_model::MachineType::Microvm));
    assert!(tpl.state_bytes > 0);
    // The source runs on.
    run_in_guest(c, "src", "echo S-$((2+2))", "S-4").await;

    // Two VMs from it: each restores the guest as it was (the mark), and each has its own memory.
    for name in ["c1", "c2"] {
        let (code, out, err) = d.cli(&["vm", "create", name, "--template", "t1", "--start"]);
        assert_eq!(code, 0, "{out}{err}");
        let vm = c.get_vm(name).await.unwrap();
        assert_eq!(vm.spec.template.as_deref(), Some("t1"));
        assert_eq!((vm.spec.machine, vm.spec.memory.0), (oxvirt_model::MachineType::Microvm, 128 << 20));
    }
    for name in ["c1", "c2"] {
        run_in_guest(c, name, "cat /tmp/mark", "tpl-42").await;
    }
    run_in_guest(c, "c1", "echo only-c1 > /tmp/own; echo W-$((3+3))", "W-6").await;
    run_in_guest(c, "c2", &guest_check("test -e /tmp/own"), GUEST_NO).await;
    // Each runs its own QEMU, never the source's.
    let mut pids = Vec::new();
    for name in ["src", "c1", "c2"] {
        pids.push(c.get_vm(name).await.unwrap().status.pid.unwrap());
    }
    assert!(pids[0] != pids[1] && pids[1] != pids[2] && pids[0] != pids[2], "{pids:?}");
    // Both map the template's memory copy-on-write: one sealed memfd, which no process can
    // write (not even root through a QEMU's descriptor), shared until a guest writes a page.
    let mut memfds = Vec::new();
    for pid in &pids[1..] {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = maps.lines().find(|l| l.contains("memfd:oxvirt-template")).unwrap_or_else(|| panic!("{maps}"));
        assert!(line.split_whitespace().nth(1).unwrap().ends_with('p'), "a private mapping: {line}");
        let inode: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
        memfds.push(inode);
        let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("memfd:oxvirt-template")))
            .expect("the memfd is QEMU's");
        let wrote = std::fs::OpenOptions::new().write(true).open(fd.path()).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"x")
        });
        assert!(wrote.is_err(), "the template's memory was writable");
    }
    assert_eq!(memfds[0], memfds[1], "one memory for both");
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(d.path().join("templates/t1/memory")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777, m.len()), (0, 0o400, 128 << 20));
        let s = std::fs::metadata(d.path().join("templates/t1/state")).unwrap();
        assert_eq!((s.uid(), s.mode() & 0o777), (0, 0o600));
        assert!(s.len() < 4 << 20, "the devices' state only: {} bytes", s.len());
    }

    // In use: kept, naming its VMs.
    let e = api_error(c.templates().remove("t1").await);
    assert_eq!((e.status, e.code.as_str()), (409, "in-use"), "{e:?}");
    assert!(e.message.contains("c1") && e.message.contains("c2"), "{}", e.message);
    // A restart restores the template's guest afresh: the mark is back, c1's own file is not.
    c.vm_action_wait("c1", "kill", T).await.unwrap();
    c.vm_action_wait("c1", "start", T).await.unwrap();
    run_in_guest(c, "c1", &guest_check("test -e /tmp/own"), GUEST_NO).await;
    run_in_guest(c, "c1", "cat /tmp/mark", "tpl-42").await;

    // Bad input, refused by name, changing nothing.
    let e = api_error(c.templates().create("t1", "src").await);
    assert_eq!((e.status, e.field.as_deref()), (409, Some("name")), "{e:?}");
    let e = api_error(c.templates().create("t2", "nosuch").await);
    assert_eq!(e.status, 404, "{e:?}");
    let e = api_error(c.templates().create("bad name", "src").await);
    assert_eq!((e.status, e.field.as_deref()), (400, Some("name")), "{e:?}");
    c.create_vm(&kernel_spec("q35", ""), false).await.unwrap();
    let e = api_error(c.templates().create("t3", "q35").await);
    assert_eq!((e.status, e.field.as_deref()), (400, Some("from")), "{e:?}");
    assert!(e.message.contains("microvm"), "{}", e.message);
    let mut spec = micro("stopped");
    spec["nics"] = json!([{}]);
    c.create_vm(&spec, false).await.unwrap();
    let e = api_error(c.templates().create("t4", "stopped").await);
    assert_eq!((e.status, e.field.as_deref()), (400, Some("from")), "{e:?}");
    assert!(e.message.contains("NICs"), "{}", e.message);
    let e = api_error(
        c.create_vm(&json!({ "name": "c3", "cpus": 1, "memory": "128MiB", "template": "nosuch" }), false).await,
    );
    assert_eq!((e.status, e.field.as_deref()), (400, Some("template")), "{e:?}");
    assert!(c.get_vm("c3").await.is_err());
    // A VM from a template whose shape was changed is not restored (its devices would differ).
    c.vm_action_wait("c2", "kill", T).await.unwrap();
    let _: oxvirt_model::Vm = c.patch("/api/v1/vms/c2", &json!({ "cpus": 2 })).await.unwrap();
    let t = c.vm_action("c2", "start").await.unwrap();
    let t = c.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let why = t.error.clone().unwrap_or_default();
    assert!(why.contains("cpus") && why.contains("t1"), "{t:?}");
    assert_eq!(c.templates().list().await.unwrap().len(), 1);

    // A tenant takes templates only of VMs it may change, and makes VMs only of templates it
    // may read.
    make_user(c, "tim").await;
    let _: serde_json::Value = c
        .put(
            "/api/v1/acl",
            &json!([
                { "path": "/templates", "user": "tim", "role": "operator" },
                { "path": "/templates/t1", "user": "tim", "role": "none" },
                { "path": "/vms", "user": "tim", "role": "operator" },
                { "path": "/vms/src", "user": "tim", "role": "auditor" },
            ]),
        )
        .await
        .unwrap();
    let tim = https_client(&d, &login(&d, "tim", "tim-long-password").await.unwrap());
    let e = api_error(tim.templates().create("mine", "src").await);
    assert_eq!(e.status, 403, "{e:?}");
    let e = api_error(
        tim.create_vm(&json!({ "name": "c4", "cpus": 1, "memory": "128MiB", "template": "t1" }), false).await,
    );
    assert_eq!(e.status, 403, "{e:?}");
    assert!(c.get_vm("c4").await.is_err() && !d.path().join("templates/mine").exists());

    // Once no VM is made from it, it goes, with its state file.
    for name in ["c1", "c2"] {
        let _ = c.vm_action_wait(name, "kill", T).await;
        c.delete_vm(name).await.unwrap();
    }
    c.templates().remove("t1").await.unwrap();
    assert!(!d.path().join("templates/t1").exists());
    assert_eq!(api_error(c.templates().get("t1").await).status, 404);
    c.vm_action_wait("src", "kill", T).await.unwrap();
}
