//! Backups with real guests: a running VM's full backup, then only its changes (also across a
//! stop and start of its QEMU), a stopped VM's, a crash that makes the next one full with the
//! reason said, and restores that match the disks block for block.

use oxvirt_client::Client;
use oxvirt_e2e::*;
use oxvirt_model::{Backup, BackupRepoSpec, Task, TaskState};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

async fn backup(c: &Client, vm: &str, repo: &str) -> (Task, Backup) {
    let t = c.backups().back_up(vm, repo).await.unwrap();
    let t = c.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let newest = c.backups().list(repo, Some(vm)).await.unwrap().pop().unwrap();
    (t, newest)
}

/// Writes `mib` MiB (a multiple of 4) at `at_mib` on the guest's /dev/vda: 4 MiB chunks each
/// unlike any other (a line naming `tag` and the chunk, then `x`s).
fn write_cmd(tag: u64, mib: u64, at_mib: u64) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do {{ echo T{tag}-$i; dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\\000' x; }} | head -c 4194304 | dd of=/dev/vda bs=1M seek=$(({at_mib}+i*4)) 2>/dev/null; i=$((i+1)); done; sync; echo W-$(({mib}+1))",
        n = mib / 4
    )
}

fn compare(a: &Path, b: &Path) {
    let out =
        Command::new("qemu-img").args(["compare", "-f", "qcow2", "-F", "qcow2", "-U"]).arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn restore(c: &Client, repo: &str, id: &str, name: &str, pool_dir: &Path) -> PathBuf {
    let t = c.backups().restore(repo, id, name, "bk").await.unwrap();
    let t = c.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let vm = c.get_vm(name).await.unwrap();
    assert_eq!(vm.spec.disks[0].volume.as_deref(), Some(format!("bk/{name}-disk0").as_str()));
    pool_dir.join(format!("{name}-disk0.qcow2"))
}

/// Pool `bk` in the daemon's `pool-bk` with volume `data` of `size`: the pool's directory.
async fn pool_with_data(d: &Daemon, size: &str) -> PathBuf {
    let pool_dir = d.path().join("pool-bk");
    let _: serde_json::Value =
        d.client.post("/api/v1/pools", &json!({ "name": "bk", "path": pool_dir })).await.unwrap();
    let _: serde_json::Value =
        d.client.post("/api/v1/pools/bk/volumes", &json!({ "name": "data", "size": size })).await.unwrap();
    pool_dir
}

/// Repository `main`, not encrypted, at `path`.
async fn plain_repo(c: &Client, path: &Path) {
    let spec = BackupRepoSpec { name: "main".into(), path: path.to_string_lossy().into(), ..Default::default() };
    c.backups().create_repo(&spec).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_changes_only_across_stops_and_a_crash_and_restores_match_block_for_block() {
    let d = Daemon::start();
    let c = &d.client;
    let pool_dir = pool_with_data(&d, "256MiB").await;
    let repo_dir = d.path().join("repo");
    plain_repo(c, &repo_dir).await;
    let volume = pool_dir.join("data.qcow2");
    let mut spec = kernel_spec("bvm", "");
    spec["disks"] = json!([{ "volume": "bk/data" }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "bvm", READY, 1, BOOT_TIMEOUT).await;

    // A known state: 32 MiB written, the VM stopped, the image copied.
    run_in_guest(c, "bvm", &write_cmd(1, 32, 0), "W-33").await;
    c.vm_action_wait("bvm", "stop", T).await.unwrap();
    let expected1 = d.path().join("expected1.qcow2");
    std::fs::copy(&volume, &expected1).unwrap();
    c.vm_action_wait("bvm", "start", T).await.unwrap();
    wait_console(c, "bvm", READY, 2, BOOT_TIMEOUT).await;

    // 1: the first backup reads what is allocated, all of it.
    let (_, b1) = backup(c, "bvm", "main").await;
    assert!(b1.full, "{b1:?}");
    assert!(b1.full_reason.as_deref().unwrap_or_default().contains("first backup"), "{b1:?}");
    assert_eq!(b1.read_bytes, 32 * MIB, "{b1:?}");
    assert_eq!(b1.disks[0].data_chunks, 8);

    // 2: 64 MiB change; only those are read, and only new chunks stored.
    run_in_guest(c, "bvm", &write_cmd(2, 64, 64), "W-65").await;
    let (t2, b2) = backup(c, "bvm", "main").await;
    assert!(!b2.full, "{b2:?}");
    assert_eq!(b2.parent.as_deref(), Some(b1.id.as_str()));
    assert_eq!(b2.read_bytes, 64 * MIB, "{b2:?} ({})", t2.message);
    assert_eq!(b2.new_chunks, 16, "{b2:?}");
    assert_eq!(b2.disks[0].data_chunks, 24);

    // 3: stopped (QEMU saved the change map on its way out): still only the changes, none.
    c.vm_action_wait("bvm", "stop", T).await.unwrap();
    let (code, stdout, stderr) = d.cli(&["vm", "backup", "bvm", "--repo", "main"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("changes since"), "{stdout}");
    let b3 = c.backups().list("main", Some("bvm")).await.unwrap().pop().unwrap();
    assert!(!b3.full && b3.read_bytes == 0, "{b3:?}");

    // 4: started again, 8 MiB changed: the map kept recording across the stop and start.
    c.vm_action_wait("bvm", "start", T).await.unwrap();
    wait_console(c, "bvm", READY, 3, BOOT_TIMEOUT).await;
    run_in_guest(c, "bvm", &write_cmd(3, 8, 200), "W-9").await;
    let (_, b4) = backup(c, "bvm", "main").await;
    assert!(!b4.full && b4.read_bytes == 8 * MIB, "{b4:?}");
    c.vm_action_wait("bvm", "stop", T).await.unwrap();

    // Both ends restore block for block.
    let r1 = restore(c, "main", &b1.id, "r1", &pool_dir).await;
    compare(&expected1, &r1);
    let r4 = restore(c, "main", &b4.id, "r4", &pool_dir).await;
    compare(&volume, &r4);
    // Exported as a qcow2 file, too.
    let file = d.path().join("b4.qcow2");
    let (code, out, err) = d.cli(&["backup", "export", &format!("main/{}", b4.id), "--to", &file.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
    compare(&volume, &file);
    // A restored VM boots from what it got.
    c.vm_action_wait("r4", "start", T).await.unwrap();
    wait_console(c, "r4", READY, 1, BOOT_TIMEOUT).await;
    c.vm_action_wait("r4", "kill", T).await.unwrap();

    // A crash (QEMU killed with SIGKILL) leaves the change map unsaved: the next backup reads everything
    // and says why.
    c.vm_action_wait("bvm", "start", T).await.unwrap();
    wait_console(c, "bvm", READY, 4, BOOT_TIMEOUT).await;
    let pid = c.get_vm("bvm").await.unwrap().status.pid.unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_state(c, "bvm", "stopped", T).await;
    let (_, b5) = backup(c, "bvm", "main").await;
    assert!(b5.full, "{b5:?}");
    assert!(b5.full_reason.as_deref().unwrap_or_default().contains("not saved"), "{b5:?}");
    assert_eq!(b5.new_chunks, 0, "nothing new: every chunk is in the repository already");
    // The repository counts each chunk once.
    let view = c.backups().get_repo("main").await.unwrap();
    assert_eq!((view.backups, view.chunks), (5, 26), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_gc_during_a_backup_lose_nothing_verify_names_damage_and_a_killed_daemon_leaves_all_sound() {
    let mut d = Daemon::start();
    let pool_dir = pool_with_data(&d, "512MiB").await;
    let repo_dir = d.path().join("repo");
    let volume = pool_dir.join("data.qcow2");
    let vm_id;
    {
        let c = &d.client;
        plain_repo(c, &repo_dir).await;
        let mut spec = kernel_spec("gvm", "");
        spec["disks"] = json!([{ "volume": "bk/data" }]);
        vm_id = c.create_vm(&spec, true).await.unwrap().vm.id;
        wait_console(c, "gvm", READY, 1, BOOT_TIMEOUT).await;
        run_in_guest(c, "gvm", &write_cmd(1, 256, 0), "W-257").await;
        let (_, a) = backup(c, "gvm", "main").await;
        assert!(a.full && a.read_bytes == 256 * MIB, "{a:?}");

        // B reads 128 MiB while prunes keeping 1 and garbage collections run, again and again.
        run_in_guest(c, "gvm", &write_cmd(2, 128, 0), "W-129").await;
        let started = c.backups().back_up("gvm", "main").await.unwrap();
        let (mut during, mut rounds) = (0, 0);
        loop {
            let before = c.get_task(&started.id).await.unwrap().state;
            let keep = oxvirt_model::Retention { keep_last: 1, ..Default::default() };
            c.backups().prune("main", &oxvirt_model::PruneRequest { keep, vm: None, dry_run: false }).await.unwrap();
            let gc = c.backups().collect_garbage("main").await.unwrap();
            let gc = c.wait_task(&gc.id, T).await.unwrap();
            assert_eq!(gc.state, TaskState::Succeeded, "{gc:?}");
            let after = c.get_task(&started.id).await.unwrap().state;
            rounds += 1;
            if before == TaskState::Running && after == TaskState::Running {
                during += 1;
            }
            if after.is_final() {
                break;
            }
        }
        let b = c.wait_task(&started.id, T).await.unwrap();
        assert_eq!(b.state, TaskState::Succeeded, "{b:?}");
        assert!(during >= 1, "no collection ran while the backup did ({rounds} rounds)");
        let all = c.backups().list("main", Some("gvm")).await.unwrap();
        let b = all.last().unwrap().clone();
        assert!(!b.full && b.read_bytes == 128 * MIB, "{b:?}");
        // The last prune kept B alone; a collection now removes A's overwritten chunks.
        let keep = oxvirt_model::Retention { keep_last: 1, ..Default::default() };
        let p =
            c.backups().prune("main", &oxvirt_model::PruneRequest { keep, vm: None, dry_run: false }).await.unwrap();
        assert_eq!(p.kept, std::slice::from_ref(&b.id), "{p:?}");
        let gc = c.wait_task(&c.backups().collect_garbage("main").await.unwrap().id, T).await.unwrap();
        assert!(gc.message.starts_with("removed "), "{gc:?}");
        let v = c.wait_task(&c.backups().verify("main").await.unwrap().id, T).await.unwrap();
        assert_eq!(v.state, TaskState::Succeeded, "everything B needs is there: {v:?}");

        // Stopped, the disk is what B holds.
        c.vm_action_wait("gvm", "stop", T).await.unwrap();
        let rb = restore(c, "main", &b.id, "rb", &pool_dir).await;
        compare(&volume, &rb);

        // C is interrupted: oxvirtd is killed while the guest's disk is frozen for it.
        c.vm_action_wait("gvm", "start", T).await.unwrap();
        wait_console(c, "gvm", READY, 2, BOOT_TIMEOUT).await;
        run_in_guest(c, "gvm", &write_cmd(3, 64, 256), "W-65").await;
        c.backups().back_up("gvm", "main").await.unwrap();
    }
    let scratch = d.path().join("backup-work").join(&vm_id).join("scratch-disk0.qcow2");
    let begun = std::time::Instant::now();
    while !scratch.exists() {
        assert!(begun.elapsed() < T, "the backup never froze the disk");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    d.respawn_after_kill9();
    let c = &d.client;
    wait_state(c, "gvm", "running", T).await;
    assert!(!scratch.exists(), "the interrupted backup's scratch image is gone");
    let backups = c.backups().list("main", Some("gvm")).await.unwrap();
    assert_eq!(backups.len(), 1, "B alone (A pruned), no index of the interrupted backup: {backups:?}");
    let tasks = c.list_tasks().await.unwrap();
    let c_task = tasks.iter().filter(|t| t.kind == "vm.backup").max_by_key(|t| t.created_at).unwrap();
    assert_ne!(c_task.state, TaskState::Succeeded, "{c_task:?}");
    assert!(std::fs::read_dir(repo_dir.join("writers")).unwrap().next().is_none(), "no lease left");
    // D builds on B: the maps of B and of the interrupted C together hold every change since.
    let (_, dd) = backup(c, "gvm", "main").await;
    assert!(!dd.full, "{dd:?}");
    assert_eq!(dd.read_bytes, 64 * MIB, "{dd:?}");
    let v = c.wait_task(&c.backups().verify("main").await.unwrap().id, T).await.unwrap();
    assert_eq!(v.state, TaskState::Succeeded, "{v:?}");

    // A damaged chunk: verify fails and names every backup that needs it.
    let b_id = backups.last().unwrap().id.clone();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_dir.join("backups").join(format!("{b_id}.json"))).unwrap()).unwrap();
    let digest = index["disks"][0]["chunks"][40].as_str().unwrap().to_string();
    std::fs::write(repo_dir.join("chunks").join(&digest[..2]).join(&digest), b"not zstd").unwrap();
    let v = c.wait_task(&c.backups().verify("main").await.unwrap().id, T).await.unwrap();
    assert_eq!(v.state, TaskState::Failed, "{v:?}");
    let why = v.error.unwrap_or_default();
    assert!(why.contains(&digest) && why.contains(&b_id) && why.contains(&dd.id), "{why}");
    c.vm_action_wait("gvm", "kill", T).await.unwrap();
}

async fn metric(c: &Client, line_start: &str) -> Option<f64> {
    let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_its_schedule_prunes_after_and_its_failures_show_on_metrics() {
    let d = Daemon::start();
    let c = &d.client;
    let pool_dir = d.path().join("pool-bk");
    let _: serde_json::Value = c.post("/api/v1/pools", &json!({ "name": "bk", "path": pool_dir })).await.unwrap();
    for v in ["a", "b"] {
        let _: serde_json::Value =
            c.post("/api/v1/pools/bk/volumes", &json!({ "name": v, "size": "64MiB" })).await.unwrap();
        let mut spec = kernel_spec(&format!("job-{v}"), "");
        spec["disks"] = json!([{ "volume": format!("bk/{v}") }]);
        c.create_vm(&spec, false).await.unwrap();
    }
    let qemu_io = |cmd: &str| {
        let ok =
            Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(pool_dir.join("a.qcow2")).output().unwrap();
        assert!(ok.status.success());
    };
    qemu_io("write -P 0x61 0 8M");
    plain_repo(c, &d.path().join("repo")).await;
    let spec = |name: &str, vms: &[&str], schedule: &str| oxvirt_model::BackupJobSpec {
        name: name.into(),
        vms: vms.iter().map(|v| v.to_string()).collect(),
        repo: "main".into(),
        schedule: schedule.into(),
        retention: Some(oxvirt_model::Retention { keep_last: 2, ..Default::default() }),
        enabled: true,
    };
    // Bad definitions are refused, naming the field.
    for (bad, field) in [
        (spec("x", &["ghost"], "* * * * *"), "vms[0]"),
        (spec("x", &["job-a"], "61 * * * *"), "schedule"),
        (oxvirt_model::BackupJobSpec { repo: "none".into(), ..spec("x", &["job-a"], "* * * * *") }, "repo"),
    ] {
        match c.backups().create_job(&bad).await {
            Err(oxvirt_client::ClientError::Api(e)) => {
                assert_eq!((e.status, e.field.as_deref()), (400, Some(field)), "{e:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Every minute: the first run comes within one.
    let job = c.backups().create_job(&spec("minutely", &["job-a", "job-b"], "* * * * *")).await.unwrap();
    assert!(job.status.next_run_at > 0);
    let begun = std::time::Instant::now();
    let ran = loop {
        let j = c.backups().get_job("minutely").await.unwrap();
        if j.status.runs > 0 {
            break j;
        }
        assert!(begun.elapsed() < Duration::from_secs(90), "the job never ran: {j:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(ran.status.last_ok, "{ran:?}");
    assert_eq!(ran.status.last_run_at, job.status.next_run_at, "the scheduled slot ran");
    assert!(ran.status.next_run_at >= job.status.next_run_at + 60_000);
    assert_eq!(c.backups().list("main", Some("job-a")).await.unwrap().len(), 1);
    assert_eq!(metric(c, "oxvirt_backup_job_last_run_ok{job=\"minutely\"}").await, Some(1.0));
    // Disabled, it runs only when asked.
    let off = oxvirt_model::BackupJobSpec { enabled: false, ..spec("minutely", &["job-a", "job-b"], "* * * * *") };
    assert!(!c.backups().set_job(&off).await.unwrap().spec.enabled);
    // Asked to run twice more: its retention keeps 2 of each VM's 3.
    for _ in 0..2 {
        qemu_io("write -P 0x62 0 4M");
        let t = c.backups().run_job("minutely").await.unwrap();
        let t = c.wait_task(&t.id, T).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        assert!(t.message.contains("backed up 2 of 2"), "{}", t.message);
    }
    for vm in ["job-a", "job-b"] {
        assert_eq!(c.backups().list("main", Some(vm)).await.unwrap().len(), 2, "{vm}");
    }
    // A VM that cannot be backed up (started elsewhere... here: deleted) fails the run, and the
    // metrics say so.
    c.delete_vm("job-b").await.unwrap();
    let t = c.backups().run_job("minutely").await.unwrap();
    let t = c.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert!(t.error.as_deref().unwrap_or_default().contains("job-b"), "{t:?}");
    assert_eq!(metric(c, "oxvirt_backup_job_last_run_ok{job=\"minutely\"}").await, Some(0.0));
    let j = c.backups().get_job("minutely").await.unwrap();
    assert_eq!((j.status.runs, j.status.failures), (4, 1), "{j:?}");
    let (code, out, err) = d.cli(&["backup-job", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("minutely") && out.contains("failed"), "{out}");
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_repository_holds_no_plaintext_and_is_joined_again_only_with_its_key() {
    let d = Daemon::start();
    let c = &d.client;
    let pool_dir = pool_with_data(&d, "64MiB").await;
    let repo_dir = d.path().join("repo");
    let repo_path = repo_dir.to_string_lossy().into_owned();
    let (code, out, err) = d.cli(&["backup-repo", "create", "main", "--path", &repo_path, "--encrypt"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("keep its key apart"), "{err}");
    // The VM's definition carries a "secret" (its kernel command line here; cloud-init data for real).
    let mut spec = kernel_spec("evm", "oxsecret=SPEC-SECRET-MARK");
    spec["disks"] = json!([{ "volume": "bk/data" }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "evm", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(c, "evm", &write_cmd(7, 16, 0), "W-17").await;
    let (_, b) = backup(c, "evm", "main").await;
    assert!(b.full && b.read_bytes == 16 * MIB, "{b:?}");
    // The backed-up VM's definition reads back whole through oxvirt...
    let (code, out, _) = d.cli(&["--output", "json", "backup", "show", &format!("main/{}", b.id)]);
    assert_eq!(code, 0);
    assert!(!out.contains("SPEC-SECRET"), "the API's view of a backup has no definition in it: {out}");
    // ...and nothing in the repository's files says what the guest wrote or what the VM is.
    let files = files_under(&repo_dir);
    assert!(files.len() > 4, "{files:?}");
    for f in &files {
        let body = std::fs::read(f).unwrap();
        for mark in [&b"T7-1"[..], b"SPEC-SECRET-MARK", b"xxxxxxxxxxxxxxxx"] {
            assert!(!body.windows(mark.len()).any(|w| w == mark), "{} holds {:?}", f.display(), mark);
        }
    }

    // The key, for an administrator to keep; the repository forgotten, then joined again.
    let (code, key, err) = d.cli(&["backup-repo", "key", "main"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(key.trim().len(), 64, "{key}");
    let (code, _, err) = d.cli(&["backup-repo", "remove", "main"]);
    assert_eq!(code, 0, "{err}");
    // Without the key (a new one would be made) or with another, the directory is refused.
    let (code, _, err) = d.cli(&["backup-repo", "create", "main", "--path", &repo_path, "--encrypt"]);
    assert!(code != 0 && err.contains("not with this key"), "{err}");
    let wrong = d.path().join("wrong.key");
    std::fs::write(&wrong, "ab".repeat(32)).unwrap();
    let join_with = |key_file: &Path| {
        d.cli(&[
            "backup-repo",
            "create",
            "main",
            "--path",
            &repo_path,
            "--encrypt",
            "--key-file",
            &key_file.to_string_lossy(),
        ])
    };
    let (code, _, err) = join_with(&wrong);
    assert!(code != 0 && err.contains("not with this key"), "{err}");
    let (code, _, err) = d.cli(&["backup-repo", "create", "main", "--path", &repo_path]);
    assert!(code != 0 && err.contains("its key is needed"), "{err}");
    let right = d.path().join("main.key");
    std::fs::write(&right, &key).unwrap();
    let (code, out, err) = join_with(&right);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(key.trim()), "the key is never shown back: {out}");
    let listed = c.backups().list("main", Some("evm")).await.unwrap();
    assert_eq!(listed.iter().map(|b| b.id.clone()).collect::<Vec<_>>(), vec![b.id.clone()]);

    // Restored from it, block for block, and the definition came back.
    c.vm_action_wait("evm", "stop", T).await.unwrap();
    let restored = restore(c, "main", &b.id, "erestored", &pool_dir).await;
    compare(&pool_dir.join("data.qcow2"), &restored);
    let vm = c.get_vm("erestored").await.unwrap();
    assert!(serde_json::to_string(&vm.spec).unwrap().contains("SPEC-SECRET-MARK"), "{:?}", vm.spec);
    let v = c.wait_task(&c.backups().verify("main").await.unwrap().id, T).await.unwrap();
    assert_eq!(v.state, TaskState::Succeeded, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_backs_up_the_vms_of_every_host_of_a_cluster_each_on_its_own_host() {
    let cluster = EtcdCluster::start(1);
    let config = |host: &str| cluster.host_config("bk/", host);
    let a = Daemon::start_with_config(&config("host-a"));
    let mut b = Daemon::start_with_config(&config("host-b"));
    let shared = tempfile::tempdir_in("/tmp").unwrap();
    let disk = |name: &str, byte: u8| {
        let f = shared.path().join(format!("{name}.raw"));
        std::fs::write(&f, vec![0u8; 16 << 20]).unwrap();
        let ok = Command::new("qemu-io")
            .args(["-f", "raw", "-c", &format!("write -P {byte} 0 8M")])
            .arg(&f)
            .output()
            .unwrap();
        assert!(ok.status.success());
        f
    };
    let (da, db) = (disk("va", 0x5a), disk("vb", 0x6b));
    plain_repo(&a.client, &shared.path().join("repo")).await;
    // va stays stopped on host-a; vb runs on host-b.
    let mut va = kernel_spec("va", "");
    va["host"] = json!("host-a");
    va["disks"] = json!([{ "path": da, "format": "raw" }]);
    a.client.create_vm(&va, false).await.unwrap();
    let mut vb = kernel_spec("vb", "");
    vb["host"] = json!("host-b");
    vb["disks"] = json!([{ "path": db, "format": "raw" }]);
    b.client.create_vm(&vb, true).await.unwrap();
    wait_console(&b.client, "vb", READY, 1, BOOT_TIMEOUT).await;

    // A job made and run on host-a backs up both: vb on host-b, asked through the store.
    let job = oxvirt_model::BackupJobSpec {
        name: "nightly".into(),
        vms: vec!["va".into(), "vb".into()],
        repo: "main".into(),
        schedule: "0 3 * * *".into(),
        retention: Some(oxvirt_model::Retention { keep_last: 1, ..Default::default() }),
        enabled: true,
    };
    a.client.backups().create_job(&job).await.unwrap();
    let t = a.client.backups().run_job("nightly").await.unwrap();
    let t = a.client.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}\n{}", a.log(), b.log());
    assert!(t.message.contains("backed up 2 of 2"), "{}", t.message);
    for vm in ["va", "vb"] {
        let got = a.client.backups().list("main", Some(vm)).await.unwrap();
        assert_eq!(got.len(), 1, "{vm}: {got:?}");
        assert_eq!(got[0].disks[0].data_chunks, 2, "{vm}: 8 MiB of data in 4 MiB chunks: {:?}", got[0]);
    }
    // vb's backup was a task of host-b's (its QEMU froze its disk there), and exports as it was.
    let tasks = a.client.list_tasks().await.unwrap();
    for (vm, host) in [("va", "host-a"), ("vb", "host-b")] {
        let t = tasks.iter().find(|t| t.kind == "vm.backup" && t.target == format!("vms/{vm}")).unwrap();
        assert_eq!((t.state, t.host.as_deref()), (TaskState::Succeeded, Some(host)), "{t:?}");
    }
    let vb_backup = a.client.backups().list("main", Some("vb")).await.unwrap().remove(0);
    let exported = shared.path().join("vb.qcow2");
    let t = a.client.backups().export("main", &vb_backup.id, None, &exported.to_string_lossy()).await.unwrap();
    let t = a.client.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(&db)
        .arg(&exported)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // host-b gone (its daemon killed): the next run fails vb, naming the host, and still backs va up.
    let qemu_b = b.qemu_pids();
    b.kill9();
    let t = a.client.backups().run_job("nightly").await.unwrap();
    let t = a.client.wait_task(&t.id, T).await.unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let said = t.error.clone().unwrap_or_default();
    assert!(
        said.contains("backed up 1 of 2") && said.contains("vb: on host-b") && said.contains("left the cluster"),
        "{said}"
    );
    for p in qemu_b {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}
