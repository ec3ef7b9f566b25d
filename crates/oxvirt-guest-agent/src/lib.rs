//! The guest agent of oxvirt's reference guest and the protocol oxvirtd speaks to it.
//!
//! oxvirtd reaches the agent through a virtio-serial port named [`PORT_NAME`], one line per
//! request and one per reply ([`protocol`]). A VM restored from a template is a copy of
//! another guest's memory: the same hostname, machine id, random number generator state and a
//! clock stopped when the template was taken. The agent gives it its own ([`protocol::Identity`]).
//! The binary (`src/main.rs`, Linux only) runs in the guest; the host uses [`protocol`] alone.

pub mod protocol;

/// The name of the virtio-serial port (`virtserialport,name=...`) the agent listens on.
pub const PORT_NAME: &str = "org.oxvirt.agent";
