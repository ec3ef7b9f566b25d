//! Keeping a repository sound: garbage collection (chunks no backup needs go, never one a
//! backup being written may need) and verification (every chunk a backup needs is read back
//! and re-hashed; the backups a damaged or missing chunk breaks are named).

use crate::repo::{Repo, RepoError};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

/// What a garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    pub kept_chunks: u64,
    pub kept_bytes: u64,
    /// Chunks no backup names yet that were kept: touched by a backup being written.
    pub kept_unreferenced: u64,
}

/// Removes every chunk no backup's index names that was not touched since the collection
/// began, nor since the oldest backup still being written began (their chunks are named by
/// no index yet). A backup that finds a chunk there touches it; one that finds it gone writes
/// it again.
pub fn collect_garbage(repo: &Repo) -> Result<GcReport, RepoError> {
    // A second's margin for file systems whose times are coarse.
    let mut cutoff = SystemTime::now() - Duration::from_secs(1);
    if let Some(w) = repo.oldest_writer() {
        cutoff = cutoff.min(w - Duration::from_secs(1));
    }
    let mut needed: HashSet<String> = HashSet::new();
    for i in repo.indexes(None)? {
        needed.extend(i.digests().map(str::to_string));
    }
    let mut r = GcReport::default();
    for (digest, bytes, touched) in repo.chunk_times()? {
        if needed.contains(&digest) {
            r.kept_chunks += 1;
            r.kept_bytes += bytes;
        } else if touched >= cutoff {
            r.kept_unreferenced += 1;
            r.kept_chunks += 1;
            r.kept_bytes += bytes;
        } else {
            repo.remove_chunk(&digest)?;
            r.removed_chunks += 1;
            r.removed_bytes += bytes;
        }
    }
    repo.clear_tmp(Duration::from_secs(3600));
    Ok(r)
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub backups: u64,
    pub chunks_checked: u64,
    /// Each damaged or missing chunk and why.
    pub bad_chunks: BTreeMap<String, String>,
    /// The backups that need one of them (they cannot be restored whole).
    pub broken_backups: BTreeSet<String>,
}

/// Reads back every chunk a backup needs and checks it against its name.
pub fn verify(repo: &Repo) -> Result<VerifyReport, RepoError> {
    let indexes = repo.indexes(None)?;
    let mut r = VerifyReport { backups: indexes.len() as u64, ..Default::default() };
    let mut checked: HashSet<String> = HashSet::new();
    for i in &indexes {
        for d in i.digests() {
            if checked.insert(d.to_string()) {
                r.chunks_checked += 1;
                match repo.read_chunk(d) {
                    Ok(_) => {}
                    Err(e @ (RepoError::Damaged { .. } | RepoError::Missing { .. })) => {
                        r.bad_chunks.insert(d.to_string(), e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            if r.bad_chunks.contains_key(d) {
                r.broken_backups.insert(i.id.clone());
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{BackupIndex, DiskIndex};

    fn index(repo: &Repo, id: &str, chunks: &[&[u8]]) -> BackupIndex {
        let digests = chunks.iter().map(|c| Some(repo.put_chunk(c).unwrap().digest)).collect();
        let i = BackupIndex {
            disks: vec![DiskIndex { id: "disk0".into(), size: 4 << 20, chunks: digests }],
            ..BackupIndex::new(id, "web", 1)
        };
        repo.write_index(&i).unwrap();
        i
    }

    fn age(repo: &Repo, digest: &str, secs: u64) {
        let p = repo.root().join("chunks").join(&digest[..2]).join(digest);
        let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn gc_removes_only_what_no_backup_and_no_writer_needs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::create(dir.path(), None).unwrap();
        let kept = index(&repo, "web-10000000000000001", &[b"a", b"b"]);
        let gone = index(&repo, "web-10000000000000002", &[b"b", b"c"]);
        repo.remove_index(&gone.id).unwrap();
        for (d, _) in repo.chunks().unwrap() {
            age(&repo, &d, 600);
        }
        // A backup being written has stored "d" (named by no index yet) and found "c" there.
        let lease = repo.begin_writing("web-10000000000000003").unwrap();
        let d = repo.put_chunk(b"d").unwrap().digest;
        let c = repo.put_chunk(b"c").unwrap();
        assert_eq!(c.new_bytes, 0, "found, not written again");
        let r = collect_garbage(&repo).unwrap();
        assert_eq!((r.removed_chunks, r.kept_chunks, r.kept_unreferenced), (0, 4, 2), "{r:?}");
        assert!(repo.has_chunk(&d) && repo.has_chunk(&c.digest));
        drop(lease);
        // Its backup never finished: once untouched for a while, its chunks go.
        age(&repo, &d, 600);
        age(&repo, &c.digest, 600);
        let r = collect_garbage(&repo).unwrap();
        assert_eq!((r.removed_chunks, r.kept_chunks), (2, 2), "{r:?}");
        for d in kept.digests() {
            repo.read_chunk(d).unwrap();
        }
    }

    #[test]
    fn verify_names_the_backups_a_bad_chunk_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::create(dir.path(), None).unwrap();
        index(&repo, "web-10000000000000001", &[b"a", b"b"]);
        let second = index(&repo, "web-10000000000000002", &[b"b", b"c"]);
        index(&repo, "db-10000000000000003", &[b"a"]);
        let clean = verify(&repo).unwrap();
        assert!(clean.bad_chunks.is_empty() && clean.broken_backups.is_empty());
        assert_eq!((clean.backups, clean.chunks_checked), (3, 3));
        let b = second.disks[0].chunks[0].clone().unwrap();
        let path = repo.root().join("chunks").join(&b[..2]).join(&b);
        std::fs::write(&path, zstd::bulk::compress(b"B", 1).unwrap()).unwrap();
        let r = verify(&repo).unwrap();
        assert_eq!(r.bad_chunks.len(), 1);
        assert!(r.bad_chunks[&b].contains("damaged"), "{r:?}");
        let broken: Vec<&str> = r.broken_backups.iter().map(|s| s.as_str()).collect();
        assert_eq!(broken, ["web-10000000000000001", "web-10000000000000002"]);
    }
}
