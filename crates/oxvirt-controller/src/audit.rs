//! The audit log: who did what to which resource, when, and with what result. One JSON line per
//! request that changes something or is refused, appended to `<data>/audit.log` (mode 0600).

use crate::{lock, ControlError, Controller};
use oxvirt_model::AuditRecord;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;

impl Controller {
    fn audit_path(&self) -> std::path::PathBuf {
        self.inner.config.data_dir.join("audit.log")
    }

    /// Appends a record; a failure to write is logged, never hides the request's own result.
    pub fn audit(&self, rec: &AuditRecord) {
        let line = match serde_json::to_string(rec) {
            Ok(l) => l,
            Err(e) => return tracing::error!("audit record: {e}"),
        };
        let _guard = lock(&self.inner.audit_lock);
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.audit_path())
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = r {
            tracing::error!("audit log: {e}");
        }
    }

    /// The last `limit` records, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, ControlError> {
        let f = match std::fs::File::open(self.audit_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(ControlError::Host(format!("audit log: {e}"))),
        };
        let mut all: std::collections::VecDeque<AuditRecord> = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str(&line) {
                all.push_back(r);
                if all.len() > limit {
                    all.pop_front();
                }
            }
        }
        Ok(all.into())
    }
}
