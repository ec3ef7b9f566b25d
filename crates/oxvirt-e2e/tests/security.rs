//! Users, roles, tokens and the audit log over HTTPS; QEMU's sandbox; memory encryption refused
//! where the host has none.

use oxvirt_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Every documented route, called by an auditor: reads pass, everything else is refused (403)
/// and changes nothing; an operator scoped to one VM runs it and nothing else; the audit log says
/// who did what, to what, with what result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_acl_and_the_audit_log_records() {
    let d = Daemon::start_with_config("stop_timeout_secs = 5\napi_rate_per_token = 0\n");
    let root = &d.client;
    make_user(root, "ann").await;
    make_user(root, "otto").await;
    let (status, body) = root
        .raw(hyper::Method::PUT, "/api/v1/acl", Some(br#"[{"path":"/etc/x","user":"ann","role":"auditor"}]"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("[0].path"));
    let _: Value = root
        .put(
            "/api/v1/acl",
            &json!([
                { "path": "/", "user": "ann", "role": "auditor" },
                { "path": "/vms/web", "user": "otto", "role": "operator" },
            ]),
        )
        .await
        .unwrap();
    root.create_vm(&kernel_spec("web", ""), false).await.unwrap();
    root.create_vm(&kernel_spec("db", ""), false).await.unwrap();
    assert_eq!(login(&d, "ann", "wrong-password-x").await, Err(401));
    assert_eq!(login(&d, "nobody", "wrong-password-x").await, Err(401));
    let ann = https_client(&d, &login(&d, "ann", "ann-long-password").await.unwrap());

    let doc: Value = root.call(hyper::Method::GET, "/api/v1/openapi.json", None).await.unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["security"] == json!([])
                || path.starts_with("/api/v1/tokens")
                || path.starts_with("/api/v1/tasks")
                || path.ends_with("/events")
            {
                continue; // login is public; own tokens are anyone's; tasks follow their target (below); the event stream does not end
            }
            let concrete = concrete_path(path, "web");
            let m = hyper::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = ann.raw(m.clone(), &concrete, Some(b"{}".to_vec())).await.unwrap();
            let body = String::from_utf8_lossy(&body);
            // (An encrypted backup repository's key is a secret: not even an auditor reads it.)
            let admin_only = ["/api/v1/users", "/api/v1/acl", "/api/v1/audit"].iter().any(|p| path.starts_with(p))
                || path.ends_with("/key");
            let operate = path.ends_with("/console") || path.ends_with("/actions/{action}");
            if m == hyper::Method::GET && !admin_only && !operate {
                assert!(status != 401 && status != 403, "auditor refused a read: {method} {path}: {status} {body}");
            } else {
                assert_eq!(status, 403, "auditor not refused: {method} {path}: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} routes checked");
    // Nothing the auditor asked for happened.
    assert_eq!(root.get_vm("web").await.unwrap().status.state.as_str(), "stopped");
    assert_eq!(root.list_vms().await.unwrap().len(), 2);

    // The operator of /vms/web: runs web, not db; cannot delete web (operators do not delete?
    // they may change: the role allows it) but cannot touch the host's policy.
    let otto = https_client(&d, &login(&d, "otto", "otto-long-password").await.unwrap());
    let t = otto.vm_action_wait("web", "start", Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded);
    let (status, _) = otto.raw(hyper::Method::POST, "/api/v1/vms/db/actions/start", None).await.unwrap();
    assert_eq!(status, 403);
    let (status, _) = otto.raw(hyper::Method::GET, "/api/v1/vms/db", None).await.unwrap();
    assert_eq!(status, 403, "no grant on db: not even a look");
    let (status, _) = otto.raw(hyper::Method::PUT, "/api/v1/host/policy", Some(b"{}".to_vec())).await.unwrap();
    assert_eq!(status, 403);
    otto.vm_action_wait("web", "kill", Duration::from_secs(30)).await.unwrap();
    // Tasks follow what they are about: otto sees web's, not db's; ann cannot cancel any.
    let tasks: Vec<oxvirt_model::Task> = otto.get("/api/v1/tasks").await.unwrap();
    assert!(!tasks.is_empty() && tasks.iter().all(|t| t.target == "vms/web"), "{tasks:?}");
    let db_task = root.vm_action("db", "start").await.unwrap();
    let (status, _) = otto.raw(hyper::Method::GET, &format!("/api/v1/tasks/{}", db_task.id), None).await.unwrap();
    assert_eq!(status, 403);
    let (status, _) = ann.raw(hyper::Method::DELETE, &format!("/api/v1/tasks/{}", db_task.id), None).await.unwrap();
    assert_eq!(status, 403);
    root.wait_task(&db_task.id, Duration::from_secs(60)).await.unwrap();
    root.vm_action_wait("db", "kill", Duration::from_secs(30)).await.unwrap();

    let (code, out, _) = d.cli(&["acl", "show"]);
    assert!(code == 0 && out.contains("/vms/web") && out.contains("otto") && out.contains("operator"), "{out}");
    let (code, out, _) = d.cli(&["audit", "--limit", "500"]);
    assert!(code == 0 && out.contains("/api/v1/vms/db/actions/start") && out.contains("403"), "{out}");
    let audit: Vec<oxvirt_model::AuditRecord> = root.get("/api/v1/audit?limit=1000").await.unwrap();
    let find = |user: &str, path: &str, status: u16| {
        audit.iter().any(|r| r.user == user && r.path == path && r.status == status && r.method == "POST")
    };
    assert!(find("otto", "/api/v1/vms/web/actions/start", 202), "{audit:?}");
    assert!(find("otto", "/api/v1/vms/db/actions/start", 403));
    assert!(find("ann", "/api/v1/vms", 403));
    assert!(audit.iter().any(|r| r.user == "root" && r.path == "/api/v1/acl" && r.from == "socket"));
    assert!(audit.iter().filter(|r| r.user == "otto").all(|r| r.from.starts_with("127.0.0.1:") && r.token.is_some()));
    let rec = audit.iter().find(|r| r.user == "otto" && r.status == 202).unwrap();
    assert_eq!(rec.resource, "/vms/web");
    // Only its hash is stored, never the password.
    // (The store is SQLite in WAL mode: recent writes are in the -wal file.)
    let mut store = std::fs::read(d.path().join("store.db")).unwrap();
    store.extend(std::fs::read(d.path().join("store.db-wal")).unwrap_or_default());
    let text = String::from_utf8_lossy(&store);
    assert!(text.contains("$argon2id$") && !text.contains("ann-long-password"));
}

/// Tokens: made by their user, refused once expired or revoked (at once), limited in rate;
/// a user cannot revoke another's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_revoke_at_once_and_are_rate_limited() {
    let d = Daemon::start_with_config("api_rate_per_token = 5\napi_burst_per_token = 10\n");
    let root = &d.client;
    make_user(root, "tess").await;
    let _: Value = root.put("/api/v1/acl", &json!([{ "path": "/", "user": "tess", "role": "auditor" }])).await.unwrap();
    let tess = https_client(&d, &login(&d, "tess", "tess-long-password").await.unwrap());
    let short: Value = tess.post("/api/v1/tokens", &json!({ "name": "short", "expires_in_secs": 2 })).await.unwrap();
    let short_client = https_client(&d, short["secret"].as_str().unwrap());
    assert!(short_client.host().await.is_ok());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = short_client.raw(hyper::Method::GET, "/api/v1/host", None).await.unwrap();
    assert_eq!(status, 401, "an expired token is refused");

    let long: Value = tess.post("/api/v1/tokens", &json!({ "name": "ci" })).await.unwrap();
    let ci = https_client(&d, long["secret"].as_str().unwrap());
    assert!(ci.host().await.is_ok());
    let mine: Vec<Value> = tess.get("/api/v1/tokens").await.unwrap();
    assert!(mine.iter().all(|t| t["user"] == "tess") && mine.len() == 3, "{mine:?}");
    assert!(mine.iter().all(|t| t.get("sha256").is_none()), "no hashes shown");
    let (status, _) = tess.raw(hyper::Method::DELETE, "/api/v1/tokens/admin", None).await.unwrap();
    assert_eq!(status, 403, "not her token");
    tess.delete(&format!("/api/v1/tokens/{}", long["id"].as_str().unwrap())).await.unwrap();
    let (status, _) = ci.raw(hyper::Method::GET, "/api/v1/host", None).await.unwrap();
    assert_eq!(status, 401, "a revoked token is refused at once");

    // 5 requests/s, bursts of 10: 30 at once run into the limit.
    let mut limited = 0;
    for _ in 0..30 {
        let (status, _) = tess.raw(hyper::Method::GET, "/api/v1/host", None).await.unwrap();
        if status == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 30 limited");
    // A deleted user's tokens die with them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    root.delete("/api/v1/users/tess").await.unwrap();
    let (status, _) = tess.raw(hyper::Method::GET, "/api/v1/host", None).await.unwrap();
    assert_eq!(status, 401);
}

/// Each VM's QEMU runs as a uid of its own from its first instruction. A host-path disk (the
/// administrator's file) reaches it as a descriptor oxvirt opened: the file keeps its owner and
/// mode (root, 0600), the guest reads and writes it, and another VM's QEMU cannot open it; a
/// disk hot-plugged later is passed the same way. The kernel and initrd it boots are root's
/// alone (0600): QEMU reads copies made its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_qemu_runs_as_its_own_user_and_cannot_open_another_vms_disk() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Daemon::start();
    let c = &d.client;
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let root_only = |p: &std::path::Path| {
        std::fs::write(p, vec![0u8; 1 << 20]).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let boot = tempfile::tempdir_in("/tmp").unwrap();
    let g = guest();
    for (from, to) in [(&g.kernel, "vmlinuz"), (&g.initrd, "initrd.img")] {
        std::fs::copy(from, boot.path().join(to)).unwrap();
        std::fs::set_permissions(boot.path().join(to), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(boot.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir_mode = std::fs::metadata(dir.path()).unwrap().mode();
    let mut uids = Vec::new();
    for name in ["ca", "cb"] {
        let disk = dir.path().join(format!("{name}.raw"));
        root_only(&disk);
        let mut spec = kernel_spec(name, "");
        spec["kernel"]["kernel"] = json!(boot.path().join("vmlinuz"));
        spec["kernel"]["initrd"] = json!(boot.path().join("initrd.img"));
        spec["disks"] = json!([{ "path": disk, "format": "raw" }]);
        let created = c.create_vm(&spec, true).await.unwrap();
        c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
        wait_console(c, name, READY, 1, BOOT_TIMEOUT).await;
        let vm = c.get_vm(name).await.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", vm.status.pid.unwrap())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
        let uid: u32 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(uid != 0 && Some(uid) == vm.uid, "{name}: {uid_line}, record {:?}", vm.uid);
        // Real, effective, saved and file-system uids alike: nothing left to get root back with.
        let ids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
        assert!(ids.iter().all(|i| *i == uid.to_string()), "{uid_line}");
        for f in ["vmlinuz", "initrd.img"] {
            let meta = std::fs::metadata(boot.path().join(f)).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "the {f} is not given away");
        }
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{name}'s disk is not given away");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.status.pid.unwrap())).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("/dev/fdset/1"), "passed as a descriptor");
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "one uid per VM");
    // As ca's QEMU: its own disk opens, cb's does not.
    let as_ca = |file: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid", &uids[0].to_string(), "--regid", "1100000", "--clear-groups", "head", "-c", "1"])
            .arg(dir.path().join(file))
            .output()
            .unwrap()
    };
    let denied = as_ca("cb.raw");
    assert!(!denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    // The guest writes its disk through the descriptor.
    run_in_guest(c, "ca", "echo X | dd of=/dev/vda bs=1 count=1 conv=fsync 2>/dev/null; echo W-$?", "W-0").await;
    assert_eq!(std::fs::read(dir.path().join("ca.raw")).unwrap()[0], b'X');
    // A disk hot-plugged into ca (its QEMU no longer root) is passed the same way and works.
    let extra = dir.path().join("extra.raw");
    root_only(&extra);
    let _: Value = c.post("/api/v1/vms/ca/disks", &json!({ "path": extra, "format": "raw" })).await.unwrap();
    run_in_guest(c, "ca", "ls /sys/block | grep -c vd | sed 's/^/N-/'", "N-2").await;
    let meta = std::fs::metadata(&extra).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "the hot-plugged disk is not given away");
    // Unplugged, QEMU holds it no more (its fd set goes with it).
    let ca_pid = c.get_vm("ca").await.unwrap().status.pid.unwrap();
    let holds = |p: &std::path::Path| {
        std::fs::read_dir(format!("/proc/{ca_pid}/fd"))
            .unwrap()
            .any(|e| std::fs::read_link(e.unwrap().path()).ok().as_deref() == Some(p))
    };
    assert!(holds(&extra), "QEMU holds the hot-plugged disk");
    let (status, body) = c.raw(hyper::Method::DELETE, "/api/v1/vms/ca/disks/disk1", None).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(!holds(&extra), "the unplugged disk is still open in QEMU");
    assert_eq!(std::fs::metadata(dir.path()).unwrap().mode(), dir_mode, "its directory is unchanged");
    for vm in ["ca", "cb"] {
        c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await.unwrap();
    }
}

/// QEMU runs under a seccomp filter; memory encryption is refused, by name, on a host without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_is_sandboxed_and_sev_is_refused_here() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let c = &d.client;
    // A read-only volume is not given to the VM (it may be shared): QEMU gets it open.
    let _: Value = c.post("/api/v1/pools", &json!({ "name": "ro", "path": d.path().join("ro") })).await.unwrap();
    let _: Value =
        c.post("/api/v1/pools/ro/volumes", &json!({ "name": "iso", "size": "8MiB", "format": "raw" })).await.unwrap();
    let file = d.path().join("ro").join("iso.raw");
    std::fs::write(&file, [b"RO-MARK\n".as_slice(), &vec![0u8; (8 << 20) - 8]].concat()).unwrap();
    let before = std::fs::metadata(&file).unwrap();
    let mut spec = kernel_spec("sbx", "");
    spec["disks"] = json!([{ "volume": "ro/iso", "readonly": true }]);
    let created = c.create_vm(&spec, true).await.unwrap();
    c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    wait_console(c, "sbx", READY, 1, BOOT_TIMEOUT).await;
    let pid = c.get_vm("sbx").await.unwrap().status.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')), "{status}");
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1')), "{status}");
    // No new processes or programs: QEMU runs without -daemonize, under spawn=deny.
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ");
    assert!(cmdline.contains("spawn=deny") && !cmdline.contains("-daemonize"), "{cmdline}");
    // Nor any change of user or group: QEMU never runs as root, so it needs none.
    assert!(cmdline.contains("elevateprivileges=deny") && !cmdline.contains("-runas"), "{cmdline}");
    assert!(!status.lines().any(|l| l.starts_with("Uid:") && l.contains("\t0\t")), "{status}");
    run_in_guest(c, "sbx", "head -c 7 /dev/vda; echo", "RO-MARK").await;
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()), "the read-only volume was given away");
    assert!(cmdline.contains("/dev/fdset/1"), "{cmdline}");
    c.vm_action_wait("sbx", "kill", Duration::from_secs(30)).await.unwrap();

    let mut spec = kernel_spec("sev", "");
    spec["memory_encryption"] = json!("sev");
    let created = c.create_vm(&spec, true).await.unwrap();
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(30)).await.unwrap();
    let err = t.error.unwrap_or_default();
    assert!(err.contains("memory_encryption: this host cannot encrypt guest memory with SEV"), "{err}");
    assert!(c.get_vm("sev").await.unwrap().status.pid.is_none());
}

