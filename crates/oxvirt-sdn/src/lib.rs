//! The switch oxvirt runs, for its SDN (issue #20).
//!
//! - `daemons.rs`: ovsdb-server and ovs-vswitchd (userspace datapath) with their files under a
//!   directory of oxvirt's, started when missing and restarted when dead (found through their
//!   pidfiles, checked against `/proc`, so a restarted oxvirtd finds the ones it left running).
//! - `flows.rs`: a bridge's OpenFlow controller that keeps the switch's flows equal to the
//!   desired ones: on every connection (a restarted switch has none), on every change, and
//!   every few seconds (a flow added behind oxvirt's back is removed), changing only what
//!   differs so that counters of unchanged flows go on.
//!
//! Bridges and ports are made over OVSDB by `oxvirt-ovsdb`; the wire is `oxvirt-openflow`.

pub mod daemons;
pub mod flows;

pub use daemons::{OvsDaemons, SdnError};
pub use flows::{FlowKeeper, KeeperError, KeeperStatus};
