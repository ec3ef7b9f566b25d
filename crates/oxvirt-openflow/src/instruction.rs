//! Instructions (OpenFlow 1.3 §7.2.4): a flow's actions applied now or written to the packet's
//! set, or a jump to a later table.

use crate::action::{self, Action};
use crate::wire::{fixed_len, read_all, tlv8, DecodeError, Reader, Writer};

const GOTO_TABLE: u16 = 1;
const WRITE_METADATA: u16 = 2;
const WRITE_ACTIONS: u16 = 3;
const APPLY_ACTIONS: u16 = 4;
const CLEAR_ACTIONS: u16 = 5;
const METER: u16 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    GotoTable(u8),
    WriteMetadata {
        metadata: u64,
        mask: u64,
    },
    WriteActions(Vec<Action>),
    ApplyActions(Vec<Action>),
    ClearActions,
    Meter(u32),
    /// An instruction oxvirt does not build, kept as it came.
    Other {
        kind: u16,
        body: Vec<u8>,
    },
}

impl Instruction {
    pub(crate) fn write(&self, w: &mut Writer) {
        let start = w.len();
        match self {
            Instruction::GotoTable(t) => {
                w.u16(GOTO_TABLE);
                w.u16(8);
                w.u8(*t);
                w.zeros(3);
            }
            Instruction::WriteMetadata { metadata, mask } => {
                w.u16(WRITE_METADATA);
                w.u16(24);
                w.zeros(4);
                w.u64(*metadata);
                w.u64(*mask);
            }
            Instruction::WriteActions(a) | Instruction::ApplyActions(a) => {
                w.u16(if matches!(self, Instruction::WriteActions(_)) { WRITE_ACTIONS } else { APPLY_ACTIONS });
                w.u16(0);
                w.zeros(4);
                action::write_list(a, w);
                let len = w.len() - start;
                w.patch_u16(start + 2, len as u16);
            }
            Instruction::ClearActions => {
                w.u16(CLEAR_ACTIONS);
                w.u16(8);
                w.zeros(4);
            }
            Instruction::Meter(id) => {
                w.u16(METER);
                w.u16(8);
                w.u32(*id);
            }
            Instruction::Other { kind, body } => {
                w.u16(*kind);
                w.u16((4 + body.len()) as u16);
                w.bytes(body);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Instruction, DecodeError> {
        let (kind, len, mut b) = tlv8(r, "instruction")?;
        let fixed = |want: usize, what: &'static str| fixed_len(len, want, what);
        Ok(match kind {
            GOTO_TABLE => {
                fixed(8, "goto_table")?;
                Instruction::GotoTable(b.u8("goto_table table")?)
            }
            WRITE_METADATA => {
                fixed(24, "write_metadata")?;
                b.skip(4, "write_metadata padding")?;
                Instruction::WriteMetadata { metadata: b.u64("metadata")?, mask: b.u64("metadata mask")? }
            }
            WRITE_ACTIONS | APPLY_ACTIONS => {
                b.skip(4, "instruction padding")?;
                let actions = action::read_list(b)?;
                if kind == WRITE_ACTIONS {
                    Instruction::WriteActions(actions)
                } else {
                    Instruction::ApplyActions(actions)
                }
            }
            CLEAR_ACTIONS => {
                fixed(8, "clear_actions")?;
                Instruction::ClearActions
            }
            METER => {
                fixed(8, "meter")?;
                Instruction::Meter(b.u32("meter id")?)
            }
            _ => Instruction::Other { kind, body: b.rest().to_vec() },
        })
    }
}

pub(crate) fn write_list(list: &[Instruction], w: &mut Writer) {
    for i in list {
        i.write(w);
    }
}

pub(crate) fn read_list(r: Reader) -> Result<Vec<Instruction>, DecodeError> {
    read_all(r, Instruction::read)
}
