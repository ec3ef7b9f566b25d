//! `oxvirt-bench backup`: backups and restores against `qemu-img convert` of the same disk on
//! the same file system, an incremental backup of 64 MiB changed in 4 GiB, and the dedup of
//! ten VMs cloned from one template.

use super::{median, ms, spread, ROUNDS};
use oxvirt_client::Client;
use oxvirt_e2e::*;
use oxvirt_model::{BackupRepoSpec, TaskState};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(600);
const MIB: f64 = 1048576.0;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `mib` MiB of random data written into the qcow2 `image` from its start.
fn fill_random(dir: &Path, image: &Path, mib: usize) {
    let raw = dir.join("random.raw");
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", raw.display()))
        .args(["bs=1M", &format!("count={mib}")]));
    run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(image));
    let _ = std::fs::remove_file(raw);
}

async fn task_ok(c: &Client, t: oxvirt_model::Task) -> oxvirt_model::Task {
    let t = c.wait_task(&t.id, T).await.expect("wait");
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    t
}

async fn repo(c: &Client, d: &Daemon, name: &str) {
    let path = d.path().join(name).to_string_lossy().into_owned();
    c.backups().create_repo(&BackupRepoSpec { name: name.into(), path, ..Default::default() }).await.expect("repo");
}

pub async fn backup() {
    println!("== backup: {ROUNDS} rounds each (median, spread)");
    let d = Daemon::start();
    let c = &d.client;
    let pool = d.path().join("pool");
    let _: serde_json::Value = c.post("/api/v1/pools", &json!({ "name": "b", "path": pool })).await.expect("pool");
    let _: serde_json::Value =
        c.post("/api/v1/pools/b/volumes", &json!({ "name": "src", "size": "1GiB" })).await.expect("volume");
    let src = pool.join("src.qcow2");
    fill_random(d.path(), &src, 512);
    let mut spec = kernel_spec("bk", "");
    spec["disks"] = json!([{ "volume": "b/src" }]);
    c.create_vm(&spec, true).await.expect("vm");
    wait_console(c, "bk", READY, 1, BOOT_TIMEOUT).await;

    // Full backups of a running VM (a fresh repository each round) against qemu-img convert.
    let (mut conv, mut full, mut back, mut rest) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut conv_sync, mut back_sync) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let copy = d.path().join(format!("copy{round}.qcow2"));
        // The copy made durable as a backup is (flushed to disk before it is called done).
        let t0 = Instant::now();
        run(Command::new("qemu-img").args(["convert", "-U", "-O", "qcow2"]).arg(&src).arg(&copy));
        conv.push(t0.elapsed());
        run(Command::new("sync").arg(&copy));
        conv_sync.push(t0.elapsed());
        let name = format!("full{round}");
        repo(c, &d, &name).await;
        let t0 = Instant::now();
        task_ok(c, c.backups().back_up("bk", &name).await.expect("backup")).await;
        full.push(t0.elapsed());
        let id = c.backups().list(&name, Some("bk")).await.expect("list")[0].id.clone();
        // Restores into the pool against qemu-img convert of the copy into it.
        let back_file = pool.join(format!("back{round}.qcow2"));
        let t0 = Instant::now();
        run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&copy).arg(&back_file));
        back.push(t0.elapsed());
        run(Command::new("sync").arg(&back_file));
        back_sync.push(t0.elapsed());
        let t0 = Instant::now();
        task_ok(c, c.backups().restore(&name, &id, &format!("rs{round}"), "b").await.expect("restore")).await;
        rest.push(t0.elapsed());
        let _ = std::fs::remove_file(&copy);
        let _ = std::fs::remove_file(&back_file);
    }
    let rate = |v: &[Duration]| v.iter().map(|d| 512.0 / d.as_secs_f64()).collect::<Vec<f64>>();
    let line = |what: &str, ours: &[Duration], plain: &[Duration], durable: &[Duration]| {
        let (o, p, q) = (median(ours.to_vec()), median(plain.to_vec()), median(durable.to_vec()));
        println!(
            "   {what}: {:.0} MiB/s ({}); qemu-img convert {:.0} MiB/s ({}), then synced {:.0} MiB/s; time ratio oxvirt/convert {:.2}, oxvirt/(convert+sync) {:.2}",
            512.0 / o.as_secs_f64(),
            spread(&rate(ours), " MiB/s", 0),
            512.0 / p.as_secs_f64(),
            spread(&rate(plain), " MiB/s", 0),
            512.0 / q.as_secs_f64(),
            o.as_secs_f64() / p.as_secs_f64(),
            o.as_secs_f64() / q.as_secs_f64()
        );
    };
    line("full backup of 512 MiB of a running VM", &full, &conv, &conv_sync);
    line("restore of 512 MiB into a pool (goal: >= 1 GB/s from page cache)", &rest, &back, &back_sync);
    let _ = c.vm_action_wait("bk", "kill", T).await;

    // 64 MiB changed in 4 GiB, read as its changes.
    let _: serde_json::Value =
        c.post("/api/v1/pools/b/volumes", &json!({ "name": "big", "size": "4GiB" })).await.expect("volume");
    let mut spec = kernel_spec("inc", "");
    spec["disks"] = json!([{ "volume": "b/big" }]);
    c.create_vm(&spec, true).await.expect("vm");
    wait_console(c, "inc", READY, 1, BOOT_TIMEOUT).await;
    repo(c, &d, "inc").await;
    task_ok(c, c.backups().back_up("inc", "inc").await.expect("backup")).await;
    let (mut times, mut read) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let at = 256 + round * 512;
        let cmd = format!(
            "i=0; while [ $i -lt 16 ]; do {{ echo R{round}-$i; dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\\000' x; }} | head -c 4194304 | dd of=/dev/vda bs=1M seek=$(({at}+i*4)) 2>/dev/null; i=$((i+1)); done; sync; echo W-$(({round}+100))"
        );
        run_in_guest(c, "inc", &cmd, &format!("W-{}", round + 100)).await;
        let t0 = Instant::now();
        task_ok(c, c.backups().back_up("inc", "inc").await.expect("backup")).await;
        times.push(t0.elapsed());
        let b = c.backups().list("inc", Some("inc")).await.expect("list").pop().expect("backup");
        assert!(!b.full, "{b:?}");
        read.push(b.read_bytes as f64 / MIB);
    }
    println!(
        "   incremental, 64 MiB changed in 4 GiB: {:?} ({}), read {:.0} MiB ({})",
        median(times.clone()),
        spread(&ms(&times), " ms", 0),
        super::median_f(&read),
        spread(&read, " MiB", 0)
    );
    let _ = c.vm_action_wait("inc", "kill", T).await;

    // Ten VMs cloned from one template, 4 MiB of each changed.
    let _: serde_json::Value =
        c.post("/api/v1/pools/b/volumes", &json!({ "name": "tpl", "size": "512MiB" })).await.expect("volume");
    fill_random(d.path(), &pool.join("tpl.qcow2"), 256);
    repo(c, &d, "dedup").await;
    let mut logical = 0.0;
    for i in 0..10 {
        let name = format!("clone{i}");
        let _: serde_json::Value =
            c.post("/api/v1/pools/b/volumes/tpl/clone", &json!({ "name": name })).await.expect("clone");
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &format!("write -P {} 0 4M", i + 1)])
            .arg(pool.join(format!("{name}.qcow2"))));
        let mut spec = kernel_spec(&format!("dd{i}"), "");
        spec["disks"] = json!([{ "volume": format!("b/{name}") }]);
        c.create_vm(&spec, false).await.expect("vm");
        task_ok(c, c.backups().back_up(&format!("dd{i}"), "dedup").await.expect("backup")).await;
        let b = c.backups().list("dedup", Some(&format!("dd{i}"))).await.expect("list").pop().expect("backup");
        logical += b.disks.iter().map(|d| d.data_chunks as f64 * 4.0).sum::<f64>();
    }
    let view = c.backups().get_repo("dedup").await.expect("repo");
    println!(
        "   dedup of 10 VMs cloned from one template (256 MiB each, 4 MiB changed): {logical:.0} MiB backed up, {:.0} MiB stored in {} chunks: ratio {:.1}",
        view.stored_bytes as f64 / MIB,
        view.chunks,
        logical / (view.stored_bytes as f64 / MIB)
    );
    println!("   live-restore: not built yet (#18 keeps it open)");
}
