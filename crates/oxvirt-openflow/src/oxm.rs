//! A flow's match: `ofp_match` of type OXM, a list of TLV fields (OpenFlow 1.3 §7.2.2).

use crate::wire::{pad8, DecodeError, Reader, Writer};
use std::net::Ipv4Addr;

/// The class of OpenFlow's own fields.
pub const CLASS_BASIC: u16 = 0x8000;
/// `ofp_match.type` of an OXM match.
const MATCH_TYPE_OXM: u16 = 1;
/// Set in `vlan_vid` when a packet carries a VLAN tag.
pub const VID_PRESENT: u16 = 0x1000;

/// The fields of class `OFPXMC_OPENFLOW_BASIC` oxvirt builds flows with, by their code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum OxmField {
    InPort = 0,
    EthDst = 3,
    EthSrc = 4,
    EthType = 5,
    VlanVid = 6,
    VlanPcp = 7,
    IpProto = 10,
    Ipv4Src = 11,
    Ipv4Dst = 12,
    TcpSrc = 13,
    TcpDst = 14,
    UdpSrc = 15,
    UdpDst = 16,
    Icmpv4Type = 19,
    Icmpv4Code = 20,
    ArpOp = 21,
    ArpSpa = 22,
    ArpTpa = 23,
}

impl OxmField {
    pub const ALL: [OxmField; 18] = [
        OxmField::InPort,
        OxmField::EthDst,
        OxmField::EthSrc,
        OxmField::EthType,
        OxmField::VlanVid,
        OxmField::VlanPcp,
        OxmField::IpProto,
        OxmField::Ipv4Src,
        OxmField::Ipv4Dst,
        OxmField::TcpSrc,
        OxmField::TcpDst,
        OxmField::UdpSrc,
        OxmField::UdpDst,
        OxmField::Icmpv4Type,
        OxmField::Icmpv4Code,
        OxmField::ArpOp,
        OxmField::ArpSpa,
        OxmField::ArpTpa,
    ];

    pub fn from_code(code: u8) -> Option<OxmField> {
        OxmField::ALL.into_iter().find(|f| *f as u8 == code)
    }

    /// Bytes of the field's value (its mask has as many).
    pub fn size(self) -> usize {
        match self {
            OxmField::VlanPcp | OxmField::IpProto | OxmField::Icmpv4Type | OxmField::Icmpv4Code => 1,
            OxmField::EthType
            | OxmField::VlanVid
            | OxmField::TcpSrc
            | OxmField::TcpDst
            | OxmField::UdpSrc
            | OxmField::UdpDst
            | OxmField::ArpOp => 2,
            OxmField::InPort | OxmField::Ipv4Src | OxmField::Ipv4Dst | OxmField::ArpSpa | OxmField::ArpTpa => 4,
            OxmField::EthDst | OxmField::EthSrc => 6,
        }
    }
}

/// One match field: class, field code, value, and a mask when the field is matched in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oxm {
    pub class: u16,
    pub field: u8,
    pub value: Vec<u8>,
    pub mask: Option<Vec<u8>>,
}

impl Oxm {
    pub fn exact(field: OxmField, value: &[u8]) -> Oxm {
        Oxm { class: CLASS_BASIC, field: field as u8, value: value.to_vec(), mask: None }
    }

    pub fn masked(field: OxmField, value: &[u8], mask: &[u8]) -> Oxm {
        Oxm { class: CLASS_BASIC, field: field as u8, value: value.to_vec(), mask: Some(mask.to_vec()) }
    }