/// Projects: their VMs stay within the quotas (the refusal names the quota); a quota cannot be
/// lowered below what the VMs hold; a project with VMs is not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_keep_their_vms_within_quotas() {
    let d = Daemon::start();
    let c = &d.client;
    let _: Value = c
        .post("/api/v1/projects", &json!({ "name": "team", "quotas": { "vms": 2, "vcpus": 3, "memory": "600MiB" } }))
        .await
        .unwrap();
    // A tenant names no host path: the project's VMs boot from volumes of a pool.
    let _: Value = c.post("/api/v1/pools", &json!({ "name": "tp", "path": d.path().join("tp") })).await.unwrap();
    for v in ["pa", "pb", "pc", "pd", "pz"] {
        let _: Value = c.post("/api/v1/pools/tp/volumes", &json!({ "name": v, "size": "16MiB" })).await.unwrap();
    }
    let vm = |name: &str, cpus: u32| {
        json!({ "name": name, "cpus": cpus, "memory": "256MiB", "project": "team",
                "disks": [{ "volume": format!("tp/{name}") }] })
    };
    c.create_vm(&vm("pa", 1), false).await.unwrap();
    c.create_vm(&vm("pb", 2), false).await.unwrap();
    let err = c.create_vm(&vm("pc", 1), false).await.unwrap_err().to_string();
    assert!(err.contains("project.quotas.vms") && err.contains("3 of a quota of 2"), "{err}");
    let err = c.update_vm("pb", &json!({ "cpus": 2, "memory": "512MiB" })).await.unwrap_err().to_string();
    assert!(err.contains("project.quotas.memory"), "{err}");
    let mut other = vm("pd", 1);
    other["project"] = json!("nosuch");
    let err = c.create_vm(&other, false).await.unwrap_err().to_string();
    assert!(err.contains("project: there is no project named nosuch"), "{err}");
    let p: Value = c.get("/api/v1/projects/team").await.unwrap();
    assert_eq!((p["usage"]["vms"].as_u64(), p["usage"]["vcpus"].as_u64()), (Some(2), Some(3)), "{p}");
    let (status, body) = c
        .raw(hyper::Method::PUT, "/api/v1/projects/team", Some(br#"{"name":"team","quotas":{"vms":1}}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("quotas.vms"));
    let (status, _) = c.raw(hyper::Method::DELETE, "/api/v1/projects/team", None).await.unwrap();
    assert_eq!(status, 409);
    // A tenant: operator of the project, nothing else.
    make_user(c, "tina").await;
    let _: Value = c
        .put(
            "/api/v1/acl",
            &json!([
                { "path": "/projects/team", "user": "tina", "role": "operator" },
                { "path": "/pools/tp", "user": "tina", "role": "operator" },
            ]),
        )
        .await
        .unwrap();
    c.create_vm(&kernel_spec("outside", ""), false).await.unwrap();
    let tina = https_client(&d, &login(&d, "tina", "tina-long-password").await.unwrap());
    let seen: Vec<String> = tina.list_vms().await.unwrap().into_iter().map(|v| v.spec.name).collect();
    assert_eq!(seen, vec!["pa".to_string(), "pb".to_string()], "only her project's VMs");
    assert!(tina.get_vm("pa").await.is_ok());
    let (status, _) = tina.raw(hyper::Method::GET, "/api/v1/vms/outside", None).await.unwrap();
    assert_eq!(status, 403);
    let err = tina.create_vm(&kernel_spec("mine", ""), false).await.unwrap_err().to_string();
    assert!(err.contains("may not change /vms"), "{err}");
    let err = tina.create_vm(&vm("pz", 1), false).await.unwrap_err().to_string();
    assert!(err.contains("project.quotas.vms"), "within her project, but over its quota: {err}");
    tina.delete_vm("pb").await.unwrap();
    tina.create_vm(&vm("pz", 1), false).await.unwrap();
    // KSM does not merge a project's VMs with others' unless the administrator says so.
    let merge_of = |pid: u32| {
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
        cmd.split('\0').find(|a| a.contains("mem-merge=")).map(|a| a.contains("mem-merge=on")).unwrap()
    };
    let mut merged = Vec::new();
    for across in [false, true] {
        let mut policy: Value = c.get("/api/v1/host/policy").await.unwrap();
        policy["ksm_across_projects"] = json!(across);
        let _: Value = c.put("/api/v1/host/policy", &policy).await.unwrap();
        tina.vm_action_wait("pz", "start", Duration::from_secs(60)).await.unwrap();
        merged.push(merge_of(c.get_vm("pz").await.unwrap().status.pid.unwrap()));
        tina.vm_action_wait("pz", "kill", Duration::from_secs(30)).await.unwrap();
    }
    assert_eq!(merged, [false, true], "mem-merge with ksm_across_projects off, then on");
    for v in ["pa", "pz", "outside"] {
        c.delete_vm(v).await.unwrap();
    }
    c.delete("/api/v1/projects/team").await.unwrap();
}

/// oxvirt changes no mode of a directory it did not make: a pool in an operator's directory that
/// QEMU's user cannot pass is refused at start with the directory named and left as it was;
/// once the operator opens it (o+x), the VM starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_oxvirt_did_not_make_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let c = &d.client;
    let op = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(op.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mode = || std::fs::metadata(op.path()).unwrap().permissions().mode() & 0o7777;
    let _: Value = c.post("/api/v1/pools", &json!({ "name": "op", "path": op.path() })).await.unwrap();
    let _: Value = c.post("/api/v1/pools/op/volumes", &json!({ "name": "d", "size": "16MiB" })).await.unwrap();
    let mut spec = kernel_spec("opvm", "");
    spec["disks"] = json!([{ "volume": "op/d" }]);
    c.create_vm(&spec, false).await.unwrap();
    let task = c.vm_action("opvm", "start").await.unwrap();
    let done = c.wait_task(&task.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, oxvirt_model::TaskState::Failed, "{done:?}");
    let err = done.error.unwrap_or_default();
    let named = format!("{} (mode 700)", op.path().display());
    assert!(err.contains(&named) && err.contains("o+x"), "{err}");
    assert_eq!(mode(), 0o700, "the operator's directory is left as it was");
    assert_eq!(c.get_vm("opvm").await.unwrap().status.state, oxvirt_model::VmState::Stopped);

    std::fs::set_permissions(op.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    c.vm_action_wait("opvm", "start", Duration::from_secs(60)).await.unwrap();
    wait_console(c, "opvm", READY, 1, BOOT_TIMEOUT).await;
    assert_eq!(mode(), 0o711);
    c.vm_action_wait("opvm", "kill", Duration::from_secs(30)).await.unwrap();
}

/// A data directory oxvirtd makes itself (a fresh install) is one QEMU's user may pass: a VM
/// boots, though the daemon's umask is 077.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_the_daemon_makes_lets_its_vms_boot() {
    use std::os::unix::fs::PermissionsExt;
    let op = operator_dir("oxf");
    let data = op.path().join("fresh").join("data");
    let config = op.path().join("oxvirtd.toml");
    let guest_dir = workspace_root().join("build");
    std::fs::write(&config, format!("host_path_roots = [{guest_dir:?}]\n")).unwrap();
    let log = std::fs::File::create(op.path().join("oxvirtd.log")).unwrap();
    let mut daemon = std::process::Command::new(bin("oxvirtd"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = data.join("oxvirtd.sock");
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            std::fs::read_to_string(op.path().join("oxvirtd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for d in [data.parent().unwrap(), &data] {
        assert_eq!(std::fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o711, "{}", d.display());
    }
    let c = oxvirt_client::Client::new(&sock);
    let created = c.create_vm(&kernel_spec("fresh", ""), true).await.unwrap();
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    wait_console(&c, "fresh", READY, 1, BOOT_TIMEOUT).await;
    c.vm_action_wait("fresh", "kill", Duration::from_secs(30)).await.unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
}
