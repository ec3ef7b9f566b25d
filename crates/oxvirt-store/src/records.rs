//! JSON records on top of a [`Store`]: each kind of record lives under its own key prefix.

use crate::{Entry, Expect, Op, Store, StoreError};
use serde::{de::DeserializeOwned, Serialize};

/// A kind of record and where it lives in the key space.
pub trait Record: Serialize + DeserializeOwned {
    /// The key prefix, ending in `/`, e.g. `vms/`.
    const PREFIX: &'static str;
    fn key_of(name: &str) -> String {
        format!("{}{name}", Self::PREFIX)
    }
}

impl Record for oxvirt_model::Vm {
    const PREFIX: &'static str = "vms/";
}

impl Record for oxvirt_model::Task {
    const PREFIX: &'static str = "tasks/";
}

impl Record for oxvirt_model::Pool {
    const PREFIX: &'static str = "pools/";
}

/// Volumes are keyed `volumes/<pool>/<name>`: list one pool's with the prefix `volumes/<pool>/`.
impl Record for oxvirt_model::Volume {
    const PREFIX: &'static str = "volumes/";
}

/// Keyed `<network>/<id>`.
impl Record for oxvirt_model::FlowRule {
    const PREFIX: &'static str = "flowrules/";
}

impl Record for oxvirt_model::Network {
    const PREFIX: &'static str = "networks/";
}

/// Leases are keyed `ipam/<network>/<ip>`.
impl Record for oxvirt_model::Lease {
    const PREFIX: &'static str = "ipam/";
}

/// MAC claims are keyed `macs/<mac>` (lower case).
impl Record for oxvirt_model::MacClaim {
    const PREFIX: &'static str = "macs/";
}

impl Record for oxvirt_model::SecurityGroup {
    const PREFIX: &'static str = "secgroups/";
}

/// One record, `policy/host`.
impl Record for oxvirt_model::HostPolicy {
    const PREFIX: &'static str = "policy/";
}

impl Record for oxvirt_model::User {
    const PREFIX: &'static str = "users/";
}

/// One record, `acl/all`: the whole list, changed in one transaction.
impl Record for oxvirt_model::AclList {
    const PREFIX: &'static str = "acl/";
}

impl Record for oxvirt_model::Project {
    const PREFIX: &'static str = "projects/";
}

impl Record for oxvirt_model::ClusterPolicy {
    const PREFIX: &'static str = "cluster/";
}

/// Keyed by the VM's name.
impl Record for oxvirt_model::HaResource {
    const PREFIX: &'static str = "ha/resources/";
}

impl Record for oxvirt_model::HaGroup {
    const PREFIX: &'static str = "ha/groups/";
}

impl Record for oxvirt_model::BackupRepo {
    const PREFIX: &'static str = "backup-repos/";
}

impl Record for oxvirt_model::Template {
    const PREFIX: &'static str = "templates/";
}

impl Record for oxvirt_model::BackupJob {
    const PREFIX: &'static str = "backup-jobs/";
}

impl Record for oxvirt_model::BackupOrder {
    const PREFIX: &'static str = "backup-orders/";
}

impl Record for oxvirt_model::Migration {
    const PREFIX: &'static str = "migrations/";
}

impl Record for oxvirt_model::ApiToken {
    const PREFIX: &'static str = "tokens/";
}

fn decode<T: Record>(e: &Entry) -> Result<T, StoreError> {
    serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupt { key: e.key.clone(), reason: err.to_string() })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data types to JSON cannot fail: they have no maps with non-string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Typed access to records.
pub trait StoreExt {
    /// The record and the revision it was last changed at.
    fn get_record<T: Record>(&self, name: &str) -> Result<Option<(T, u64)>, StoreError>;
    fn list_records<T: Record>(&self) -> Result<Vec<(T, u64)>, StoreError>;
    /// The records whose names start with `prefix` (e.g. one pool's volumes: `pool/`).
    fn list_records_under<T: Record>(&self, prefix: &str) -> Result<Vec<(T, u64)>, StoreError>;
    fn put_record<T: Record>(&self, name: &str, value: &T, expect: Expect) -> Result<u64, StoreError>;
    fn delete_record<T: Record>(&self, name: &str, expect: Expect) -> Result<u64, StoreError>;
    /// Reads a record, changes it with `f` and writes it back if nobody changed it in between,
    /// retrying on conflict. Returns `None` when the record does not exist.
    fn update_record<T: Record>(&self, name: &str, f: impl FnMut(&mut T)) -> Result<Option<T>, StoreError>;
}

impl<S: Store + ?Sized> StoreExt for S {
    fn get_record<T: Record>(&self, name: &str) -> Result<Option<(T, u64)>, StoreError> {
        match self.get(&T::key_of(name))? {
            Some(e) => Ok(Some((decode(&e)?, e.revision))),
            None => Ok(None),
        }
    }

    fn list_records<T: Record>(&self) -> Result<Vec<(T, u64)>, StoreError> {
        self.list(T::PREFIX)?.iter().map(|e| Ok((decode(e)?, e.revision))).collect()
    }

    fn list_records_under<T: Record>(&self, prefix: &str) -> Result<Vec<(T, u64)>, StoreError> {
        self.list(&T::key_of(prefix))?.iter().map(|e| Ok((decode(e)?, e.revision))).collect()
    }

    fn put_record<T: Record>(&self, name: &str, value: &T, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::Put { key: T::key_of(name), value: encode(value), expect }])
    }

    fn delete_record<T: Record>(&self, name: &str, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::Delete { key: T::key_of(name), expect }])
    }

    fn update_record<T: Record>(&self, name: &str, mut f: impl FnMut(&mut T)) -> Result<Option<T>, StoreError> {
        loop {
            let Some((mut value, rev)) = self.get_record::<T>(name)? else { return Ok(None) };
            f(&mut value);
            match self.put_record(name, &value, Expect::Revision(rev)) {
                Ok(_) => return Ok(Some(value)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
