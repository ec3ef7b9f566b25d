//! OpenFlow 1.3 messages (§7): the header, every message a controller of Open vSwitch sends or
//! receives, [`encode`] and [`decode`].

use crate::action::{self, Action};
use crate::instruction::{self, Instruction};
use crate::multipart::{MultipartBody, MultipartReply, MultipartRequest};
use crate::oxm::Match;
use crate::wire::{Reader, Writer};

pub use crate::wire::DecodeError;

/// OpenFlow 1.3's `ofp_header.version`.
pub const VERSION: u8 = 0x04;
pub const HEADER_LEN: usize = 8;
/// `buffer_id` of a packet the switch did not keep.
pub const NO_BUFFER: u32 = 0xffff_ffff;
/// `out_group` that matches any group.
pub const GROUP_ANY: u32 = 0xffff_ffff;
/// `table_id` of every table (flow deletes and statistics).
pub const TABLE_ALL: u8 = 0xff;

const HELLO_ELEM_VERSIONBITMAP: u16 = 1;

mod kind {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const SET_CONFIG: u8 = 9;
    pub const PACKET_IN: u8 = 10;
    pub const FLOW_REMOVED: u8 = 11;
    pub const PORT_STATUS: u8 = 12;
    pub const PACKET_OUT: u8 = 13;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The versions the sender speaks (from its version bitmap; empty when it sent none).
    Hello {
        versions: Vec<u8>,
    },
    Error(ErrorMsg),
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    FeaturesRequest,
    FeaturesReply(Features),
    SetConfig {
        flags: u16,
        miss_send_len: u16,
    },
    PacketIn(PacketIn),
    FlowRemoved(FlowRemoved),
    PortStatus {
        reason: u8,
        port: PortDesc,
    },
    PacketOut(PacketOut),
    FlowMod(FlowMod),
    MultipartRequest(MultipartRequest),
    MultipartReply(MultipartReply),
    BarrierRequest,
    BarrierReply,
    /// A message oxvirt does not read, kept as it came (type and body).
    Other {
        kind: u8,
        body: Vec<u8>,
    },
}

/// `ofp_error_msg`: what the switch refused, and the start of the request it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    pub kind: u16,
    pub code: u16,
    pub data: Vec<u8>,
}

impl ErrorMsg {
    /// The error's type and code in the specification's words (`BAD_MATCH/BAD_PREREQ`).
    pub fn describe(&self) -> String {
        let (kind, codes): (&str, &[&str]) = match self.kind {
            0 => ("HELLO_FAILED", &["INCOMPATIBLE", "EPERM"]),
            1 => (
                "BAD_REQUEST",
                &[
                    "BAD_VERSION",
                    "BAD_TYPE",
                    "BAD_MULTIPART",
                    "BAD_EXPERIMENTER",
                    "BAD_EXP_TYPE",
                    "EPERM",
                    "BAD_LEN",
                    "BUFFER_EMPTY",
                    "BUFFER_UNKNOWN",
                    "BAD_TABLE_ID",
                    "IS_SLAVE",
                    "BAD_PORT",
                    "BAD_PACKET",
                    "MULTIPART_BUFFER_OVERFLOW",
                ],
            ),
            2 => (
                "BAD_ACTION",
                &[
                    "BAD_TYPE",
                    "BAD_LEN",
                    "BAD_EXPERIMENTER",
                    "BAD_EXP_TYPE",
                    "BAD_OUT_PORT",
                    "BAD_ARGUMENT",
                    "EPERM",
                    "TOO_MANY",
                    "BAD_QUEUE",
                    "BAD_OUT_GROUP",
                    "MATCH_INCONSISTENT",
                    "UNSUPPORTED_ORDER",
                    "BAD_TAG",
                    "BAD_SET_TYPE",
                    "BAD_SET_LEN",
                    "BAD_SET_ARGUMENT",
                ],
            ),
            3 => (
                "BAD_INSTRUCTION",
                &[
                    "UNKNOWN_INST",
                    "UNSUP_INST",
                    "BAD_TABLE_ID",
                    "UNSUP_METADATA",
                    "UNSUP_METADATA_MASK",
                    "BAD_EXPERIMENTER",
                    "BAD_EXP_TYPE",
                    "BAD_LEN",
                    "EPERM",
                ],
            ),
            4 => (
                "BAD_MATCH",
                &[
                    "BAD_TYPE",
                    "BAD_LEN",
                    "BAD_TAG",
                    "BAD_DL_ADDR_MASK",
                    "BAD_NW_ADDR_MASK",
                    "BAD_WILDCARDS",
                    "BAD_FIELD",
                    "BAD_VALUE",
                    "BAD_MASK",
                    "BAD_PREREQ",
                    "DUP_FIELD",
                    "EPERM",
                ],
            ),
            5 => (
                "FLOW_MOD_FAILED",
                &[
                    "UNKNOWN",
                    "TABLE_FULL",
                    "BAD_TABLE_ID",
                    "OVERLAP",
                    "EPERM",
                    "BAD_TIMEOUT",
                    "BAD_COMMAND",
                    "BAD_FLAGS",
                ],
            ),
            _ => ("", &[]),
        };
        match codes.get(self.code as usize) {
            Some(code) => format!("{kind}/{code}"),
            None => format!("type {} code {}", self.kind, self.code),
        }
    }
}

