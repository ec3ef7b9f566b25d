//! Security groups: create, read, replace, delete. A change reaches the firewall at once.

use crate::{now_millis, ControlError};
use oxvirt_model::{SecurityGroup, SecurityGroupSpec, ValidationError};
use oxvirt_store::{Expect, StoreExt};

crate::service! {
    /// Security groups: records, and rules made into the firewall.
    SecurityGroups, security_groups
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound { kind: "security group", name: name.into() }
}

impl SecurityGroups {
    pub fn list_security_groups(&self) -> Result<Vec<SecurityGroup>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<SecurityGroup>()?.into_iter().map(|(g, _)| g).collect())
    }

    pub fn get_security_group(&self, name: &str) -> Result<SecurityGroup, ControlError> {
        self.ctl.inner.store.get_record::<SecurityGroup>(name)?.map(|(g, _)| g).ok_or_else(|| not_found(name))
    }

    pub fn create_security_group(&self, spec: SecurityGroupSpec) -> Result<SecurityGroup, ControlError> {
        spec.validate()?;
        let g = SecurityGroup { spec, created_at: now_millis() };
        match self.ctl.inner.store.put_record(&g.spec.name, &g, Expect::Absent) {
            Ok(_) => Ok(g),
            Err(oxvirt_store::StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("a security group named {:?} already exists", g.spec.name),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a group's description and rules; NICs that use it are filtered anew at once.
    pub async fn replace_security_group(
        &self,
        name: &str,
        spec: SecurityGroupSpec,
    ) -> Result<SecurityGroup, ControlError> {
        spec.validate()?;
        if spec.name != name {
            return Err(ControlError::invalid(
                "name",
                format!("must be the group's name, {name} (groups are not renamed)"),
            ));
        }
        let (old, rev) = self.ctl.inner.store.get_record::<SecurityGroup>(name)?.ok_or_else(|| not_found(name))?;
        let g = SecurityGroup { spec, created_at: old.created_at };
        self.ctl.inner.store.put_record(name, &g, Expect::Revision(rev))?;
        self.ctl.networks().refresh_firewall().await?;
        Ok(g)
    }

    /// Deletes a group no NIC uses.
    pub fn delete_security_group(&self, name: &str) -> Result<(), ControlError> {
        let (_, rev) = self.ctl.inner.store.get_record::<SecurityGroup>(name)?.ok_or_else(|| not_found(name))?;
        let users: Vec<String> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v| v.spec.nics.iter().any(|n| n.security_groups.iter().any(|g| g == name)))
            .map(|v| v.spec.name)
            .collect();
        if !users.is_empty() {
            return Err(ControlError::InUse(format!("security group {name} is used by VM(s) {}", users.join(", "))));
        }
        self.ctl.inner.store.delete_record::<SecurityGroup>(name, Expect::Revision(rev))?;
        Ok(())
    }
}
