//! `oxvirt-sdn` against real Open vSwitch (issue #20): oxvirt runs ovsdb-server and
//! ovs-vswitchd itself (the switch in a network namespace made for the test), makes a bridge
//! over OVSDB, and its flow keeper holds the bridge's flows to the desired ones — after a flow
//! is added behind its back, after a change, after kill -9 of the switch (restarted by oxvirt,
//! flows back), after the controller itself restarts (nothing redone).

use oxvirt_e2e::Netns;
use oxvirt_e2e::{kernel_spec, run_in_guest, wait_console, BOOT_TIMEOUT, READY};
use oxvirt_openflow::{flow_from_words, FlowMod};
use oxvirt_ovsdb::{BridgeSpec, Client, Switch};
use oxvirt_sdn::{FlowKeeper, KeeperError, OvsDaemons};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;

const T: Duration = Duration::from_secs(15);
const BRIDGE: &str = "oxsdn0";

fn flow(priority: u16, cookie: u64, m: &str, actions: &str) -> FlowMod {
    flow_from_words(priority, cookie, m, actions).expect("flow")
}

fn ofctl(daemons: &OvsDaemons, args: &[&str]) -> String {
    let out = Command::new("ovs-ofctl")
        .env("OVS_RUNDIR", daemons.run_dir())
        .args(["-O", "OpenFlow13"])
        .args(args)
        .output()
        .expect("ovs-ofctl");
    assert!(out.status.success(), "ovs-ofctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump(daemons: &OvsDaemons) -> Vec<String> {
    ofctl(daemons, &["dump-flows", BRIDGE]).lines().filter(|l| l.contains("priority=")).map(str::to_string).collect()
}

/// The dumped flows' cookies and actions, sorted: what the keeper is held to.
fn shape(daemons: &OvsDaemons) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = dump(daemons)
        .iter()
        .map(|l| {
            let cookie = l.split(", ").next().unwrap_or_default().trim().to_string();
            let actions = l.rsplit_once("actions=").map(|x| x.1.to_string()).unwrap_or_default();
            (cookie, actions)
        })
        .collect();
    v.sort();
    v
}

fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < T, "{what}: not within {T:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemons outlive oxvirt by design; a test that fails must not leave them running.
struct StopOnDrop<'a>(&'a OvsDaemons);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_holds_a_bridge_s_flows_across_switch_and_controller_restarts() {
    let ns = Netns::new("sdn");
    let dir = tempfile::Builder::new().prefix("sdn").tempdir_in("/tmp").expect("tempdir");
    let daemons = OvsDaemons::new(dir.path(), Some(ns.name.clone()));
    let _stop = StopOnDrop(&daemons);
    assert_eq!(daemons.ensure_running().expect("start"), vec!["ovsdb-server", "ovs-vswitchd"]);
    assert_eq!(daemons.ensure_running().expect("again"), Vec::<&str>::new(), "running daemons are left alone");

    let sock = dir.path().join("controller-oxsdn0.sock");
    let keeper = FlowKeeper::start(UnixListener::bind(&sock).expect("listen"), Duration::from_secs(1));
    let client = Client::connect(&daemons.db_socket(), T).await.expect("ovsdb");
    let mut sw = Switch::new(client, T).await.expect("switch");
    sw.ensure_bridge(&BridgeSpec { name: BRIDGE.into(), controller: format!("unix:{}", sock.display()) })
        .await
        .expect("bridge");

    let mut flows = vec![
        flow(200, 0x1, "tcp,nw_src=10.0.0.0/24,tp_dst=80", "drop"),
        flow(100, 0x2, "udp,tp_dst=67", "normal"),
        flow(0, 0x3, "any", "normal"),
    ];
    keeper.set_flows(flows.clone()).expect("flows");
    keeper.wait_synced(T).await.expect("synced");
    let want = vec![
        ("cookie=0x1".to_string(), "drop".to_string()),
        ("cookie=0x2".into(), "NORMAL".into()),
        ("cookie=0x3".into(), "NORMAL".into()),
    ];
    assert_eq!(shape(&daemons), want);

