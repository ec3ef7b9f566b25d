//! Multipart messages (OpenFlow 1.3 §7.3.5): statistics of flows and ports, and port
//! descriptions, asked for and answered in parts.

use crate::instruction::{self, Instruction};
use crate::message::{PortDesc, GROUP_ANY, TABLE_ALL};
use crate::oxm::Match;
use crate::wire::{DecodeError, Reader, Writer};

const FLOW: u16 = 1;
const PORT_STATS: u16 = 4;
const PORT_DESC: u16 = 13;

/// Set on every part of a reply but the last.
pub const REPLY_MORE: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartRequest {
    pub flags: u16,
    pub body: MultipartBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartReply {
    pub flags: u16,
    pub body: MultipartBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartBody {
    FlowStatsRequest(FlowStatsRequest),
    FlowStats(Vec<FlowStats>),
    /// Statistics of one port, or of every port ([`crate::port::ANY`]).
    PortStatsRequest {
        port_no: u32,
    },
    PortStats(Vec<PortStats>),
    PortDescRequest,
    PortDesc(Vec<PortDesc>),
    /// A kind oxvirt does not read, kept as it came.
    Other {
        kind: u16,
        body: Vec<u8>,
    },
}

/// Which flows' statistics to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStatsRequest {
    pub table_id: u8,
    pub out_port: u32,
    pub out_group: u32,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub r#match: Match,
}

impl FlowStatsRequest {
    /// Every flow of every table.
    pub fn all() -> FlowStatsRequest {
        FlowStatsRequest {
            table_id: TABLE_ALL,
            out_port: crate::action::port::ANY,
            out_group: GROUP_ANY,
            cookie: 0,
            cookie_mask: 0,
            r#match: Match::any(),
        }
    }
}

/// One flow with its counters (`ofp_flow_stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    pub table_id: u8,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub priority: u16,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub flags: u16,
    pub cookie: u64,
    pub packet_count: u64,
    pub byte_count: u64,
    pub r#match: Match,
    pub instructions: Vec<Instruction>,
}

/// One port's counters (`ofp_port_stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    pub port_no: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_frame_err: u64,
    pub rx_over_err: u64,
    pub rx_crc_err: u64,
    pub collisions: u64,
    pub duration_sec: u32,
    pub duration_nsec: u32,
}

const PORT_STATS_LEN: usize = 112;

impl MultipartBody {
    fn kind(&self) -> u16 {
        match self {
            MultipartBody::FlowStatsRequest(_) | MultipartBody::FlowStats(_) => FLOW,
            MultipartBody::PortStatsRequest { .. } | MultipartBody::PortStats(_) => PORT_STATS,
            MultipartBody::PortDescRequest | MultipartBody::PortDesc(_) => PORT_DESC,
            MultipartBody::Other { kind, .. } => *kind,
        }
    }

    fn write(&self, flags: u16, w: &mut Writer) {
        w.u16(self.kind());
        w.u16(flags);
        w.zeros(4);
        match self {
            MultipartBody::FlowStatsRequest(q) => {
                w.u8(q.table_id);
                w.zeros(3);
                w.u32(q.out_port);
                w.u32(q.out_group);
                w.zeros(4);
                w.u64(q.cookie);
                w.u64(q.cookie_mask);
                q.r#match.write(w);
            }
            MultipartBody::FlowStats(list) => {
                for f in list {
                    let start = w.len();
                    w.u16(0);
                    w.u8(f.table_id);
                    w.zeros(1);
                    w.u32(f.duration_sec);
                    w.u32(f.duration_nsec);
                    w.u16(f.priority);
                    w.u16(f.idle_timeout);
                    w.u16(f.hard_timeout);
                    w.u16(f.flags);
                    w.zeros(4);
                    w.u64(f.cookie);
                    w.u64(f.packet_count);
                    w.u64(f.byte_count);
                    f.r#match.write(w);
                    instruction::write_list(&f.instructions, w);
                    let len = w.len() - start;
                    w.patch_u16(start, len as u16);
                }
            }
            MultipartBody::PortStatsRequest { port_no } => {
                w.u32(*port_no);
                w.zeros(4);
            }
            MultipartBody::PortStats(list) => {
                for p in list {
                    w.u32(p.port_no);
                    w.zeros(4);
                    for v in [
                        p.rx_packets,
                        p.tx_packets,
                        p.rx_bytes,
                        p.tx_bytes,
                        p.rx_dropped,
                        p.tx_dropped,
                        p.rx_errors,
                        p.tx_errors,
                        p.rx_frame_err,
                        p.rx_over_err,
                        p.rx_crc_err,
                        p.collisions,
                    ] {
                        w.u64(v);
                    }
                    w.u32(p.duration_sec);
                    w.u32(p.duration_nsec);
                }
            }
            MultipartBody::PortDescRequest => {}
            MultipartBody::PortDesc(list) => list.iter().for_each(|p| p.write(w)),
            MultipartBody::Other { body, .. } => w.bytes(body),
        }
    }

