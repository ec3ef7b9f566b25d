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
    // The administrator gives the NIC the address the guest uses on that LAN.
    c.update_vm("bridged", &json!({ "nics": [{ "mode": "bridged", "bridge": br.0, "ip": "192.0.2.10" }] }))
        .await
        .unwrap();
    // One address, one NIC on a bridge: a second VM cannot hold it too (and nothing is made).
    let mut twin = kernel_spec("twin", "");
    twin["nics"] = json!([{ "mode": "bridged", "bridge": br.0, "ip": "192.0.2.10" }]);
    let err = c.create_vm(&twin, false).await.unwrap_err().to_string();
    assert!(err.contains("nics[0].ip: 192.0.2.10 is held on bridge") && err.contains("by VM bridged"), "{err}");
    assert!(c.get_vm("twin").await.is_err());
    // The LAN beyond the bridge: a namespace of the test's, its end counting who sends to it.
    let lan = Netns::new("lan");
    let peer = format!("oxl{}", std::process::id() % 100_000);
    sh(&["ip", "link", "add", &peer, "type", "veth", "peer", "name", "lan0", "netns", &lan.name]);
    sh(&["ip", "link", "set", &peer, "master", &br.0]);
    sh(&["ip", "link", "set", &peer, "up"]);
    lan.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "lan0"]);
    lan.run(&["ip", "link", "set", "lan0", "up"]);
    let lan_mac = lan.run(&["cat", "/sys/class/net/lan0/address"]).trim().to_string();
    lan.run(&["nft", "add table inet seen"]);
    lan.run(&["nft", "add chain inet seen in { type filter hook input priority 0; }"]);
    lan.run(&["nft", "add rule inet seen in ip saddr 192.0.2.10 counter"]);
    lan.run(&["nft", "add rule inet seen in ip saddr 192.0.2.66 counter"]);
    let counted = |from: &str| -> u64 {
        let t = lan.run(&["nft", "list chain inet seen in"]);
        t.lines()
            .find(|l| l.contains(&format!("ip saddr {from} ")))
            .and_then(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    c.vm_action_wait("bridged", "start", Duration::from_secs(60)).await.unwrap();
    let vm = c.get_vm("bridged").await.unwrap();
    let tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&vm.id, 0);
    let master = std::fs::read_link(format!("/sys/class/net/{tap}/master")).unwrap();
    assert!(master.ends_with(&br.0), "{master:?}");
    wait_console(c, "bridged", READY, 1, BOOT_TIMEOUT).await;
    // On the host's bridge the NIC keeps to its own MAC.
    let mac = vm.spec.nics[0].mac.clone().unwrap();
    let chain = std::process::Command::new("nft")
        .args(["list", "chain", "bridge", &d.nft_table(), &format!("from-{tap}")])
        .output()
        .unwrap();
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(chain.contains(&format!("ether saddr != {mac} drop")), "{chain}");
    // ...and to its own address: from it the LAN answers; from another, nothing leaves the host.
    assert!(chain.contains("ip saddr != 192.0.2.10 drop"), "{chain}");
    run_in_guest(c, "bridged", "kill $(cat /run/udhcpc.pid); ip addr flush dev eth0; echo U-$((3+4))", "U-7").await;
    run_in_guest(c, "bridged", &check("ip addr add 192.0.2.10/24 dev eth0; ping -c 1 -W 2 192.0.2.1"), OK).await;
    assert!(counted("192.0.2.10") > 0);
    let spoof = format!(
        "ip addr flush dev eth0; ip addr add 192.0.2.66/24 dev eth0; ip neigh replace 192.0.2.1 lladdr {lan_mac} dev eth0; ping -c 3 -W 1 192.0.2.1"
    );
    run_in_guest(c, "bridged", &check(&spoof), NO).await;
    assert_eq!(counted("192.0.2.66"), 0, "a spoofed packet reached the LAN");
    run_in_guest(
        c,
        "bridged",
        &check("ip addr flush dev eth0; ip addr add 192.0.2.10/24 dev eth0; ping -c 1 -W 2 192.0.2.1"),
        OK,
    )
    .await;
    // Two vCPUs: two queue pairs, seen by the guest.
    run_in_guest(c, "bridged", "echo Q-$(ls /sys/class/net/eth0/queues | grep -c rx)", "Q-2").await;
    // A NIC hot-plugged with two queues gets both (QEMU, not root, is handed the TAP's queues).
    let _: oxvirt_model::Vm =
        c.post("/api/v1/vms/bridged/nics", &json!({ "bridge": br.0, "queues": 2 })).await.unwrap();
    let seen = "i=0; while [ ! -d /sys/class/net/eth1/queues ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done";
    run_in_guest(c, "bridged", &format!("{seen}; echo H-$(ls /sys/class/net/eth1/queues | grep -c rx)"), "H-2").await;
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

/// The result marker of a guest command: `ok` when it succeeded, typed so that the marker itself
/// never appears in what is typed.
use oxvirt_e2e::{guest_check as check, GUEST_NO as NO, GUEST_OK as OK};

async fn vm_on(c: &oxvirt_client::Client, name: &str, nics: serde_json::Value) -> oxvirt_model::Vm {
    let mut spec = kernel_spec(name, "");
    spec["nics"] = nics;
    let created = c.create_vm(&spec, true).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
    let t = c.wait_task(&created.task.unwrap().id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    c.get_vm(name).await.unwrap()
}

fn ip_of(vm: &oxvirt_model::Vm, nic: usize) -> String {
    vm.spec.nics[nic].ip.expect("an address from IPAM").to_string()
}

/// Waits until the guest has the address IPAM gave it (its DHCP client is done).
async fn wait_address(c: &oxvirt_client::Client, vm: &oxvirt_model::Vm) {
    wait_guest_address(c, &vm.spec.name, &ip_of(vm, 0)).await;
}

fn oxvirt_links(ns: &Netns) -> Vec<String> {
    ns.links()
        .into_iter()
        .filter(|l| l.starts_with("oxb") || l.starts_with("oxv") || l.starts_with("oxx") || l.starts_with("oxq"))
        .collect()
}

/// Two VMs on a nat network get addresses by DHCP, reach each other, the host and (masqueraded)
/// an "internet" that has no route back to them; an isolated network gets a hot-plugged NIC and
/// lets nothing out; deleting everything leaves nothing on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_and_isolated_networks() {
    let host = Netns::new("host");
    let inet = Netns::new("inet");
    host.link("up0", "10.99.0.1/24", &inet, "eth0", "10.99.0.2/24");
    let d = Daemon::start_in_netns(&host, "stop_timeout_secs = 5\n");
    let c = &d.client;

    // Bad input: named field, nothing made.
    let (status, body) = c
        .raw(
            hyper::Method::POST,
            "/api/v1/networks",
            Some(br#"{"name":"lan","kind":"nat","subnet":"10.20.0.1/24"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("subnet"), "{}", String::from_utf8_lossy(&body));
    assert!(oxvirt_links(&host).is_empty());

    let net: oxvirt_model::NetworkView = c
        .post("/api/v1/networks", &json!({ "name": "lan", "kind": "nat", "subnet": "10.20.0.0/24", "uplink": "up0" }))
        .await
        .unwrap();
    assert!(net.bridge_up && net.dhcp_pid.is_some(), "{net:?}");
    // dnsmasq gave up root once its ports were bound.
    let status = std::fs::read_to_string(format!("/proc/{}/status", net.dhcp_pid.unwrap())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uids.split_whitespace().skip(1).all(|u| u != "0"), "dnsmasq runs as root: {uids}");
    // The host's own subnet (its "LAN" here) is never given to VMs.
    let (status, body) = c
        .raw(
            hyper::Method::POST,
            "/api/v1/networks",
            Some(br#"{"name":"lan2","kind":"nat","subnet":"10.99.0.0/16"}"#.to_vec()),
        )
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(status == 400 && body.contains("overlaps the host's own 10.99.0.1/24 on up0"), "{status} {body}");
    let _: oxvirt_model::NetworkView = c
        .post("/api/v1/networks", &json!({ "name": "iso", "kind": "isolated", "subnet": "10.30.0.0/24" }))
        .await
        .unwrap();
    // A subnet that overlaps is refused.
    let (status, _) = c
        .raw(hyper::Method::POST, "/api/v1/networks", Some(br#"{"name":"lan2","subnet":"10.20.0.0/16"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 400);

    let a = vm_on(c, "a", json!([{ "network": "lan" }])).await;
    let b = vm_on(c, "b", json!([{ "network": "lan", "ip": "10.20.0.50" }])).await;
    assert_eq!(ip_of(&b, 0), "10.20.0.50");
    assert_ne!(a.spec.nics[0].mac, b.spec.nics[0].mac);
    // A third VM may not take b's address.
    let mut spec = kernel_spec("c", "");
    spec["nics"] = json!([{ "network": "lan", "ip": "10.20.0.50" }]);
    let err = c.create_vm(&spec, false).await.unwrap_err().to_string();
    assert!(err.contains("nics[0].ip") && err.contains("taken by VM b"), "{err}");

    wait_console(c, "a", READY, 1, BOOT_TIMEOUT).await;
    wait_console(c, "b", READY, 1, BOOT_TIMEOUT).await;
    wait_address(c, &a).await;
    wait_address(c, &b).await;
    run_in_guest(c, "a", &check("ping -c 1 -W 2 10.20.0.50"), OK).await;
    run_in_guest(c, "b", &check(&format!("ping -c 1 -W 2 {}", ip_of(&a, 0))), OK).await;
    run_in_guest(c, "a", &check("ping -c 1 -W 2 10.20.0.1"), OK).await;
    // DNS on the gateway knows the VMs by name.
    run_in_guest(c, "a", &check("nslookup b 10.20.0.1 | grep -q 10.20.0.50"), OK).await;
    // The internet has no route to 10.20.0.0/24: only masquerade brings the replies back.
    assert!(!inet.run(&["ip", "route"]).contains("10.20."));
    run_in_guest(c, "a", &check("ping -c 1 -W 2 10.99.0.2"), OK).await;
    let leases: Vec<oxvirt_model::LeaseView> = c.get("/api/v1/networks/lan/leases").await.unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert!(leases.iter().all(|l| l.active), "{leases:?}");
    // The CLI shows the same: networks, leases, a VM's addresses.
    let (code, out, err) = d.cli(&["network", "list"]);
    assert!(code == 0 && out.contains("lan") && out.contains("10.20.0.0/24") && out.contains("isolated"), "{out}{err}");
    let (_, out, _) = d.cli(&["network", "leases", "lan"]);
    assert!(out.contains("10.20.0.50") && out.contains("b/nic0") && out.contains("active"), "{out}");
    let (_, out, _) = d.cli(&["vm", "show", "a"]);
    assert!(out.contains(&format!("network lan {} {}", a.spec.nics[0].mac.as_deref().unwrap(), ip_of(&a, 0))), "{out}");
    let (code, _, err) = d.cli(&["network", "create", "bad", "--kind", "vxlan", "--vni", "0", "--local", "10.0.0.1"]);
    assert!(code != 0 && err.contains("vxlan.vni"), "{err}");

    // A `bridged` network plugs NICs into a bridge of the operator's; oxvirt leaves it be.
    host.run(&["ip", "link", "add", "opbr0", "type", "bridge"]);
    host.run(&["ip", "link", "set", "opbr0", "up"]);
    let (code, _, err) = d.cli(&["network", "create", "ops", "--kind", "bridged", "--bridge", "opbr0"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = d.cli(&["vm", "nic", "add", "a", "--network", "ops"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nic1:") && out.contains("network ops"), "{out}");
    let a_now = c.get_vm("a").await.unwrap();
    let tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&a.id, 1);
    assert_eq!(
        host.run(&["readlink", &format!("/sys/class/net/{tap}/master")]).trim().rsplit('/').next(),
        Some("opbr0")
    );
    assert!(a_now.spec.nics[1].ip.is_none(), "no addresses from oxvirt on an operator's bridge");
    run_in_guest(c, "a", &check("ls /sys/class/net/eth1"), OK).await;
    let (code, _, err) = d.cli(&["vm", "nic", "del", "a", "nic1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = d.cli(&["network", "delete", "ops"]);
    assert_eq!(code, 0, "{err}");
    assert!(host.links().contains(&"opbr0".to_string()), "the operator's bridge stays");
    host.run(&["ip", "link", "del", "opbr0"]);

    // Hot-plug a NIC on the isolated network into b: it gets its address and reaches the
    // host's address there, but nothing beyond, even with a route through it.
    let b: oxvirt_model::Vm = c.post("/api/v1/vms/b/nics", &json!({ "network": "iso" })).await.unwrap();
    let iso_ip = ip_of(&b, 1);
    run_in_guest(c, "b", &check("ls /sys/class/net/eth1"), OK).await;
    run_in_guest(
        c,
        "b",
        "udhcpc -i eth1 -n -q -t 5 -s /etc/udhcpc.script >/dev/null 2>&1; echo R-$((6*7))-DONE",
        "R-42-DONE",
    )
    .await;
    run_in_guest(c, "b", &check(&format!("ip -4 addr show dev eth1 | grep -q 'inet {iso_ip}/'")), OK).await;
    run_in_guest(c, "b", &check("ping -c 1 -W 2 10.30.0.1"), OK).await;
    run_in_guest(c, "b", "ip route add 10.99.0.0/24 via 10.30.0.1 dev eth1; echo R-$((6*7))-DONE", "R-42-DONE").await;
    run_in_guest(c, "b", &check("ping -c 1 -W 2 10.99.0.2"), NO).await;
    // Unplugged again: the guest lets go of eth1, the TAP goes.
    let b: oxvirt_model::Vm = c.delete_json("/api/v1/vms/b/nics/nic1").await.unwrap();
    assert_eq!(b.spec.nics.len(), 1);
    assert!(!host.links().contains(&oxvirt_hypervisor::qemu::cmdline::tap_name(&b.id, 1)));
    run_in_guest(c, "b", &check("ls /sys/class/net/eth1"), NO).await;

    // Everything goes: nothing of oxvirt's is left in the host namespace.
    let (status, _) = c.raw(hyper::Method::DELETE, "/api/v1/networks/lan", None).await.unwrap();
    assert_eq!(status, 409, "a network with NICs stays");
    for vm in ["a", "b"] {
        c.vm_action_wait(vm, "kill", Duration::from_secs(30)).await.unwrap();
        c.delete_vm(vm).await.unwrap();
    }
    c.delete("/api/v1/networks/lan").await.unwrap();
    c.delete("/api/v1/networks/iso").await.unwrap();
    assert_eq!(oxvirt_links(&host), Vec::<String>::new());
    assert_eq!(host.run(&["nft", "list", "tables"]).trim(), "");
    assert!(processes_mentioning(&format!("{}/networks", d.path().display())).is_empty(), "dnsmasq left running");
}

/// A vxlan network joins VMs on two hosts (namespaces with their own daemons, linked by an
/// underlay) into one segment, peers listed, no multicast. A daemon killed while someone deletes
/// its bridge makes it again at restart and puts the running VM back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_overlay_spans_two_hosts_and_survives_a_daemon_restart() {
    let ha = Netns::new("ha");
    let hb = Netns::new("hb");
    ha.link("ul0", "192.168.77.1/24", &hb, "ul0", "192.168.77.2/24");
    let mut da = Daemon::start_in_netns(&ha, "stop_timeout_secs = 5\n");
    let db = Daemon::start_in_netns(&hb, "stop_timeout_secs = 5\n");
    let ov = |local: &str, peer: &str, gw: &str, range: &str| {
        json!({ "name": "ov", "kind": "vxlan", "subnet": "10.40.0.0/24", "gateway": gw, "range": range,
                "vxlan": { "vni": 4242, "local": local, "peers": [peer] } })
    };
    // A peer that is this host: refused, named.
    let (status, body) = da
        .client
        .raw(
            hyper::Method::POST,
            "/api/v1/networks",
            Some(
                serde_json::to_vec(&ov("192.168.77.1", "192.168.77.1", "10.40.0.1", "10.40.0.10-10.40.0.99")).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("vxlan.peers[0]"));
    let na: oxvirt_model::NetworkView = da
        .client
        .post("/api/v1/networks", &ov("192.168.77.1", "192.168.77.2", "10.40.0.1", "10.40.0.10-10.40.0.99"))
        .await
        .unwrap();
    let _: oxvirt_model::NetworkView = db
        .client
        .post("/api/v1/networks", &ov("192.168.77.2", "192.168.77.1", "10.40.0.2", "10.40.0.100-10.40.0.199"))
        .await
        .unwrap();
    assert_eq!(na.mtu, 1450, "VXLAN's 50 bytes come off the underlay's 1500");

    let va = vm_on(&da.client, "va", json!([{ "network": "ov" }])).await;
    let vb = vm_on(&db.client, "vb", json!([{ "network": "ov" }])).await;
    assert!(ip_of(&va, 0).starts_with("10.40.0.1"), "{}", ip_of(&va, 0));
    let vb_ip = ip_of(&vb, 0);
    assert!(vb_ip.starts_with("10.40.0.10"), "{vb_ip}: from B's range");
    wait_console(&da.client, "va", READY, 1, BOOT_TIMEOUT).await;
    wait_console(&db.client, "vb", READY, 1, BOOT_TIMEOUT).await;
    wait_address(&da.client, &va).await;
    wait_address(&db.client, &vb).await;
    run_in_guest(&da.client, "va", &check(&format!("ping -c 1 -W 2 {vb_ip}")), OK).await;
    run_in_guest(&db.client, "vb", &check(&format!("ping -c 1 -W 2 {}", ip_of(&va, 0))), OK).await;
    // The guest's MTU is the overlay's.
    run_in_guest(&da.client, "va", &check("grep -qx 1450 /sys/class/net/eth0/mtu"), OK).await;

    // Host A's daemon dies; its bridge is deleted behind its back: the segment is cut.
    da.kill9();
    ha.run(&["ip", "link", "del", &na.bridge]);
    let va_ip = ip_of(&va, 0);
    run_in_guest(&db.client, "vb", &check(&format!("ping -c 1 -W 1 {va_ip}")), NO).await;
    // At restart the daemon makes the network again and puts the running VM back on it.
    da.respawn_after_kill9();
    let start = std::time::Instant::now();
    while !ha.links().contains(&na.bridge) {
        assert!(start.elapsed() < Duration::from_secs(30), "bridge not made again:\n{}", da.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run_in_guest(&db.client, "vb", &check(&format!("ping -c 1 -W 2 {va_ip}")), OK).await;
    run_in_guest(&da.client, "va", &check(&format!("ping -c 1 -W 2 {vb_ip}")), OK).await;
    let vm = da.client.get_vm("va").await.unwrap();
    assert!(vm.status.pid.is_some() && vm.status.pid == va.status.pid, "the guest kept running: {:?}", vm.status);
}

/// Bytes of a file a guest serves or fetches in the bandwidth checks.
const TRANSFER: usize = 1 << 20;

/// Downloads `http://ip:port/big` from a guest inside `ns`; returns bits per second.
async fn fetch_rate(ns: &Netns, ip: &str, port: u16) -> f64 {
    let addr = format!("{ip}:{port}");
    ns.enter(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the guest's httpd");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(s, "GET /big HTTP/1.0\r\nHost: vm\r\n\r\n").unwrap();
        let start = Instant::now();
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(got >= TRANSFER, "got {got} bytes");
        got as f64 * 8.0 / start.elapsed().as_secs_f64()
    })
    .join()
    .unwrap()
}

/// Serves one HTTP response of TRANSFER bytes on `ip:port` inside `ns` while the guest fetches
/// it with wget; returns bits per second (until the guest closed its end, so all was delivered).
async fn serve_rate(ns: &Netns, c: &oxvirt_client::Client, vm: &str, ip: &str, port: u16) -> f64 {
    let addr = format!("{ip}:{port}");
    let server = ns.enter(move || {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind(&addr).expect("bind");
        let (mut s, _) = l.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).unwrap();
        let start = Instant::now();
        s.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {TRANSFER}\r\n\r\n").as_bytes()).unwrap();
        s.write_all(&vec![0u8; TRANSFER]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        while s.read(&mut req).map(|n| n > 0).unwrap_or(false) {}
        TRANSFER as f64 * 8.0 / start.elapsed().as_secs_f64()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    run_in_guest(c, vm, &format!("wget -q -O /dev/null http://{ip}:{port}/ && echo R-$((6*7))-GOT"), "R-42-GOT").await;
    tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap()
}

/// A security group blocks a port and then, changed live, allows it; replies to what the VM sent
/// pass; a VM cannot send from an address it was not given; MTU 9000 carries a 9000-byte packet
/// unfragmented to the guest; bandwidth limits hold in both directions and can be lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_jumbo_frames_and_bandwidth_limits() {
    let host = Netns::new("sg");
    let mut d = Daemon::start_in_netns(&host, "stop_timeout_secs = 5\n");
    let c = &d.client;
    let _: oxvirt_model::NetworkView = c
        .post("/api/v1/networks", &json!({ "name": "sec", "kind": "isolated", "subnet": "10.50.0.0/24", "mtu": 9000 }))
        .await
        .unwrap();
    // A rule with ports on icmp, and an unknown group: refused, named.
    let (status, body) = c
        .raw(
            hyper::Method::POST,
            "/api/v1/security-groups",
            Some(br#"{"name":"web","rules":[{"protocol":"icmp","ports":"80"}]}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("rules[0].ports"));
    let _: oxvirt_model::SecurityGroup = c.post("/api/v1/security-groups", &json!({ "name": "web" })).await.unwrap();
    let mut spec = kernel_spec("x", "");
    spec["nics"] = json!([{ "network": "sec", "security_groups": ["nosuch"] }]);
    let err = c.create_vm(&spec, false).await.unwrap_err().to_string();
    assert!(err.contains("nics[0].security_groups[0]"), "{err}");

    let a = vm_on(c, "a", json!([{ "network": "sec" }])).await;
    let b = vm_on(c, "b", json!([{ "network": "sec", "security_groups": ["web"] }])).await;
    let (a_ip, b_ip) = (ip_of(&a, 0), ip_of(&b, 0));
    wait_console(c, "a", READY, 1, BOOT_TIMEOUT).await;
    wait_console(c, "b", READY, 1, BOOT_TIMEOUT).await;
    wait_address(c, &a).await;
    wait_address(c, &b).await;
    run_in_guest(
        c,
        "b",
        "mkdir -p /tmp/w && echo W$((40+2)) >/tmp/w/f && httpd -p 8080 -h /tmp/w && echo R-$((6*7))-UP",
        "R-42-UP",
    )
    .await;

    // Default deny inbound: no web, no ping into b; b's own traffic and its replies pass.
    // (busybox 1.35's `wget -T` crashes: `timeout` bounds it instead.)
    let fetch = format!("timeout 3 wget -q -O - http://{b_ip}:8080/f");
    run_in_guest(c, "a", &check(&fetch), NO).await;
    run_in_guest(c, "a", &check(&format!("ping -c 1 -W 2 {b_ip}")), NO).await;
    run_in_guest(c, "b", &check(&format!("ping -c 1 -W 2 {a_ip}")), OK).await;
    // The rule comes, live: the page is served.
    let rule = json!({ "name": "web", "rules": [{ "direction": "ingress", "protocol": "tcp", "ports": "8080", "cidr": "10.50.0.0/24" }] });
    let _: oxvirt_model::SecurityGroup = c.put("/api/v1/security-groups/web", &rule).await.unwrap();
    run_in_guest(c, "a", &fetch, "W42").await;
    run_in_guest(c, "a", &check(&format!("ping -c 1 -W 2 {b_ip}")), NO).await;
    // ... and goes again.
    let _: oxvirt_model::SecurityGroup = c.put("/api/v1/security-groups/web", &json!({ "name": "web" })).await.unwrap();
    run_in_guest(c, "a", &check(&fetch), NO).await;
    // Egress limited to DNS at the gateway: a connection b tries to a is dropped, and is not
    // recorded as b's flow (which would let a's packets on those ports in: a pinhole).
    let dns_only = json!({ "name": "web", "rules": [{ "direction": "egress", "protocol": "udp", "ports": "53", "cidr": "10.50.0.1/32" }] });
    let _: oxvirt_model::SecurityGroup = c.put("/api/v1/security-groups/web", &dns_only).await.unwrap();
    let b_out = format!("out-{}", oxvirt_hypervisor::qemu::cmdline::tap_name(&b.id, 0));
    run_in_guest(c, "b", &check(&format!("echo out | timeout 2 nc {a_ip} 7000")), NO).await;
    let flows = host.run(&["nft", "list", "set", "bridge", &d.nft_table(), &b_out]);
    assert!(!flows.contains(&format!("{a_ip} . tcp . 7000 ")), "a dropped connection was recorded as a flow:\n{flows}");
    // What a rule lets out is recorded: DNS to the gateway.
    run_in_guest(c, "b", "nslookup x 10.50.0.1 >/dev/null 2>&1; echo R-$((6*7))-Q", "R-42-Q").await;
    let flows = host.run(&["nft", "list", "set", "bridge", &d.nft_table(), &b_out]);
    assert!(flows.contains("10.50.0.1 . udp . 53"), "the allowed flow is recorded:\n{flows}");
    let _: oxvirt_model::SecurityGroup = c.put("/api/v1/security-groups/web", &json!({ "name": "web" })).await.unwrap();
    // A group in use stays.
    let (status, _) = c.raw(hyper::Method::DELETE, "/api/v1/security-groups/web", None).await.unwrap();
    assert_eq!(status, 409);

    // Anti-spoofing: a can reach the host from its own address, not from one it took itself.
    run_in_guest(c, "a", &check("ping -c 1 -W 2 10.50.0.1"), OK).await;
    run_in_guest(c, "a", "ip addr add 10.50.0.77/24 dev eth0; echo R-$((6*7))-DONE", "R-42-DONE").await;
    run_in_guest(c, "a", &check("ping -c 1 -W 2 -I 10.50.0.77 10.50.0.1"), NO).await;
    run_in_guest(c, "a", &check("ping -c 1 -W 2 10.50.0.1"), OK).await;

    // Jumbo frames: the guest has MTU 9000; 9000-byte packets with "don't fragment" pass, and
    // a larger one is refused (so the check means something).
    run_in_guest(c, "a", &check("grep -qx 9000 /sys/class/net/eth0/mtu"), OK).await;
    host.run(&["ping", "-M", "do", "-s", "8972", "-c", "1", "-W", "5", &a_ip]);
    assert!(host.try_run(&["ping", "-M", "do", "-s", "8973", "-c", "1", "-W", "2", &a_ip]).is_err());

    // Bandwidth: a serves a file; without a limit first, then with one a quarter of that.
    run_in_guest(c, "a", "mkdir -p /tmp/w && dd if=/dev/zero of=/tmp/w/big bs=1024 count=1024 2>/dev/null && httpd -p 8080 -h /tmp/w && echo R-$((6*7))-UP", "R-42-UP").await;
    let free_out = fetch_rate(&host, &a_ip, 8080).await;
    let free_in = serve_rate(&host, c, "a", "10.50.0.1", 5001).await;
    let limit = |r: f64| ((r / 4.0 / 1000.0) as u64).clamp(64, 8000) * 1000;
    let (lim_out, lim_in) = (limit(free_out), limit(free_in));
    let _: oxvirt_model::Vm =
        c.patch("/api/v1/vms/a/nics/nic0", &json!({ "qos": { "egress": lim_out, "ingress": lim_in } })).await.unwrap();
    let out = fetch_rate(&host, &a_ip, 8080).await;
    let inn = serve_rate(&host, c, "a", "10.50.0.1", 5002).await;
    eprintln!("egress {free_out:.0} -> {out:.0} bit/s (limit {lim_out}); ingress {free_in:.0} -> {inn:.0} bit/s (limit {lim_in})");
    assert!(out <= lim_out as f64 * 1.2, "egress {out} above its limit {lim_out}");
    assert!(inn <= lim_in as f64 * 1.2, "ingress {inn} above its limit {lim_in}");
    // Lifted: the IFB device goes.
    let _: oxvirt_model::Vm = c.patch("/api/v1/vms/a/nics/nic0", &json!({ "qos": {} })).await.unwrap();
    assert!(!host.links().iter().any(|l| l.starts_with("oxq")), "{:?}", host.links());

    // b dies while the daemon is away: at restart its TAP device and its rules go.
    let b_tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&b.id, 0);
    assert!(host.run(&["nft", "list", "table", "bridge", &d.nft_table()]).contains(&format!("to-{b_tap}")));
    d.kill9();
    unsafe { libc::kill(b.status.pid.unwrap() as i32, libc::SIGKILL) };
    d.respawn_after_kill9();
    let c = &d.client;
    let start = Instant::now();
    while host.links().contains(&b_tap)
        || host.run(&["nft", "list", "table", "bridge", &d.nft_table()]).contains(&b_tap)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "b's TAP or rules left behind:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get_vm("b").await.unwrap().status.state, oxvirt_model::VmState::Stopped);
    // a, still running, keeps its rules.
    assert!(host
        .run(&["nft", "list", "table", "bridge", &d.nft_table()])
        .contains(&oxvirt_hypervisor::qemu::cmdline::tap_name(&a.id, 0)));
    c.vm_action_wait("a", "kill", Duration::from_secs(30)).await.unwrap();
    assert_eq!(oxvirt_links(&host).into_iter().filter(|l| !l.starts_with("oxb")).count(), 0);
}
