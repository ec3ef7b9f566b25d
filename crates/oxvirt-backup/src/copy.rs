//! Moving a disk's chunks between an NBD export and a repository, several connections at once:
//! backing up reads the chunks a plan names and stores each new one; restoring writes every
//! chunk that is not zeros.

use crate::index::DiskIndex;
use crate::nbd::{NbdClient, NbdError};
use crate::repo::{Repo, RepoError, CHUNK_SIZE};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Nbd(#[from] NbdError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("disk {disk}: {reason}")]
    Plan { disk: String, reason: String },
}

/// What backing up one disk did.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskOutcome {
    pub index: DiskIndex,
    pub read_bytes: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
}

/// Bytes done so far, shared by the workers and read by whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
}

/// What to read of one disk: `read` marks the chunks to read (all of a `size`-byte disk's);
/// every other chunk keeps its digest in `previous` (which must then hold it), or, with none,
/// is recorded as zeros (a full backup reads every chunk the export does not call zeros).
#[derive(Debug, Clone, Copy)]
pub struct DiskRead<'a> {
    pub id: &'a str,
    pub size: u64,
    pub read: &'a [bool],
    pub previous: Option<&'a DiskIndex>,
}

/// Backs up one disk as `plan` says, through `workers` connections `connect` opens, storing
/// each chunk read that is not zeros.
pub fn back_up_disk(
    connect: &(dyn Fn() -> Result<NbdClient, NbdError> + Sync),
    repo: &Repo,
    plan: DiskRead<'_>,
    workers: usize,
    progress: &Progress,
) -> Result<DiskOutcome, CopyError> {
    let DiskRead { id, size, read, previous } = plan;
    let chunks = size.div_ceil(CHUNK_SIZE) as usize;
    if read.len() != chunks {
        return Err(CopyError::Plan { disk: id.into(), reason: format!("{} chunks planned of {chunks}", read.len()) });
    }
    let mut digests: Vec<Option<String>> = vec![None; chunks];
    for (i, r) in read.iter().enumerate() {
        if let (false, Some(previous)) = (r, previous) {
            let Some(prev) = previous.chunks.get(i) else {
                return Err(CopyError::Plan {
                    disk: id.into(),
                    reason: format!("chunk {i} neither read nor in the last backup"),
                });
            };
            digests[i] = prev.clone();
        }
    }
    let todo: Vec<usize> = (0..chunks).filter(|&i| read[i]).collect();
    let next = AtomicUsize::new(0);
    let (read_bytes, new_chunks, new_bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let results = Mutex::new(Vec::with_capacity(todo.len()));
    in_parallel(workers.min(todo.len().max(1)), &|failed| {
        let mut nbd = connect()?;
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
            let at = i as u64 * CHUNK_SIZE;
            let len = CHUNK_SIZE.min(size - at) as usize;
            nbd.read(at, &mut buf[..len])?;
            read_bytes.fetch_add(len as u64, Ordering::Relaxed);
            let digest = if buf[..len].iter().all(|b| *b == 0) {
                None
            } else {
                let stored = repo.put_chunk(&buf[..len])?;
                if stored.new_bytes > 0 {
                    new_chunks.fetch_add(1, Ordering::Relaxed);
                    new_bytes.fetch_add(stored.new_bytes, Ordering::Relaxed);
                }
                Some(stored.digest)
            };
            if let Ok(mut r) = results.lock() {
                r.push((i, digest));
            }
            progress.done.fetch_add(len as u64, Ordering::Relaxed);
        }
        nbd.disconnect();
        Ok(())
    })?;
    let results = results.into_inner().unwrap_or_default();
    if results.len() != todo.len() {
        return Err(CopyError::Plan {
            disk: id.into(),
            reason: format!("{} of {} chunks read", results.len(), todo.len()),
        });
    }
    for (i, d) in results {
        digests[i] = d;
    }
    Ok(DiskOutcome {
        index: DiskIndex { id: id.into(), size, chunks: digests },
        read_bytes: read_bytes.into_inner(),
        new_chunks: new_chunks.into_inner(),
        new_bytes: new_bytes.into_inner(),
    })
}

/// Writes disk `disk` from the repository into a fresh image (which reads as zeros) through
/// `workers` connections, each chunk checked against its digest on the way; flushed at the end.
pub fn restore_disk(
    connect: &(dyn Fn() -> Result<NbdClient, NbdError> + Sync),
    repo: &Repo,
    disk: &DiskIndex,
    workers: usize,
    progress: &Progress,
) -> Result<(), CopyError> {
    let todo: Vec<(usize, &str)> =
        disk.chunks.iter().enumerate().filter_map(|(i, d)| d.as_deref().map(|d| (i, d))).collect();
    let next = AtomicUsize::new(0);
    in_parallel(workers, &|failed| {
        let mut nbd = connect()?;
        if nbd.size() < disk.size {
            return Err(CopyError::Plan {
                disk: disk.id.clone(),
                reason: format!("the new image has {} B, the backup {} B", nbd.size(), disk.size),
            });
        }
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(&(i, digest)) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
            let data = repo.read_chunk(digest)?;
            let at = i as u64 * CHUNK_SIZE;
            let expected = CHUNK_SIZE.min(disk.size - at.min(disk.size)) as usize;
            if data.len() != expected {
                return Err(CopyError::Repo(RepoError::Damaged {
                    digest: digest.into(),
                    reason: format!("{} B where chunk {i} of disk {} has {expected} B", data.len(), disk.id),
                }));
            }
            nbd.write(at, &data)?;
            progress.done.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        nbd.flush()?;
        nbd.disconnect();
        Ok(())
    })
}

/// Runs `work` on `workers` threads (1 to 8) until each returns; the first error, if any. A
/// worker that sees `failed` set (another one failed) should stop early.
fn in_parallel(workers: usize, work: &(dyn Fn(&AtomicBool) -> Result<(), CopyError> + Sync)) -> Result<(), CopyError> {
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<CopyError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, 8) {
            s.spawn(|| {
                if let Err(e) = work(&failed) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut f) = first_error.lock() {
                        f.get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
