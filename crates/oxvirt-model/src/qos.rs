//! I/O limits of a disk, like `virsh blkdeviotune`: bytes/s and operations/s, in total or per
//! direction, with bursts; disks in the same group share one set of limits.

use crate::{validate_name, ValidationError};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DiskQos {
    /// Bytes per second, reads and writes together (0 = no limit).
    pub bps_total: u64,
    pub bps_read: u64,
    pub bps_write: u64,
    /// Operations per second.
    pub iops_total: u64,
    pub iops_read: u64,
    pub iops_write: u64,
    /// Bursts: the rate allowed for `burst_seconds` above the limit.
    pub bps_total_max: u64,
    pub bps_read_max: u64,
    pub bps_write_max: u64,
    pub iops_total_max: u64,
    pub iops_read_max: u64,
    pub iops_write_max: u64,
    /// How long a burst may last (default 1 s).
    pub burst_seconds: u64,
    /// Disks (of any VM on the host) with the same group share these limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl DiskQos {
    pub fn is_unlimited(&self) -> bool {
        [self.bps_total, self.bps_read, self.bps_write, self.iops_total, self.iops_read, self.iops_write]
            .iter()
            .all(|v| *v == 0)
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let f = |name: &str| format!("{field}.{name}");
        let pairs = [
            ("bps_total", self.bps_total, "bps_read/bps_write", self.bps_read.max(self.bps_write)),
            ("iops_total", self.iops_total, "iops_read/iops_write", self.iops_read.max(self.iops_write)),
        ];
        for (name, total, other, dir) in pairs {
            if total > 0 && dir > 0 {
                return Err(ValidationError::new(f(name), format!("cannot be set together with {other}")));
            }
        }
        let bursts = [
            ("bps_total_max", self.bps_total_max, self.bps_total),
            ("bps_read_max", self.bps_read_max, self.bps_read),
            ("bps_write_max", self.bps_write_max, self.bps_write),
            ("iops_total_max", self.iops_total_max, self.iops_total),
            ("iops_read_max", self.iops_read_max, self.iops_read),
            ("iops_write_max", self.iops_write_max, self.iops_write),
        ];
        for (name, max, base) in bursts {
            if max > 0 && base == 0 {
                return Err(ValidationError::new(f(name), "needs the limit it bursts above"));
            }
            if max > 0 && max < base {
                return Err(ValidationError::new(f(name), "must be at least the limit it bursts above"));
            }
        }
        let all = [
            self.bps_total,
            self.bps_read,
            self.bps_write,
            self.iops_total,
            self.iops_read,
            self.iops_write,
            self.bps_total_max,
            self.bps_read_max,
            self.bps_write_max,
            self.iops_total_max,
            self.iops_read_max,
            self.iops_write_max,
        ];
        if all.iter().any(|v| *v > 1 << 50) {
            return Err(ValidationError::new(field.to_string(), "limits must be at most 2^50"));
        }
        if self.burst_seconds > 3600 {
            return Err(ValidationError::new(f("burst_seconds"), "must be at most 3600"));
        }
        if let Some(g) = &self.group {
            validate_name(&f("group"), g)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let ok: DiskQos = serde_json::from_str(
            r#"{"bps_read": 2097152, "bps_read_max": 4194304, "iops_total": 100, "group": "gold"}"#,
        )
        .unwrap();
        assert_eq!(ok.validate("qos"), Ok(()));
        let both = DiskQos { bps_total: 1, bps_read: 1, ..Default::default() };
        assert_eq!(both.validate("qos").unwrap_err().field, "qos.bps_total");
        let orphan = DiskQos { iops_write_max: 10, ..Default::default() };
        assert_eq!(orphan.validate("qos").unwrap_err().field, "qos.iops_write_max");
        let low = DiskQos { bps_total: 10, bps_total_max: 5, ..Default::default() };
        assert_eq!(low.validate("qos").unwrap_err().field, "qos.bps_total_max");
        let g = DiskQos { bps_total: 10, group: Some("a b".into()), ..Default::default() };
        assert_eq!(g.validate("qos").unwrap_err().field, "qos.group");
        assert!(serde_json::from_str::<DiskQos>(r#"{"bps": 1}"#).is_err());
    }
}
