//! A backup repository on a directory: chunks named by their SHA-256, zstd-compressed, kept
//! once however many disks, VMs or backups hold them; one index per backup. Every write goes to
//! `tmp/` first and is renamed into place, so a crash leaves only whole files: a chunk no index
//! names is garbage for a later collection, never a broken backup.
//!
//! Format 1 (`oxvirt-backup.json` says which):
//! ```text
//! <root>/oxvirt-backup.json       {"format":1,"chunk_size":4194304,"hash":"sha256","compression":"zstd"}
//! <root>/chunks/<2 hex>/<64 hex>  one chunk: a zstd frame of chunk_size bytes (a disk's last may be shorter)
//! <root>/backups/<id>.json        one backup's index (BackupIndex): the VM's definition, its disks' chunks
//! <root>/tmp/                     files being written
//! <root>/writers/<id>.<pid>       a backup being written (garbage collection keeps what it touched)
//! ```
//!
//! Format 2 is format 1 encrypted on the client (`crypt.rs`): the header adds
//! `"encryption":{"cipher":"aes-256-gcm","names":"hmac-sha256","fingerprint":"<16 hex>"}`; a
//! chunk is named by the HMAC-SHA256 of its plaintext and stored as nonce, AES-256-GCM of its
//! zstd frame, tag; an index's `vm_spec` is `{"sealed":"<hex of the same sealing of its JSON>"}`.

