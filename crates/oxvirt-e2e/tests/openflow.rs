//! oxvirt's OpenFlow 1.3 codec and connection (`oxvirt-openflow`) against a real Open vSwitch
//! (`oxvirt_e2e::ovs`: userspace datapath, its own network namespace), connected to this test
//! as its controller over a Unix socket (issue #20).

use oxvirt_e2e::ovs::Ovs;
use oxvirt_openflow::action::port;
use oxvirt_openflow::message::NO_BUFFER;
use oxvirt_openflow::*;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};

const BRIDGE: &str = "oxt0";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A switch with bridge `oxt0` (secure fail mode, OpenFlow 1.3 only) connected to us.
async fn switch() -> (Ovs, Connection<UnixStream>) {
    let ovs = Ovs::start();
    let sock = ovs.path("controller.sock");
    let listener = UnixListener::bind(&sock).expect("listen");
    let target = format!("unix:{}", sock.display());
    ovs.add_bridge(BRIDGE, &target);
    let (stream, _) =
        tokio::time::timeout(TIMEOUT, listener.accept()).await.expect("the switch connects").expect("accept");
    let conn = Connection::handshake(stream, TIMEOUT).await.expect("handshake");
    (ovs, conn)
}

fn flow(priority: u16, cookie: u64, m: &str, actions: &str) -> FlowMod {
    flow_from_words(priority, cookie, m, actions).expect("flow")
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x52, 0x54, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend([0x52, 0x54, 0, 0, 0, 1, 10, 0, 0, 5]);
    f.extend([0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    f
}

fn tcp_syn(src: [u8; 4], dst_port: u16) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
    f.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend(src);
    f.extend([10, 0, 0, 9]);
    f.extend(40000u16.to_be_bytes());
    f.extend(dst_port.to_be_bytes());
    f.extend([0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

async fn inject(conn: &mut Connection<UnixStream>, frame: Vec<u8>) {
    let out = PacketOut {
        buffer_id: NO_BUFFER,
        in_port: port::CONTROLLER,
        actions: vec![Action::output(port::TABLE)],
        data: frame,
    };
    conn.send(&Message::PacketOut(out)).await.expect("packet-out");
    assert_eq!(conn.barrier().await.expect("barrier"), vec![], "the packet-out is taken");
}

async fn stats_of(conn: &mut Connection<UnixStream>, cookie: u64) -> FlowStats {
    let all = conn.flow_stats(FlowStatsRequest::all()).await.expect("flow stats");
    all.into_iter().find(|f| f.cookie == cookie).unwrap_or_else(|| panic!("no flow with cookie {cookie:#x}"))
}

#[tokio::test]
async fn open_vswitch_takes_flows_reports_them_and_counts_packets() {
    let (ovs, mut conn) = switch().await;

    // The features are the bridge's.
    let dpid = ovs.vsctl(&["get", "bridge", BRIDGE, "datapath_id"]);
    let dpid = u64::from_str_radix(dpid.trim().trim_matches('"'), 16).expect("datapath id");
    assert_eq!(conn.features().datapath_id, dpid);
    assert!(conn.features().n_tables >= 1);
    assert!(conn.echo(b"oxvirt").await.expect("echo") < TIMEOUT);
    // Secure fail mode: no flow until the controller installs one.
    assert_eq!(ovs.dump_flows(BRIDGE), Vec::<String>::new());

    let flows = vec![
        flow(200, 0x1, "tcp,nw_src=10.0.0.0/24,tp_dst=80", "drop"),
        flow(100, 0x2, "udp,tp_dst=67", "normal"),
        flow(50, 0x3, "in_port=1", "mod_vlan_vid:10,output:2,output:3"),
        flow(10, 0x4, "arp", "controller"),
    ];
    conn.flow_mods(&flows).await.expect("flows taken");

    // What ovs-ofctl prints is what oxvirt's words say, field for field.
    let dumped = ovs.dump_flows(BRIDGE);
    assert_eq!(dumped.len(), flows.len(), "{dumped:#?}");
    for f in &flows {
        let want = format!("priority={},{} actions=", f.priority, format_match(&f.r#match));
        assert!(
            dumped.iter().any(|l| l.contains(&want) && l.contains(&format!("cookie={:#x},", f.cookie))),
            "{want} not in {dumped:#?}"
        );
    }
    // And what the switch reports over OpenFlow is what was sent.
    let stats = conn.flow_stats(FlowStatsRequest::all()).await.expect("flow stats");
    assert_eq!(stats.len(), flows.len());
    for f in &flows {
        let s = stats.iter().find(|s| s.cookie == f.cookie).expect("flow reported");
        assert_eq!((s.priority, s.table_id), (f.priority, 0));
        assert_eq!(s.r#match.canonical(), f.r#match.canonical(), "match of cookie {:#x}", f.cookie);
        assert_eq!(s.instructions, f.instructions, "instructions of cookie {:#x}", f.cookie);
    }

    // A packet injected into the table hits the ARP flow and comes back as a packet-in.
    let arp = arp_request();
    inject(&mut conn, arp.clone()).await;
    let (_, msg) = tokio::time::timeout(TIMEOUT, conn.recv()).await.expect("a packet-in").expect("recv");
    match msg {
        Message::PacketIn(p) => {
            assert_eq!(p.data, arp);
            assert_eq!(p.cookie, 0x4);
            assert_eq!(p.total_len as usize, arp.len());
        }
        other => panic!("expected a packet-in, got {other:?}"),
    }
    let s = stats_of(&mut conn, 0x4).await;
    assert_eq!((s.packet_count, s.byte_count), (1, arp.len() as u64));

    // The drop rule counts what it drops; a packet from outside its subnet passes it by.
    inject(&mut conn, tcp_syn([10, 0, 0, 5], 80)).await;
    inject(&mut conn, tcp_syn([10, 0, 0, 6], 80)).await;
    inject(&mut conn, tcp_syn([10, 9, 0, 5], 80)).await;
    let s = stats_of(&mut conn, 0x1).await;
    assert_eq!(s.packet_count, 2);
    assert_eq!(s.byte_count, 2 * 54);

    // Deleted strictly by priority and match: gone from the switch, the others stay.
    conn.flow_mods(&[FlowMod::delete_strict(200, flows[0].r#match.clone())]).await.expect("delete");
    let dumped = ovs.dump_flows(BRIDGE);
    assert_eq!(dumped.len(), 3);
    assert!(!dumped.iter().any(|l| l.contains("priority=200")));
}

#[tokio::test]
async fn a_refused_flow_comes_back_as_the_switch_s_error_and_changes_nothing() {
    let (ovs, mut conn) = switch().await;
    let good = flow(10, 0x1, "ip", "normal");
    // A TCP port without its prerequisites (eth_type, ip_proto): the text parser would refuse
    // it, so it is built by hand, as a buggy controller would.
    let bad = FlowMod::add(20, Match { fields: vec![Oxm::port16(OxmField::TcpDst, 80)] }, vec![]);
    let (index, err) = conn.flow_mods(&[good.clone(), bad]).await.expect_err("refused");
    assert_eq!(index, 1, "the second flow is the one refused");
    match err {
        ConnError::Refused { error, .. } => assert_eq!(error.describe(), "BAD_MATCH/BAD_PREREQ"),
        other => panic!("expected a refusal, got {other}"),
    }
    let dumped = ovs.dump_flows(BRIDGE);
    assert_eq!(dumped.len(), 1, "{dumped:#?}");
    assert!(dumped[0].contains("priority=10,ip actions=NORMAL"));
    // The connection goes on after the refusal.
    conn.echo(b"still here").await.expect("echo");
}

#[tokio::test]
async fn a_thousand_flows_come_back_in_several_parts_and_go_by_cookie() {
    let (ovs, mut conn) = switch().await;
    let flows: Vec<FlowMod> =
        (0..1000u64).map(|i| flow(300, 0x1_0000 + i, &format!("tcp,tp_dst={}", 1000 + i), "normal")).collect();
    conn.flow_mods(&flows).await.expect("flows");
    conn.flow_mods(&[flow(1, 0x9, "any", "drop")]).await.expect("flow");
    // About 100 bytes a flow: more than one 64 KiB part.
    let parts = conn.multipart(MultipartBody::FlowStatsRequest(FlowStatsRequest::all())).await.expect("stats");
    assert!(parts.len() > 1, "one part only");
    let stats = conn.flow_stats(FlowStatsRequest::all()).await.expect("stats");
    assert_eq!(stats.len(), 1001);
    assert_eq!(ovs.dump_flows(BRIDGE).len(), 1001);

    conn.flow_mods(&[FlowMod::delete_by_cookie(0x1_0000, 0xffff_0000)]).await.expect("delete by cookie");
    let left = conn.flow_stats(FlowStatsRequest::all()).await.expect("stats");
    assert_eq!(left.iter().map(|f| f.cookie).collect::<Vec<_>>(), vec![0x9]);
}

#[tokio::test]
async fn ports_are_announced_and_counted() {
    let (ovs, mut conn) = switch().await;
    ovs.vsctl(&["add-port", BRIDGE, "p1", "--", "set", "interface", "p1", "type=internal", "ofport_request=1"]);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, msg) = tokio::time::timeout(left, conn.recv()).await.expect("a port status").expect("recv");
        if let Message::PortStatus { reason, port } = msg {
            if port.name == "p1" {
                assert_eq!((reason, port.port_no), (0, 1), "added as port 1");
                break;
            }
        }
    }
    let stats = conn.port_stats(port::ANY).await.expect("port stats");
    let mut ports: Vec<u32> = stats.iter().map(|p| p.port_no).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![1, port::LOCAL]);
    let one = conn.port_stats(1).await.expect("port 1");
    assert_eq!(one.len(), 1);
    let desc = conn.multipart(MultipartBody::PortDescRequest).await.expect("port descriptions");
    let names: Vec<String> = desc
        .into_iter()
        .flat_map(|b| match b {
            MultipartBody::PortDesc(list) => list,
            _ => vec![],
        })
        .map(|p| p.name)
        .collect();
    assert!(names.contains(&"p1".to_string()) && names.contains(&BRIDGE.to_string()), "{names:?}");
}

/// `oxvirt-ovsdb` makes the bridge and its ports through ovsdb-server alone (no ovs-vsctl), and
/// ovs-vswitchd applies them: the bridge's switch connects to the controller, ports get the
/// OpenFlow numbers and tags asked for, a second call changes nothing, bad input is refused by
/// name before anything is sent.
#[tokio::test]
async fn ovsdb_makes_bridges_and_ports_that_the_switch_applies() {
    use oxvirt_ovsdb::{BridgeSpec, Client, PortKind, PortSpec, Switch};
    let ovs = Ovs::start();
    let client = Client::connect(&ovs.path("db.sock"), TIMEOUT).await.expect("ovsdb");
    let mut sw = Switch::new(client, TIMEOUT).await.expect("switch");
    let sock = ovs.path("controller.sock");
    let listener = UnixListener::bind(&sock).expect("listen");
    let spec = BridgeSpec { name: "oxt1".into(), controller: format!("unix:{}", sock.display()) };
    sw.ensure_bridge(&spec).await.expect("bridge");
    let (stream, _) =
        tokio::time::timeout(TIMEOUT, listener.accept()).await.expect("the bridge's switch connects").expect("accept");
    let mut conn = Connection::handshake(stream, TIMEOUT).await.expect("handshake");
    assert_eq!(ovs.vsctl(&["get", "bridge", "oxt1", "datapath_type"]).trim(), "netdev");
    assert_eq!(ovs.vsctl(&["get", "bridge", "oxt1", "fail_mode"]).trim(), "secure");
    assert_eq!(ovs.vsctl(&["get", "bridge", "oxt1", "protocols"]).trim(), "[OpenFlow13]");
    let controller = ovs.vsctl(&["get", "bridge", "oxt1", "controller"]);
    sw.ensure_bridge(&spec).await.expect("again");
    assert_eq!(
        ovs.vsctl(&["get", "bridge", "oxt1", "controller"]),
        controller,
        "the same controller row: nothing redone"
    );
    assert_eq!(sw.bridges().await.expect("bridges"), vec!["oxt1".to_string()]);

    let port = PortSpec { name: "vm1-nic0".into(), kind: PortKind::Internal, ofport: Some(5), tag: Some(10) };
    sw.ensure_port("oxt1", &port).await.expect("port");
    let ports = sw.ports("oxt1").await.expect("ports");
    assert_eq!(
        ports.iter().map(|p| (p.name.as_str(), p.tag, p.ofport)).collect::<Vec<_>>(),
        vec![("oxt1", None, Some(port::LOCAL & 0xffff)), ("vm1-nic0", Some(10), Some(5))]
    );
    assert_eq!(ovs.vsctl(&["get", "port", "vm1-nic0", "tag"]).trim(), "10");
    assert_eq!(conn.port_stats(5).await.expect("the switch has port 5").len(), 1);

    sw.ensure_port("oxt1", &PortSpec { tag: Some(20), ..port.clone() }).await.expect("retag");
    assert_eq!(ovs.vsctl(&["get", "port", "vm1-nic0", "tag"]).trim(), "20");
    assert_eq!(ovs.vsctl(&["list-ports", "oxt1"]).trim(), "vm1-nic0", "one port, not two");

    for (bad, field) in [
        (PortSpec { tag: Some(4095), ..port.clone() }, "tag"),
        (PortSpec { name: "a-name-far-too-long".into(), ..port.clone() }, "port"),
        (PortSpec { name: "x;rm".into(), ..port.clone() }, "port"),
        (PortSpec { ofport: Some(0), ..port.clone() }, "ofport"),
    ] {
        let e = sw.ensure_port("oxt1", &bad).await.expect_err("refused").to_string();
        assert!(e.starts_with(&format!("{field}:")), "{e}");
    }
    let e = sw.ensure_port("nosuch", &port).await.expect_err("no bridge").to_string();
    assert!(e.contains("no bridge named nosuch"), "{e}");
    assert_eq!(ovs.vsctl(&["get", "port", "vm1-nic0", "tag"]).trim(), "20", "refusals changed nothing");

    sw.remove_port("oxt1", "vm1-nic0").await.expect("remove port");
    assert_eq!(ovs.vsctl(&["list-ports", "oxt1"]).trim(), "");
    sw.remove_port("oxt1", "vm1-nic0").await.expect("removing again is nothing");
    sw.remove_bridge("oxt1").await.expect("remove bridge");
    assert_eq!(sw.bridges().await.expect("bridges"), Vec::<String>::new());
    // The bridge's switch is gone, and with it the controller's connection.
    let end = tokio::time::timeout(TIMEOUT, async {
        loop {
            match conn.recv().await {
                Ok(_) => continue, // port changes announced before the end
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the connection ends");
    assert!(matches!(end, ConnError::Closed | ConnError::Io(_)), "{end:?}");
}
