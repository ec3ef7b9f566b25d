//! A VM restored from a template is a copy of the template's guest: its hostname, machine id,
//! random number generator and a clock stopped when the template was taken. Before anything
//! else runs in it, the guest agent is told the VM's own ([`GuestIdentity`]).

use super::Templates;
use crate::ControlError;
use oxvirt_hypervisor::{GuestIdentity, GuestRequest, Instance};
use oxvirt_model::Vm;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a template's guest agent has to answer a ping when the template is taken.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a restored guest's agent has to take its identity (many clones may start at once).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of fresh randomness each clone's generator is reseeded with.
const SEED_BYTES: usize = 32;

/// VM `vm`'s identity: its name as hostname, its id as machine id, fresh random bytes, now.
pub(crate) fn identity_of(vm: &Vm) -> Result<GuestIdentity, ControlError> {
    let mut seed = vec![0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| ControlError::Failed(format!("read /dev/urandom for a guest's seed: {e}")))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let machine_id = oxvirt_hypervisor::machine_id_from(&vm.id)
        .ok_or_else(|| ControlError::Failed(format!("VM id {} is not a UUID: no machine id", vm.id)))?;
    Ok(GuestIdentity {
        hostname: oxvirt_hypervisor::hostname_from(&vm.spec.name),
        machine_id,
        seed,
        time: (now.as_secs(), now.subsec_nanos()),
    })
}

impl Templates {
    /// Tells `instance` (VM `vm`, just resumed from its template's state) who it is, when the
    /// template's guest ran the agent. A clone whose agent does not take it fails to start
    /// (it would run as another guest's copy, drawing the same random numbers).
    pub(crate) async fn give_identity(&self, vm: &Vm, instance: &dyn Instance) -> Result<bool, ControlError> {
        let Some(name) = &vm.spec.template else { return Ok(false) };
        if !self.get(name).map(|t| t.agent).unwrap_or(false) {
            return Ok(false);
        }
        let request = GuestRequest::Identity(identity_of(vm)?);
        instance.ask_agent(&request, IDENTITY_TIMEOUT).await.map_err(|e| {
            ControlError::Failed(format!("the clone of template {name} was not given its identity: {e}"))
        })?;
        Ok(true)
    }

    /// Whether `instance`'s guest runs the agent (asked when a template is taken of it).
    pub(super) async fn has_agent(&self, instance: &dyn Instance) -> bool {
        instance.ask_agent(&GuestRequest::Ping, PING_TIMEOUT).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_gets_its_own_identity() {
        let mut vm = Vm {
            id: "0a1b2c3d-0000-4000-8000-00000000000f".into(),
            uid: None,
            host: None,
            host_reason: None,
            spec: oxvirt_model::VmSpec::new("Web_1", 1, oxvirt_model::ByteSize(64 << 20)),
            desired: oxvirt_model::DesiredState::Running,
            status: Default::default(),
            created_at: 0,
        };
        let (a, b) = (identity_of(&vm).unwrap(), identity_of(&vm).unwrap());
        assert_eq!(a.hostname, "web-1");
        assert_eq!(a.machine_id, "0a1b2c3d00004000800000000000000f");
        assert!(a.check().is_ok());
        assert_ne!(a.seed, b.seed, "every start draws a fresh seed");
        vm.id = "legacy".into();
        assert!(identity_of(&vm).is_err());
    }
}