use crate::crypt::RepoKey;
use crate::index::BackupIndex;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The repository format this code writes (and reads): 1 plain, 2 encrypted.
pub const FORMAT: u32 = 1;
pub const FORMAT_ENCRYPTED: u32 = 2;
/// The size of every chunk but a disk's last: the dirty bitmaps' granularity too, so a changed
/// bit is a changed chunk.
pub const CHUNK_SIZE: u64 = 4 << 20;
const HEADER: &str = "oxvirt-backup.json";
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("backup repository {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("backup repository {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("chunk {digest} is damaged: {reason}")]
    Damaged { digest: String, reason: String },
    #[error("chunk {digest} is missing")]
    Missing { digest: String },
    #[error("backup {id} not found")]
    NoBackup { id: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Header {
    format: u32,
    chunk_size: u64,
    hash: String,
    compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<Encryption>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Encryption {
    cipher: String,
    names: String,
    fingerprint: String,
}

impl Encryption {
    fn of(key: &RepoKey) -> Encryption {
        Encryption { cipher: "aes-256-gcm".into(), names: "hmac-sha256".into(), fingerprint: key.fingerprint() }
    }
}

/// What storing one chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub digest: String,
    /// Bytes written to the repository: 0 when the chunk was there already.
    pub new_bytes: u64,
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    /// Its key, when it is encrypted.
    key: Option<Arc<RepoKey>>,
}

impl Repo {
    /// Makes a repository at `root` (made if absent), encrypted with `key` if given, or opens
    /// the one there (with `key`, which must be its own): several hosts may name one shared
    /// directory. A directory with other files in it is refused.
    pub fn create(root: &Path, key: Option<Arc<RepoKey>>) -> Result<Repo, RepoError> {
        if root.join(HEADER).exists() {
            return Repo::open(root, key);
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        let stray = std::fs::read_dir(root).map_err(io(root))?.flatten().any(|e| {
            let n = e.file_name();
            !matches!(n.to_str(), Some("chunks" | "backups" | "tmp" | "writers"))
        });
        if stray {
            return Err(RepoError::Invalid {
                path: root.display().to_string(),
                reason: "the directory holds other files: a repository needs one of its own".into(),
            });
        }
        for d in ["chunks", "backups", "tmp", "writers"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(root))?;
        }
        let header = Header {
            format: if key.is_some() { FORMAT_ENCRYPTED } else { FORMAT },
            chunk_size: CHUNK_SIZE,
            hash: "sha256".into(),
            compression: "zstd".into(),
            encryption: key.as_deref().map(Encryption::of),
        };
        let repo = Repo { root: root.to_path_buf(), key };
        let body = serde_json::to_vec_pretty(&header).unwrap_or_default();
        repo.write_atomic(&root.join(HEADER), &body, true)?;
        Ok(repo)
    }

    /// Opens the repository at `root`, refusing a format or chunk size this code does not read,
    /// and an encrypted one without its key (or with another), or a plain one with a key.
    pub fn open(root: &Path, key: Option<Arc<RepoKey>>) -> Result<Repo, RepoError> {
        let path = root.join(HEADER);
        let body = std::fs::read(&path).map_err(io(&path))?;
        let invalid = |reason: String| RepoError::Invalid { path: root.display().to_string(), reason };
        let h: Header = serde_json::from_slice(&body).map_err(|e| invalid(format!("{HEADER}: {e}")))?;
        let expected = if h.encryption.is_some() { FORMAT_ENCRYPTED } else { FORMAT };
        if h.format != expected || h.chunk_size != CHUNK_SIZE || h.hash != "sha256" || h.compression != "zstd" {
            return Err(invalid(format!(
                "format {} with {} B chunks ({}, {}): this oxvirt reads formats {FORMAT} and {FORMAT_ENCRYPTED} with {CHUNK_SIZE} B chunks",
                h.format, h.chunk_size, h.hash, h.compression
            )));
        }
        match (&h.encryption, key.as_deref()) {
            (None, None) => {}
            (None, Some(_)) => return Err(invalid("it is not encrypted: it takes no key".into())),
            (Some(e), None) => {
                return Err(invalid(format!("it is encrypted (key {}): its key is needed", e.fingerprint)))
            }
            (Some(e), Some(k)) if *e != Encryption::of(k) => {
                return Err(invalid(format!(
                    "it is encrypted with key {} ({}), not with this key ({})",
                    e.fingerprint,
                    e.cipher,
                    k.fingerprint()
                )))
            }
            (Some(_), Some(_)) => {}
        }
        Ok(Repo { root: root.to_path_buf(), key })
    }

    /// Whether its chunks and definitions are encrypted.
    pub fn encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The name of a chunk of `data`: its SHA-256, or with a key its HMAC.
    fn name_of(&self, data: &[u8]) -> String {
        match &self.key {
            Some(k) => k.name(data),
            None => digest_of(data),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_path(&self, digest: &str) -> PathBuf {
        self.root.join("chunks").join(&digest[..2]).join(digest)
    }

    /// Whether a chunk of this digest is stored.
    pub fn has_chunk(&self, digest: &str) -> bool {
        valid_digest(digest) && self.chunk_path(digest).exists()
    }

    /// Marks a stored chunk as in use now (its mtime); false if there is none.
    fn touch_chunk(&self, digest: &str) -> bool {
        let path = self.chunk_path(digest);
        match std::fs::OpenOptions::new().append(true).open(&path) {
            Ok(f) => f.set_modified(std::time::SystemTime::now()).is_ok(),
            Err(_) => false,
        }
    }

    /// Declares a backup being written (until the lease is dropped): garbage collection keeps
    /// every chunk touched since the oldest lease began.
    pub fn begin_writing(&self, id: &str) -> Result<WriteLease, RepoError> {
        let dir = self.root.join("writers");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{id}.{}", std::process::id()));
        std::fs::write(&path, b"").map_err(io(&path))?;
        Ok(WriteLease { path })
    }

    /// Removes the leases of backups of VM `vm` whose writer (a process of this host) is gone.
    pub fn drop_dead_leases(&self, vm: &str) -> usize {
        let dir = self.root.join("writers");
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((id, pid)) = name.rsplit_once('.') else { continue };
            let ours = id.rsplit_once('-').is_some_and(|(v, _)| v == vm);
            let dead = pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
            if ours && dead && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// When the oldest backup still being written began (its lease's mtime); leases older than
    /// a day are taken for those of a writer that died and are ignored.
    pub fn oldest_writer(&self) -> Option<std::time::SystemTime> {
        let dir = self.root.join("writers");
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .filter(|t| *t > day_ago)
            .min()
    }

    /// Every chunk's digest, stored size and last use (mtime).
    pub fn chunk_times(&self) -> Result<Vec<(String, u64, std::time::SystemTime)>, RepoError> {
        let mut out = Vec::new();
        let dir = self.root.join("chunks");
        for sub in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            for f in std::fs::read_dir(sub.path()).map_err(io(&dir))?.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let (true, Ok(m)) = (valid_digest(&name), f.metadata()) {
                    out.push((name, m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
                }
            }
        }
        Ok(out)
    }

    /// Files in `tmp/` older than `age` (left by a writer that died mid-write) are removed.
    pub fn clear_tmp(&self, age: std::time::Duration) -> usize {
        let dir = self.root.join("tmp");
        let before = std::time::SystemTime::now() - age;
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < before)
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Stores `data` as a chunk (unless one of its digest is there already).
    pub fn put_chunk(&self, data: &[u8]) -> Result<Stored, RepoError> {
        let digest = self.name_of(data);
        // There already: touched, so that a garbage collection running now keeps it (it
        // removes only chunks untouched since it began); gone meanwhile: written again.
        if self.touch_chunk(&digest) {
            return Ok(Stored { digest, new_bytes: 0 });
        }
        let mut packed = zstd::bulk::compress(data, ZSTD_LEVEL).map_err(io(&self.root))?;
        if let Some(k) = &self.key {
            packed = k
                .seal(&packed)
                .map_err(|e| RepoError::Invalid { path: self.root.display().to_string(), reason: e.to_string() })?;
        }
        let path = self.chunk_path(&digest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        // Not flushed one by one: `write_index` flushes the whole file system first. Another
        // writer may store the same chunk at the same moment: only one of them stores it.
        let new_bytes = if self.write_new(&path, &packed)? { packed.len() as u64 } else { 0 };
        Ok(Stored { digest, new_bytes })
    }

    /// A chunk's bytes, checked against its name.
    pub fn read_chunk(&self, digest: &str) -> Result<Vec<u8>, RepoError> {
        if !valid_digest(digest) {
            return Err(RepoError::Damaged { digest: digest.into(), reason: "not a SHA-256 name".into() });
        }
        let path = self.chunk_path(digest);
        let packed = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RepoError::Missing { digest: digest.into() })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let packed = match &self.key {
            Some(k) => {
                k.open(&packed).map_err(|e| RepoError::Damaged { digest: digest.into(), reason: e.to_string() })?
            }
            None => packed,
        };
        let data = zstd::bulk::decompress(&packed, CHUNK_SIZE as usize)
            .map_err(|e| RepoError::Damaged { digest: digest.into(), reason: format!("zstd: {e}") })?;
        let got = self.name_of(&data);
        if got != digest {
            return Err(RepoError::Damaged { digest: digest.into(), reason: format!("its data hashes to {got}") });
        }
        Ok(data)
    }

    /// Every chunk's digest and stored size.
    pub fn chunks(&self) -> Result<Vec<(String, u64)>, RepoError> {
        Ok(self.chunk_times()?.into_iter().map(|(d, n, _)| (d, n)).collect())
    }

    /// Removes a chunk (garbage collection's; nothing else deletes one).
    pub fn remove_chunk(&self, digest: &str) -> Result<(), RepoError> {
        if !valid_digest(digest) {
            return Ok(());
        }
        let path = self.chunk_path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Records a finished backup: its index appears whole or not at all, and only once every
    /// chunk written before it is on disk (the repository's file system is flushed first).
    pub fn write_index(&self, index: &BackupIndex) -> Result<(), RepoError> {
        self.flush()?;
        let body = match &self.key {
            // The VM's definition may hold secrets (cloud-init data): sealed too.
            Some(k) => {
                let spec = serde_json::to_vec(&index.vm_spec).unwrap_or_default();
                let sealed = k
                    .seal(&spec)
                    .map_err(|e| RepoError::Invalid { path: self.root.display().to_string(), reason: e.to_string() })?;
                let mut sealed_index = index.clone();
                sealed_index.vm_spec = serde_json::json!({ "sealed": crate::crypt::hex(&sealed) });
                serde_json::to_vec(&sealed_index).unwrap_or_default()
            }
            None => serde_json::to_vec(index).unwrap_or_default(),
        };
        self.write_atomic(&self.index_path(&index.id)?, &body, true)
    }

    /// Writes everything written to the repository's file system so far to disk (`syncfs`).
    fn flush(&self) -> Result<(), RepoError> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&self.root).map_err(io(&self.root))?;
        // SAFETY: a valid descriptor for the call's length.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io(&self.root)(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn index_path(&self, id: &str) -> Result<PathBuf, RepoError> {
        if !crate::index::valid_id(id) {
            return Err(RepoError::NoBackup { id: id.into() });
        }
        Ok(self.root.join("backups").join(format!("{id}.json")))
    }

    /// One backup's index.
    pub fn index(&self, id: &str) -> Result<BackupIndex, RepoError> {
        let path = self.index_path(id)?;
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RepoError::NoBackup { id: id.into() }),
            Err(e) => return Err(io(&path)(e)),
        };
        let invalid = |reason: String| RepoError::Invalid { path: path.display().to_string(), reason };
        let mut index: BackupIndex = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        if let Some(k) = &self.key {
            let sealed = index.vm_spec.get("sealed").and_then(|v| v.as_str()).and_then(crate::crypt::unhex);
            let spec = sealed
                .and_then(|s| k.open(&s).ok())
                .ok_or_else(|| invalid("its VM definition does not decrypt with the repository's key".into()))?;
            index.vm_spec = serde_json::from_slice(&spec).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(index)
    }

    /// Every backup's index (of VM `vm` only, if named), oldest first.
    pub fn indexes(&self, vm: Option<&str>) -> Result<Vec<BackupIndex>, RepoError> {
        let dir = self.root.join("backups");
        let mut out = Vec::new();
        for f in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            let Ok(i) = self.index(id) else { continue };
            if vm.is_none_or(|v| v == i.vm) {
                out.push(i);
            }
        }
        out.sort_by(|a, b| (a.taken_at, &a.id).cmp(&(b.taken_at, &b.id)));
        Ok(out)
    }

    /// Forgets a backup (its chunks stay until garbage collection finds none needs them).
    pub fn remove_index(&self, id: &str) -> Result<(), RepoError> {
        let path = self.index_path(id)?;
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RepoError::NoBackup { id: id.into() },
            _ => io(&path)(e),
        })
    }

    fn write_atomic(&self, path: &Path, body: &[u8], durable: bool) -> Result<(), RepoError> {
        let tmp = self.write_tmp(path, body, durable)?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Writes `path` whole unless it exists (then it is left as it is): whether it was written.
    fn write_new(&self, path: &Path, body: &[u8]) -> Result<bool, RepoError> {
        let tmp = self.write_tmp(path, body, false)?;
        // A link fails where the name exists already, atomically, on local and network file
        // systems alike.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// `body` in a new file of `tmp/`, named after `path` and the writing thread.
    fn write_tmp(&self, path: &Path, body: &[u8], durable: bool) -> Result<PathBuf, RepoError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{:?}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        if durable {
            f.sync_data().map_err(io(&tmp))?;
        }
        Ok(tmp)
    }
}

/// A backup being written, declared to garbage collection until dropped.
#[derive(Debug)]
pub struct WriteLease {
    path: PathBuf,
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The SHA-256 of `data`, in lowercase hex.
pub fn digest_of(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_stored_once_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::create(&dir.path().join("r"), None).unwrap();
        let data = vec![7u8; CHUNK_SIZE as usize];
        let a = repo.put_chunk(&data).unwrap();
        assert!(a.new_bytes > 0 && a.new_bytes < 10_000, "zstd packs a repeated byte: {}", a.new_bytes);
        let b = repo.put_chunk(&data).unwrap();
        assert_eq!((b.digest.as_str(), b.new_bytes), (a.digest.as_str(), 0), "the second copy is not stored");
        assert_eq!(repo.read_chunk(&a.digest).unwrap(), data);
        assert_eq!(repo.chunks().unwrap().len(), 1);
        // A chunk whose bytes changed on disk is named damaged.
        let path = repo.chunk_path(&a.digest);
        let other = zstd::bulk::compress(&[8u8; 100], 1).unwrap();
        std::fs::write(&path, other).unwrap();
        assert!(matches!(repo.read_chunk(&a.digest), Err(RepoError::Damaged { .. })));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(repo.read_chunk(&a.digest), Err(RepoError::Damaged { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(repo.read_chunk(&a.digest), Err(RepoError::Missing { .. })));
    }

    #[test]
    fn an_encrypted_repository_stores_no_plaintext_and_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let key = Arc::new(RepoKey::generate().unwrap());
        let repo = Repo::create(&root, Some(key.clone())).unwrap();
        assert!(repo.encrypted());
        let mut data = b"PLAINTEXT-MARK ".repeat(1000);
        data.resize(CHUNK_SIZE as usize, 0);
        let a = repo.put_chunk(&data).unwrap();
        assert_ne!(a.digest, digest_of(&data), "named by its HMAC, not its SHA-256");
        assert_eq!(repo.put_chunk(&data).unwrap().new_bytes, 0, "deduplicated still");
        assert_eq!(repo.read_chunk(&a.digest).unwrap(), data);
        let mut index = BackupIndex::new("vm-20261207000000000", "vm", 0);
        index.vm_spec = serde_json::json!({ "user_data": "PLAINTEXT-MARK password" });
        repo.write_index(&index).unwrap();
        assert_eq!(repo.index(&index.id).unwrap().vm_spec, index.vm_spec);
        // Nothing on disk says what was stored.
        for e in walk(&root) {
            let body = std::fs::read(&e).unwrap();
            assert!(!body.windows(14).any(|w| w == b"PLAINTEXT-MARK"), "plaintext in {}", e.display());
        }
        // The same key (as hex) opens it; none, another, or a key for a plain one, no.
        Repo::open(&root, Some(Arc::new(RepoKey::from_hex(&key.to_hex()).unwrap()))).unwrap();
        let e = Repo::open(&root, None).unwrap_err().to_string();
        assert!(e.contains("its key is needed") && e.contains(&key.fingerprint()), "{e}");
        let other = Arc::new(RepoKey::generate().unwrap());
        let e = Repo::open(&root, Some(other.clone())).unwrap_err().to_string();
        assert!(e.contains("not with this key"), "{e}");
        let plain = dir.path().join("plain");
        Repo::create(&plain, None).unwrap();
        assert!(Repo::open(&plain, Some(other)).unwrap_err().to_string().contains("takes no key"));
        // A sealed chunk changed on disk fails its tag.
        let path = repo.chunk_path(&a.digest);
        let mut sealed = std::fs::read(&path).unwrap();
        sealed[30] ^= 0x40;
        std::fs::write(&path, sealed).unwrap();
        let e = repo.read_chunk(&a.digest).unwrap_err();
        assert!(matches!(e, RepoError::Damaged { .. }) && e.to_string().contains("does not decrypt"), "{e}");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_repository_is_opened_again_and_a_foreign_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        Repo::create(&root, None).unwrap();
        Repo::create(&root, None).unwrap();
        Repo::open(&root, None).unwrap();
        std::fs::write(root.join(HEADER), br#"{"format":2,"chunk_size":4194304,"hash":"sha256","compression":"zstd"}"#)
            .unwrap();
        let err = Repo::open(&root, None).unwrap_err().to_string();
        assert!(err.contains("format 2"), "{err}");
        let busy = dir.path().join("busy");
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("notes.txt"), b"x").unwrap();
        assert!(Repo::create(&busy, None).unwrap_err().to_string().contains("other files"));
        assert!(Repo::open(&dir.path().join("none"), None).is_err());
    }
}
