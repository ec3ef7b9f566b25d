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
    let tpl = c.templates().get("t1").await.unwrap().template;
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
    // Each took its own identity from the agent as it started: hostname, machine id, a
    // generator reseeded apart (restored as they are, both would draw the same bytes).
    assert!(tpl.agent, "the source's guest runs the agent: {tpl:?}");
    let mut random = Vec::new();
    for name in ["c1", "c2"] {
        let bytes = guest_text(c, name, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'").await;
        assert_eq!(bytes.len(), 32, "{bytes:?}");
        random.push(bytes);
        assert_eq!(guest_text(c, name, "hostname").await, name);
        let id = c.get_vm(name).await.unwrap().id.replace('-', "");
        assert_eq!(guest_text(c, name, "cat /etc/machine-id").await, id);
    }
    assert_ne!(random[0], random[1], "two clones drew the same random bytes");
    // A microvm's agent stays, for its next start's identity.
    run_in_guest(c, "c1", &guest_check("pidof oxvirt-guest-agent"), GUEST_OK).await;
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

/// The QEMUs of template `t`'s warm pool under daemon `d` (by their pidfiles and names; a VM
/// that took one keeps its name: the VMs' QEMUs are left out).
async fn pool_pids(d: &Daemon, t: &str) -> Vec<u32> {
    let vms: Vec<u32> = d.client.list_vms().await.unwrap().iter().filter_map(|v| v.status.pid).collect();
    let name = format!("guest=pool-{t},");
    let mut pids: Vec<u32> = std::fs::read_dir(d.path().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("qemu.pid")).ok()?.trim().parse().ok())
        .filter(|p: &u32| {
            !vms.contains(p)
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&name))
        })
        .collect();
    pids.sort();
    pids
}

