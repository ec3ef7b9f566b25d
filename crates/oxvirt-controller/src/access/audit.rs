//! The audit log: who did what to which resource, when, and with what result. One JSON line per
//! request that changes something or is refused, appended to `<data>/audit.log` (mode 0600).
//! The log is rotated by size (`audit.log.1` ... `audit.log.N`, oldest dropped) and read from its
//! end, so neither writing nor reading it grows with its history.

use crate::{lock, ControlError};
use oxvirt_model::AuditRecord;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `audit.log` is rotated once it passes this size.
pub const AUDIT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Rotated files kept (`audit.log.1` is the newest of them).
pub const AUDIT_KEEP: usize = 4;
/// A record's request path is cut to this many bytes (a refused request's path is the caller's).
pub const AUDIT_PATH_MAX: usize = 512;

/// The audit log kept open between records, and which file it is (device, inode).
pub(crate) struct AuditFile {
    file: std::fs::File,
    id: (u64, u64),
}

impl crate::Access {
    fn audit_path(&self) -> PathBuf {
        self.ctl.inner.config.data_dir.join("audit.log")
    }

    /// Appends a record; a failure to write is logged, never hides the request's own result.
    pub fn audit(&self, rec: &AuditRecord) {
        let mut rec = rec.clone();
        rec.path = cut(&rec.path, AUDIT_PATH_MAX);
        rec.resource = cut(&rec.resource, AUDIT_PATH_MAX);
        let line = match serde_json::to_string(&rec) {
            Ok(l) => l,
            Err(e) => return tracing::error!("audit record: {e}"),
        };
        let mut open = lock(&self.state().audit_log);
        let path = self.audit_path();
        let now = std::fs::metadata(&path).ok();
        if now.as_ref().is_some_and(|m| m.len() >= AUDIT_MAX_BYTES) {
            *open = None;
            if let Err(e) = rotate(&path, AUDIT_KEEP) {
                tracing::error!("audit log rotation: {e}");
            }
        }
        // The file kept open is written only while it is still the one at the log's path (a
        // rotation, or an operator's move or removal, makes the next record open it anew).
        use std::os::unix::fs::MetadataExt;
        let at_path = now.filter(|m| m.len() < AUDIT_MAX_BYTES).map(|m| (m.dev(), m.ino()));
        if open.as_ref().is_none_or(|held| Some(held.id) != at_path) {
            *open = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .and_then(|file| Ok(AuditFile { id: file.metadata().map(|m| (m.dev(), m.ino()))?, file }))
                .map_err(|e| tracing::error!("audit log: {e}"))
                .ok();
        }
        if let Some(held) = open.as_mut() {
            if let Err(e) = writeln!(held.file, "{line}") {
                tracing::error!("audit log: {e}");
                *open = None;
            }
        }
    }

    /// The last `limit` records, oldest first, read from the end of the log (and of the rotated
    /// files while more are wanted).
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, ControlError> {
        // No rotation while the files are read.
        let _guard = lock(&self.state().audit_log);
        let path = self.audit_path();
        let mut files = vec![path.clone()];
        files.extend((1..=AUDIT_KEEP).map(|n| rotated(&path, n)));
        let mut newest_first: Vec<AuditRecord> = Vec::new();
        for f in files {
            if newest_first.len() >= limit {
                break;
            }
            let lines = tail_lines(&f, limit - newest_first.len())
                .map_err(|e| ControlError::Host(format!("audit log {}: {e}", f.display())))?;
            newest_first.extend(lines.iter().rev().filter_map(|l| serde_json::from_str(l).ok()));
        }
        newest_first.truncate(limit);
        newest_first.reverse();
        Ok(newest_first)
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// audit.log → audit.log.1 → ... → audit.log.keep (the oldest dropped).
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// The last `n` whole lines of a file (a missing file has none), read backwards in blocks.
fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    const BLOCK: u64 = 64 * 1024;
    let mut pos = f.seek(SeekFrom::End(0))?;
    let mut buf: Vec<u8> = Vec::new();
    while pos > 0 && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let step = BLOCK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; step as usize];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    // The first line read may be only the end of a longer one.
    if pos > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_read_the_end_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i} {}\n", "x".repeat(i % 50)));
        }
        std::fs::write(&p, &text).unwrap();
        let t = tail_lines(&p, 3).unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[0].starts_with("line 19997 ") && t[2].starts_with("line 19999 "), "{t:?}");
        assert_eq!(tail_lines(&p, 50_000).unwrap().len(), 20_000);
        assert!(tail_lines(&dir.path().join("none"), 3).unwrap().is_empty());
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        for i in 0..7 {
            std::fs::write(&p, format!("{i}\n")).unwrap();
            rotate(&p, 3).unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, ["audit.log.1", "audit.log.2", "audit.log.3"]);
        assert_eq!(std::fs::read_to_string(rotated(&p, 1)).unwrap(), "6\n");
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        let long = "é".repeat(400);
        let c = cut(&long, 511);
        assert!(c.len() <= 514 && c.ends_with('…'));
    }
}
