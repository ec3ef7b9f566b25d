//! `oxvirt-bench templates`: a VM made from a template until its guest answers a command,
//! against plain QEMU restoring the same state file, and against a cold boot of the same guest
//! through oxvirt. Interleaved rounds.

use super::{median, ms, spread, tcg_driver};
use oxvirt_client::Client;
use oxvirt_e2e::*;
use oxvirt_hypervisor::RuntimePaths;
use oxvirt_model::TaskState;
use oxvirt_qemu::commands::migration::{self, Capability, Status};
use oxvirt_qemu::commands::run;
use oxvirt_qemu::qmp::Qmp;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
const ROUNDS: usize = 9;
/// Cold boots take seconds each: fewer of them.
const BOOT_ROUNDS: usize = 3;
/// Creates served by the warm pool (each waits, untimed, for the pool to refill first).
const POOL_ROUNDS: usize = 50;

fn micro(name: &str) -> serde_json::Value {
    let mut spec = kernel_spec(name, "");
    spec["machine"] = json!("microvm");
    spec["memory"] = json!("128MiB");
    spec
}

/// Types the command plain QEMU's guest is typed on the VM's console (a WebSocket through
/// oxvirtd) until it answers; typed again each second while it has not.
async fn answer_on_console(c: &Client, name: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = c.console(name).await.expect("console");
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut typed: Option<Instant> = None;
    while !String::from_utf8_lossy(&seen).contains("A-42") {
        assert!(start.elapsed() < T, "{name} never answered: {}", String::from_utf8_lossy(&seen));
        if typed.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            ws.send(Message::Binary(b"\necho A-$((40+2))\n".to_vec().into())).await.expect("type");
            typed = Some(Instant::now());
        }
        if let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            seen.extend_from_slice(&b);
        }
    }
}

/// Creates and starts `spec` through oxvirt, then types a command into its console until it
/// answers: the time from the request to the answer, and to the start task's end.
async fn until_answer(c: &Client, spec: &serde_json::Value) -> (Duration, Duration) {
    let name = spec["name"].as_str().expect("name").to_string();
    let start = Instant::now();
    let created = c.create_vm(spec, true).await.expect("create");
    let t = c.wait_task(&created.task.expect("task").id, T).await.expect("wait");
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let running = start.elapsed();
    if spec.get("template").is_none() {
        // Booting: typed once the guest says it is up (what it is typed before may be lost).
        wait_console(c, &name, READY, 1, BOOT_TIMEOUT).await;
    }
    answer_on_console(c, &name).await;
    let took = start.elapsed();
    c.vm_action_wait(&name, "kill", T).await.expect("kill");
    c.delete_vm(&name).await.expect("delete");
    (took, running)
}

