//! OpenFlow 1.3 as oxvirt speaks it to Open vSwitch (the SDN controller's wire, issue #20).
//!
//! - `wire.rs`: big-endian reads that fail with the part they were reading, never panic.
//! - `oxm.rs`: a flow's match, OpenFlow eXtensible Match fields (`Match`, `Oxm`).
//! - `action.rs`, `instruction.rs`: what a flow does (output, VLAN push/pop, set-field, goto).
//! - `message.rs`: every message a controller sends or receives (`Message`, `encode`, `decode`).
//! - `multipart.rs`: statistics requests and replies (flows with their counters, ports).
//! - `text.rs`: matches and actions in ovs-ofctl's words (`tcp,nw_src=10.0.0.0/24,tp_dst=80`,
//!   `drop`, `output:2`, `mod_vlan_vid:10`), parsed with errors naming the part and the rule,
//!   and printed back.
//! - `conn.rs`: one switch's connection: version negotiation, features, echo answered,
//!   requests matched to replies by transaction id, barriers.
//!
//! Nothing here knows oxvirt's store or networks: the controller does.

pub mod action;
pub mod conn;
pub mod instruction;
pub mod message;
pub mod multipart;
pub mod oxm;
pub mod text;
mod wire;

pub use action::{port, Action};
pub use conn::{ConnError, Connection};
pub use instruction::Instruction;
pub use message::EncodeError;
pub use message::{
    decode, encode, frame_length, DecodeError, ErrorMsg, Features, FlowMod, FlowModCommand, FlowRemoved, Message,
    PacketIn, PacketOut, PortDesc, HEADER_LEN, VERSION,
};
pub use multipart::{FlowStats, FlowStatsRequest, MultipartBody, MultipartReply, MultipartRequest, PortStats};
pub use oxm::{Match, Oxm, OxmField};
pub use text::{flow_from_words, format_actions, format_match, parse_actions, parse_match, TextError};
