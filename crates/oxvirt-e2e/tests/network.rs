//! Bridged NICs: a TAP device per NIC that oxvirt makes, joins to a host bridge and removes; a
//! queue pair per vCPU; counters in /metrics. The bridge is the test's own, with no uplink: the
//! guest's DHCP requests go nowhere else.

use oxvirt_e2e::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

struct Bridge(String);

impl Bridge {
    fn new() -> Bridge {
        let name = format!("oxvt{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &name]).status();
        assert!(Command::new("ip").args(["link", "add", "name", &name, "type", "bridge"]).status().unwrap().success());
        assert!(Command::new("ip").args(["link", "set", &name, "up"]).status().unwrap().success());
        Bridge(name)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_nic_gets_a_tap_on_the_bridge_with_queues_and_counters() {
    let d = Daemon::start();
    let c = &d.client;
    let br = Bridge::new();
    // A bridge that does not exist: a clear error naming the field, nothing left behind.
    let mut spec = kernel_spec("bridged", "");
    spec["cpus"] = json!(2);
    spec["nics"] = json!([{ "mode": "bridged", "bridge": "nosuchbr0" }]);
    let created = c.create_vm(&spec, true).await.unwrap();
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Failed);
    assert!(t.error.unwrap().contains("nics[0].bridge: there is no bridge named nosuchbr0"));
    c.update_vm("bridged", &json!({ "nics": [{ "mode": "bridged", "bridge": br.0 }] })).await.unwrap();
    c.vm_action_wait("bridged", "start", Duration::from_secs(60)).await.unwrap();
    let vm = c.get_vm("bridged").await.unwrap();
    let tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&vm.id, 0);
    let master = std::fs::read_link(format!("/sys/class/net/{tap}/master")).unwrap();
    assert!(master.ends_with(&br.0), "{master:?}");
    wait_console(c, "bridged", READY, 1, BOOT_TIMEOUT).await;
    // Two vCPUs: two queue pairs, seen by the guest.
    run_in_guest(c, "bridged", "echo Q-$(ls /sys/class/net/eth0/queues | grep -c rx)", "Q-2").await;
    // The guest's DHCP requests are counted.
    let start = Instant::now();
    loop {
        let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        let sent = text
            .lines()
            .find(|l| l.starts_with("oxvirt_vm_nic_tx_packets_total{vm=\"bridged\",nic=\"nic0\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if sent > 0.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no packets counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The TAP goes with the VM.
    c.vm_action_wait("bridged", "kill", Duration::from_secs(30)).await.unwrap();
    assert!(!std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(), "{tap} left behind");
    assert!(std::path::Path::new(&format!("/sys/class/net/{}", br.0)).exists(), "the bridge is not oxvirt's: it stays");
}