    // A flow added behind oxvirt's back is taken away.
    ofctl(&daemons, &["add-flow", BRIDGE, "cookie=0x99,priority=5,arp,actions=drop"]);
    assert_eq!(dump(&daemons).len(), 4);
    keeper.resync();
    keeper.wait_synced(T).await.expect("resynced");
    assert_eq!(shape(&daemons), want);

    // A changed flow is replaced, the others stay.
    flows[1] = flow(100, 0x2, "udp,tp_dst=67", "drop");
    keeper.set_flows(flows.clone()).expect("flows");
    keeper.wait_synced(T).await.expect("synced");
    let want = vec![
        ("cookie=0x1".to_string(), "drop".to_string()),
        ("cookie=0x2".into(), "drop".into()),
        ("cookie=0x3".into(), "NORMAL".into()),
    ];
    assert_eq!(shape(&daemons), want);

    // kill -9 of the switch: oxvirt starts it again; the bridge comes back from the database and
    // the flows from the keeper.
    let connections = keeper.status().connections;
    let pid = daemons.pid("ovs-vswitchd").expect("running");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    until("the switch is seen dead", || daemons.pid("ovs-vswitchd").is_none());
    assert_eq!(daemons.ensure_running().expect("restart"), vec!["ovs-vswitchd"]);
    until("the new switch connects and gets its flows", || {
        keeper.status().connections > connections && shape(&daemons) == want
    });

    // The controller restarts (as oxvirtd does): the switch connects to the new one, which
    // finds the flows right and changes nothing.
    drop(keeper);
    std::fs::remove_file(&sock).expect("old socket");
    let keeper = FlowKeeper::start(UnixListener::bind(&sock).expect("listen"), Duration::from_secs(1));
    keeper.set_flows(flows.clone()).expect("flows");
    keeper.wait_synced(T).await.expect("synced after the controller's restart");
    let st = keeper.status();
    assert!(st.connected);
    assert_eq!((st.added, st.deleted), (0, 0), "nothing redone: {st:?}");
    assert_eq!(shape(&daemons), want);
    let stats = keeper.flow_stats().await.expect("stats");
    assert_eq!(stats.len(), 3);

    // Desired flows the keeper refuses, and one the switch refuses.
    assert!(matches!(keeper.set_flows(vec![flow(1, 0, "ip", "drop")]), Err(KeeperError::Cookie(0))));
    assert!(matches!(
        keeper.set_flows(vec![flow(1, 7, "ip", "drop"), flow(2, 7, "arp", "drop")]),
        Err(KeeperError::Cookie(7))
    ));
    let mut bad = flows.clone();
    bad.push(FlowMod {
        cookie: 0x42,
        ..FlowMod::add(9, oxvirt_openflow::Match { fields: vec![oxvirt_openflow::Oxm::ip_proto(6)] }, vec![])
    });
    keeper.set_flows(bad).expect("set");
    let err = keeper.wait_synced(Duration::from_secs(5)).await.expect_err("the switch refuses one").to_string();
    assert!(err.contains("flow 0x42 refused by the switch: BAD_MATCH/BAD_PREREQ"), "{err}");
    keeper.set_flows(flows.clone()).expect("flows");
    keeper.wait_synced(T).await.expect("synced again");
    assert_eq!(shape(&daemons), want);

    daemons.stop();
    assert!(daemons.pid("ovs-vswitchd").is_none() && daemons.pid("ovsdb-server").is_none());
}

