//! Host resources with real QEMU and real cgroups: CPU weights and caps, pinning, memory limits,
//! huge pages, the balloon and automatic ballooning, KSM, admission by over-commit policy.

use oxvirt_e2e::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// CPU time (user + system) a process used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// CPU seconds per second each process used over `secs`.
async fn cpu_rates(pids: &[u32], secs: u64) -> Vec<f64> {
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let el = t.elapsed().as_secs_f64();
    pids.iter().zip(before).map(|(p, b)| (cpu_seconds(*p) - b) / el).collect()
}

fn has_cgroup(controller: &str) -> bool {
    oxvirt_cgroup::Cgroups::detect().hierarchies.iter().any(|h| h.name.split(',').any(|c| c == controller))
}

async fn boot(c: &oxvirt_client::Client, name: &str, cpus: u32, memory: &str, resources: Value) -> oxvirt_model::Vm {
    let mut spec = kernel_spec(name, "");
    spec["cpus"] = json!(cpus);
    spec["memory"] = json!(memory);
    spec["resources"] = resources;
    let created = c.create_vm(&spec, true).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    wait_console(c, name, READY, 1, BOOT_TIMEOUT).await;
    c.get_vm(name).await.unwrap()
}

async fn spin(c: &oxvirt_client::Client, vm: &str) {
    run_in_guest(c, vm, "(while :; do :; done) & echo S$((2+3))PIN", "S5PIN").await;
}

/// Two CPU-bound VMs pinned to host CPU 1 with weights 2:1 get CPU time 2:1; a cap of 0.3 CPU
/// set live holds; pins and the memory limit are where the kernel enforces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_weights_caps_pinning_and_memory_limit() {
    if !has_cgroup("cpu") || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        panic!("this test needs a cgroup cpu controller and 2 host CPUs");
    }
    let d = Daemon::start();
    let c = &d.client;
    // Bad input names the field; a pin to a CPU the host lacks is refused at start.
    let mut spec = kernel_spec("bad", "");
    spec["resources"] = json!({ "cpu_limit": 3.0 });
    let err = c.create_vm(&spec, false).await.unwrap_err().to_string();
    assert!(err.contains("resources.cpu_limit"), "{err}");
    spec["resources"] = json!({ "vcpu_pins": [999] });
    let created = c.create_vm(&spec, true).await.unwrap();
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(30)).await.unwrap();
    assert!(t.error.unwrap_or_default().contains("resources.vcpu_pins[0]"));

    let pinned = json!({ "vcpu_pins": [1], "emulator_cpus": "1" });
    let mut heavy = pinned.clone();
    heavy["cpu_weight"] = json!(200);
    heavy["memory_limit"] = json!("512MiB");
    let w1 = boot(c, "w1", 1, "256MiB", heavy).await;
    let w2 = boot(c, "w2", 1, "256MiB", pinned.clone()).await;
    let (p1, p2) = (w1.status.pid.unwrap(), w2.status.pid.unwrap());
    // Every thread of both QEMUs runs on host CPU 1 only.
    for pid in [p1, p2] {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
            assert_eq!(oxvirt_cgroup::affinity(tid).unwrap(), vec![1], "thread {tid} of {pid}");
        }
    }
    if has_cgroup("memory") {
        let cg = oxvirt_cgroup::Cgroups::detect().vm(&format!("vm-{}", w1.id));
        let mem = cg.dirs.iter().find(|(n, _)| n.split(',').any(|c| c == "memory")).unwrap();
        assert_eq!(
            std::fs::read_to_string(mem.1.join("memory.limit_in_bytes")).unwrap().trim(),
            (512u64 << 20).to_string()
        );
    }
    spin(c, "w1").await;
    spin(c, "w2").await;
    let r = cpu_rates(&[p1, p2], 8).await;
    let ratio = r[0] / r[1];
    eprintln!("weights 200:100 -> CPU {:.3} : {:.3} = {ratio:.3}", r[0], r[1]);
    assert!((1.8..=2.2).contains(&ratio), "weights 2:1 gave {r:?} (ratio {ratio:.3})");
    // Sharing one CPU, w2's vCPU spent most of those seconds ready but not running: CPU ready.
    let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    let ready = text
        .lines()
        .find(|l| l.starts_with("oxvirt_vm_cpu_ready_seconds_total{vm=\"w2\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(ready > 1.5, "CPU ready of w2: {ready} s\n{text}");

    // Live: equal weights and a cap of 0.3 CPU on w1.
    let vm: oxvirt_model::Vm = c
        .put("/api/v1/vms/w1/resources", &json!({ "vcpu_pins": [1], "emulator_cpus": "1", "cpu_limit": 0.3 }))
        .await
        .unwrap();
    assert_eq!(vm.spec.resources.cpu_limit, Some(0.3));
    let r = cpu_rates(&[p1, p2], 6).await;
    eprintln!("cap 0.3 -> CPU {:.3} (w2 {:.3})", r[0], r[1]);
    assert!(r[0] <= 0.3 * 1.1, "cap 0.3 CPU gave {:.3}", r[0]);
    assert!(r[1] > r[0], "w2 takes what w1 may not: {r:?}");
    // Unpinned live: threads may use every host CPU again.
    let _: oxvirt_model::Vm = c.put("/api/v1/vms/w2/resources", &json!({})).await.unwrap();
    let all: Vec<u32> = (0..std::thread::available_parallelism().unwrap().get() as u32).collect();
    for t in std::fs::read_dir(format!("/proc/{p2}/task")).unwrap().flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
        assert_eq!(oxvirt_cgroup::affinity(tid).unwrap(), all, "thread {tid} unpinned");
    }
    for vm in ["w1", "w2"] {
        c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await.unwrap();
    }
}

