//! One backup's index: what was backed up, when, of which VM, and each disk as a list of chunk
//! digests (`None`: the chunk reads as zeros and is not stored).

/// A backup, as its index file holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupIndex {
    /// The repository format it was written in.
    pub format: u32,
    /// `<vm>-<UTC time to the millisecond>`: unique in a repository, sorted by time per VM.
    pub id: String,
    pub vm: String,
    /// When the disks were frozen (ms since the epoch).
    pub taken_at: u64,
    /// Every chunk read (`true`), or only those changed since `parent`.
    pub full: bool,
    /// Why a backup that could have been incremental read everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// The backup this one read the changes since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The VM's definition (its spec as the API takes it).
    pub vm_spec: serde_json::Value,
    pub disks: Vec<DiskIndex>,
    /// Bytes read from the VM's disks.
    pub read_bytes: u64,
    /// Chunks this backup added to the repository, and their stored (compressed) bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub duration_ms: u64,
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskIndex {
    /// The disk's id in the VM (`disk0`, ...).
    pub id: String,
    /// Its virtual size in bytes.
    pub size: u64,
    /// The digest of each chunk in order; `None` reads as zeros.
    pub chunks: Vec<Option<String>>,
}

impl BackupIndex {
    /// A full backup of no disks yet, of no VM definition: what a backup fills in.
    pub fn new(id: &str, vm: &str, taken_at: u64) -> BackupIndex {
        BackupIndex {
            format: crate::FORMAT,
            id: id.into(),
            vm: vm.into(),
            taken_at,
            full: true,
            full_reason: None,
            parent: None,
            vm_spec: serde_json::Value::Null,
            disks: Vec::new(),
            read_bytes: 0,
            new_chunks: 0,
            new_bytes: 0,
            duration_ms: 0,
        }
    }

    /// The digests this backup needs.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.disks.iter().flat_map(|d| d.chunks.iter().flatten().map(|s| s.as_str()))
    }
}

/// A backup id's shape: a VM name, `-`, 17 digits (`YYYYMMDDhhmmssmmm`).
pub fn valid_id(id: &str) -> bool {
    let Some((vm, stamp)) = id.rsplit_once('-') else { return false };
    !vm.is_empty()
        && vm.len() <= 63
        && vm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && stamp.len() == 17
        && stamp.bytes().all(|b| b.is_ascii_digit())
}

/// The id of VM `vm`'s backup taken at `millis` (since the epoch, UTC).
pub fn new_id(vm: &str, millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{vm}-{y:04}{m:02}{d:02}{:02}{:02}{:02}{:03}", rem / 3600, rem / 60 % 60, rem % 60, millis % 1000)
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil calendar algorithm.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_say_the_vm_and_the_time() {
        // 2026-12-07 06:50:12.345 UTC
        let id = new_id("web-1", 1_796_626_212_345);
        assert_eq!(id, "web-1-20261207065012345");
        assert!(valid_id(&id));
        assert_eq!(new_id("a", 0), "a-19700101000000000");
        for bad in ["", "web", "-20261207065012345", "../x-20261207065012345", "web-2026", "Web-20261207065012345"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