/// `vlan` networks through the daemon, with real guests on oxvirt's Open vSwitch (the daemon
/// and its switch in a network namespace of the test's): VMs of VLAN 10 reach each other, the VM
/// of VLAN 20 reaches neither; a NIC that changes its MAC is cut off until it takes its own
/// back; kill -9 of ovs-vswitchd and of oxvirtd leave the guests talking (oxvirt restarts the
/// switch and puts the flows back); bad input is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlan_networks_keep_their_guests_apart_on_open_vswitch() {
    use oxvirt_e2e::{guest_check as check, GUEST_NO as NO, GUEST_OK as OK};
    use serde_json::json;
    let host = Netns::new("vlan");
    let mut d = oxvirt_e2e::Daemon::start_in_netns(&host, "stop_timeout_secs = 5\n");
    let c = d.client.clone();

    for (body, field) in [
        (json!({ "name": "v", "kind": "vlan" }), "vlan"),
        (json!({ "name": "v", "kind": "vlan", "vlan": 4095 }), "vlan"),
        (json!({ "name": "v", "kind": "vlan", "vlan": 10, "subnet": "10.50.0.5/24" }), "subnet"),
        (json!({ "name": "v", "kind": "isolated", "subnet": "10.51.0.0/24", "vlan": 10 }), "vlan"),
    ] {
        let (status, answer) =
            c.raw(hyper::Method::POST, "/api/v1/networks", Some(body.to_string().into_bytes())).await.expect("request");
        let answer = String::from_utf8_lossy(&answer);
        assert!(status == 400 && answer.contains(field), "{body}: {status} {answer}");
    }
    assert!(!d.path().join("ovs").exists(), "refused networks start no switch");

    for (name, vlan) in [("v10", 10), ("v20", 20)] {
        let net: oxvirt_model::NetworkView =
            c.post("/api/v1/networks", &json!({ "name": name, "kind": "vlan", "vlan": vlan })).await.expect("network");
        assert_eq!(net.bridge, "oxsdn0");
        assert!(net.bridge_up, "{net:?}");
    }
    let (status, answer) = c
        .raw(hyper::Method::POST, "/api/v1/networks", Some(br#"{"name":"v10b","kind":"vlan","vlan":10}"#.to_vec()))
        .await
        .expect("request");
    assert!(status == 400 && String::from_utf8_lossy(&answer).contains("uses VLAN 10 already"));
    let _: serde_json::Value =
        c.post("/api/v1/security-groups", &json!({ "name": "web", "rules": [] })).await.expect("group");
    let mut spec = kernel_spec("x", "");
    spec["nics"] = json!([{ "network": "v10", "security_groups": ["web"] }]);
    let e = c.create_vm(&spec, false).await.expect_err("refused").to_string();
    assert!(e.contains("nics[0].security_groups"), "{e}");

    for (name, net, ip) in [("a", "v10", "10.50.0.1"), ("b", "v10", "10.50.0.2"), ("c", "v20", "10.50.0.3")] {
        let mut spec = kernel_spec(name, &format!("oxvirt.ip={ip}/24"));
        spec["nics"] = json!([{ "network": net }]);
        let created = c.create_vm(&spec, true).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        let t = c.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("task");
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
    }
    for name in ["a", "b", "c"] {
        wait_console(&c, name, READY, 1, BOOT_TIMEOUT).await;
    }
    let ping = |ip: &str| check(&format!("ping -c 1 -W 2 {ip}"));
    run_in_guest(&c, "a", &ping("10.50.0.2"), OK).await;
    run_in_guest(&c, "b", &ping("10.50.0.1"), OK).await;
    run_in_guest(&c, "c", &ping("10.50.0.1"), NO).await;
    run_in_guest(&c, "c", &ping("10.50.0.2"), NO).await;

    // The ports are the VMs' TAPs, each tagged with its network's VLAN.
    let db = format!("--db=unix:{}", d.path().join("ovs/db.sock").display());
    let vsctl = |args: &[&str]| host.run(&[&["ovs-vsctl", db.as_str()], args].concat());
    let ports = vsctl(&["list-ports", "oxsdn0"]);
    assert_eq!(ports.lines().count(), 3, "{ports}");
    let tags: Vec<String> = ports.lines().map(|p| vsctl(&["get", "port", p, "tag"]).trim().to_string()).collect();
    assert_eq!(tags.iter().filter(|t| *t == "10").count(), 2, "{tags:?}");
    assert_eq!(tags.iter().filter(|t| *t == "20").count(), 1, "{tags:?}");

    // b takes another MAC: the switch drops what it sends, until it takes its own back.
    let own = c.get_vm("b").await.expect("b").spec.nics[0].mac.clone().expect("mac");
    run_in_guest(&c, "b", &check("ip link set eth0 address 52:54:00:de:ad:01 && ping -c 1 -W 2 10.50.0.1"), NO).await;
    run_in_guest(&c, "b", &check(&format!("ip link set eth0 address {own} && ping -c 1 -W 2 10.50.0.1")), OK).await;

    // kill -9 of the switch: the next reconcile round starts it again and its flows return.
    let pidfile = d.path().join("ovs/ovs-vswitchd.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let again =
        check("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do ping -c 1 -W 1 10.50.0.2 && break; sleep 1; done");
    run_in_guest(&c, "a", &again, OK).await;
    let new_pid: i32 = std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    assert_ne!(new_pid, pid, "a new ovs-vswitchd");
    run_in_guest(&c, "c", &ping("10.50.0.2"), NO).await;

    // kill -9 of oxvirtd: the guests keep talking, the new daemon takes the switch over.
    d.respawn_after_kill9();
    let c = d.client.clone();
    run_in_guest(&c, "a", &ping("10.50.0.2"), OK).await;
    run_in_guest(&c, "c", &ping("10.50.0.1"), NO).await;
    assert_eq!(std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse::<i32>().expect("pid"), new_pid);

    // A stopped VM's port leaves the switch.
    c.vm_action("c", "kill").await.expect("kill c");
    let t0 = Instant::now();
    while vsctl(&["list-ports", "oxsdn0"]).lines().count() != 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "c's port stays on the switch");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Flow rules of a vlan network through the CLI, with real guests: the issue's kind of rule
/// (`--match icmp --actions drop`) stops a ping live and its removal lets it through again, with
/// the switch's counters in `flow list`; a mirror rule copies a NIC's traffic to a third VM
/// (counted at that VM's TAP); bad rules are refused by field, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_rules_drop_mirror_and_count_on_a_vlan_network() {
    use oxvirt_e2e::{guest_check as check, GUEST_NO as NO, GUEST_OK as OK};
    use serde_json::json;
    let host = Netns::new("flows");
    let d = oxvirt_e2e::Daemon::start_in_netns(&host, "stop_timeout_secs = 5\n");
    let c = d.client.clone();
    let _: oxvirt_model::NetworkView =
        c.post("/api/v1/networks", &json!({ "name": "v10", "kind": "vlan", "vlan": 10 })).await.expect("network");
    let _: oxvirt_model::NetworkView = c
        .post("/api/v1/networks", &json!({ "name": "iso", "kind": "isolated", "subnet": "10.61.0.0/24" }))
        .await
        .expect("network");
    let mut ids = Vec::new();
    for (name, ip) in [("a", "10.50.0.1"), ("b", "10.50.0.2"), ("m", "10.50.0.3")] {
        let mut spec = kernel_spec(name, &format!("oxvirt.ip={ip}/24"));
        spec["nics"] = json!([{ "network": "v10" }]);
        let created = c.create_vm(&spec, true).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        let t = c.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("task");
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
        ids.push(c.get_vm(name).await.expect("vm"));
    }
    for name in ["a", "b", "m"] {
        wait_console(&c, name, READY, 1, BOOT_TIMEOUT).await;
    }
    let ping = check("ping -c 1 -W 2 10.50.0.2");
    run_in_guest(&c, "a", &ping, OK).await;

    // Refused by field, nothing added.
    for (args, says) in [
        (vec!["--priority", "200", "--match", "tcp,tp_dst=99999", "--actions", "drop"], "match"),
        (vec!["--priority", "200", "--match", "ip,in_port=1", "--actions", "drop"], "in_port"),
        (
            vec!["--priority", "200", "--match", "ip", "--actions", "output:nobody/nic0"],
            "nobody/nic0 is no NIC of network v10",
        ),
        (vec!["--priority", "200", "--match", "ip", "--actions", "output:3"], "a rule may"),
        (vec!["--priority", "0", "--match", "ip", "--actions", "drop"], "priority"),
    ] {
        let (code, _, err) = d.cli(&[&["network", "flow", "add", "v10"], args.as_slice()].concat());
        assert!(code != 0 && err.contains(says), "{args:?}: {code} {err}");
    }
    let (code, _, err) =
        d.cli(&["network", "flow", "add", "iso", "--priority", "9", "--match", "ip", "--actions", "drop"]);
    assert!(code != 0 && err.contains("flow rules apply to vlan networks"), "{err}");
    let (code, _, err) = d.cli(&["network", "flow", "del", "v10", "deadbeef"]);
    assert!(code != 0 && err.contains("not found"), "{err}");
    let listed = |d: &oxvirt_e2e::Daemon| -> Vec<oxvirt_model::FlowRuleView> {
        let (code, out, err) = d.cli(&["--output", "json", "network", "flow", "list", "v10"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).expect("json")
    };
    assert!(listed(&d).is_empty());

    // A drop rule stops the ping; its counters move; removed, the ping goes through.
    let (code, out, err) =
        d.cli(&["network", "flow", "add", "v10", "--priority", "200", "--match", "icmp", "--actions", "drop"]);
    assert_eq!(code, 0, "{err}");
    let id = out.split_whitespace().nth(2).expect("id").to_string();
    run_in_guest(&c, "a", &ping, NO).await;
    let rules = listed(&d);
    assert_eq!(rules.len(), 1);
    assert_eq!((rules[0].rule.id.as_str(), rules[0].flows), (id.as_str(), 3), "one flow per port");
    assert!(rules[0].packets >= 1, "{:?}", rules[0]);
    let (code, _, err) = d.cli(&["network", "flow", "del", "v10", &id]);
    assert_eq!(code, 0, "{err}");
    run_in_guest(&c, "a", &ping, OK).await;

    // A mirror: what goes to b is also sent to m.
    let m_tap = oxvirt_hypervisor::qemu::cmdline::tap_name(&ids[2].id, ids[2].spec.nics[0].slot());
    let sent_to_m = || -> u64 {
        host.run(&["cat", &format!("/sys/class/net/{m_tap}/statistics/tx_packets")]).trim().parse().expect("counter")
    };
    let burst = check("ping -c 20 -i 0.2 -W 2 10.50.0.2");
    let before = sent_to_m();
    run_in_guest(&c, "a", &burst, OK).await;
    let without = sent_to_m() - before;
    let (code, _, err) = d.cli(&[
        "network",
        "flow",
        "add",
        "v10",
        "--priority",
        "100",
        "--match",
        "ip,nw_dst=10.50.0.2",
        "--actions",
        "normal,output:m/nic0",
    ]);
    assert_eq!(code, 0, "{err}");
    let before = sent_to_m();
    run_in_guest(&c, "a", &burst, OK).await;
    let with = sent_to_m() - before;
    // Twenty echo requests mirrored; without the rule m sees only broadcasts (ARP), a few.
    assert!(with >= 20 && without < 10, "mirrored: {with} packets to m, {without} without the rule");
    // The switch folds its datapath's counts into its flows' every half second or so.
    let t0 = Instant::now();
    let rules = loop {
        let rules = listed(&d);
        if rules[0].packets >= 20 || t0.elapsed() > Duration::from_secs(10) {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(rules[0].packets >= 20, "{:?}", rules[0]);
    // The same counter on /metrics.
    let (_, body) = c.raw(hyper::Method::GET, "/metrics", None).await.expect("metrics");
    let body = String::from_utf8_lossy(&body);
    let line = format!("oxvirt_network_flow_packets_total{{network=\"v10\",rule=\"{}\"}}", rules[0].rule.id);
    let counted: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(|v| v.trim().parse().unwrap_or(0.0)))
        .unwrap_or_else(|| panic!("{line} not in /metrics"));
    assert!(counted >= 20.0, "{counted}");
}

/// A vlan network with a subnet: the host holds its gateway address on an access port of the
/// VLAN and serves DHCP there; guests get IPAM's addresses and reach each other and the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlan_network_with_a_subnet_gives_addresses_by_dhcp() {
    use oxvirt_e2e::{guest_check as check, wait_guest_address, GUEST_OK as OK};
    use serde_json::json;
    let host = Netns::new("vdhcp");
    let d = oxvirt_e2e::Daemon::start_in_netns(&host, "stop_timeout_secs = 5\n");
    let c = d.client.clone();
    let net: oxvirt_model::NetworkView = c
        .post("/api/v1/networks", &json!({ "name": "v30", "kind": "vlan", "vlan": 30, "subnet": "10.70.0.0/24" }))
        .await
        .expect("network");
    assert!(net.dhcp_pid.is_some(), "{net:?}");
    let mut vms = Vec::new();
    for name in ["d1", "d2"] {
        let mut spec = kernel_spec(name, "");
        spec["nics"] = json!([{ "network": "v30" }]);
        let created = c.create_vm(&spec, true).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        let t = c.wait_task(&created.task.expect("task").id, Duration::from_secs(60)).await.expect("task");
        assert_eq!(t.state, oxvirt_model::TaskState::Succeeded, "{t:?}");
        vms.push(c.get_vm(name).await.expect("vm"));
    }
    let ip = |i: usize| vms[i].spec.nics[0].ip.expect("an address from IPAM").to_string();
    for (i, name) in ["d1", "d2"].iter().enumerate() {
        wait_console(&c, name, READY, 1, BOOT_TIMEOUT).await;
        wait_guest_address(&c, name, &ip(i)).await;
    }
    run_in_guest(&c, "d1", &check(&format!("ping -c 1 -W 2 {}", ip(1))), OK).await;
    run_in_guest(&c, "d2", &check("ping -c 1 -W 2 10.70.0.1"), OK).await;
    // TCP at full frames: the userspace datapath takes no offloads, so the NICs offer none
    // (a guest's 64 KiB segments would be dropped and the transfer hang).
    run_in_guest(
        &c,
        "d2",
        &check("mkdir -p /w && dd if=/dev/zero of=/w/big bs=1024 count=2048 2>/dev/null && httpd -p 80 -h /w"),
        OK,
    )
    .await;
    // (Busybox's wget crashes with -T: the console helper's own timeout bounds it.)
    run_in_guest(&c, "d1", &check(&format!("wget -q -O /dev/null http://{}/big", ip(1))), OK).await;
    let leases: Vec<oxvirt_model::LeaseView> = c.get("/api/v1/networks/v30/leases").await.expect("leases");
    assert!(leases.len() == 2 && leases.iter().all(|l| l.active), "{leases:?}");

    // Deleted (its VMs first), the network leaves no DHCP server and no gateway port.
    for name in ["d1", "d2"] {
        c.vm_action(name, "kill").await.expect("kill");
    }
    let t0 = Instant::now();
    loop {
        let gone = c.get_vm("d1").await.map(|v| v.status.state == oxvirt_model::VmState::Stopped).unwrap_or(false)
            && c.get_vm("d2").await.map(|v| v.status.state == oxvirt_model::VmState::Stopped).unwrap_or(false);
        if gone {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "VMs did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["d1", "d2"] {
        c.delete_vm(name).await.expect("delete vm");
    }
    c.delete("/api/v1/networks/v30").await.expect("delete network");
    let db = format!("--db=unix:{}", d.path().join("ovs/db.sock").display());
    assert_eq!(host.run(&["ovs-vsctl", &db, "list-ports", "oxsdn0"]).trim(), "");
    assert!(!host.links().iter().any(|l| l.starts_with("oxg")), "{:?}", host.links());
}