async fn balloon_actual(c: &oxvirt_client::Client, vm: &str) -> (u64, bool) {
    let b: Value = c.get(&format!("/api/v1/vms/{vm}/balloon")).await.unwrap();
    (b["actual"].as_u64().unwrap(), b["auto"].as_bool().unwrap())
}

async fn wait_balloon(c: &oxvirt_client::Client, vm: &str, want: impl Fn(u64, bool) -> bool, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (actual, auto) = balloon_actual(c, vm).await;
        if want(actual, auto) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: balloon at {actual} (auto {auto})");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Admission by over-commit policy; a huge-page-backed VM boots and gives its pages back; the
/// balloon reaches its target; automatic ballooning reclaims under (simulated) pressure down to
/// the VM's floor and gives the memory back when the pressure ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_hugepages_balloon_and_auto_ballooning() {
    let d = Daemon::start();
    let c = &d.client;
    // Admission: a policy of half a vCPU per host CPU leaves no room for 2 vCPUs on 2 CPUs... or 1.
    let policy: Value = c.get("/api/v1/host/policy").await.unwrap();
    let mut tight = policy.clone();
    tight["cpu_overcommit"] = json!(0.1);
    let _: Value = c.put("/api/v1/host/policy", &tight).await.unwrap();
    let mut adm = kernel_spec("adm", "");
    adm["memory"] = json!("4GiB");
    let created = c.create_vm(&adm, true).await.unwrap();
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(30)).await.unwrap();
    let err = t.error.unwrap_or_default();
    assert!(err.contains("cpus: starting adm would commit 1 vCPUs") && err.contains("over-commit ratio 0.1"), "{err}");
    tight["cpu_overcommit"] = json!(4.0);
    tight["memory_overcommit"] = json!(0.1);
    let _: Value = c.put("/api/v1/host/policy", &tight).await.unwrap();
    let t = c.vm_action_wait("adm", "start", Duration::from_secs(30)).await;
    let reason = c.get_vm("adm").await.unwrap().status.reason;
    assert!(reason.contains("memory: starting adm would commit 4GiB"), "{reason} {t:?}");
    let (status, body) =
        c.raw(hyper::Method::PUT, "/api/v1/host/policy", Some(br#"{"memory_target_use": 2}"#.to_vec())).await.unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("memory_target_use"));
    let _: Value = c.put("/api/v1/host/policy", &policy).await.unwrap();
    c.delete_vm("adm").await.unwrap();

    // Huge pages: reserved for the VM, given back when it stops.
    let before = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap().trim().parse::<u64>().unwrap();
    let hp = boot(c, "hp", 1, "128MiB", json!({ "hugepages": true })).await;
    let res: Value = c.get("/api/v1/host/resources").await.unwrap();
    assert!(res["hugepages_total"].as_u64().unwrap() >= before + 64 || before >= 64, "{res}");
    let maps = std::fs::read_to_string(format!("/proc/{}/smaps", hp.status.pid.unwrap())).unwrap();
    assert!(maps.contains("hugetlb") || maps.contains("KernelPageSize:     2048 kB"), "guest memory not on huge pages");
    c.vm_action_wait("hp", "kill", Duration::from_secs(30)).await.unwrap();
    let after = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap().trim().parse::<u64>().unwrap();
    assert_eq!(after, before, "huge pages given back");

    // The balloon: a target is reached and reported.
    let mib = 1u64 << 20;
    boot(c, "bl", 1, "256MiB", json!({ "balloon_min": "128MiB" })).await;
    let _: Value = c.put("/api/v1/vms/bl/balloon", &json!({ "target": "160MiB" })).await.unwrap();
    wait_balloon(c, "bl", |a, _| a.abs_diff(160 * mib) <= mib, "target 160MiB").await;
    let (status, body) =
        c.raw(hyper::Method::PUT, "/api/v1/vms/bl/balloon", Some(br#"{"target":"1GiB"}"#.to_vec())).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let _: Value = c.put("/api/v1/vms/bl/balloon", &json!({ "target": "256MiB" })).await.unwrap();
    wait_balloon(c, "bl", |a, _| a == 256 * mib, "back to 256MiB").await;

    // Simulated pressure: the policy says any use of host memory is too much.
    let mut pressure = policy.clone();
    pressure["memory_target_use"] = json!(0.01);
    let _: Value = c.put("/api/v1/host/policy", &pressure).await.unwrap();
    let took = wait_balloon(c, "bl", |a, auto| auto && a.abs_diff(128 * mib) <= mib, "reclaimed to the floor").await;
    eprintln!("auto-ballooning reclaimed 128 MiB in {took:?}");
    // Pressure over: given back.
    pressure["memory_target_use"] = json!(0.99);
    let _: Value = c.put("/api/v1/host/policy", &pressure).await.unwrap();
    wait_balloon(c, "bl", |a, auto| !auto && a == 256 * mib, "given back").await;
    let _: Value = c.put("/api/v1/host/policy", &policy).await.unwrap();
    c.vm_action_wait("bl", "kill", Duration::from_secs(30)).await.unwrap();
}

/// KSM, turned on by policy, merges the memory of two identical guests; the host and each VM
/// report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksm_reports_sharing_between_identical_guests() {
    let d = Daemon::start();
    let c = &d.client;
    let ksm_before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap();
    let mut policy: Value = c.get("/api/v1/host/policy").await.unwrap();
    policy["ksm"] = json!("on");
    let _: Value = c.put("/api/v1/host/policy", &policy).await.unwrap();
    let k1 = boot(c, "k1", 1, "128MiB", json!({})).await;
    let k2 = boot(c, "k2", 1, "128MiB", json!({})).await;
    let start = Instant::now();
    loop {
        let res: Value = c.get("/api/v1/host/resources").await.unwrap();
        let merged: Vec<u64> = [&k1, &k2]
            .iter()
            .map(|v| {
                std::fs::read_to_string(format!("/proc/{}/ksm_merging_pages", v.status.pid.unwrap()))
                    .map(|s| s.trim().parse().unwrap_or(0))
                    .unwrap_or(0)
            })
            .collect();
        if res["ksm"]["saved_bytes"].as_u64().unwrap_or(0) > 0 && merged.iter().all(|m| *m > 100) {
            eprintln!("KSM: {} saved, guests' merged pages {merged:?}", res["ksm"]["saved_bytes"]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "no sharing: {res} {merged:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines().any(|l| l.starts_with("oxvirt_vm_ksm_merged_bytes{vm=\"k1\"}") && !l.ends_with(" 0")),
        "{text}"
    );
    for vm in ["k1", "k2"] {
        c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await.unwrap();
    }
    std::fs::write("/sys/kernel/mm/ksm/run", ksm_before.trim()).unwrap();
}