/// Plain QEMU with the template's own argv maps its memory file copy-on-write, restores its
/// devices' `state` (handed over by `exec:`) and is typed the same command on its console socket.
async fn plain_restore(
    dir: &std::path::Path,
    round: usize,
    spec: &oxvirt_model::VmSpec,
    template: &std::path::Path,
) -> Duration {
    use std::os::fd::AsRawFd;
    let driver = tcg_driver();
    let paths = RuntimePaths::new(dir.join(format!("p{round}")));
    std::fs::create_dir_all(paths.dir()).expect("dir");
    let mut spec = spec.clone();
    spec.name = format!("plain{round}");
    let start = Instant::now();
    // Inherited by QEMU (no close-on-exec), mapped through /proc/self/fd as oxvirt's QEMUs do.
    let memory = std::fs::File::open(template.join("memory")).expect("memory");
    unsafe { libc::fcntl(memory.as_raw_fd(), libc::F_SETFD, 0) };
    let launch = oxvirt_hypervisor::Launch {
        incoming: Some("defer".into()),
        memory_file: Some(oxvirt_hypervisor::MemoryFile { fd: memory.as_raw_fd(), shared: false }),
        ..Default::default()
    };
    super::raw_qemu_with(&driver, &format!("00000000-0000-0000-0000-{round:012}"), &spec, &launch, &paths);
    drop(memory);
    let state = template.join("state");
    let q = Qmp::connect(&paths.qmp_socket(), Duration::from_secs(10)).await.expect("qmp");
    migration::migrate_set_capabilities(&q, &[(Capability::IgnoreShared, true)]).await.expect("capability");
    migration::migrate_incoming(&q, &format!("exec:cat {}", state.display())).await.expect("incoming");
    while migration::query_migrate(&q).await.expect("query").status != Status::Completed {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run::cont(&q).await.expect("cont");
    let mut con = std::os::unix::net::UnixStream::connect(paths.console_socket()).expect("console");
    con.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    con.write_all(b"\necho A-$((40+2))\n").expect("type");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("A-42") {
        assert!(start.elapsed() < T, "plain restore never answered: {}", String::from_utf8_lossy(&seen));
        if let Ok(n) = con.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let took = start.elapsed();
    run::quit(&q, Duration::from_secs(10)).await.expect("quit");
    took
}

pub async fn templates() {
    let d = Daemon::start();
    let c = &d.client;
    let created = c.create_vm(&micro("src"), true).await.expect("create");
    c.wait_task(&created.task.expect("task").id, T).await.expect("start");
    wait_console(c, "src", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(c, "src", "echo M-$((1+1))", "M-2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = c.templates().create("t", "src").await.expect("template");
    let t = c.wait_task(&t.id, T).await.expect("wait");
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    c.vm_action_wait("src", "kill", T).await.expect("kill");
    let tpl = c.templates().get("t").await.expect("template");
    let template = d.path().join("templates/t");
    let plain_dir = tempfile::tempdir_in("/tmp").expect("tmp");
    let (mut oxvirt, mut running, mut plain, mut cold) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let spec = json!({ "name": format!("r{round}"), "cpus": 1, "memory": "128MiB", "template": "t" });
        let (answered, started) = until_answer(c, &spec).await;
        oxvirt.push(answered);
        running.push(started);
        plain.push(plain_restore(plain_dir.path(), round, &tpl.template.spec, &template).await);
        if round < BOOT_ROUNDS {
            cold.push(until_answer(c, &micro(&format!("b{round}"))).await.0);
        }
    }
    println!(
        "templates: of which create and start until the VM runs (restored): {:.0} ms (median; {})",
        median(running.clone()).as_secs_f64() * 1000.0,
        spread(&ms(&running), " ms", 0)
    );
    let (o, p, b) = (median(oxvirt.clone()), median(plain.clone()), median(cold.clone()));
    println!(
        "templates: a VM from a template answers in {:.0} ms (median; {}), plain QEMU restoring the same state {:.0} ms ({}): ratio {:.2}",
        o.as_secs_f64() * 1000.0,
        spread(&ms(&oxvirt), " ms", 0),
        p.as_secs_f64() * 1000.0,
        spread(&ms(&plain), " ms", 0),
        o.as_secs_f64() / p.as_secs_f64()
    );
    println!(
        "templates: a cold boot through oxvirt answers in {:.0} ms ({}): the template is {:.1}x faster (goal >= 30x); devices' state {} KiB, memory {} MiB mapped copy-on-write",
        b.as_secs_f64() * 1000.0,
        spread(&ms(&cold), " ms", 0),
        b.as_secs_f64() / o.as_secs_f64(),
        tpl.template.state_bytes / 1024,
        tpl.template.memory_bytes >> 20
    );
    let (warm, warm_running) = from_the_pool(c).await;
    let w = median(warm.clone());
    let mut sorted = ms(&warm);
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() * 99).div_ceil(100) - 1];
    println!(
        "templates: from a warm pool a VM answers in {:.0} ms (median; p99 {p99:.0} ms; {}; goal <= 100 ms), of which create and start until it runs {:.0} ms: {:.2}x plain QEMU's restore, {:.1}x faster than a cold boot (goal >= 30x)",
        w.as_secs_f64() * 1000.0,
        spread(&ms(&warm), " ms", 0),
        median(warm_running).as_secs_f64() * 1000.0,
        w.as_secs_f64() / p.as_secs_f64(),
        b.as_secs_f64() / w.as_secs_f64()
    );
}

/// Creates that start, each served by template `t`'s warm pool of one: the request until the
/// guest answers. The refill behind each is waited for, untimed.
async fn from_the_pool(c: &Client) -> (Vec<Duration>, Vec<Duration>) {
    c.templates().set_pool("t", 1).await.expect("pool");
    let (mut took, mut running) = (Vec::new(), Vec::new());
    for round in 0..POOL_ROUNDS {
        let start = Instant::now();
        while c.templates().get("t").await.expect("template").pool_ready < 1 {
            assert!(start.elapsed() < T, "the pool never refilled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spec = json!({ "name": format!("w{round}"), "cpus": 1, "memory": "128MiB", "template": "t" });
        let (answered, started) = until_answer(c, &spec).await;
        took.push(answered);
        running.push(started);
    }
    c.templates().set_pool("t", 0).await.expect("pool");
    (took, running)
}
