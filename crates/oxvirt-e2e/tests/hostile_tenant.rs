//! The hostile suite of issue #15: an operator or a tenant with a token over HTTPS tries to reach
//! the host, another tenant's objects or the daemon's secrets. Each attempt gets a 4xx that names
//! the field and the rule, and nothing changes: no file's owner or mode, no task, no record.
//! Requests without a token cost a counter; password guessing backs off.

use oxvirt_e2e::*;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Owner, group and mode of a file (what a refused request must leave as it was).
fn stat(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reaches_neither_the_host_nor_another_tenant() {
    let d = Daemon::start();
    let root = &d.client;
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let victim = tmp.path().join("victim.raw");
    std::fs::write(&victim, vec![0u8; 1 << 20]).unwrap();
    let _: Value =
        root.post("/api/v1/pools", &json!({ "name": "mine", "path": tmp.path().join("mine") })).await.unwrap();
    let _: Value =
        root.post("/api/v1/pools", &json!({ "name": "theirs", "path": tmp.path().join("theirs") })).await.unwrap();
    for (pool, vol) in [("mine", "disk"), ("theirs", "secret")] {
        let _: Value = root
            .post(&format!("/api/v1/pools/{pool}/volumes"), &json!({ "name": vol, "size": "16MiB" }))
            .await
            .unwrap();
    }
    let _: Value = root.post("/api/v1/security-groups", &json!({ "name": "db-only" })).await.unwrap();
    let _: Value = root
        .post("/api/v1/backup-repos", &json!({ "name": "main", "path": tmp.path().join("repo"), "encrypt": true }))
        .await
        .unwrap();
    root.create_vm(&kernel_spec("web", ""), false).await.unwrap();
    root.create_vm(&kernel_spec("db", ""), false).await.unwrap();
    // The administrator shares an image with a VM, read-only.
    let shared_img = tmp.path().join("shared.raw");
    std::fs::write(&shared_img, vec![0u8; 1 << 20]).unwrap();
    let mut shared = kernel_spec("shared", "");
    shared["disks"] = json!([{ "path": shared_img, "format": "raw", "readonly": true }]);
    root.create_vm(&shared, false).await.unwrap();
    make_user(root, "ann").await;
    make_user(root, "otto").await;
    make_user(root, "nora").await;
    let _: Value = root
        .put(
            "/api/v1/acl",
            &json!([
                { "path": "/vms", "user": "ann", "role": "operator" },
                { "path": "/vms/db", "user": "ann", "role": "none" },
                { "path": "/pools/mine", "user": "ann", "role": "operator" },
                { "path": "/networks/corp", "user": "ann", "role": "operator" },
                { "path": "/vms/web", "user": "otto", "role": "operator" },
                { "path": "/backup-repos/main", "user": "otto", "role": "operator" },
                { "path": "/networks", "user": "nora", "role": "operator" },
            ]),
        )
        .await
        .unwrap();
    let ann = https_client(&d, &login(&d, "ann", "ann-long-password").await.unwrap());
    let otto = https_client(&d, &login(&d, "otto", "otto-long-password").await.unwrap());
    let nora = https_client(&d, &login(&d, "nora", "nora-long-password").await.unwrap());

    let watched = [victim.clone(), d.path().join("admin.token"), d.path().join("tls/server.key"), "/etc/passwd".into()];
    let before: Vec<_> = watched.iter().map(|p| stat(p)).collect();
    let tasks_before = root.get::<Vec<Value>>("/api/v1/tasks").await.unwrap().len();

    let mine = json!([{ "volume": "mine/disk" }]);
    let vm = |extra: Value| {
        let mut s = json!({ "name": "x", "cpus": 1, "memory": "256MiB", "disks": mine.clone() });
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let token_file = d.path().join("admin.token");
    let attempts: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "disks": [{ "path": "/etc/shadow", "format": "raw" }] })),
            403,
            "disks[0].path: only an administrator",
        ),
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "disks": [{ "path": victim, "format": "raw" }] })),
            403,
            "disks[0].path",
        ),
        ("POST", "/api/v1/vms".into(), kernel_spec("x", ""), 403, "kernel.kernel: only an administrator"),
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "disks": [{ "volume": "theirs/secret" }] })),
            403,
            "disks[0]: user ann may not change /pools/theirs",
        ),
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "nics": [{ "bridge": "eth0" }] })),
            403,
            "nics[0].bridge: only an administrator",
        ),
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "nics": [{ "network": "lab" }] })),
            403,
            "nics[0].network: user ann may not operate /networks/lab",
        ),
        (
            "POST",
            "/api/v1/vms".into(),
            vm(json!({ "nics": [{ "network": "corp", "security_groups": ["db-only"] }] })),
            403,
            "nics[0].security_groups[0]",
        ),
        (
            "PATCH",
            "/api/v1/vms/web".into(),
            json!({ "disks": [{ "path": victim, "format": "raw" }] }),
            403,
            "disks[0].path",
        ),
        ("PATCH", "/api/v1/vms/web".into(), json!({ "kernel": { "kernel": "/etc/shadow" } }), 403, "kernel.kernel"),
        ("POST", "/api/v1/vms/web/disks".into(), json!({ "path": victim, "format": "raw" }), 403, "disks[0].path"),
        ("POST", "/api/v1/vms/web/disks".into(), json!({ "volume": "theirs/secret" }), 403, "/pools/theirs"),
        ("POST", "/api/v1/vms/web/nics".into(), json!({ "bridge": "eth0" }), 403, "bridge"),
        (
            "POST",
            "/api/v1/pools/mine/import".into(),
            json!({ "name": "stolen", "source": token_file }),
            403,
            "source: only an administrator",
        ),
        (
            "POST",
            "/api/v1/pools/mine/import".into(),
            json!({ "name": "stolen", "source": "/etc/shadow", "format": "raw" }),
            403,
            "source",
        ),
        (
            "POST",
            "/api/v1/pools/mine/volumes/disk/export".into(),
            json!({ "destination": "/root/.ssh/authorized_keys2", "format": "raw" }),
            403,
            "destination: only an administrator",
        ),
        ("POST", "/api/v1/pools".into(), json!({ "name": "evil", "path": "/etc/evil" }), 403, "may not change /pools"),
        // Backups: a repository is a host directory; a job backs up whatever it names; a VM
        // she operates goes only into a repository she is granted; exports name host paths.
        ("POST", "/api/v1/backup-repos".into(), json!({ "name": "evil", "path": "/etc/evil" }), 403, "/backup-repos"),
        (
            "POST",
            "/api/v1/backup-jobs".into(),
            json!({ "name": "j", "vms": ["db"], "repo": "main", "schedule": "* * * * *" }),
            403,
            "ann may not",
        ),
        ("POST", "/api/v1/vms/web/backup".into(), json!({ "repo": "main" }), 403, "/backup-repos/main"),
        (
            "POST",
            "/api/v1/backup-repos/main/backups/db-20261207000000000/export".into(),
            json!({ "destination": "/root/db.qcow2" }),
            403,
            "/backup-repos/main",
        ),
        (
            "POST",
            "/api/v1/backup-repos/main/backups/db-20261207000000000/restore".into(),
            json!({ "name": "stolen", "pool": "mine" }),
            403,
            "/backup-repos/main",
        ),
        (
            "PUT",
            "/api/v1/security-groups/db-only".into(),
            json!({ "name": "db-only" }),
            403,
            "may not change /security-groups/db-only",
        ),
        // The administrator's read-only image stays read-only, in its format, and one disk.
        (
            "PATCH",
            "/api/v1/vms/shared".into(),
            json!({ "disks": [{ "path": shared_img, "format": "raw" }] }),
            403,
            "disks[0].path",
        ),
        (
            "PATCH",
            "/api/v1/vms/shared".into(),
            json!({ "disks": [{ "path": shared_img, "format": "qcow2", "readonly": true }] }),
            403,
            "disks[0].path",
        ),
        (
            "POST",
            "/api/v1/vms/shared/disks".into(),
            json!({ "path": shared_img, "format": "raw" }),
            400,
            "names a file another disk has",
        ),
        // A copy goes only to a pool she may change.
        (
            "POST",
            "/api/v1/pools/mine/volumes/disk/clone".into(),
            json!({ "name": "copy", "pool": "theirs" }),
            403,
            "pool: user ann may not change /pools/theirs",
        ),
    ];
    for (method, path, body, want, needle) in &attempts {
        let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, resp) = ann.raw(m, path, Some(body.to_string().into_bytes())).await.unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert_eq!(status, *want, "{method} {path} {body}: {resp}");
        assert!(resp.contains(needle), "{method} {path}: {needle:?} not in {resp}");
    }
    // An encrypted repository's key reads every backup in it: an administrator's, even for
    // one who may back up into the repository.
    let (status, body) = otto.raw(hyper::Method::GET, "/api/v1/backup-repos/main", None).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let key: Value = root.get("/api/v1/backup-repos/main/key").await.unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    assert!(!String::from_utf8_lossy(&body).contains(&key), "the repository's view shows no key");
    let (status, body) = otto.raw(hyper::Method::GET, "/api/v1/backup-repos/main/key", None).await.unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // Networks that reach the host's own networking are an administrator's, even for an
    // operator of every network.
    for (body, needle) in [
        (json!({ "name": "lan", "kind": "bridged", "bridge": "eth0" }), "bridge: only an administrator"),
        (
            json!({ "name": "out", "kind": "nat", "subnet": "10.77.0.0/24", "uplink": "eth0" }),
            "uplink: only an administrator",
        ),
    ] {
        let (status, resp) =
            nora.raw(hyper::Method::POST, "/api/v1/networks", Some(body.to_string().into_bytes())).await.unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(status == 403 && resp.contains(needle), "{body}: {status} {resp}");
    }
    assert!(root.get::<Vec<Value>>("/api/v1/networks").await.unwrap().is_empty());
    // What she is granted works: a VM on her pool's volume.
    let ok = vm(json!({ "name": "ann-vm" }));
    ann.create_vm(&ok, false).await.unwrap();

    // The ACL is checked on what the handler acts on: the decoded name.
    let (status, _) = ann.raw(hyper::Method::POST, "/api/v1/vms/%64b/actions/start", None).await.unwrap();
    assert_eq!(status, 403, "%64b is db, which ann may not run (her grant on /vms is taken away there)");
    let (status, _) = otto.raw(hyper::Method::POST, "/api/v1/vms/%64b/actions/start", None).await.unwrap();
    assert_eq!(status, 403, "nor otto");
    let (status, _) = otto.raw(hyper::Method::GET, "/api/v1/vms/w%65b", None).await.unwrap();
    assert_eq!(status, 200, "w%65b is web, his");
    let (status, body) = otto.raw(hyper::Method::GET, "/api/v1/vms/web%2F..%2Fdb", None).await.unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(root.get_vm("db").await.unwrap().status.state.as_str(), "stopped");

    // Even the administrator names only allowed host paths, and never a device or a secret.
    let outside = Path::new("/var/tmp").join(format!("oxv-outside-{}", std::process::id()));
    std::fs::write(&outside, b"x").unwrap();
    let link = tmp.path().join("passwd.raw");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let admin_attempts: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/api/v1/vms",
            vm(json!({ "disks": [{ "path": "/dev/sda", "format": "raw" }] })),
            "disks[0].path",
            "never given to guests",
        ),
        (
            "/api/v1/vms",
            vm(json!({ "disks": [{ "path": link, "format": "raw" }] })),
            "disks[0].path",
            "/etc/passwd is in /etc",
        ),
        (
            "/api/v1/vms",
            vm(json!({ "disks": [{ "path": outside, "format": "raw" }] })),
            "disks[0].path",
            "outside the host path roots",
        ),
        (
            "/api/v1/vms",
            vm(json!({ "kernel": { "kernel": "/proc/self/environ" } })),
            "kernel.kernel",
            "never given to guests",
        ),
        ("/api/v1/pools/mine/import", json!({ "name": "stolen", "source": token_file }), "source", "oxvirt's own"),
        (
            "/api/v1/pools/mine/import",
            json!({ "name": "stolen", "source": d.path().join("tls/server.key") }),
            "source",
            "oxvirt's own",
        ),
        (
            "/api/v1/pools/mine/volumes/disk/export",
            json!({ "destination": "/root/.ssh/authorized_keys2" }),
            "destination",
            "never given to guests",
        ),
        ("/api/v1/pools", json!({ "name": "evil", "path": "/etc/oxv-evil" }), "path", "never given to guests"),
        ("/api/v1/pools", json!({ "name": "evil", "path": d.path().join("run/evil") }), "path", "oxvirt's own"),
    ];
    for (path, body, field, rule) in &admin_attempts {
        let (status, resp) = root.raw(hyper::Method::POST, path, Some(body.to_string().into_bytes())).await.unwrap();
        let v: Value = serde_json::from_slice(&resp).unwrap_or_default();
        assert_eq!((status, v["error"]["field"].as_str()), (400, Some(*field)), "{path} {body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(rule), "{path}: {rule:?} not in {v}");
    }
    let _ = std::fs::remove_file(&outside);
    // Images that name other files (QEMU or qemu-img would open them by path, as root).
    let backed = tmp.path().join("backed.qcow2");
    let with_data = tmp.path().join("data-file.qcow2");
    let data_opt = format!("data_file={}", tmp.path().join("data.raw").display());
    for args in [
        vec!["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", backed.to_str().unwrap(), "1M"],
        vec!["create", "-q", "-f", "qcow2", "-o", &data_opt, with_data.to_str().unwrap(), "1M"],
    ] {
        let st = std::process::Command::new("qemu-img").args(&args).status().unwrap();
        assert!(st.success(), "{args:?}");
    }
    let refs: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/api/v1/vms",
            vm(json!({ "disks": [{ "path": backed, "format": "qcow2" }] })),
            "disks[0].path",
            "backing file",
        ),
        (
            "/api/v1/vms",
            vm(json!({ "disks": [{ "path": with_data, "format": "qcow2" }] })),
            "disks[0].path",
            "external data file",
        ),
        (
            "/api/v1/pools/mine/import",
            json!({ "name": "stolen", "source": backed }),
            "source",
            "refers to other files (/etc/passwd)",
        ),
        (
            "/api/v1/pools/mine/import",
            json!({ "name": "stolen", "source": with_data }),
            "source",
            "refers to other files",
        ),
    ];
    for (path, body, field, rule) in &refs {
        let (status, resp) = root.raw(hyper::Method::POST, path, Some(body.to_string().into_bytes())).await.unwrap();
        let v: Value = serde_json::from_slice(&resp).unwrap_or_default();
        assert_eq!((status, v["error"]["field"].as_str()), (400, Some(*field)), "{path} {body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(rule), "{path}: {rule:?} not in {v}");
    }

    // Nothing changed.
    let after: Vec<_> = watched.iter().map(|p| stat(p)).collect();
    assert_eq!(before, after, "owner and mode of {watched:?}");
    assert!(!Path::new("/root/.ssh/authorized_keys2").exists() && !Path::new("/etc/evil").exists());
    assert!(!Path::new("/etc/oxv-evil").exists() && !d.path().join("run/evil").exists());
    let names: Vec<String> = root.list_vms().await.unwrap().into_iter().map(|v| v.spec.name).collect();
    assert_eq!(names, ["ann-vm", "db", "shared", "web"]);
    let shared = root.get_vm("shared").await.unwrap();
    assert!(shared.spec.disks.len() == 1 && shared.spec.disks[0].readonly, "{:?}", shared.spec.disks);
    let web = root.get_vm("web").await.unwrap();
    assert!(web.spec.disks.is_empty() && web.spec.nics.is_empty(), "{:?}", web.spec);
    let tasks: Vec<Value> = root.get("/api/v1/tasks").await.unwrap();
    assert_eq!(tasks.len(), tasks_before, "no task: {tasks:?}");
    let pools: Vec<Value> = root.get("/api/v1/pools").await.unwrap();
    assert_eq!(pools.len(), 2, "{pools:?}");
    let vols: Vec<Value> = root.get("/api/v1/pools/mine/volumes").await.unwrap();
    assert!(vols.iter().all(|v| v["name"] != "stolen"), "{vols:?}");
    // And the audit log says who tried.
    let audit: Vec<oxvirt_model::AuditRecord> = root.get("/api/v1/audit?limit=200").await.unwrap();
    let refused = audit.iter().filter(|r| r.user == "ann" && r.status == 403).count();
    assert!(refused >= attempts.len(), "{refused} of ann's refusals audited");
}

