//! The cluster's transport on TLS: etcd with client certificates (a daemon with the cluster's
//! certificate works, from its config file or with `--join`; clients without one are refused; a
//! daemon whose TLS settings are missing or wrong does not start), and live migration over TLS
//! (the memory stream and the local disks' NBD copies: a guest moves and keeps running; a
//! plaintext NBD client, a plaintext stream and a stream with another CA's certificate are
//! refused while the target keeps waiting; a host without migration TLS is refused as a target).

use oxvirt_e2e::pki::TestPki;
use oxvirt_e2e::*;
use oxvirt_store::{EtcdStore, Expect, Store, StoreExt};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// oxvirtd.toml of host `host` on the TLS cluster, with migration TLS when `migration`.
fn config(c: &EtcdCluster, pki: &TestPki, host: &str, prefix: &str, migration: bool) -> String {
    let eps: Vec<String> = c.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    let mig =
        if migration { format!("migration_tls_dir = \"{}\"\n", pki.migration_dir().display()) } else { "".into() };
    format!(
        "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"{prefix}\"\nhost_name = \"{host}\"\nmember_ttl_secs = 3\n{}{mig}",
        eps.join(", "),
        pki.etcd_settings()
    )
}

/// Runs oxvirtd with `config` until it exits (it must: it is refused); its stderr.
fn refused_daemon(config: &str) -> String {
    let dir = tempfile::Builder::new().prefix("oxv").tempdir_in("/tmp").unwrap();
    let file = dir.path().join("oxvirtd.toml");
    std::fs::write(&file, format!("https_listen = \"\"\n{config}")).unwrap();
    let out =
        Command::new(bin("oxvirtd")).arg("--data-dir").arg(dir.path()).arg("--config").arg(&file).output().unwrap();
    assert!(!out.status.success(), "oxvirtd started with {config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn etcdctl(c: &EtcdCluster, tls: &[String], args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(tls)
        .args(["--endpoints", &c.endpoints().join(","), "--command-timeout=3s"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates_admits_the_cluster_only() {
    let pki = TestPki::new("ours");
    let cluster = EtcdCluster::start_tls(1, &pki);
    assert!(cluster.endpoints()[0].starts_with("https://127.0.0.1:"));

    // A daemon with the cluster's certificate joins and works; its records are in etcd.
    let d = Daemon::start_with_config(&config(&cluster, &pki, "host-a", "tls1/", false));
    d.client.create_vm(&kernel_spec("kept", ""), false).await.unwrap();
    let (code, out, err) = d.cli(&["cluster", "hosts"]);
    assert!(code == 0 && out.contains("host-a") && out.contains("online"), "{out}{err}");
    let raw = EtcdStore::connect_with(&cluster.endpoints(), "tls1/", Some(&pki.etcd_tls())).unwrap();
    assert!(raw.get("vms/kept").unwrap().is_some());

    // `--join https://...` with the certificate in the config file of a single host.
    let settings = format!("stop_timeout_secs = 5\n[store]\n{}", pki.etcd_settings());
    let j = Daemon::start_with_args(&settings, &["--join", &cluster.endpoints()[0], "--host-name", "host-j"]);
    let (code, out, err) = j.cli(&["cluster", "hosts"]);
    assert!(code == 0 && out.contains("host-j") && out.contains("online"), "{out}{err}");

    // Clients without the cluster's certificate are refused: etcdctl that trusts the CA but
    // shows no certificate, and one showing a certificate of another CA.
    let ca_only = [format!("--cacert={}", pki.ca().display())];
    let out = etcdctl(&cluster, &ca_only, &["get", "--prefix", "tls1/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "read without a certificate: {err}");
    let other = TestPki::new("theirs");
    let mut theirs = other.etcdctl_args();
    theirs[0] = ca_only[0].clone();
    let out = etcdctl(&cluster, &theirs, &["put", "tls1/vms/evil", "x"]);
    assert!(!out.status.success(), "a write with another CA's certificate");
    let out = etcdctl(&cluster, &pki.etcdctl_args(), &["get", "tls1/vms/kept", "--keys-only"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tls1/vms/kept"));
    let mut foreign = other.etcd_tls();
    foreign.ca = pki.etcd_tls().ca;
    assert!(EtcdStore::connect_with(&cluster.endpoints(), "tls1/", Some(&foreign)).is_err());

    // A daemon configured without the TLS settings, with half of them, or with another CA's
    // certificate does not start, and says why.
    let started = Instant::now();
    let eps = format!("\"{}\"", cluster.endpoints()[0]);
    let etcd = format!("[store]\nbackend = \"etcd\"\netcd_endpoints = [{eps}]\n");
    let err = refused_daemon(&etcd);
    assert!(err.contains("store.etcd_endpoints:") && err.contains("store.etcd_cert"), "{err}");
    let err = refused_daemon(&format!(
        "{etcd}etcd_ca = \"{}\"\netcd_cert = \"{}\"\n",
        pki.ca().display(),
        pki.cert().display()
    ));
    assert!(err.contains("store.etcd_key: etcd_ca, etcd_cert and etcd_key go together"), "{err}");
    let err = refused_daemon(&format!("{etcd}{}", pki.etcd_settings().replace("node-key.pem", "gone.pem")));
    assert!(err.contains("store.etcd_key: ") && err.contains("gone.pem"), "{err}");
    let wrong = format!(
        "{etcd}etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
        pki.ca().display(),
        other.cert().display(),
        other.key().display()
    );
    let err = refused_daemon(&wrong);
    assert!(err.contains("oxvirtd: store: ") && err.contains("over TLS as store.etcd_cert"), "{err}");
    eprintln!("refused daemons in {:?}; last: {}", started.elapsed(), err.trim());
}

/// The VM's waiting QEMU on `d` (its pid), once it has one.
async fn waiting_qemu(d: &Daemon, vm_id: &str) -> i32 {
    let pidfile = d.path().join("run").join(&vm_id[..13]).join("qemu.pid");
    let start = Instant::now();
    loop {
        if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no waiting QEMU:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A QEMU of nobody's that tries to migrate a paused guest to `uri`: in plaintext, or over TLS
/// with the client certificate in `creds` (another CA's); QEMU's final status of it.
async fn rogue_migration(dir: &Path, uri: &str, creds: Option<&Path>) -> serde_json::Value {
    let sock = dir.join("rogue.qmp");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-S", "-nodefaults", "-display", "none", "-machine", "q35", "-accel", "tcg", "-m", "128M"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
    if let Some(d) = creds {
        cmd.arg("-object").arg(format!("tls-creds-x509,id=rogue,endpoint=client,dir={}", d.display()));
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    // (The socket's file exists a moment before QEMU listens on it: connect until it does.)
    let qmp = loop {
        match oxvirt_qemu::qmp::Qmp::connect(&sock, Duration::from_secs(10)).await {
            Ok(q) => break q,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "the rogue QEMU did not start: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if creds.is_some() {
        qmp.execute("migrate-set-parameters", json!({ "tls-creds": "rogue" })).await.unwrap();
    }
    qmp.execute("migrate", json!({ "uri": uri })).await.unwrap();
    let start = Instant::now();
    let last = loop {
        let q = qmp.execute("query-migrate", serde_json::Value::Null).await.unwrap();
        if ["failed", "completed", "cancelled"].contains(&q["status"].as_str().unwrap_or("")) {
            break q;
        }
        if start.elapsed() > Duration::from_secs(20) {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_over_tls_moves_a_guest_and_refuses_plaintext() {
    let pki = TestPki::new("mig");
    let cluster = EtcdCluster::start_tls(1, &pki);
    let a = Daemon::start_with_config(&config(&cluster, &pki, "host-a", "tlsm/", true));
    let b = Daemon::start_with_config(&config(&cluster, &pki, "host-b", "tlsm/", true));
    let c = Daemon::start_with_config(&config(&cluster, &pki, "host-c", "tlsm/", false));

    // A guest with a local disk (copied over NBD) on host-a, counting in memory and on disk.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    local_pool_on_three_hosts(&a, dir.path());
    let mut spec = kernel_spec("mover", "");
    spec["host"] = json!("host-a");
    spec["disks"] = json!([{ "volume": "local/data" }]);
    let pid_a = start_counting_guest(&a.client, &spec).await;
    let vm = a.client.get_vm("mover").await.unwrap();

    // A host without migration TLS is no target for a host with it, nor a source.
    let err = a.client.migrate_vm("mover", "host-c").await.unwrap_err().to_string();
    assert!(err.contains("host host-c migrates in plaintext (it has no store.migration_tls_dir)"), "{err}");
    let mut plain = kernel_spec("plain", "");
    plain["host"] = json!("host-c");
    let created = c.client.create_vm(&plain, true).await.unwrap();
    c.client.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    let err = c.client.migrate_vm("plain", "host-a").await.unwrap_err().to_string();
    assert!(err.contains("host host-a migrates only over TLS and this host has no store.migration_tls_dir"), "{err}");
    c.client.vm_action_wait("plain", "kill", Duration::from_secs(30)).await.unwrap();

    // host-b gets ready for a migration of mover (recorded as the source would): its QEMU is
    // given the server's credentials (none on its command line) and listens for TLS only.
    let store = EtcdStore::connect_with(&cluster.endpoints(), "tlsm/", Some(&pki.etcd_tls())).unwrap();
    let m = oxvirt_model::Migration::new("mover", "host-a", "host-b", oxvirt_model::MigrationState::Requested, 1);
    store.put_record("mover", &m, Expect::Absent).unwrap();
    let target = waiting_qemu(&b, &vm.id).await;
    let start = Instant::now();
    let ready = loop {
        let (m, _) = store.get_record::<oxvirt_model::Migration>("mover").unwrap().unwrap();
        if m.state == oxvirt_model::MigrationState::Ready {
            break m;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{m:?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let argv = std::fs::read(format!("/proc/{target}/cmdline")).unwrap();
    let argv: Vec<String> = argv.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    // (Read over QMP from a copy made the VM user's in its run directory, removed once read:
    // QEMU never runs as root, never reads the host's own, and no key stays behind.)
    let copy = b.path().join("run").join(&vm.id[..13]).join("tls");
    assert!(argv.windows(2).any(|w| w == ["-incoming", "defer"]), "{argv:?}");
    assert!(
        !argv.iter().any(|a| a.contains("tls-creds") || a.contains(&*pki.migration_dir().to_string_lossy())),
        "{argv:?}"
    );
    assert!(!copy.exists(), "the credentials' copy stayed");
    let (uri, nbd) = (ready.uri.unwrap(), ready.nbd.unwrap());
    // A plaintext NBD client cannot reach the writable disk copy...
    let (host, port) = nbd.rsplit_once(':').unwrap();
    let out = Command::new("qemu-img")
        .args(["info", "--image-opts", &format!("driver=nbd,host={host},port={port},export=disk0")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a plaintext NBD client read the copy: {}", String::from_utf8_lossy(&out.stdout));
    eprintln!("plaintext NBD client: {}", String::from_utf8_lossy(&out.stderr).trim());
    // ... nor a QEMU send a guest in over TLS with another CA's certificate, or in plaintext.
    // (It trusts the cluster's CA besides its own, so that it is the target that refuses it.)
    let other = TestPki::new("rogue");
    let mixed = dir.path().join("rogue-creds");
    std::fs::create_dir(&mixed).unwrap();
    let both = [std::fs::read(pki.ca()).unwrap(), std::fs::read(other.ca()).unwrap()].concat();
    std::fs::write(mixed.join("ca-cert.pem"), both).unwrap();
    for f in ["client-cert.pem", "client-key.pem"] {
        std::fs::copy(other.migration_dir().join(f), mixed.join(f)).unwrap();
    }
    // (A small guest's whole stream fits in the socket's buffers: the sender may finish before
    // the refusal reaches it, and its own status say completed — with TLS 1.3, and in plaintext
    // too. The target is the judge: it refuses both, says why, and keeps waiting.)
    let q = rogue_migration(dir.path(), &uri, Some(&mixed)).await;
    eprintln!("another CA's stream: {} {}", q["status"], q["error-desc"]);
    let q = rogue_migration(dir.path(), &uri, None).await;
    eprintln!("plaintext stream: {} {}", q["status"], q["error-desc"]);
    let vm_id = a.client.get_vm("mover").await.unwrap().id;
    let target_log = std::fs::read_to_string(b.path().join("run").join(&vm_id[..13]).join("qemu.log")).unwrap();
    eprintln!("the target's QEMU said:\n{target_log}");
    // One refusal each: two lines on TLS or certificates.
    let refusals = target_log.lines().filter(|l| l.contains("TLS") || l.contains("certificate")).count();
    assert!(refusals >= 2, "{target_log}");
    assert!(process_alive(target as u32), "the target's QEMU should keep waiting:\n{}", b.log());
    assert_eq!(store.get_record::<oxvirt_model::Migration>("mover").unwrap().unwrap().0.state, ready.state);
    // The would-be migration ends; host-b removes its side.
    store
        .update_record::<oxvirt_model::Migration>("mover", |m| m.state = oxvirt_model::MigrationState::Failed)
        .unwrap();
    let start = Instant::now();
    while store.get_record::<oxvirt_model::Migration>("mover").unwrap().is_some() || process_alive(target as u32) {
        assert!(start.elapsed() < Duration::from_secs(20), "host-b did not clear the migration:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vm = a.client.get_vm("mover").await.unwrap();
    assert_eq!((vm.host.as_deref(), vm.status.state.as_str(), vm.status.pid), (Some("host-a"), "running", Some(pid_a)));
    let before = guest_number(&a.client, "mover", "cat /tmp/c").await;

    // The real migration, over TLS: memory and the local disk; the guest goes on counting.
    let started = Instant::now();
    let t = a.client.migrate_vm("mover", "host-b").await.unwrap();
    let t = a.client.wait_task(&t.id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}\n{}\n{}", a.log(), b.log());
    let vm = try_wait_state(&b.client, "mover", "running", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhost-a:\n{}\nhost-b:\n{}", a.log(), b.log()));
    let reason = vm.host_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("migrated from host-a") && reason.contains("1 local disk(s) copied"), "{reason}");
    eprintln!("TLS migration in {:?}: {reason}", started.elapsed());
    // The handover clears the source's pid; the target records its QEMU's on taking over.
    let start = Instant::now();
    let pid = loop {
        if let Some(p) = b.client.get_vm("mover").await.unwrap().status.pid {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "host-b never took the VM over:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    // Holding no credentials from its start, it gets them when it migrates again.
    assert!(!String::from_utf8_lossy(&argv).contains("tls-creds"));
    let after = guest_number(&b.client, "mover", "cat /tmp/c").await;
    assert!(after >= before, "the counter went back: {before} -> {after}");
    let on_disk = guest_number(&b.client, "mover", "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1").await;
    assert!(on_disk >= before, "{on_disk} < {before}");
    // Nor can host-b send it to host-c.
    let err = b.client.migrate_vm("mover", "host-c").await.unwrap_err().to_string();
    assert!(err.contains("migrates in plaintext"), "{err}");
    b.client.vm_action_wait("mover", "kill", Duration::from_secs(30)).await.unwrap();
}
