//! A VM named with commas, quotes, spaces, `=` and path separators is refused with a clear error;
//! paths holding such characters work safely and never add a QEMU option.

use oxvirt_client::ClientError;
use oxvirt_e2e::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused() {
    let d = Daemon::start();
    for name in ["a,b", "a\"b", "a b", "a=b", "a/b", "../x", "x,server=off", "a'b", "a\\b"] {
        match d.client.create_vm(&kernel_spec(name, ""), false).await {
            Err(ClientError::Api(e)) => {
                assert_eq!((e.status, e.field.as_deref()), (400, Some("name")), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(d.client.list_vms().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_boot_and_add_no_option() {
    let d = Daemon::start();
    let g = guest();
    let dir = d.path().join("evil,file=/etc/passwd,x=\"y z'");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vm,linuz");
    let initrd = dir.join("init=rd");
    std::fs::copy(&g.kernel, &kernel).unwrap();
    std::fs::copy(&g.initrd, &initrd).unwrap();
    let disk = dir.join("d,format=raw.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let spec = json!({
        "name": "evil-paths", "cpus": 1, "memory": "256MiB",
        "kernel": { "kernel": kernel, "initrd": initrd, "cmdline": "console=ttyS0 a,b=c" },
        "disks": [{ "path": disk, "format": "qcow2" }],
    });
    d.client.create_vm(&spec, true).await.unwrap();
    wait_console(&d.client, "evil-paths", READY, 1, BOOT_TIMEOUT).await;
    let pid = d.client.get_vm("evil-paths").await.unwrap().status.pid.unwrap();
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let value_of = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone()).unwrap();
    // QEMU boots the files we named (any user may read them: read in place), or copies made its
    // own in the VM's run directory, removed once it read them — one argument each, whole.
    let run = d.path().join("run");
    for (flag, named) in [("-kernel", &kernel), ("-initrd", &initrd)] {
        let given = std::path::PathBuf::from(value_of(flag));
        assert!(given == *named || (given.starts_with(&run) && !given.exists()), "{flag} {}", given.display());
    }
    // The disk is the file we named, opened by oxvirt and passed as a descriptor, then read as
    // qcow2 (the `,format=raw` in its name did nothing).
    let blockdev: serde_json::Value = serde_json::from_str(&value_of("-blockdev")).unwrap();
    assert_eq!(blockdev["filename"], "/dev/fdset/1");
    let add_fds: Vec<&String> = args.windows(2).filter(|w| w[0] == "-add-fd").map(|w| &w[1]).collect();
    assert!(add_fds.iter().any(|a| a.ends_with(",set=1,opaque=disk-disk0")), "{add_fds:?}");
    let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .any(|e| std::fs::read_link(e.unwrap().path()).ok().as_deref() == Some(disk.as_path()));
    assert!(holds, "QEMU holds the disk open");
    for flag in args.iter().filter(|a| a.starts_with('-') && !a.starts_with("-/")) {
        assert!(!flag.contains("passwd") && !flag.starts_with("-file"), "unexpected option {flag}");
    }
    d.client.vm_action_wait("evil-paths", "kill", Duration::from_secs(30)).await.unwrap();
}
