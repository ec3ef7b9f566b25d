//! Actions (OpenFlow 1.3 §7.2.5): what a flow does to a packet it matched.

use crate::oxm::Oxm;
use crate::wire::{fixed_len, pad8, read_all, tlv8, DecodeError, Reader, Writer};

/// Port numbers with a meaning of their own (`ofp_port_no`).
pub mod port {
    /// Ports above this are reserved.
    pub const MAX: u32 = 0xffff_ff00;
    pub const IN_PORT: u32 = 0xffff_fff8;
    /// Submit the packet to the first table (only in a packet-out).
    pub const TABLE: u32 = 0xffff_fff9;
    /// The switch's own L2 forwarding.
    pub const NORMAL: u32 = 0xffff_fffa;
    pub const FLOOD: u32 = 0xffff_fffb;
    pub const ALL: u32 = 0xffff_fffc;
    pub const CONTROLLER: u32 = 0xffff_fffd;
    pub const LOCAL: u32 = 0xffff_fffe;
    pub const ANY: u32 = 0xffff_ffff;
}

/// `max_len` asking the switch to send the whole packet to the controller.
pub const NO_BUFFER_LEN: u16 = 0xffff;

const OUTPUT: u16 = 0;
const PUSH_VLAN: u16 = 17;
const POP_VLAN: u16 = 18;
const GROUP: u16 = 22;
const SET_FIELD: u16 = 25;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send out of a port (`max_len`: bytes sent to the controller when `port` is CONTROLLER).
    Output {
        port: u32,
        max_len: u16,
    },
    /// Push a VLAN tag with this ethertype (0x8100).
    PushVlan(u16),
    PopVlan,
    SetField(Oxm),
    Group(u32),
    /// An action oxvirt does not build, kept as it came.
    Other {
        kind: u16,
        body: Vec<u8>,
    },
}

impl Action {
    pub fn output(port: u32) -> Action {
        Action::Output { port, max_len: if port == port::CONTROLLER { NO_BUFFER_LEN } else { 0 } }
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let start = w.len();
        match self {
            Action::Output { port, max_len } => {
                w.u16(OUTPUT);
                w.u16(16);
                w.u32(*port);
                w.u16(*max_len);
                w.zeros(6);
            }
            Action::PushVlan(ethertype) => {
                w.u16(PUSH_VLAN);
                w.u16(8);
                w.u16(*ethertype);
                w.zeros(2);
            }
            Action::PopVlan => {
                w.u16(POP_VLAN);
                w.u16(8);
                w.zeros(4);
            }
            Action::Group(id) => {
                w.u16(GROUP);
                w.u16(8);
                w.u32(*id);
            }
            Action::SetField(oxm) => {
                w.u16(SET_FIELD);
                w.u16(pad8(4 + oxm.wire_len()) as u16);
                oxm.write(w);
                w.pad8_from(start);
            }
            Action::Other { kind, body } => {
                w.u16(*kind);
                w.u16((4 + body.len()) as u16);
                w.bytes(body);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Action, DecodeError> {
        let (kind, len, mut b) = tlv8(r, "action")?;
        let fixed = |want: usize, what: &'static str| fixed_len(len, want, what);
        Ok(match kind {
            OUTPUT => {
                fixed(16, "output action")?;
                let port = b.u32("output port")?;
                let max_len = b.u16("output max_len")?;
                Action::Output { port, max_len }
            }
            PUSH_VLAN => {
                fixed(8, "push_vlan action")?;
                Action::PushVlan(b.u16("push_vlan ethertype")?)
            }
            POP_VLAN => {
                fixed(8, "pop_vlan action")?;
                Action::PopVlan
            }
            GROUP => {
                fixed(8, "group action")?;
                Action::Group(b.u32("group id")?)
            }
            SET_FIELD => {
                let oxm = Oxm::read(&mut b)?;
                if pad8(4 + oxm.wire_len()) != len {
                    return Err(DecodeError::Length {
                        what: "set_field action",
                        length: len,
                        rule: "its field padded to 8",
                    });
                }
                Action::SetField(oxm)
            }
            _ => Action::Other { kind, body: b.rest().to_vec() },
        })
    }
}

pub(crate) fn write_list(actions: &[Action], w: &mut Writer) {
    for a in actions {
        a.write(w);
    }
}

pub(crate) fn read_list(r: Reader) -> Result<Vec<Action>, DecodeError> {
    read_all(r, Action::read)
}