    pub fn in_port(port: u32) -> Oxm {
        Oxm::exact(OxmField::InPort, &port.to_be_bytes())
    }
    pub fn eth_type(t: u16) -> Oxm {
        Oxm::exact(OxmField::EthType, &t.to_be_bytes())
    }
    pub fn ip_proto(p: u8) -> Oxm {
        Oxm::exact(OxmField::IpProto, &[p])
    }
    /// A tagged packet's VLAN id (the present bit is added).
    pub fn vlan_vid(vid: u16) -> Oxm {
        Oxm::exact(OxmField::VlanVid, &(vid | VID_PRESENT).to_be_bytes())
    }
    /// An IPv4 address field matched on its first `prefix` bits (exact at 32).
    pub fn ipv4(field: OxmField, addr: Ipv4Addr, prefix: u8) -> Oxm {
        let mask = if prefix >= 32 { u32::MAX } else { !(u32::MAX >> prefix) };
        let value = (u32::from(addr) & mask).to_be_bytes();
        if prefix >= 32 {
            Oxm::exact(field, &value)
        } else {
            Oxm::masked(field, &value, &mask.to_be_bytes())
        }
    }
    pub fn port16(field: OxmField, port: u16) -> Oxm {
        Oxm::exact(field, &port.to_be_bytes())
    }

    /// The field, when it is one of the basic class oxvirt knows.
    pub fn known(&self) -> Option<OxmField> {
        if self.class == CLASS_BASIC {
            OxmField::from_code(self.field)
        } else {
            None
        }
    }

    fn payload_len(&self) -> usize {
        self.value.len() + self.mask.as_ref().map_or(0, Vec::len)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u16(self.class);
        w.u8((self.field << 1) | u8::from(self.mask.is_some()));
        w.u8(self.payload_len() as u8);
        w.bytes(&self.value);
        if let Some(m) = &self.mask {
            w.bytes(m);
        }
    }

    /// Bytes this field takes on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        4 + self.payload_len()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Oxm, DecodeError> {
        let class = r.u16("oxm class")?;
        let fh = r.u8("oxm field")?;
        let len = r.u8("oxm length")? as usize;
        let (field, has_mask) = (fh >> 1, fh & 1 == 1);
        let payload = r.bytes(len, "oxm value")?;
        if has_mask && !len.is_multiple_of(2) {
            return Err(DecodeError::Length {
                what: "masked oxm",
                length: len,
                rule: "value and mask are equal halves",
            });
        }
        if class == CLASS_BASIC {
            if let Some(known) = OxmField::from_code(field) {
                let want = known.size() * if has_mask { 2 } else { 1 };
                if len != want {
                    return Err(DecodeError::Length {
                        what: "basic oxm field",
                        length: len,
                        rule: "its type's size (twice when masked)",
                    });
                }
            }
        }
        let (value, mask) = if has_mask {
            let (v, m) = payload.split_at(len / 2);
            (v.to_vec(), Some(m.to_vec()))
        } else {
            (payload.to_vec(), None)
        };
        Ok(Oxm { class, field, value, mask })
    }
}

/// A flow's match: the fields in order (prerequisites first, as OpenFlow asks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub fields: Vec<Oxm>,
}

impl Match {
    /// Matches every packet.
    pub fn any() -> Match {
        Match::default()
    }

    /// The same match with its fields in one order (by class, then field code), for comparing
    /// a match oxvirt sent with the one a switch reports (Open vSwitch lists fields in its own
    /// order).
    pub fn canonical(&self) -> Match {
        let mut fields = self.fields.clone();
        fields.sort_by_key(|f| (f.class, f.field));
        Match { fields }
    }

    pub fn get(&self, field: OxmField) -> Option<&Oxm> {
        self.fields.iter().find(|f| f.known() == Some(field))
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        let start = w.len();
        let len = 4 + self.fields.iter().map(Oxm::wire_len).sum::<usize>();
        w.u16(MATCH_TYPE_OXM);
        w.u16(len as u16);
        for f in &self.fields {
            f.write(w);
        }
        w.pad8_from(start);
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Match, DecodeError> {
        let kind = r.u16("match type")?;
        if kind != MATCH_TYPE_OXM {
            return Err(DecodeError::Value {
                what: "match type",
                value: kind.into(),
                rule: "only OXM (1) in OpenFlow 1.3",
            });
        }
        let len = r.u16("match length")? as usize;
        let mut fields_r = r.sub(len, 4, "match fields")?;
        let mut fields = Vec::new();
        while fields_r.remaining() > 0 {
            fields.push(Oxm::read(&mut fields_r)?);
        }
        r.skip(pad8(len) - len, "match padding")?;
        Ok(Match { fields })
    }
}
