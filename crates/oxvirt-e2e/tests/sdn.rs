//! `oxvirt-sdn` against real Open vSwitch (issue #20): oxvirt runs ovsdb-server and
//! ovs-vswitchd itself (the switch in a network namespace made for the test), makes a bridge
//! over OVSDB, and its flow keeper holds the bridge's flows to the desired ones — after a flow
//! is added behind its back, after a change, after kill -9 of the switch (restarted by oxvirt,
//! flows back), after the controller itself restarts (nothing redone).

use oxvirt_e2e::Netns;
use oxvirt_openflow::{parse_actions, parse_match, FlowMod};
use oxvirt_ovsdb::{BridgeSpec, Client, Switch};
use oxvirt_sdn::{FlowKeeper, KeeperError, OvsDaemons};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;

const T: Duration = Duration::from_secs(15);
const BRIDGE: &str = "oxsdn0";

fn flow(priority: u16, cookie: u64, m: &str, actions: &str) -> FlowMod {
    let r#match = parse_match(m).expect("match");
    let instructions = parse_actions(actions, &r#match).expect("actions");
    FlowMod { cookie, ..FlowMod::add(priority, r#match, instructions) }
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
