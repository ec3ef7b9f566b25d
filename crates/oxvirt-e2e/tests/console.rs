//! The interactive serial console: through the API's WebSocket and through `oxvirt vm console`.

use futures_util::{SinkExt, StreamExt};
use oxvirt_e2e::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_console_runs_commands_in_the_guest() {
    let d = Daemon::start();
    // No console for a stopped VM.
    d.client.create_vm(&kernel_spec("cons", ""), false).await.unwrap();
    let err = d.client.console("cons").await.err().expect("no console for a stopped VM").to_string();
    assert!(err.contains("only while it runs"), "{err}");

    d.client.vm_action_wait("cons", "start", Duration::from_secs(60)).await.unwrap();
    wait_console(&d.client, "cons", READY, 1, BOOT_TIMEOUT).await;
    let mut ws = d.client.console("cons").await.unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    // The guest's shell may still be starting: type until it answers.
    while !String::from_utf8_lossy(&seen).contains("hello-42") {
        assert!(start.elapsed() < Duration::from_secs(60), "no answer: {}", String::from_utf8_lossy(&seen));
        ws.send(Message::Binary(b"echo hello-$((6*7))\n".to_vec().into())).await.unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(None) | Ok(Some(Err(_))) => panic!("console closed"),
            }
            if String::from_utf8_lossy(&seen).contains("hello-42") {
                break;
            }
        }
    }
    drop(ws);
    // What was typed is in the console log too.
    wait_console(&d.client, "cons", "hello-42", 1, Duration::from_secs(10)).await;
    // A q35 VM has no guest agent port: the agent gives up looking for it and exits (typed
    // again until it has).
    run_in_guest(&d.client, "cons", &guest_check("pidof oxvirt-guest-agent"), GUEST_NO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_console_types_and_leaves_with_ctrl_bracket() {
    let d = Daemon::start();
    d.client.create_vm(&kernel_spec("clicons", ""), true).await.unwrap();
    wait_console(&d.client, "clicons", READY, 1, BOOT_TIMEOUT).await;
    let mut child = Command::new(bin("oxvirt"))
        .env("OXVIRT_SOCKET", d.path().join("oxvirtd.sock"))
        .args(["vm", "console", "clicons"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("cli-7") {
        assert!(start.elapsed() < Duration::from_secs(60), "no answer: {}", String::from_utf8_lossy(&seen));
        stdin.write_all(b"echo cli-$((3+4))\n").unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(300)) {
                seen.extend_from_slice(&b);
            }
            if String::from_utf8_lossy(&seen).contains("cli-7") {
                break;
            }
        }
    }
    stdin.write_all(&[0x1d]).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sees_virtio_blk_and_virtio_scsi_disks() {
    let d = Daemon::start();
    let mut disks = Vec::new();
    for (name, fmt, bus) in [("blk.qcow2", "qcow2", "virtio-blk"), ("scsi.raw", "raw", "virtio-scsi")] {
        let path = d.path().join(name);
        let st = Command::new("qemu-img").args(["create", "-q", "-f", fmt]).arg(&path).arg("32M").status().unwrap();
        assert!(st.success());
        disks.push(serde_json::json!({ "path": path, "format": fmt, "bus": bus }));
    }
    let mut spec = kernel_spec("disks", "");
    spec["disks"] = serde_json::json!(disks);
    d.client.create_vm(&spec, true).await.unwrap();
    wait_console(&d.client, "disks", READY, 1, BOOT_TIMEOUT).await;
    // 32 MiB = 65536 sectors, on vda (virtio-blk) and sda (virtio-scsi).
    let out = run_in_guest(
        &d.client,
        "disks",
        "echo SIZES $(cat /sys/block/vda/size) $(cat /sys/block/sda/size)",
        "SIZES 65536 65536",
    )
    .await;
    assert!(out.contains("SIZES 65536 65536"));
    d.client.vm_action_wait("disks", "kill", Duration::from_secs(30)).await.unwrap();
}