/// Waits until template `t`'s pool holds `n` VMs, and returns their QEMUs.
async fn pool_holds(d: &Daemon, t: &str, n: u32) -> Vec<u32> {
    let start = std::time::Instant::now();
    loop {
        let ready = d.client.templates().get(t).await.unwrap().pool_ready;
        let pids = pool_pids(d, t).await;
        if ready == n && pids.len() == n as usize {
            return pids;
        }
        assert!(start.elapsed() < T, "pool of {t}: {ready} ready, QEMUs {pids:?}; wanted {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_hands_out_restored_vms_refills_and_outlives_a_daemon_restart() {
    let mut d = Daemon::start();
    let c = d.client.clone();
    let created = c.create_vm(&micro("src"), true).await.unwrap();
    c.wait_task(&created.task.unwrap().id, T).await.unwrap();
    wait_console(&c, "src", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(&c, "src", "echo tpl-$((6*7)) > /tmp/mark; echo M-$((1+1))", "M-2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = c.templates().create("t1", "src").await.unwrap();
    assert_eq!(c.wait_task(&t.id, T).await.unwrap().state, TaskState::Succeeded);
    c.vm_action_wait("src", "kill", T).await.unwrap();

    // A pool is the host's capacity: a tenant who may use the template may not size its pool.
    make_user(&c, "tim").await;
    let _: serde_json::Value =
        c.put("/api/v1/acl", &json!([{ "path": "/templates", "user": "tim", "role": "operator" }])).await.unwrap();
    let tim = https_client(&d, &login(&d, "tim", "tim-long-password").await.unwrap());
    assert_eq!(api_error(tim.templates().set_pool("t1", 2).await).status, 403);
    // Bad input, refused by name.
    let e = api_error(c.templates().set_pool("t1", 65).await);
    assert_eq!((e.status, e.field.as_deref()), (400, Some("size")), "{e:?}");
    assert_eq!(api_error(c.templates().set_pool("nosuch", 1).await).status, 404);
    assert!(pool_pids(&d, "t1").await.is_empty());

    let (code, out, err) = d.cli(&["template", "pool", "t1", "--size", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let members = pool_holds(&d, "t1", 2).await;
    let r = c.resources().host_resources().await.unwrap();
    assert_eq!((r.templates.pool_vms, r.templates.shared_memory_bytes), (2, 128 << 20), "{:?}", r.templates);
    assert_eq!(r.committed_memory, 0, "a pool's VMs are no VM's");
    let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let metrics = String::from_utf8_lossy(&body).into_owned();
    for series in ["oxvirt_template_pool_ready{template=\"t1\"} ", "oxvirt_template_pool_size{template=\"t1\"} "] {
        let value = metrics.lines().find_map(|l| l.strip_prefix(series)).unwrap_or_else(|| panic!("no {series}"));
        assert_eq!(value.parse::<f64>().unwrap(), 2.0, "{series}{value}");
    }
    // Waiting VMs are paused: they use next to no CPU.
    let cpu_ticks = |p: &u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().skip(11).take(2).map(|f| f.parse::<u64>().unwrap()).sum()
    };
    let before: Vec<u64> = members.iter().map(cpu_ticks).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (p, b) in members.iter().zip(before) {
        assert!(cpu_ticks(p) - b <= 10, "pool QEMU {p} used {} ticks in 1 s", cpu_ticks(p) - b);
    }

    // A create that starts takes one: the VM is that QEMU, resumed, the template's guest in it.
    // (The members' guest clocks stopped when the template was taken, seconds ago by now.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out, err) = d.cli(&["vm", "create", "w1", "--template", "t1", "--start"]);
    assert_eq!(code, 0, "{out}{err}");
    let w1 = c.get_vm("w1").await.unwrap();
    assert!(members.contains(&w1.status.pid.unwrap()), "w1 runs QEMU {:?}, not one of {members:?}", w1.status.pid);
    run_in_guest(&c, "w1", "cat /tmp/mark", "tpl-42").await;
    run_in_guest(&c, "w1", "echo W-$((3+3))", "W-6").await;
    // Told who it is as it was taken: its own name, and the host's time.
    assert_eq!(guest_text(&c, "w1", "hostname").await, "w1");
    let guest_now = guest_number(&c, "w1", "date +%s").await as i64;
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((guest_now - host_now).abs() <= 2, "guest clock {guest_now}, host {host_now}");
    // The pool refills behind it with a new QEMU.
    let refilled = pool_holds(&d, "t1", 2).await;
    assert!(!refilled.contains(&w1.status.pid.unwrap()), "{refilled:?}");
    // A create that does not start leaves the pool alone; its start restores as usual.
    c.create_vm(&json!({ "name": "cold", "cpus": 1, "memory": "128MiB", "template": "t1" }), false).await.unwrap();
    assert_eq!(c.templates().get("t1").await.unwrap().pool_ready, 2);

    // A daemon killed and started again finds its pool's QEMUs and keeps them.
    d.respawn_after_kill9();
    let c = d.client.clone();
    assert_eq!(pool_holds(&d, "t1", 2).await, refilled, "the same QEMUs, re-adopted");
    run_in_guest(&c, "w1", "echo A-$((4+4))", "A-8").await;
    // And hands them out as before.
    let created = c.create_vm(&json!({ "name": "w2", "cpus": 1, "memory": "128MiB", "template": "t1" }), true).await;
    c.wait_task(&created.unwrap().task.unwrap().id, T).await.unwrap();
    let w2 = c.get_vm("w2").await.unwrap();
    assert!(refilled.contains(&w2.status.pid.unwrap()), "{:?} not one of {refilled:?}", w2.status.pid);
    run_in_guest(&c, "w2", "cat /tmp/mark", "tpl-42").await;

    // `oxvirt run`: a command in a fresh clone, its output and exit code, the clone gone after;
    // two at once, neither seeing the other's files.
    let runs: Vec<(i32, String, String)> = std::thread::scope(|s| {
        let one = "cat /tmp/mark; echo only-$((5*5)) > /tmp/own; exit 3";
        let two = "test -e /tmp/own && echo leaked; echo it\\'s-$((2*3)) >&2";
        let a = s.spawn(|| d.cli(&["run", "--template", "t1", "--", "sh", "-c", one]));
        let b = s.spawn(|| d.cli(&["run", "--template", "t1", "--", "sh", "-c", two]));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!((runs[0].0, runs[0].1.as_str()), (3, "tpl-42\n"), "{runs:?}");
    assert_eq!((runs[1].0, runs[1].1.as_str()), (0, "it's-6\n"), "{runs:?}");
    let (code, _, err) = d.cli(&["run", "--template", "nosuch", "--", "true"]);
    assert!(code != 0 && err.contains("nosuch"), "{err}");
    let left: Vec<String> = c.list_vms().await.unwrap().into_iter().map(|v| v.spec.name).collect();
    assert!(!left.iter().any(|n| n.starts_with("run-")), "{left:?}");
    let refilled = pool_holds(&d, "t1", 2).await;

    // A pool QEMU that dies is replaced.
    unsafe { libc::kill(refilled[0] as i32, libc::SIGKILL) };
    let start = std::time::Instant::now();
    let refilled = loop {
        let now = pool_holds(&d, "t1", 2).await;
        if !now.contains(&refilled[0]) {
            break now;
        }
        assert!(start.elapsed() < T, "the dead member was never replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Size 0 ends them; a template with a pool goes with it.
    c.templates().set_pool("t1", 0).await.unwrap();
    pool_holds(&d, "t1", 0).await;
    for p in &refilled {
        assert!(!process_alive(*p), "QEMU {p} of the pool still runs");
    }
    c.templates().set_pool("t1", 1).await.unwrap();
    let last = pool_holds(&d, "t1", 1).await;
    for vm in ["w1", "w2"] {
        c.vm_action_wait(vm, "kill", T).await.unwrap();
    }
    for vm in ["w1", "w2", "cold"] {
        c.delete_vm(vm).await.unwrap();
    }
    c.templates().remove("t1").await.unwrap();
    let start = std::time::Instant::now();
    while process_alive(last[0]) {
        assert!(start.elapsed() < Duration::from_secs(10), "the removed template's pool QEMU runs on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!d.path().join("templates/t1").exists());
}

/// Memory process `pid` accounts for with shared pages split among their users (kB → bytes).
fn pss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kib: u64 =
        s.lines().find_map(|l| l.strip_prefix("Pss:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clones_of_one_template_run_at_once_sharing_its_memory() {
    let d = Daemon::start();
    let c = &d.client;
    let created = c.create_vm(&micro("src"), true).await.unwrap();
    c.wait_task(&created.task.unwrap().id, T).await.unwrap();
    wait_console(c, "src", READY, 1, BOOT_TIMEOUT).await;
    // Memory the guest holds, written before the template is taken: every clone has it.
    run_in_guest(c, "src", "dd if=/dev/urandom of=/tmp/fill bs=1M count=48 2>/dev/null; echo F-$((2+2))", "F-4").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = c.templates().create("t1", "src").await.unwrap();
    assert_eq!(c.wait_task(&t.id, T).await.unwrap().state, TaskState::Succeeded);
    c.vm_action_wait("src", "kill", T).await.unwrap();
    // 20 single-vCPU guests on this host's CPUs: over-commit allowed for the test.
    let mut policy = c.resources().host_policy().await.unwrap();
    policy.cpu_overcommit = 16.0;
    c.resources().set_host_policy(&policy).await.unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for n in &names {
        let created = c.create_vm(&json!({ "name": n, "cpus": 1, "memory": "128MiB", "template": "t1" }), true).await;
        let t = c.wait_task(&created.unwrap().task.unwrap().id, T).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded, "{n}: {t:?}");
    }
    for n in &names {
        run_in_guest(c, n, "md5sum /tmp/fill | cut -c1-8; echo K-$((3+4))", "K-7").await;
    }
    // Committed: 20 whole memories. Held: the template's once, and what each wrote of its own.
    let r = c.resources().host_resources().await.unwrap();
    assert_eq!(r.committed_memory, 20 * (128 << 20));
    let pss: u64 = c.list_vms().await.unwrap().iter().filter_map(|v| v.status.pid).map(pss_bytes).sum();
    eprintln!("20 clones: PSS {} MiB, committed {} MiB", pss >> 20, r.committed_memory >> 20);
    assert!(pss < r.committed_memory / 2, "20 clones hold {} MiB: their template's memory is not shared", pss >> 20);
    for n in &names {
        c.vm_action_wait(n, "kill", T).await.unwrap();
    }
}
