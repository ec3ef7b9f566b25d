//! Storage pools and volumes with real QEMU guests: data survives, clones boot, imports work,
//! volumes cannot escape their pool, a full disk leaves nothing half-made.

use oxvirt_client::{Client, ClientError};
use oxvirt_e2e::*;
use oxvirt_model::{PoolView, Task, TaskState, Volume};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

async fn make_pool(d: &Daemon, name: &str) -> PoolView {
    let dir = d.path().join(format!("pool-{name}"));
    d.client.post("/api/v1/pools", &json!({ "name": name, "path": dir })).await.unwrap()
}

async fn err(r: Result<Value, ClientError>) -> (u16, Option<String>, String) {
    match r {
        Err(ClientError::Api(e)) => (e.status, e.field, e.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A guest command that reads back the 200 blocks the write loop wrote and prints `BAD-<n>-`.
fn verify_blocks(dev: &str) -> String {
    format!(
        "bad=0; i=0; while [ $i -lt 200 ]; do v=$(dd if=/dev/{dev} bs=4096 skip=$i count=1 iflag=direct 2>/dev/null | head -c 16 | tr -d '\\000'); [ \"$v\" = \"blk$i\" ] || bad=$((bad+1)); i=$((i+1)); done; echo BAD-$bad-"
    )
}

async fn wait_ok(c: &Client, t: &Task) -> Task {
    let t = c.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_stop_start_and_volumes_stay_safe() {
    let d = Daemon::start();
    let c = &d.client;
    let pool = make_pool(&d, "local").await;
    assert!(pool.usage.size > 0);
    // Bad input: named fields, nothing made.
    let (s, f, _) = err(c.post("/api/v1/pools", &json!({ "name": "x", "path": "relative" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("path")));
    let (s, f, _) = err(c.post("/api/v1/pools", &json!({ "name": "local", "path": "/tmp/elsewhere-oxv" })).await).await;
    assert_eq!((s, f.as_deref()), (409, Some("name")));
    let (s, f, _) = err(c.post("/api/v1/pools/local/volumes", &json!({ "name": "../x", "size": "64MiB" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("name")));
    let huge = pool.usage.size * 3;
    let (s, f, m) = err(c.post("/api/v1/pools/local/volumes", &json!({ "name": "huge", "size": huge })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("size")));
    assert!(m.contains("over-committed"), "{m}");
    // A planted symbolic link is never followed.
    std::os::unix::fs::symlink("/etc/hostname", d.path().join("pool-local/evil.qcow2")).unwrap();
    let before = std::fs::read("/etc/hostname").unwrap();
    let (s, _, m) = err(c.post("/api/v1/pools/local/volumes", &json!({ "name": "evil", "size": "64MiB" })).await).await;
    assert!(s == 400 || s == 409, "{s} {m}");
    assert_eq!(std::fs::read("/etc/hostname").unwrap(), before);

    let vol: Volume = c.post("/api/v1/pools/local/volumes", &json!({ "name": "data", "size": "64MiB" })).await.unwrap();
    assert_eq!(vol.size.0, 64 << 20);
    let (s, _, _) = err(c.post("/api/v1/pools/local/volumes", &json!({ "name": "data", "size": "64MiB" })).await).await;
    assert_eq!(s, 409);
    let pv: PoolView = c.get("/api/v1/pools/local").await.unwrap();
    assert_eq!((pv.usage.provisioned, pv.usage.volumes), (64 << 20, 1));
    assert!(pv.usage.allocated < 8 << 20, "thin: {}", pv.usage.allocated);

    let mut spec = kernel_spec("writer", "");
    spec["disks"] = json!([{ "volume": "local/data" }]);
    c.create_vm(&spec, true).await.unwrap();
    let v: Volume = c.get("/api/v1/pools/local/volumes/data").await.unwrap();
    assert_eq!(v.attached_to.as_deref(), Some("writer"));
    // Attached: not deletable, and no other VM may take it.
    let (s, _, _) = err(c.call(hyper::Method::DELETE, "/api/v1/pools/local/volumes/data", None).await).await;
    assert_eq!(s, 409);
    let mut other = kernel_spec("thief", "");
    other["disks"] = json!([{ "volume": "local/data" }]);
    assert!(c.create_vm(&other, false).await.is_err());
    assert!(c.get_vm("thief").await.is_err(), "a refused VM is not half-made");

    wait_console(c, "writer", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(
        c,
        "writer",
        "echo oxvirt-data-1234 | dd of=/dev/vda bs=512 count=1 conv=sync && sync && echo WROTE-$((40+2))",
        "WROTE-42",
    )
    .await;
    c.vm_action_wait("writer", "stop", T).await.unwrap();
    c.vm_action_wait("writer", "start", T).await.unwrap();
    wait_console(c, "writer", READY, 2, BOOT_TIMEOUT).await;
    run_in_guest(c, "writer", "echo READ-$(head -c 16 /dev/vda)", "READ-oxvirt-data-1234").await;

    // Live resize: the guest sees the new size at once.
    let v: Volume = c.patch("/api/v1/pools/local/volumes/data", &json!({ "size": "96MiB" })).await.unwrap();
    assert_eq!(v.size.0, 96 << 20);
    run_in_guest(c, "writer", "echo SIZE-$(cat /sys/block/vda/size)", "SIZE-196608").await;
    let (s, f, _) = err(c.patch("/api/v1/pools/local/volumes/data", &json!({ "size": "32MiB" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("size")));

    // Deleting the VM lets go of the volume, which keeps its data.
    c.vm_action_wait("writer", "kill", T).await.unwrap();
    c.delete_vm("writer").await.unwrap();
    let v: Volume = c.get("/api/v1/pools/local/volumes/data").await.unwrap();
    assert_eq!(v.attached_to, None);
    let file = d.path().join("pool-local/data.qcow2");
    let raw = d.path().join("check.raw");
    let t: Task = c
        .post("/api/v1/pools/local/volumes/data/export", &json!({ "destination": raw, "format": "raw" }))
        .await
        .unwrap();
    wait_ok(c, &t).await;
    assert!(std::fs::read(&raw).unwrap().starts_with(b"oxvirt-data-1234"));
    c.delete("/api/v1/pools/local/volumes/data").await.unwrap();
    assert!(!file.exists());
    c.delete("/api/v1/pools/local").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_vmdk_then_linked_clones_boot() {
    let d = Daemon::start();
    let c = &d.client;
    make_pool(&d, "images").await;
    // A vmdk made from the reference guest's disk: import it (a task with progress).
    let vmdk = d.path().join("guest.vmdk");
    let st = Command::new("qemu-img").args(["convert", "-O", "vmdk"]).arg(guest().disk).arg(&vmdk).status().unwrap();
    assert!(st.success());
    let t: Task = c
        .post("/api/v1/pools/images/import", &json!({ "name": "template", "source": vmdk, "source_format": "vmdk" }))
        .await
        .unwrap();
    wait_ok(c, &t).await;
    let (s, f, _) = err(c
        .post("/api/v1/pools/images/import", &json!({ "name": "x", "source": vmdk, "source_format": "raw" }))
        .await)
    .await;
    assert_eq!((s, f.as_deref()), (400, Some("source_format")));

    // The template is root's alone: each clone's QEMU (its own user) reads it through a
    // descriptor oxvirt opened, never by the name the clone records.
    use std::os::unix::fs::PermissionsExt;
    let template = d.path().join("pool-images").join("template.qcow2");
    std::fs::set_permissions(&template, std::fs::Permissions::from_mode(0o600)).unwrap();
    for i in 0..2 {
        let clone: Volume = c
            .post("/api/v1/pools/images/volumes/template/clone", &json!({ "name": format!("vm{i}-root") }))
            .await
            .unwrap();
        assert_eq!(clone.backing.as_deref(), Some("images/template"));
        let spec = json!({ "name": format!("clone{i}"), "cpus": 1, "memory": "256MiB", "disks": [{ "volume": clone.reference() }] });
        c.create_vm(&spec, true).await.unwrap();
    }
    for i in 0..2 {
        wait_console(c, &format!("clone{i}"), READY, 1, BOOT_TIMEOUT).await;
    }
    // The template is the base of clones: it cannot go.
    let (s, _, m) = err(c.call(hyper::Method::DELETE, "/api/v1/pools/images/volumes/template", None).await).await;
    assert_eq!(s, 409, "{m}");
    // A full clone is a task and stands alone.
    let t: Task = c
        .post("/api/v1/pools/images/volumes/template/clone", &json!({ "name": "copy", "linked": false }))
        .await
        .unwrap();
    wait_ok(c, &t).await;
    let copy: Volume = c.get("/api/v1/pools/images/volumes/copy").await.unwrap();
    assert_eq!(copy.backing, None);
    for i in 0..2 {
        c.vm_action_wait(&format!("clone{i}"), "kill", T).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_gives_a_clear_error_and_leaves_nothing() {
    let d = Daemon::start();
    let c = &d.client;
    let dir = d.path().join("small");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8M", "tmpfs"]).arg(&dir).status().unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(dir.clone());
    let _: PoolView =
        c.post("/api/v1/pools", &json!({ "name": "small", "path": dir, "overcommit": 100.0 })).await.unwrap();
    // 32 MiB of data that cannot fit in 8 MiB.
    let src = d.path().join("big.raw");
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&src, data).unwrap();
    let t: Task =
        c.post("/api/v1/pools/small/import", &json!({ "name": "big", "source": src, "format": "raw" })).await.unwrap();
    let t = c.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, TaskState::Failed);
    let e = t.error.unwrap();
    assert!(e.to_lowercase().contains("no space"), "{e}");
    assert!(c.get::<Volume>("/api/v1/pools/small/volumes/big").await.is_err(), "no record");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_vm_snapshot_then_revert_restores_both_disks() {
    let d = Daemon::start();
    let c = &d.client;
    make_pool(&d, "snap").await;
    for n in ["a", "b"] {
        let _: Volume = c.post("/api/v1/pools/snap/volumes", &json!({ "name": n, "size": "32MiB" })).await.unwrap();
    }
    let _: Volume = c
        .post("/api/v1/pools/snap/volumes", &json!({ "name": "flat", "size": "32MiB", "format": "raw" }))
        .await
        .unwrap();
    let (s, f, _) = err(c.post("/api/v1/pools/snap/volumes/flat/snapshots", &json!({ "name": "s" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("volume")));

    let mut spec = kernel_spec("snappy", "");
    spec["disks"] = json!([{ "volume": "snap/a" }, { "volume": "snap/b" }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "snappy", READY, 1, BOOT_TIMEOUT).await;
    let write = |tag: &'static str| {
        format!("for x in vda vdb; do echo {tag}-$x | dd of=/dev/$x bs=512 count=1 conv=sync 2>/dev/null; done; sync; echo DONE-$((7*{}))", tag.len())
    };
    run_in_guest(c, "snappy", &write("first"), "DONE-35").await;
    // Live, both disks in one transaction.
    let vols: Vec<Volume> = c.post("/api/v1/vms/snappy/snapshots", &json!({ "name": "s1" })).await.unwrap();
    assert_eq!(vols.len(), 2);
    assert!(vols.iter().all(|v| v.snapshots.iter().any(|s| s.name == "s1")));
    run_in_guest(c, "snappy", &write("second"), "DONE-42").await;
    // Revert needs the VM stopped.
    let (s, _, _) = err(c.call(hyper::Method::POST, "/api/v1/vms/snappy/snapshots/s1/revert", None).await).await;
    assert_eq!(s, 409);
    c.vm_action_wait("snappy", "stop", T).await.unwrap();
    let _: Vec<Volume> = c.post("/api/v1/vms/snappy/snapshots/s1/revert", &json!(null)).await.unwrap();
    c.vm_action_wait("snappy", "start", T).await.unwrap();
    wait_console(c, "snappy", READY, 2, BOOT_TIMEOUT).await;
    run_in_guest(c, "snappy", "echo GOT $(head -c 7 /dev/vda) $(head -c 7 /dev/vdb)", "GOT first-v first-v").await;
    // Delete the snapshot (live).
    let vols: Vec<Volume> = c.delete_json("/api/v1/vms/snappy/snapshots/s1").await.unwrap();
    assert!(vols.iter().all(|v| v.snapshots.is_empty()));
    c.vm_action_wait("snappy", "kill", T).await.unwrap();
}

/// Reads `mib` MiB from /dev/vda at `skip_mib` with O_DIRECT and returns the guest-measured seconds.
async fn timed_read(c: &Client, vm: &str, skip_mib: u32, mib: u32, tag: u32) -> f64 {
    let cmd = format!(
        "a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=64k skip={} count={} iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo TIMED-$(({tag}+0)) $a $b E''ND-$(({tag}+0))",
        skip_mib * 16,
        mib * 16
    );
    // The end marker names the round: an earlier round's output the console shows again is no end.
    let out = run_in_guest(c, vm, &cmd, &format!("END-{tag}")).await;
    // (The shell's prompt may share the line.)
    let mark = format!("TIMED-{tag} ");
    let line = out.lines().find_map(|l| l.find(&mark).map(|at| &l[at..])).unwrap_or_else(|| panic!("{out}"));
    let f: Vec<f64> = line.split_whitespace().skip(1).take(2).map(|x| x.parse().unwrap()).collect();
    f[1] - f[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_limits_hold_from_boot_and_change_live() {
    let d = Daemon::start();
    let c = &d.client;
    make_pool(&d, "qos").await;
    let _: Volume = c.post("/api/v1/pools/qos/volumes", &json!({ "name": "slow", "size": "64MiB" })).await.unwrap();
    let mut spec = kernel_spec("throttled", "");
    spec["disks"] = json!([{ "volume": "qos/slow", "qos": { "bps_read": 2 << 20 } }]);
    // Bad limits are refused with the field named.
    let mut bad = spec.clone();
    bad["name"] = json!("bad-qos");
    bad["disks"][0]["qos"] = json!({ "bps_total": 1, "bps_read": 1 });
    match c.create_vm(&bad, false).await {
        Err(ClientError::Api(e)) => assert_eq!(e.field.as_deref(), Some("disks[0].qos.bps_total")),
        other => panic!("{other:?}"),
    }
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "throttled", READY, 1, BOOT_TIMEOUT).await;
    // 6 MiB at 2 MiB/s: about 3 s.
    let slow = timed_read(c, "throttled", 0, 6, 1).await;
    assert!((2.4..4.5).contains(&slow), "6 MiB at 2 MiB/s took {slow} s");
    // Live: 12 MiB/s.
    let vm: oxvirt_model::Vm = c
        .call(hyper::Method::PUT, "/api/v1/vms/throttled/disks/disk0/qos", Some(&json!({ "bps_read": 12 << 20 })))
        .await
        .unwrap();
    assert_eq!(vm.spec.disks[0].qos.as_ref().unwrap().bps_read, 12 << 20);
    let fast = timed_read(c, "throttled", 16, 6, 2).await;
    assert!(fast < 1.8, "6 MiB at 12 MiB/s took {fast} s (at the old 2 MiB/s it takes 3 s)");
    // Unknown disk: 404.
    match c
        .call::<serde_json::Value>(hyper::Method::PUT, "/api/v1/vms/throttled/disks/disk9/qos", Some(&json!({})))
        .await
    {
        Err(ClientError::Api(e)) => assert_eq!(e.status, 404),
        other => panic!("{other:?}"),
    }
    c.vm_action_wait("throttled", "kill", T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_plug_and_unplug_a_volume() {
    let d = Daemon::start();
    let c = &d.client;
    make_pool(&d, "hp").await;
    let _: Volume = c.post("/api/v1/pools/hp/volumes", &json!({ "name": "extra", "size": "48MiB" })).await.unwrap();
    c.create_vm(&kernel_spec("plug", ""), true).await.unwrap();
    wait_console(c, "plug", READY, 1, BOOT_TIMEOUT).await;
    let vm: oxvirt_model::Vm = c.post("/api/v1/vms/plug/disks", &json!({ "volume": "hp/extra" })).await.unwrap();
    let id = vm.spec.disks[0].id.clone();
    assert_eq!(id, "disk0");
    // 48 MiB = 98304 sectors, seen by the running guest.
    run_in_guest(c, "plug", "echo HP $(cat /sys/block/vda/size 2>/dev/null)", "HP 98304").await;
    let v: Volume = c.get("/api/v1/pools/hp/volumes/extra").await.unwrap();
    assert_eq!(v.attached_to.as_deref(), Some("plug"));
    let vm: oxvirt_model::Vm = c.delete_json(&format!("/api/v1/vms/plug/disks/{id}")).await.unwrap();
    assert!(vm.spec.disks.is_empty());
    run_in_guest(c, "plug", "echo GONE-$(ls /sys/block | grep -c vd)", "GONE-0").await;
    let v: Volume = c.get("/api/v1/pools/hp/volumes/extra").await.unwrap();
    assert_eq!(v.attached_to, None);
    // Plugged again after the unplug: the port is free again.
    let _: oxvirt_model::Vm = c.post("/api/v1/vms/plug/disks", &json!({ "volume": "hp/extra" })).await.unwrap();
    run_in_guest(c, "plug", "echo HP2 $(cat /sys/block/vda/size 2>/dev/null)", "HP2 98304").await;
    c.vm_action_wait("plug", "kill", T).await.unwrap();
    // The disk stays in the VM's definition: the next boot has it.
    assert_eq!(c.get_vm("plug").await.unwrap().spec.disks.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_pool_boots_a_guest_and_survives_its_export_daemon_dying() {
    let d = Daemon::start();
    let c = &d.client;
    let dir = d.path().join("san");
    let _: PoolView = c.post("/api/v1/pools", &json!({ "name": "san", "kind": "nbd", "path": dir })).await.unwrap();
    let qsd = || {
        processes_mentioning(&d.path().join("nbd/san").to_string_lossy())
            .into_iter()
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu-storage")))
    };
    assert!(qsd().is_some(), "the pool's export daemon runs");
    let t: Task = c.post("/api/v1/pools/san/import", &json!({ "name": "boot", "source": guest().disk })).await.unwrap();
    wait_ok(c, &t).await;
    let _: Volume = c.post("/api/v1/pools/san/volumes", &json!({ "name": "data", "size": "32MiB" })).await.unwrap();
    // Booted through SeaBIOS from a disk served over NBD.
    let spec = json!({ "name": "sanvm", "cpus": 1, "memory": "256MiB", "disks": [{ "volume": "san/boot" }, { "volume": "san/data" }] });
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "sanvm", READY, 1, BOOT_TIMEOUT).await;
    let pid = c.get_vm("sanvm").await.unwrap().status.pid.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("\"driver\":\"nbd\""), "{cmdline}");
    // The export daemon is not root.
    for p in processes_mentioning(&d.path().join("nbd/san").to_string_lossy()) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_string();
        assert!(!uid.is_empty() && uid.split_whitespace().skip(1).all(|u| u != "0"), "export daemon {p}: {uid}");
    }

    // The guest writes 200 blocks, one every 50 ms, while the export daemon is killed; oxvirtd
    // starts it again and QEMU's NBD client reconnects: no write fails.
    let loop_cmd = "i=0; while [ $i -lt 200 ]; do echo blk$i | dd of=/dev/vdb bs=4096 seek=$i conv=sync oflag=direct 2>/dev/null || echo WERR $i; i=$((i+1)); sleep 0.05; done; echo LOOP-$((6*7))";
    run_in_guest(c, "sanvm", &format!("({loop_cmd}) & echo STARTED-$((1+1))"), "STARTED-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = qsd().expect("export daemon");
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let start = std::time::Instant::now();
    let new = loop {
        if let Some(p) = qsd().filter(|p| *p != old) {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "export daemon not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new, old);
    let log = wait_console(c, "sanvm", "LOOP-42", 1, Duration::from_secs(120)).await;
    assert!(!log.lines().any(|l| l.trim_start().starts_with("WERR ")), "a write failed:\n{log}");
    assert!(!log.contains("I/O error"), "the guest saw an I/O error:\n{log}");
    // Every block the guest was told was written is there, also those written just before the failure.
    run_in_guest(c, "sanvm", &verify_blocks("vdb"), "BAD-0-").await;
    assert_eq!(c.get_vm("sanvm").await.unwrap().status.state.as_str(), "running");

    // A live snapshot of both disks (the export daemon takes it, the vCPUs paused meanwhile),
    // then new data, then a revert while stopped: the old data is back.
    let vols: Vec<Volume> = c.post("/api/v1/vms/sanvm/snapshots", &json!({ "name": "s1" })).await.unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(c.get_vm("sanvm").await.unwrap().status.state.as_str(), "running");
    run_in_guest(
        c,
        "sanvm",
        "echo changed | dd of=/dev/vdb bs=4096 conv=sync oflag=direct 2>/dev/null; echo W-$((2+3))",
        "W-5",
    )
    .await;
    c.vm_action_wait("sanvm", "stop", T).await.unwrap();
    let _: Vec<Volume> = c.post("/api/v1/vms/sanvm/snapshots/s1/revert", &json!(null)).await.unwrap();
    // Offline resize of a volume served over NBD.
    let v: Volume = c.patch("/api/v1/pools/san/volumes/data", &json!({ "size": "64MiB" })).await.unwrap();
    assert_eq!(v.size.0, 64 << 20);
    c.vm_action_wait("sanvm", "start", T).await.unwrap();
    wait_console(c, "sanvm", READY, 2, BOOT_TIMEOUT).await;
    run_in_guest(c, "sanvm", "echo R-$(head -c 4 /dev/vdb) $(cat /sys/block/vdb/size)", "R-blk0 131072").await;
    // Growing it while the VM runs is refused: QEMU's NBD client cannot grow a disk.
    let (s, _, m) = err(c.patch("/api/v1/pools/san/volumes/data", &json!({ "size": "96MiB" })).await).await;
    assert_eq!(s, 409, "{m}");
    c.vm_action_wait("sanvm", "kill", T).await.unwrap();
    // Export copies it out (the daemon lets go meanwhile).
    let out = d.path().join("san-data.raw");
    let t: Task =
        c.post("/api/v1/pools/san/volumes/data/export", &json!({ "destination": out, "format": "raw" })).await.unwrap();
    wait_ok(c, &t).await;
    assert!(std::fs::read(&out).unwrap().starts_with(b"blk0"));
    // A full clone out of the nbd pool works; a linked one is refused, clearly.
    make_pool(&d, "local").await;
    let t: Task = c
        .post("/api/v1/pools/san/volumes/data/clone", &json!({ "name": "copy", "pool": "local", "linked": false }))
        .await
        .unwrap();
    wait_ok(c, &t).await;
    let (s, f, _) =
        err(c.post("/api/v1/pools/san/volumes/data/clone", &json!({ "name": "lnk", "pool": "local" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("linked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipath_keeps_writes_going_when_a_path_fails() {
    let d = Daemon::start();
    let c = &d.client;
    let dir = d.path().join("mp");
    let _: PoolView =
        c.post("/api/v1/pools", &json!({ "name": "mp", "kind": "nbd", "path": dir, "paths": 2 })).await.unwrap();
    // Two export daemons serve the same raw images; qcow2 is refused (two servers cannot share it).
    let (s, f, _) = err(c.post("/api/v1/pools/mp/volumes", &json!({ "name": "q", "size": "32MiB" })).await).await;
    assert_eq!((s, f.as_deref()), (400, Some("format")));
    let _: Volume =
        c.post("/api/v1/pools/mp/volumes", &json!({ "name": "data", "size": "32MiB", "format": "raw" })).await.unwrap();
    let mut spec = kernel_spec("mpvm", "");
    spec["disks"] = json!([{ "volume": "mp/data" }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "mpvm", READY, 1, BOOT_TIMEOUT).await;
    let path_daemon = |n: u32| {
        let needle = d.path().join(format!("nbd/mp/path{n}/")).to_string_lossy().into_owned();
        processes_mentioning(&needle)
            .into_iter()
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu-storage")))
    };
    let (p0, p1) = (path_daemon(0).expect("path 0"), path_daemon(1).expect("path 1"));
    assert_ne!(p0, p1);
    // The disk's proxy runs as the VM's own user, not root.
    let vm = c.get_vm("mpvm").await.unwrap();
    let proxy = processes_mentioning("mpath/disk0.sock")
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .contains(&*d.path().to_string_lossy())
        })
        .expect("the multipath proxy");
    let status = std::fs::read_to_string(format!("/proc/{proxy}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| Some(u.parse::<u32>().unwrap()) == vm.uid),
        "{uid_line} {:?}",
        vm.uid
    );

    let loop_cmd = "i=0; while [ $i -lt 200 ]; do echo blk$i | dd of=/dev/vda bs=4096 seek=$i conv=sync oflag=direct 2>/dev/null || echo WERR $i; i=$((i+1)); sleep 0.05; done; echo LOOP-$((6*7))";
    run_in_guest(c, "mpvm", &format!("({loop_cmd}) & echo STARTED-$((1+1))"), "STARTED-2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Path 0 fails: the disk's I/O goes on through path 1.
    unsafe { libc::kill(p0 as i32, libc::SIGKILL) };
    let log = wait_console(c, "mpvm", "LOOP-42", 1, Duration::from_secs(120)).await;
    assert!(!log.lines().any(|l| l.trim_start().starts_with("WERR ")), "a write failed:\n{log}");
    assert!(!log.contains("I/O error"), "the guest saw an I/O error:\n{log}");
    let vm = c.get_vm("mpvm").await.unwrap();
    let proxy_log = std::fs::read_to_string(d.path().join("run").join(&vm.id[..13]).join("mpath-disk0.log")).unwrap();
    assert!(
        proxy_log.contains("using path 0") && proxy_log.contains("path 0") && proxy_log.contains("using path 1"),
        "{proxy_log}"
    );
    assert!(proxy_log.find("failed").unwrap() < proxy_log.find("using path 1").unwrap(), "{proxy_log}");
    // Every block the guest was told was written is there, also those written just before the failure.
    run_in_guest(c, "mpvm", &verify_blocks("vda"), "BAD-0-").await;
    c.vm_action_wait("mpvm", "kill", T).await.unwrap();
    // The proxy goes with the VM.
    let start = std::time::Instant::now();
    while !processes_mentioning("mpath/disk0.sock").into_iter().all(|p| {
        !std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .unwrap_or_default()
            .contains(&*d.path().to_string_lossy())
    }) {
        assert!(start.elapsed() < Duration::from_secs(5), "multipath proxy left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_in_one_throttle_group_share_its_limit() {
    let d = Daemon::start();
    let c = &d.client;
    make_pool(&d, "tg").await;
    for n in ["x", "y"] {
        let _: Volume = c.post("/api/v1/pools/tg/volumes", &json!({ "name": n, "size": "32MiB" })).await.unwrap();
    }
    let qos = json!({ "bps_read": 4 << 20, "group": "shared" });
    let mut spec = kernel_spec("grouped", "");
    spec["disks"] = json!([{ "volume": "tg/x", "qos": qos }, { "volume": "tg/y", "qos": qos }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "grouped", READY, 1, BOOT_TIMEOUT).await;
    // 4 MiB from each disk at once: 8 MiB through one 4 MiB/s limit takes about 2 s (1 s each
    // if the disks had limits of their own).
    let cmd = "a=$(cut -d' ' -f1 /proc/uptime); for x in vda vdb; do dd if=/dev/$x of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null & done; wait; b=$(cut -d' ' -f1 /proc/uptime); echo TG $a $b E''ND";
    let out = run_in_guest(c, "grouped", cmd, "END").await;
    let line = out.lines().find(|l| l.starts_with("TG ")).unwrap_or_else(|| panic!("{out}"));
    let t: Vec<f64> = line.split_whitespace().skip(1).take(2).map(|x| x.parse().unwrap()).collect();
    let secs = t[1] - t[0];
    assert!((1.6..3.5).contains(&secs), "8 MiB through a shared 4 MiB/s limit took {secs} s");
    c.vm_action_wait("grouped", "kill", T).await.unwrap();
}