/// `ofp_switch_features`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub datapath_id: u64,
    pub n_buffers: u32,
    pub n_tables: u8,
    pub auxiliary_id: u8,
    pub capabilities: u32,
}

/// `ofp_packet_in`: a packet a flow (or a table miss) sent to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketIn {
    pub buffer_id: u32,
    pub total_len: u16,
    pub reason: u8,
    pub table_id: u8,
    pub cookie: u64,
    pub r#match: Match,
    pub data: Vec<u8>,
}

/// `ofp_flow_removed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRemoved {
    pub cookie: u64,
    pub priority: u16,
    pub reason: u8,
    pub table_id: u8,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub packet_count: u64,
    pub byte_count: u64,
    pub r#match: Match,
}

/// `ofp_port`: a switch port's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDesc {
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    /// Up to 15 bytes (the field holds 16 with its NUL).
    pub name: String,
    pub config: u32,
    pub state: u32,
    /// curr, advertised, supported, peer, curr_speed, max_speed.
    pub features: [u32; 6],
}

/// `ofp_packet_out`: a packet the controller injects, with the actions to apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketOut {
    pub buffer_id: u32,
    pub in_port: u32,
    pub actions: Vec<Action>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowModCommand {
    Add = 0,
    Modify = 1,
    ModifyStrict = 2,
    Delete = 3,
    DeleteStrict = 4,
}

/// `ofp_flow_mod`: a flow added, changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMod {
    pub cookie: u64,
    pub cookie_mask: u64,
    pub table_id: u8,
    pub command: FlowModCommand,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub priority: u16,
    pub buffer_id: u32,
    pub out_port: u32,
    pub out_group: u32,
    pub flags: u16,
    pub r#match: Match,
    pub instructions: Vec<Instruction>,
}

impl FlowMod {
    /// Flags: tell the controller when the flow goes; refuse an overlapping add; reset counters.
    pub const SEND_FLOW_REM: u16 = 1;
    pub const CHECK_OVERLAP: u16 = 2;
    pub const RESET_COUNTS: u16 = 4;

    /// A flow added to table 0.
    pub fn add(priority: u16, r#match: Match, instructions: Vec<Instruction>) -> FlowMod {
        FlowMod {
            cookie: 0,
            cookie_mask: 0,
            table_id: 0,
            command: FlowModCommand::Add,
            idle_timeout: 0,
            hard_timeout: 0,
            priority,
            buffer_id: NO_BUFFER,
            out_port: crate::action::port::ANY,
            out_group: GROUP_ANY,
            flags: 0,
            r#match,
            instructions,
        }
    }

