//! `oxvirt-bench defaults`: oxvirt's default VM (q35) and a microvm kernel boot, each from the
//! start request to the guest's READY marker, against the minimal plain-QEMU launch of the same
//! kernel and initramfs (`-machine q35 -nodefaults`, nothing else); and that launch with the CPU
//! model oxvirt picks under TCG (`-cpu max`): taking oxvirt's additions away one at a time by hand
//! (root ports, virtio-rng, balloon, pvpanic, sandbox, CPU model), only the CPU model's seemed to
//! move the boot by more than the rounds' spread; this row says whether that holds. Interleaved
//! rounds.

use super::{median, ms, spread};
use oxvirt_e2e::*;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;

/// Plain QEMU booting the reference guest with `extra` arguments, its serial port in `out`.
fn plain(machine: &str, extra: &[&str], out: &Path) -> Child {
    let g = guest();
    let _ = std::fs::remove_file(out);
    Command::new("qemu-system-x86_64")
        .args(["-machine", machine, "-accel", "tcg", "-smp", "1", "-m", "256M", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .args(["-append", "console=ttyS0"])
        .args(extra)
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64")
}

/// The time from launching a plain QEMU to its READY marker.
fn plain_round(machine: &str, extra: &[&str], out: &Path) -> Duration {
    let start = Instant::now();
    let mut child = plain(machine, extra, out);
    super::wait_file_marker(out, BOOT_TIMEOUT);
    let took = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// The time from oxvirt's start request for VM `name` to its READY marker (read through the
/// API, as a user would), then the VM is killed.
async fn oxvirt_round(d: &Daemon, name: &str) -> Duration {
    // (The log goes on from boot to boot: this one's marker is one more.)
    let log = d.client.console_log(name, 4 << 20).await.expect("log");
    let before = String::from_utf8_lossy(&log).matches(READY).count();
    let start = Instant::now();
    d.client.vm_action(name, "start").await.expect("start");
    wait_console(&d.client, name, READY, before + 1, BOOT_TIMEOUT).await;
    let took = start.elapsed();
    d.client.vm_action_wait(name, "kill", Duration::from_secs(30)).await.expect("kill");
    took
}

pub async fn defaults() {
    println!("== lean defaults: start -> {READY}, {ROUNDS} rounds each (median), against a minimal plain-QEMU launch");
    let d = Daemon::start();
    d.client.create_vm(&kernel_spec("q35", ""), false).await.expect("create q35");
    let mut micro = kernel_spec("micro", "");
    micro["machine"] = json!("microvm");
    d.client.create_vm(&micro, false).await.expect("create microvm");
    let dir = tempfile::Builder::new().prefix("oxdef").tempdir_in("/tmp").expect("tmp");
    let out = dir.path().join("serial.out");
    let (mut minimal, mut cpu_max, mut q35, mut microvm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        minimal.push(plain_round("q35", &[], &out));
        cpu_max.push(plain_round("q35", &["-cpu", "max"], &out));
        q35.push(oxvirt_round(&d, "q35").await);
        microvm.push(oxvirt_round(&d, "micro").await);
        println!(
            "   round {}: minimal {:?}, minimal + -cpu max {:?}, oxvirt q35 {:?}, oxvirt microvm {:?}",
            round + 1,
            minimal[round],
            cpu_max[round],
            q35[round],
            microvm[round]
        );
    }
    let base = median(minimal.clone()).as_secs_f64();
    let row = |what: &str, v: &[Duration], goal: &str| {
        let m = median(v.to_vec());
        println!("   {what:<28} {m:>10.2?} ({})  ratio {:.3}{goal}", spread(&ms(v), " ms", 0), m.as_secs_f64() / base);
    };
    row("minimal q35 (baseline)", &minimal, "");
    row("minimal q35 + -cpu max", &cpu_max, "");
    row("oxvirt default VM (q35)", &q35, " (goal <= 1.0)");
    row("oxvirt kernel boot (microvm)", &microvm, " (goal <= 0.7)");
}