    fn read(r: &mut Reader, reply: bool) -> Result<(u16, MultipartBody), DecodeError> {
        let kind = r.u16("multipart type")?;
        let flags = r.u16("multipart flags")?;
        r.skip(4, "multipart padding")?;
        let body = match (kind, reply) {
            (FLOW, false) => {
                let table_id = r.u8("flow stats table_id")?;
                r.skip(3, "flow stats padding")?;
                let out_port = r.u32("flow stats out_port")?;
                let out_group = r.u32("flow stats out_group")?;
                r.skip(4, "flow stats padding")?;
                let cookie = r.u64("flow stats cookie")?;
                let cookie_mask = r.u64("flow stats cookie_mask")?;
                let r#match = Match::read(r)?;
                MultipartBody::FlowStatsRequest(FlowStatsRequest {
                    table_id,
                    out_port,
                    out_group,
                    cookie,
                    cookie_mask,
                    r#match,
                })
            }
            (FLOW, true) => {
                let mut list = Vec::new();
                while r.remaining() > 0 {
                    let len = r.u16("flow stats length")? as usize;
                    let mut e = r.sub(len, 2, "flow stats entry")?;
                    let table_id = e.u8("flow table_id")?;
                    e.skip(1, "flow padding")?;
                    let duration_sec = e.u32("flow duration_sec")?;
                    let duration_nsec = e.u32("flow duration_nsec")?;
                    let priority = e.u16("flow priority")?;
                    let idle_timeout = e.u16("flow idle_timeout")?;
                    let hard_timeout = e.u16("flow hard_timeout")?;
                    let flags = e.u16("flow flags")?;
                    e.skip(4, "flow padding")?;
                    let cookie = e.u64("flow cookie")?;
                    let packet_count = e.u64("flow packet_count")?;
                    let byte_count = e.u64("flow byte_count")?;
                    let r#match = Match::read(&mut e)?;
                    let instructions = instruction::read_list(e)?;
                    list.push(FlowStats {
                        table_id,
                        duration_sec,
                        duration_nsec,
                        priority,
                        idle_timeout,
                        hard_timeout,
                        flags,
                        cookie,
                        packet_count,
                        byte_count,
                        r#match,
                        instructions,
                    });
                }
                MultipartBody::FlowStats(list)
            }
            (PORT_STATS, false) => {
                let port_no = r.u32("port stats port_no")?;
                r.skip(4, "port stats padding")?;
                MultipartBody::PortStatsRequest { port_no }
            }
            (PORT_STATS, true) => {
                let mut list = Vec::new();
                while r.remaining() > 0 {
                    let mut e = r.sub(PORT_STATS_LEN, 0, "port stats entry")?;
                    let port_no = e.u32("port_no")?;
                    e.skip(4, "port stats padding")?;
                    let mut c = [0u64; 12];
                    for v in &mut c {
                        *v = e.u64("port counter")?;
                    }
                    list.push(PortStats {
                        port_no,
                        rx_packets: c[0],
                        tx_packets: c[1],
                        rx_bytes: c[2],
                        tx_bytes: c[3],
                        rx_dropped: c[4],
                        tx_dropped: c[5],
                        rx_errors: c[6],
                        tx_errors: c[7],
                        rx_frame_err: c[8],
                        rx_over_err: c[9],
                        rx_crc_err: c[10],
                        collisions: c[11],
                        duration_sec: e.u32("port duration_sec")?,
                        duration_nsec: e.u32("port duration_nsec")?,
                    });
                }
                MultipartBody::PortStats(list)
            }
            (PORT_DESC, false) => MultipartBody::PortDescRequest,
            (PORT_DESC, true) => {
                let mut list = Vec::new();
                while r.remaining() > 0 {
                    list.push(PortDesc::read(&mut r.sub(PortDesc::LEN, 0, "port description")?)?);
                }
                MultipartBody::PortDesc(list)
            }
            _ => MultipartBody::Other { kind, body: r.rest().to_vec() },
        };
        Ok((flags, body))
    }
}

impl MultipartRequest {
    pub fn new(body: MultipartBody) -> MultipartRequest {
        MultipartRequest { flags: 0, body }
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        self.body.write(self.flags, w)
    }
    pub(crate) fn read(r: &mut Reader) -> Result<MultipartRequest, DecodeError> {
        let (flags, body) = MultipartBody::read(r, false)?;
        Ok(MultipartRequest { flags, body })
    }
}

impl MultipartReply {
    /// More parts of this reply follow.
    pub fn more(&self) -> bool {
        self.flags & REPLY_MORE != 0
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        self.body.write(self.flags, w)
    }
    pub(crate) fn read(r: &mut Reader) -> Result<MultipartReply, DecodeError> {
        let (flags, body) = MultipartBody::read(r, true)?;
        Ok(MultipartReply { flags, body })
    }
}