    /// Deletes the flows of every table whose cookie matches `cookie` under `cookie_mask`
    /// (0/0: every flow).
    pub fn delete_by_cookie(cookie: u64, cookie_mask: u64) -> FlowMod {
        FlowMod {
            cookie,
            cookie_mask,
            table_id: TABLE_ALL,
            command: FlowModCommand::Delete,
            ..FlowMod::add(0, Match::any(), vec![])
        }
    }

    /// Deletes exactly the flow of table 0 with this priority and match.
    pub fn delete_strict(priority: u16, r#match: Match) -> FlowMod {
        FlowMod { command: FlowModCommand::DeleteStrict, ..FlowMod::add(priority, r#match, vec![]) }
    }
}

/// Why a message cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {length} bytes is longer than OpenFlow's 65,535")]
pub struct EncodeError {
    pub length: usize,
}

/// The message with its header and this transaction id, as bytes for the switch.
pub fn encode(xid: u32, msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::default();
    w.u8(VERSION);
    w.u8(kind_of(msg));
    w.u16(0);
    w.u32(xid);
    write_body(msg, &mut w);
    let len = w.len();
    if len > u16::MAX as usize {
        return Err(EncodeError { length: len });
    }
    w.patch_u16(2, len as u16);
    Ok(w.buf)
}

/// A whole message's length from its first 8 bytes (its header), checked.
pub fn frame_length(header: &[u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if len < HEADER_LEN {
        return Err(DecodeError::Length { what: "message", length: len, rule: "at least its 8-byte header" });
    }
    Ok(len)
}

/// One whole message (exactly the bytes its header counts): its transaction id and body.
pub fn decode(bytes: &[u8]) -> Result<(u32, Message), DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("version")?;
    let kind = r.u8("message type")?;
    let len = r.u16("message length")? as usize;
    let xid = r.u32("xid")?;
    if len != bytes.len() {
        return Err(DecodeError::Length { what: "message", length: len, rule: "the bytes given" });
    }
    // A hello of any version is read: it is how versions are negotiated.
    if version != VERSION && kind != kind::HELLO {
        return Err(DecodeError::Version(version));
    }
    Ok((xid, read_body(kind, &mut r)?))
}

fn kind_of(msg: &Message) -> u8 {
    match msg {
        Message::Hello { .. } => kind::HELLO,
        Message::Error(_) => kind::ERROR,
        Message::EchoRequest(_) => kind::ECHO_REQUEST,
        Message::EchoReply(_) => kind::ECHO_REPLY,
        Message::FeaturesRequest => kind::FEATURES_REQUEST,
        Message::FeaturesReply(_) => kind::FEATURES_REPLY,
        Message::SetConfig { .. } => kind::SET_CONFIG,
        Message::PacketIn(_) => kind::PACKET_IN,
        Message::FlowRemoved(_) => kind::FLOW_REMOVED,
        Message::PortStatus { .. } => kind::PORT_STATUS,
        Message::PacketOut(_) => kind::PACKET_OUT,
        Message::FlowMod(_) => kind::FLOW_MOD,
        Message::MultipartRequest(_) => kind::MULTIPART_REQUEST,
        Message::MultipartReply(_) => kind::MULTIPART_REPLY,
        Message::BarrierRequest => kind::BARRIER_REQUEST,
        Message::BarrierReply => kind::BARRIER_REPLY,
        Message::Other { kind, .. } => *kind,
    }
}

fn write_body(msg: &Message, w: &mut Writer) {
    match msg {
        Message::Hello { versions } => {
            if !versions.is_empty() {
                let words = versions.iter().map(|v| (*v as usize) / 32).max().unwrap_or(0) + 1;
                let mut bitmap = vec![0u32; words];
                for v in versions {
                    bitmap[(*v as usize) / 32] |= 1 << (v % 32);
                }
                let start = w.len();
                w.u16(HELLO_ELEM_VERSIONBITMAP);
                w.u16((4 + 4 * words) as u16);
                for b in bitmap {
                    w.u32(b);
                }
                w.pad8_from(start);
            }
        }
        Message::Error(e) => {
            w.u16(e.kind);
            w.u16(e.code);
            w.bytes(&e.data);
        }
        Message::EchoRequest(d) | Message::EchoReply(d) => w.bytes(d),
        Message::FeaturesRequest | Message::BarrierRequest | Message::BarrierReply => {}
        Message::FeaturesReply(f) => {
            w.u64(f.datapath_id);
            w.u32(f.n_buffers);
            w.u8(f.n_tables);
            w.u8(f.auxiliary_id);
            w.zeros(2);
            w.u32(f.capabilities);
            w.u32(0);
        }
        Message::SetConfig { flags, miss_send_len } => {
            w.u16(*flags);
            w.u16(*miss_send_len);
        }
        Message::PacketIn(p) => {
            w.u32(p.buffer_id);
            w.u16(p.total_len);
            w.u8(p.reason);
            w.u8(p.table_id);
            w.u64(p.cookie);
            p.r#match.write(w);
            w.zeros(2);
            w.bytes(&p.data);
        }
        Message::FlowRemoved(f) => {
            w.u64(f.cookie);
            w.u16(f.priority);
            w.u8(f.reason);
            w.u8(f.table_id);
            w.u32(f.duration_sec);
            w.u32(f.duration_nsec);
            w.u16(f.idle_timeout);
            w.u16(f.hard_timeout);
            w.u64(f.packet_count);
            w.u64(f.byte_count);
            f.r#match.write(w);
        }
        Message::PortStatus { reason, port } => {
            w.u8(*reason);
            w.zeros(7);
            port.write(w);
        }
        Message::PacketOut(p) => {
            w.u32(p.buffer_id);
            w.u32(p.in_port);
            let at = w.len();
            w.u16(0);
            w.zeros(6);
            action::write_list(&p.actions, w);
            let actions_len = w.len() - at - 8;
            w.patch_u16(at, actions_len as u16);
            w.bytes(&p.data);
        }
        Message::FlowMod(f) => {
            w.u64(f.cookie);
            w.u64(f.cookie_mask);
            w.u8(f.table_id);
            w.u8(f.command as u8);
            w.u16(f.idle_timeout);
            w.u16(f.hard_timeout);
            w.u16(f.priority);
            w.u32(f.buffer_id);
            w.u32(f.out_port);
            w.u32(f.out_group);
            w.u16(f.flags);
            w.zeros(2);
            f.r#match.write(w);
            instruction::write_list(&f.instructions, w);
        }
        Message::MultipartRequest(m) => m.write(w),
        Message::MultipartReply(m) => m.write(w),
        Message::Other { body, .. } => w.bytes(body),
    }
}

fn read_body(kind: u8, r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(match kind {
        kind::HELLO => {
            let mut versions = Vec::new();
            while r.remaining() > 0 {
                let t = r.u16("hello element type")?;
                let len = r.u16("hello element length")? as usize;
                let mut e = r.sub(len, 4, "hello element")?;
                if t == HELLO_ELEM_VERSIONBITMAP {
                    let mut word = 0u32;
                    while e.remaining() >= 4 {
                        let bits = e.u32("version bitmap")?;
                        for bit in 0..32 {
                            if bits & (1 << bit) != 0 && word * 32 + bit < 256 {
                                versions.push((word * 32 + bit) as u8);
                            }
                        }
                        word += 1;
                    }
                }
                // Elements are padded to 8 bytes; the padding may end the message early.
                let pad = crate::wire::pad8(len) - len;
                r.skip(pad.min(r.remaining()), "hello element padding")?;
            }
            versions.sort_unstable();
            versions.dedup();
            Message::Hello { versions }
        }
        kind::ERROR => {
            Message::Error(ErrorMsg { kind: r.u16("error type")?, code: r.u16("error code")?, data: r.rest().to_vec() })
        }
        kind::ECHO_REQUEST => Message::EchoRequest(r.rest().to_vec()),
        kind::ECHO_REPLY => Message::EchoReply(r.rest().to_vec()),
        kind::FEATURES_REQUEST => Message::FeaturesRequest,
        kind::BARRIER_REQUEST => Message::BarrierRequest,
        kind::BARRIER_REPLY => Message::BarrierReply,
        kind::FEATURES_REPLY => {
            let datapath_id = r.u64("datapath_id")?;
            let n_buffers = r.u32("n_buffers")?;
            let n_tables = r.u8("n_tables")?;
            let auxiliary_id = r.u8("auxiliary_id")?;
            r.skip(2, "features padding")?;
            let capabilities = r.u32("capabilities")?;
            r.skip(4, "features reserved")?;
            Message::FeaturesReply(Features { datapath_id, n_buffers, n_tables, auxiliary_id, capabilities })
        }
        kind::SET_CONFIG => {
            Message::SetConfig { flags: r.u16("config flags")?, miss_send_len: r.u16("miss_send_len")? }
        }
        kind::PACKET_IN => {
            let buffer_id = r.u32("packet_in buffer_id")?;
            let total_len = r.u16("packet_in total_len")?;
            let reason = r.u8("packet_in reason")?;
            let table_id = r.u8("packet_in table_id")?;
            let cookie = r.u64("packet_in cookie")?;
            let r#match = Match::read(r)?;
            r.skip(2, "packet_in padding")?;
            Message::PacketIn(PacketIn {
                buffer_id,
                total_len,
                reason,
                table_id,
                cookie,
                r#match,
                data: r.rest().to_vec(),
            })
        }
        kind::FLOW_REMOVED => Message::FlowRemoved(FlowRemoved {
            cookie: r.u64("flow_removed cookie")?,
            priority: r.u16("flow_removed priority")?,
            reason: r.u8("flow_removed reason")?,
            table_id: r.u8("flow_removed table_id")?,
            duration_sec: r.u32("flow_removed duration_sec")?,
            duration_nsec: r.u32("flow_removed duration_nsec")?,
            idle_timeout: r.u16("flow_removed idle_timeout")?,
            hard_timeout: r.u16("flow_removed hard_timeout")?,
            packet_count: r.u64("flow_removed packet_count")?,
            byte_count: r.u64("flow_removed byte_count")?,
            r#match: Match::read(r)?,
        }),
        kind::PORT_STATUS => {
            let reason = r.u8("port_status reason")?;
            r.skip(7, "port_status padding")?;
            Message::PortStatus { reason, port: PortDesc::read(r)? }
        }
        kind::PACKET_OUT => {
            let buffer_id = r.u32("packet_out buffer_id")?;
            let in_port = r.u32("packet_out in_port")?;
            let actions_len = r.u16("packet_out actions_len")? as usize;
            r.skip(6, "packet_out padding")?;
            let actions = action::read_list(r.sub(actions_len, 0, "packet_out actions")?)?;
            Message::PacketOut(PacketOut { buffer_id, in_port, actions, data: r.rest().to_vec() })
        }
        kind::FLOW_MOD => {
            let cookie = r.u64("flow_mod cookie")?;
            let cookie_mask = r.u64("flow_mod cookie_mask")?;
            let table_id = r.u8("flow_mod table_id")?;
            let command = match r.u8("flow_mod command")? {
                0 => FlowModCommand::Add,
                1 => FlowModCommand::Modify,
                2 => FlowModCommand::ModifyStrict,
                3 => FlowModCommand::Delete,
                4 => FlowModCommand::DeleteStrict,
                c => return Err(DecodeError::Value { what: "flow_mod command", value: c.into(), rule: "0 to 4" }),
            };
            let idle_timeout = r.u16("flow_mod idle_timeout")?;
            let hard_timeout = r.u16("flow_mod hard_timeout")?;
            let priority = r.u16("flow_mod priority")?;
            let buffer_id = r.u32("flow_mod buffer_id")?;
            let out_port = r.u32("flow_mod out_port")?;
            let out_group = r.u32("flow_mod out_group")?;
            let flags = r.u16("flow_mod flags")?;
            r.skip(2, "flow_mod padding")?;
            let r#match = Match::read(r)?;
            let instructions = instruction::read_list(Reader::new(r.rest()))?;
            Message::FlowMod(FlowMod {
                cookie,
                cookie_mask,
                table_id,
                command,
                idle_timeout,
                hard_timeout,
                priority,
                buffer_id,
                out_port,
                out_group,
                flags,
                r#match,
                instructions,
            })
        }
        kind::MULTIPART_REQUEST => Message::MultipartRequest(MultipartRequest::read(r)?),
        kind::MULTIPART_REPLY => Message::MultipartReply(MultipartReply::read(r)?),
        _ => Message::Other { kind, body: r.rest().to_vec() },
    })
}

impl PortDesc {
    pub(crate) const LEN: usize = 64;

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u32(self.port_no);
        w.zeros(4);
        w.bytes(&self.hw_addr);
        w.zeros(2);
        // Up to 15 bytes, cut where a character ends (a name read from a switch's bytes that are
        // not UTF-8 holds replacement characters of 3 bytes each).
        let mut name = [0u8; 16];
        let n = (0..=self.name.len().min(15)).rev().find(|i| self.name.is_char_boundary(*i)).unwrap_or(0);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        w.bytes(&name);
        w.u32(self.config);
        w.u32(self.state);
        for f in self.features {
            w.u32(f);
        }
    }

    pub(crate) fn read(r: &mut Reader) -> Result<PortDesc, DecodeError> {
        let port_no = r.u32("port_no")?;
        r.skip(4, "port padding")?;
        let mut hw_addr = [0u8; 6];
        hw_addr.copy_from_slice(r.bytes(6, "port hw_addr")?);
        r.skip(2, "port padding")?;
        let raw = r.bytes(16, "port name")?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len()).min(15);
        let name = String::from_utf8_lossy(&raw[..end]).into_owned();
        let config = r.u32("port config")?;
        let state = r.u32("port state")?;
        let mut features = [0u32; 6];
        for f in &mut features {
            *f = r.u32("port features")?;
        }
        Ok(PortDesc { port_no, hw_addr, name, config, state, features })
    }
}

