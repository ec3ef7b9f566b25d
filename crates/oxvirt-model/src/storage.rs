//! Storage pools and volumes (as Proxmox storages and Incus storage pools).

use crate::vm::validate_host_path;
use crate::{validate_name, ByteSize, DiskFormat, Millis, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKind {
    /// A local directory.
    #[default]
    Dir,
    /// A directory that several hosts mount (NFS and the like): its volumes can be reached from
    /// another host, so migration and HA need not copy them.
    SharedDir,
    /// Block volumes served over the network by qemu-storage-daemon (NBD), which oxvirt starts and
    /// supervises; VMs reach them with QEMU's own NBD client (a SAN, in effect).
    Nbd,
}

impl PoolKind {
    pub fn is_shared(self) -> bool {
        matches!(self, PoolKind::SharedDir | PoolKind::Nbd)
    }
}

fn default_overcommit() -> f64 {
    2.0
}

/// What a pool should be: the part the user writes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub kind: PoolKind,
    /// The host directory that holds the pool's volumes.
    pub path: String,
    /// How far the volumes' virtual sizes may exceed the pool's size (thin provisioning), e.g.
    /// 2.0 = twice. New volumes beyond it are refused.
    #[serde(default = "default_overcommit")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub overcommit: f64,
    /// For `nbd` pools: how many paths (export daemons) serve the volumes. With more than one,
    /// each VM disk reaches its volume through a multipath proxy and survives a path failing;
    /// such a pool holds raw volumes, the one format two servers may share.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 4))]
    pub paths: u8,
    /// In a cluster, the pool's directory on named hosts where it is not `path` (as Incus keeps a
    /// pool's `source` per member): each host of a local pool has its own directory.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub host_paths: std::collections::BTreeMap<String, String>,
}

fn one() -> u8 {
    1
}

impl PoolSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_host_path("path", &self.path)?;
        if self.path == "/" {
            return Err(ValidationError::new("path", "must not be the root directory"));
        }
        if !(self.overcommit.is_finite() && (1.0..=100.0).contains(&self.overcommit)) {
            return Err(ValidationError::new("overcommit", "must be from 1.0 to 100.0"));
        }
        if !(1..=4).contains(&self.paths) {
            return Err(ValidationError::new("paths", "must be from 1 to 4"));
        }
        if self.paths > 1 && self.kind != PoolKind::Nbd {
            return Err(ValidationError::new("paths", "only nbd pools have several paths"));
        }
        for (host, path) in &self.host_paths {
            let field = format!("host_paths.{host}");
            validate_name("host_paths", host)?;
            validate_host_path(&field, path)?;
            if path == "/" {
                return Err(ValidationError::new(field, "must not be the root directory"));
            }
        }
        if !self.host_paths.is_empty() && self.kind == PoolKind::Nbd {
            return Err(ValidationError::new("host_paths", "an nbd pool is one store served to every host"));
        }
        Ok(())
    }

    /// The pool's directory on `host` (or on a single host).
    pub fn path_on(&self, host: Option<&str>) -> &str {
        host.and_then(|h| self.host_paths.get(h)).map(String::as_str).unwrap_or(&self.path)
    }
}

/// A pool as the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Pool {
    pub spec: PoolSpec,
    pub created_at: Millis,
}

/// A pool's capacity, measured when asked.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PoolUsage {
    /// Size of the file system under the pool.
    pub size: u64,
    /// Used on that file system (by anything).
    pub used: u64,
    /// Free on that file system.
    pub free: u64,
    /// Sum of the volumes' virtual sizes.
    pub provisioned: u64,
    /// Blocks the volumes really take.
    pub allocated: u64,
    pub volumes: usize,
}

/// A pool with its usage, as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PoolView {
    #[serde(flatten)]
    pub pool: Pool,
    pub usage: PoolUsage,
}

/// A request for a new volume.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    /// Virtual size. Optional for clones and imports (taken from the source).
    #[serde(default)]
    pub size: Option<ByteSize>,
    #[serde(default)]
    pub format: DiskFormat,
}

