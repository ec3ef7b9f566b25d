//! `oxvirt-bench openflow`: flows installed in a real Open vSwitch (userspace datapath) through
//! oxvirt's OpenFlow 1.3 connection, confirmed by a barrier, against `ovs-ofctl add-flows` of
//! the very same flows (which also waits for the switch's barrier). Interleaved rounds; the
//! bridge is emptied between them. Then a switch restart: ovs-vswitchd killed (-9) with the
//! flows installed, started again by `oxvirt-sdn`, until its flow keeper has put them all back,
//! against the same flows' install on a connected switch.

use super::{median, ms, spread};
use oxvirt_e2e::ovs::Ovs;
use oxvirt_openflow::{flow_from_words, format_actions, format_match, Connection, FlowMod, FlowStatsRequest};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;

const FLOWS: usize = 10_000;
const ROUNDS: usize = 5;
const BRIDGE: &str = "oxb0";

fn flows() -> Vec<FlowMod> {
    (0..FLOWS)
        .map(|i| {
            let m = format!("tcp,nw_src=10.{}.{}.0/24,tp_dst={}", i / 256 % 256, i % 256, 1000 + i % 50_000);
            flow_from_words(100, 0x10_0000 + i as u64, &m, if i % 2 == 0 { "normal" } else { "drop" }).expect("flow")
        })
        .collect()
}

pub async fn openflow() {
    println!("== openflow: {FLOWS} flows into Open vSwitch (userspace datapath), barrier-confirmed, {ROUNDS} rounds");
    let ovs = Ovs::start();
    let sock = ovs.path("controller.sock");
    let listener = UnixListener::bind(&sock).expect("listen");
    ovs.add_bridge(BRIDGE, &format!("unix:{}", sock.display()));
    let (stream, _) = listener.accept().await.expect("the switch connects");
    let mut conn = Connection::handshake(stream, Duration::from_secs(60)).await.expect("handshake");

    let flows = flows();
    let file = ovs.path("flows.txt");
    let text: String = flows
        .iter()
        .map(|f| {
            format!(
                "cookie={:#x},priority={},{} actions={}\n",
                f.cookie,
                f.priority,
                format_match(&f.r#match),
                format_actions(&f.instructions)
            )
        })
        .collect();
    std::fs::write(&file, text).expect("flows file");
    let clear = FlowMod::delete_by_cookie(0, 0);

    let mut ours = Vec::new();
    let mut ofctl = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        ovs.run("ovs-ofctl", &["-O", "OpenFlow13", "add-flows", BRIDGE, file.to_str().unwrap_or_default()]);
        ofctl.push(t0.elapsed());
        assert_eq!(conn.flow_stats(FlowStatsRequest::all()).await.expect("stats").len(), FLOWS);
        conn.flow_mods(std::slice::from_ref(&clear)).await.expect("clear");

        let t0 = Instant::now();
        conn.flow_mods(&flows).await.expect("flows");
        ours.push(t0.elapsed());
        assert_eq!(ovs.dump_flows(BRIDGE).len(), FLOWS);
        conn.flow_mods(std::slice::from_ref(&clear)).await.expect("clear");
    }
    let rate = |d: Duration| FLOWS as f64 / d.as_secs_f64();
    let (o, b) = (median(ours.clone()), median(ofctl.clone()));
    println!("   ovs-ofctl add-flows (baseline): {:.0} flows/s ({})", rate(b), spread(&ms(&ofctl), " ms", 0));
    println!("   through oxvirt-openflow:        {:.0} flows/s ({})", rate(o), spread(&ms(&ours), " ms", 0));
    println!("   ratio (oxvirt/ovs-ofctl rate): {:.2}", rate(o) / rate(b));
    drop(conn);
    drop(ovs);
    switch_restart(&flows, o).await;
}

/// kill -9 of the switch → oxvirt starts it again → the keeper's flows are all back.
async fn switch_restart(flows: &[FlowMod], install: Duration) {
    use oxvirt_sdn::{FlowKeeper, OvsDaemons};
    let ns = oxvirt_e2e::Netns::new("ofb");
    let dir = tempfile::Builder::new().prefix("sdnb").tempdir_in("/tmp").expect("tempdir");
    let daemons = OvsDaemons::new(dir.path(), Some(ns.name.clone()));
    daemons.ensure_running().expect("start");
    let sock = dir.path().join("controller.sock");
    let keeper = FlowKeeper::start(UnixListener::bind(&sock).expect("listen"), Duration::from_secs(5));
    let client = oxvirt_ovsdb::Client::connect(&daemons.db_socket(), Duration::from_secs(30)).await.expect("ovsdb");
    let mut sw = oxvirt_ovsdb::Switch::new(client, Duration::from_secs(30)).await.expect("switch");
    let spec = oxvirt_ovsdb::BridgeSpec { name: BRIDGE.into(), controller: format!("unix:{}", sock.display()) };
    sw.ensure_bridge(&spec).await.expect("bridge");
    keeper.set_flows(flows.to_vec()).expect("flows");
    keeper.wait_synced(Duration::from_secs(120)).await.expect("synced");
    let mut restores = Vec::new();
    for _ in 0..ROUNDS {
        let before = keeper.status();
        let pid = daemons.pid("ovs-vswitchd").expect("running");
        let t0 = Instant::now();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while daemons.pid("ovs-vswitchd").is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        daemons.ensure_running().expect("restart");
        loop {
            let st = keeper.status();
            if st.connections > before.connections && st.syncs > before.syncs && st.added >= before.added + FLOWS as u64
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "flows not restored: {st:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        restores.push(t0.elapsed());
    }
    let r = median(restores.clone());
    println!(
        "   switch kill -9 -> restarted with all {FLOWS} flows: {} ms ({})",
        r.as_millis(),
        spread(&ms(&restores), " ms", 0)
    );
    println!(
        "   against installing them on a connected switch ({} ms): {:.2}",
        install.as_millis(),
        r.as_secs_f64() / install.as_secs_f64()
    );
    daemons.stop();
}