/// Body of a multipart message's type, for callers that match on it.
pub fn multipart_body(msg: &Message) -> Option<&MultipartBody> {
    match msg {
        Message::MultipartReply(m) => Some(&m.body),
        Message::MultipartRequest(m) => Some(&m.body),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::port;
    use crate::multipart::{FlowStats, FlowStatsRequest, MultipartReply, PortStats};
    use crate::oxm::{Oxm, OxmField};
    use std::net::Ipv4Addr;

    fn web_match() -> Match {
        Match {
            fields: vec![
                Oxm::eth_type(0x0800),
                Oxm::ip_proto(6),
                Oxm::ipv4(OxmField::Ipv4Src, Ipv4Addr::new(10, 0, 0, 0), 24),
                Oxm::port16(OxmField::TcpDst, 80),
            ],
        }
    }

    fn samples() -> Vec<Message> {
        let flow = FlowMod {
            cookie: 0x11,
            idle_timeout: 30,
            flags: FlowMod::SEND_FLOW_REM,
            ..FlowMod::add(
                200,
                web_match(),
                vec![
                    Instruction::ApplyActions(vec![
                        Action::PushVlan(0x8100),
                        Action::SetField(Oxm::vlan_vid(10)),
                        Action::output(3),
                        Action::output(port::CONTROLLER),
                    ]),
                    Instruction::GotoTable(2),
                ],
            )
        };
        vec![
            Message::Hello { versions: vec![1, 4] },
            Message::Hello { versions: vec![] },
            Message::Error(ErrorMsg { kind: 4, code: 9, data: vec![4, 14, 0, 8, 0, 0, 0, 1] }),
            Message::EchoRequest(b"ping".to_vec()),
            Message::EchoReply(vec![]),
            Message::FeaturesRequest,
            Message::FeaturesReply(Features {
                datapath_id: 0xabcdef,
                n_buffers: 0,
                n_tables: 254,
                auxiliary_id: 0,
                capabilities: 0x4f,
            }),
            Message::SetConfig { flags: 0, miss_send_len: 0xffff },
            Message::PacketIn(PacketIn {
                buffer_id: NO_BUFFER,
                total_len: 60,
                reason: 1,
                table_id: 0,
                cookie: 7,
                r#match: Match { fields: vec![Oxm::in_port(port::CONTROLLER)] },
                data: vec![0xaa; 60],
            }),
            Message::FlowRemoved(FlowRemoved {
                cookie: 1,
                priority: 2,
                reason: 0,
                table_id: 0,
                duration_sec: 3,
                duration_nsec: 4,
                idle_timeout: 5,
                hard_timeout: 6,
                packet_count: 7,
                byte_count: 8,
                r#match: web_match(),
            }),
            Message::PortStatus {
                reason: 0,
                port: PortDesc {
                    port_no: 1,
                    hw_addr: [2, 0, 0, 0, 0, 1],
                    name: "vm1-nic0".into(),
                    config: 0,
                    state: 4,
                    features: [1, 2, 3, 4, 10_000, 10_000],
                },
            },
            Message::PacketOut(PacketOut {
                buffer_id: NO_BUFFER,
                in_port: port::CONTROLLER,
                actions: vec![Action::output(port::TABLE)],
                data: vec![1; 42],
            }),
            Message::FlowMod(flow.clone()),
            Message::FlowMod(FlowMod::delete_by_cookie(0x11, u64::MAX)),
            Message::MultipartRequest(MultipartRequest::new(MultipartBody::FlowStatsRequest(FlowStatsRequest::all()))),
            Message::MultipartRequest(MultipartRequest::new(MultipartBody::PortStatsRequest { port_no: port::ANY })),
            Message::MultipartReply(MultipartReply {
                flags: crate::multipart::REPLY_MORE,
                body: MultipartBody::FlowStats(vec![FlowStats {
                    table_id: 0,
                    duration_sec: 1,
                    duration_nsec: 2,
                    priority: 200,
                    idle_timeout: 30,
                    hard_timeout: 0,
                    flags: 1,
                    cookie: 0x11,
                    packet_count: 5,
                    byte_count: 300,
                    r#match: web_match(),
                    instructions: flow.instructions.clone(),
                }]),
            }),
            Message::MultipartReply(MultipartReply {
                flags: 0,
                body: MultipartBody::PortStats(vec![PortStats {
                    port_no: 1,
                    rx_packets: 9,
                    tx_bytes: 99,
                    ..Default::default()
                }]),
            }),
            Message::BarrierRequest,
            Message::BarrierReply,
            Message::Other { kind: 24, body: vec![0; 16] },
        ]
    }

    #[test]
    fn every_message_reads_back_as_written() {
        for (i, m) in samples().into_iter().enumerate() {
            let bytes = encode(i as u32, &m).expect("encode");
            assert_eq!(frame_length(&bytes[..8].try_into().expect("header")).expect("length"), bytes.len());
            assert_eq!(decode(&bytes).expect("decode"), (i as u32, m));
        }
    }

    #[test]
    fn a_hello_from_open_vswitch_names_version_1_3() {
        // ovs-vswitchd with protocols=OpenFlow13: a version bitmap with bit 4 set.
        let bytes = [4, 0, 0, 16, 0, 0, 0, 9, 0, 1, 0, 8, 0, 0, 0, 0x10];
        assert_eq!(decode(&bytes).expect("hello"), (9, Message::Hello { versions: vec![4] }));
    }

    #[test]
    fn a_flow_mod_has_the_layout_of_the_specification() {
        let bytes = encode(1, &Message::FlowMod(FlowMod::add(200, web_match(), vec![]))).expect("encode");
        // header 8 + fixed part 40 + match (4 + 6 + 5 + 12 + 6 = 33, padded to 40).
        assert_eq!(bytes.len(), 88);
        assert_eq!(&bytes[48..52], &[0, 1, 0, 33]);
        // eth_type first: class 0x8000, field 5, no mask, 2 bytes.
        assert_eq!(&bytes[52..58], &[0x80, 0x00, 5 << 1, 2, 0x08, 0x00]);
        // the masked source: field 11 with the mask bit, 8 bytes.
        assert_eq!(&bytes[63..75], &[0x80, 0x00, (11 << 1) | 1, 8, 10, 0, 0, 0, 255, 255, 255, 0]);
    }

    #[test]
    fn cut_or_lying_messages_are_errors_not_panics() {
        for m in samples() {
            let bytes = encode(1, &m).expect("encode");
            for n in 8..bytes.len() {
                let mut cut = bytes[..n].to_vec();
                cut[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                let _ = decode(&cut);
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(decode(&long).is_err(), "a length that is not the bytes given is refused");
        }
        assert!(frame_length(&[4, 0, 0, 7, 0, 0, 0, 0]).is_err());
        assert_eq!(decode(&[1, 14, 0, 8, 0, 0, 0, 0]), Err(DecodeError::Version(1)));
        // An OXM field whose length does not fit its type.
        let mut bad =
            encode(1, &Message::FlowMod(FlowMod::add(1, Match { fields: vec![Oxm::eth_type(0x800)] }, vec![])))
                .expect("encode");
        bad[55] = 3;
        assert!(matches!(decode(&bad), Err(DecodeError::Length { .. }) | Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn a_port_name_that_is_not_utf8_is_written_back_whole_characters() {
        let mut bytes = encode(
            1,
            &Message::PortStatus {
                reason: 0,
                port: PortDesc {
                    port_no: 1,
                    hw_addr: [0; 6],
                    name: String::new(),
                    config: 0,
                    state: 0,
                    features: [0; 6],
                },
            },
        )
        .expect("encode");
        // The name's 16 bytes (after header 8, reason and padding 8, port_no and padding 8,
        // hw_addr and padding 8): a letter, then bytes that are not UTF-8 (each read as a
        // 3-byte replacement character, so 15 bytes would cut one in two).
        bytes[32] = b'a';
        bytes[33..47].copy_from_slice(&[0xff; 14]);
        let (_, first) = decode(&bytes).expect("decode");
        let again = encode(1, &first).expect("encode");
        assert_eq!(encode(1, &decode(&again).expect("decode").1).expect("encode"), again, "stable after one pass");
    }

    #[test]
    fn errors_are_named_as_the_specification_names_them() {
        assert_eq!(ErrorMsg { kind: 4, code: 9, data: vec![] }.describe(), "BAD_MATCH/BAD_PREREQ");
        assert_eq!(ErrorMsg { kind: 5, code: 1, data: vec![] }.describe(), "FLOW_MOD_FAILED/TABLE_FULL");
        assert_eq!(ErrorMsg { kind: 77, code: 1, data: vec![] }.describe(), "type 77 code 1");
    }
}
