//! Backups through real `qemu-nbd` exports of real qcow2 images: a full backup, an incremental
//! one driven by the image's persistent dirty bitmap, both restored and compared with
//! `qemu-img compare`.

use oxvirt_backup::nbd::{self, NbdClient};
use oxvirt_backup::{back_up_disk, restore_disk, DiskRead, Progress, Repo, CHUNK_SIZE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_io(image: &Path, cmd: &str) {
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(image).stdout(Stdio::null()));
}

/// `qemu-nbd` serving `image` on a socket, killed when dropped.
struct Export {
    child: Child,
    socket: PathBuf,
}

impl Export {
    fn start(image: &Path, socket: &Path, extra: &[&str]) -> Export {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("qemu-nbd")
            .args(["--format=qcow2", "--persistent", "--shared=8", "--export-name=disk0"])
            .arg(format!("--socket={}", socket.display()))
            .args(extra)
            .arg(image)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-nbd");
        let begun = Instant::now();
        // Listening, not only bound (the file appears before listen()).
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(begun.elapsed() < Duration::from_secs(10), "qemu-nbd did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Export { child, socket: socket.to_path_buf() }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn full_then_incremental_backup_restore_block_for_block() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("64M"));
    qemu_io(&disk, "write -P 0xab 0 8M");
    qemu_io(&disk, "write -P 0xcd 20M 4M");
    qemu_io(&disk, "write -P 0x00 32M 4M");
    run(Command::new("qemu-img").args(["bitmap", "--add", "--granularity", "4M"]).arg(&disk).arg("b0"));
    let repo = Repo::create(&dir.path().join("repo"), None).unwrap();
    let sock = dir.path().join("nbd.sock");

    // Backup 1: every chunk that is not zeros is read.
    let first = {
        let export = Export::start(&disk, &sock, &["--read-only"]);
        let mut probe = NbdClient::connect(&export.socket, "disk0", &[nbd::ALLOCATION]).unwrap();
        assert_eq!(probe.size(), 64 << 20);
        let read = nbd::chunks_where(&mut probe, nbd::ALLOCATION, CHUNK_SIZE, nbd::STATE_ZERO, false).unwrap();
        probe.disconnect();
        // 2 chunks of 0xab, 1 of 0xcd, 1 written with zeros (allocated: read, found zeros).
        assert_eq!(read.iter().filter(|r| **r).count(), 4, "{read:?}");
        let connect = || NbdClient::connect(&export.socket, "disk0", &[]);
        back_up_disk(
            &connect,
            &repo,
            DiskRead { id: "disk0", size: 64 << 20, read: &read, previous: None },
            2,
            &Progress::default(),
        )
        .unwrap()
    };
    assert_eq!(first.read_bytes, 16 << 20);
    assert_eq!(first.new_chunks, 2, "the two 0xab chunks are one");
    assert_eq!(first.index.chunks.iter().flatten().count(), 3);
    let first_copy = dir.path().join("first.qcow2");
    std::fs::copy(&disk, &first_copy).unwrap();

    // The guest changes 1 MiB in chunk 10 and zeroes chunk 1: the bitmap marks both.
    qemu_io(&disk, "write -P 0x11 40M 1M");
    qemu_io(&disk, "write -z 4M 4M");
    let second = {
        let export = Export::start(&disk, &sock, &["--read-only", "--bitmap=b0"]);
        let ctx = nbd::dirty_bitmap("b0");
        let mut probe = NbdClient::connect(&export.socket, "disk0", &[&ctx]).unwrap();
        let read = nbd::chunks_where(&mut probe, &ctx, CHUNK_SIZE, 1, true).unwrap();
        probe.disconnect();
        let dirty: Vec<usize> = read.iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| i).collect();
        assert_eq!(dirty, [1, 10], "the changed chunks, and only those");
        let connect = || NbdClient::connect(&export.socket, "disk0", &[]);
        back_up_disk(
            &connect,
            &repo,
            DiskRead { id: "disk0", size: 64 << 20, read: &read, previous: Some(&first.index) },
            2,
            &Progress::default(),
        )
        .unwrap()
    };
    assert_eq!(second.read_bytes, 8 << 20);
    assert_eq!(second.new_chunks, 1);
    assert_eq!(second.index.chunks[1], None, "a zeroed chunk reads as zeros");
    assert_eq!(second.index.chunks[0], first.index.chunks[0]);

    // Both restore block for block.
    for (outcome, original) in [(&first, &first_copy), (&second, &disk)] {
        let target = dir.path().join("restored.qcow2");
        let _ = std::fs::remove_file(&target);
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&target).arg("64M"));
        {
            let export = Export::start(&target, &sock, &["--cache=writeback"]);
            let connect = || NbdClient::connect(&export.socket, "disk0", &[]);
            let progress = Progress::default();
            restore_disk(&connect, &repo, &outcome.index, 3, &progress).unwrap();
            let written = progress.done.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(written, outcome.index.chunks.iter().flatten().count() as u64 * CHUNK_SIZE);
        }
        run(Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"]).arg(original).arg(&target));
    }
}

#[test]
fn a_missing_meta_context_or_export_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("8M"));
    let export = Export::start(&disk, &dir.path().join("s"), &["--read-only"]);
    let err = NbdClient::connect(&export.socket, "disk0", &[&nbd::dirty_bitmap("none")]).err().unwrap().to_string();
    assert!(err.contains("qemu:dirty-bitmap:none"), "{err}");
    let err = NbdClient::connect(&export.socket, "other", &[]).err().unwrap().to_string();
    assert!(err.contains("other"), "{err}");
    let mut ok = NbdClient::connect(&export.socket, "disk0", &[]).unwrap();
    assert!(ok.read_only());
    assert!(ok.write(0, &[1; 512]).is_err(), "a read-only export refuses writes");
}