/// Sends `n` requests without a token on one kept-alive HTTPS connection; counts the statuses.
async fn flood(d: &Daemon, n: usize, path: &str) -> std::collections::BTreeMap<u16, usize> {
    use http_body_util::{BodyExt, Empty};
    let (url, _, fp) = d.https();
    let t = oxvirt_client::Transport::https(&url, "none", &fp).unwrap();
    let stream = t.connect().await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..n {
        if let Err(e) = sender.ready().await {
            panic!("request {i}: the connection was closed: {e}");
        }
        let req = hyper::Request::builder()
            .uri(path)
            .header("host", "oxvirtd")
            .body(Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        *seen.entry(resp.status().as_u16()).or_default() += 1;
        resp.into_body().collect().await.unwrap();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_cost_a_counter_and_logins_back_off() {
    let d = Daemon::start();
    let root = &d.client;
    let audit = d.path().join("audit.log");
    let size = || std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let before = size();

    // 10,000 requests with 60 KB paths, on four connections at once.
    let path = format!("/api/v1/vms/{}", "a".repeat(60 * 1024));
    let floods: Vec<_> = (0..4).map(|_| flood(&d, 2500, &path)).collect();
    let mut seen = std::collections::BTreeMap::new();
    for s in futures_util::future::join_all(floods).await {
        for (k, v) in s {
            *seen.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(seen.values().sum::<usize>(), 10_000);
    assert!(seen.keys().all(|s| *s == 401 || *s == 429), "{seen:?}");
    assert!(seen.get(&429).copied().unwrap_or(0) > 9_000, "most only counted: {seen:?}");
    let grown = size() - before;
    assert!(grown < 1024 * 1024, "audit log grew {grown} bytes");
    let tail: Vec<oxvirt_model::AuditRecord> = root.get("/api/v1/audit?limit=5").await.unwrap();
    assert!(tail.iter().all(|r| r.path.len() <= 520), "paths are cut");

    // 500 half-open connections (no TLS handshake) from another address do not keep a real
    // client out.
    let (url, admin, _) = d.https();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..500 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(c) = s.connect(format!("127.0.0.1:{port}").parse().unwrap()).await {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 400, "{} connected", idle.len());
    let start = Instant::now();
    let real = https_client(&d, &admin);
    assert!(real.host().await.is_ok(), "the real client is served");
    assert!(start.elapsed() < Duration::from_secs(5), "served in {:?}", start.elapsed());
    drop(idle);

    // Password guessing: five failures are free, then each attempt waits, even with the right
    // password, and the daemon says so.
    make_user(root, "ann").await;
    for _ in 0..5 {
        assert_eq!(login(&d, "ann", "wrong-password-x").await, Err(401));
    }
    assert_eq!(login(&d, "ann", "ann-long-password").await, Err(429), "backing off");
    assert!(d.log().contains("backing off"), "logged");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(login(&d, "ann", "ann-long-password").await.is_ok(), "after the wait, the right password works");

    // Tokens expire by default (90 days).
    let t: Value = root.post("/api/v1/tokens", &json!({ "name": "ci" })).await.unwrap();
    let expires = t["expires_at"].as_u64().expect("an expiry");
    let created = t["created_at"].as_u64().unwrap();
    assert_eq!(expires - created, 90 * 24 * 3600 * 1000);

    // A method of the caller's own invention does not become a metric label.
    let _ = root.raw(hyper::Method::from_bytes(b"BREW").unwrap(), "/api/v1/host", None).await.unwrap();
    let (_, metrics) = root.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(!metrics.contains("BREW") && metrics.contains("method=\"other\""), "bounded labels");
}