impl VolumeSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if let Some(s) = self.size {
            if s.0 < 1024 * 1024 || !s.0.is_multiple_of(512) {
                return Err(ValidationError::new("size", "must be at least 1MiB and a multiple of 512 bytes"));
            }
            if s.0 > 64 << 40 {
                return Err(ValidationError::new("size", "must be at most 64TiB"));
            }
        }
        Ok(())
    }
}

/// A point-in-time copy inside a qcow2 volume.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VolumeSnapshot {
    pub name: String,
    pub created_at: Millis,
}

/// A volume as the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Volume {
    pub pool: String,
    pub name: String,
    pub format: DiskFormat,
    /// Virtual size.
    pub size: ByteSize,
    /// For a linked clone: the volume (`pool/name`) it is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    /// The VM it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<VolumeSnapshot>,
    pub created_at: Millis,
    /// In a cluster, for a volume of a local pool: the host whose disk holds it (it moves with
    /// its VM's migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Volume {
    /// `pool/name`, the way VMs and clones refer to a volume.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }
}

/// Splits and checks a `pool/name` volume reference.
pub fn parse_volume_ref(field: &str, r: &str) -> Result<(String, String), ValidationError> {
    let Some((pool, name)) = r.split_once('/') else {
        return Err(ValidationError::new(field, "must be POOL/VOLUME"));
    };
    validate_name(field, pool)?;
    validate_name(field, name)?;
    Ok((pool.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_rules() {
        let ok = PoolSpec {
            name: "local".into(),
            kind: PoolKind::Dir,
            path: "/var/lib/oxvirt/pools/local".into(),
            overcommit: 2.0,
            paths: 1,
            host_paths: [("host-b".to_string(), "/srv/local".to_string())].into(),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.path_on(Some("host-b")), "/srv/local");
        assert_eq!(ok.path_on(Some("host-a")), "/var/lib/oxvirt/pools/local");
        assert_eq!(ok.path_on(None), "/var/lib/oxvirt/pools/local");
        for (mutate, field) in [
            (Box::new(|p: &mut PoolSpec| p.path = "rel".into()) as Box<dyn Fn(&mut PoolSpec)>, "path"),
            (Box::new(|p: &mut PoolSpec| p.path = "/".into()), "path"),
            (Box::new(|p: &mut PoolSpec| p.path = "/a/../etc".into()), "path"),
            (Box::new(|p: &mut PoolSpec| p.overcommit = 0.5), "overcommit"),
            (Box::new(|p: &mut PoolSpec| p.overcommit = f64::NAN), "overcommit"),
            (Box::new(|p: &mut PoolSpec| p.name = "a/b".into()), "name"),
            (Box::new(|p: &mut PoolSpec| p.paths = 2), "paths"),
            (Box::new(|p: &mut PoolSpec| p.paths = 0), "paths"),
            (Box::new(|p: &mut PoolSpec| _ = p.host_paths.insert("host-b".into(), "rel".into())), "host_paths.host-b"),
            (Box::new(|p: &mut PoolSpec| _ = p.host_paths.insert("Bad_Host".into(), "/x".into())), "host_paths"),
            (Box::new(|p: &mut PoolSpec| p.kind = PoolKind::Nbd), "host_paths"),
        ] {
            let mut p = ok.clone();
            mutate(&mut p);
            assert_eq!(p.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn volume_rules_and_refs() {
        let v: VolumeSpec = serde_json::from_str(r#"{"name":"data","size":"10GiB"}"#).unwrap();
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(v.format, DiskFormat::Qcow2);
        let bad: VolumeSpec = serde_json::from_str(r#"{"name":"../x","size":"1GiB"}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "name");
        let small: VolumeSpec = serde_json::from_str(r#"{"name":"x","size":"1KiB"}"#).unwrap();
        assert_eq!(small.validate().unwrap_err().field, "size");
        assert_eq!(parse_volume_ref("volume", "local/data").unwrap(), ("local".into(), "data".into()));
        for bad in ["local", "a/b/c", "../x", "/abs", "a/..", ""] {
            assert!(parse_volume_ref("volume", bad).is_err(), "{bad}");
        }
    }
}
