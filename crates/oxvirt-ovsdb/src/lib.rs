//! OVSDB as oxvirt speaks it to Open vSwitch's ovsdb-server (issue #20).
//!
//! - `rpc.rs`: the JSON-RPC 1.0 client of RFC 7047 over a Unix socket: JSON values back to back
//!   with no framing, requests matched by id, the server's echo requests answered, each
//!   operation's error in a transaction reported with its index.
//! - `switch.rs`: the `Open_vSwitch` database's rows oxvirt manages: bridges (userspace
//!   datapath, OpenFlow 1.3, secure fail mode, oxvirt's controller) and their ports, made to
//!   match what is asked (nothing done twice), and waiting until ovs-vswitchd has applied a
//!   change (`cur_cfg` reaching `next_cfg`, as ovs-vsctl does).

pub mod rpc;
pub mod switch;

pub use rpc::{Client, OvsdbError};
pub use switch::{BridgeSpec, PortKind, PortSpec, Switch};
