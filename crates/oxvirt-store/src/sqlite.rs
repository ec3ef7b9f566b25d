//! The embedded store: one SQLite file in WAL mode.
//!
//! One connection writes; two others read, so reads never wait for a write (a point read uses
//! the writer when it is free: its cache is never dropped). Commits are not
//! synced (`synchronous = NORMAL`: a power cut may lose the last ones, never consistency);
//! checkpoints, which sync, are made by a thread of their own (twice a second, sooner when the
//! WAL grows) instead of by the transaction that fills the WAL, so no request waits for a disk
//! flush. A commit of puts writes only its keys' pages (see `SqliteStore::revision`).

use crate::{Entry, Expect, Op, Store, StoreError, WatchEvent};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Schema migrations, in order. `PRAGMA user_version` holds how many have been applied; each runs
/// in its own transaction, so a crash leaves the schema at one version or the next.
const MIGRATIONS: &[&str] = &[
    // 1: the key/value table and the store revision.
    "CREATE TABLE kv (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        create_revision INTEGER NOT NULL,
        mod_revision INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
     INSERT INTO meta (name, value) VALUES ('revision', 0);",
];

pub struct SqliteStore {
    /// The one connection that writes (and reads, in memory).
    conn: Mutex<Connection>,
    /// Connections that only read: WAL lets them read while the writer writes, so a request
    /// that reads never waits for another's transaction. None for a store in memory.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    events: broadcast::Sender<WatchEvent>,
    /// The revision of the last commit. Changed only by a commit, under the writer's lock. On
    /// disk it is the greatest of the keys' revisions and of `meta.revision`, which a commit
    /// writes only when it deletes (a key deleted takes its revision with it): a commit of puts
    /// writes the pages of its keys and no other.
    revision: std::sync::atomic::AtomicU64,
    /// Dropped with the store: the checkpointer makes a last checkpoint and ends.
    checkpointer: Option<Checkpointer>,
}

/// How often the WAL is checkpointed into the database file when writes are few.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Pages written to the WAL after which the checkpointer is woken early: every page read looks
/// the page up in the WAL's index first, and the longer the WAL the longer each lookup (at
/// 10,000 small commits between two ticks, point reads took three times as long).
const CHECKPOINT_AFTER_PAGES: u64 = 256;

/// The thread that checkpoints: on a tick, when woken by the writer, and once more at the end.
struct Checkpointer {
    /// Wakes the thread; dropping it makes the last checkpoint and ends the thread.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Pages (about: one per changed key, plus the revision's) written since the last wake.
    pages: std::sync::atomic::AtomicU64,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // A checkpoint copies pages from the WAL: it needs no cache of its own.
        conn.pragma_update(None, "cache_size", 16).map_err(backend)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || loop {
                let last = matches!(
                    woken.recv_timeout(CHECKPOINT_EVERY),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                );
                // PASSIVE: copies what no reader still needs, never blocks the writer.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!("store checkpoint: {e}");
                }
                if last {
                    break;
                }
            })
            .map_err(|e| StoreError::Backend(format!("checkpoint thread: {e}")))?;
        Ok(Checkpointer { wake: Some(wake), thread: Some(thread), pages: Default::default() })
    }

    /// Counts a commit's pages; wakes the thread once enough were written (never waits).
    fn written(&self, pages: u64) {
        use std::sync::atomic::Ordering;
        if self.pages.fetch_add(pages, Ordering::Relaxed) + pages >= CHECKPOINT_AFTER_PAGES {
            self.pages.store(0, Ordering::Relaxed);
            if let Some(w) = &self.wake {
                // Full: a wake is already pending.
                let _ = w.try_send(());
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reading connections of a store on disk (the daemon's runtime has two workers).
const READERS: usize = 2;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Backend(format!("open {}: {e}", path.display()));
        let mut store = Self::with_connection(Connection::open(path).map_err(open_err)?)?;
        // Checkpoints are the checkpointer's, not the writing transaction's.
        store.lock()?.pragma_update(None, "wal_autocheckpoint", 0).map_err(backend)?;
        store.checkpointer = Some(Checkpointer::start(path)?);
        for _ in 0..READERS {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let reader = Connection::open_with_flags(path, flags).map_err(open_err)?;
            reader.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
            // Its cache is dropped whenever the writer commits: keep it small (1 MiB).
            reader.pragma_update(None, "cache_size", -1024).map_err(backend)?;
            store.readers.push(Mutex::new(reader));
        }
        Ok(store)
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory().map_err(backend)?)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        // NORMAL in WAL mode: a power cut may lose the last commits, never consistency.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        migrate(&mut conn)?;
        let revision: i64 = conn
            .query_row(
                "SELECT max((SELECT value FROM meta WHERE name = 'revision'), \
                            (SELECT coalesce(max(mod_revision), 0) FROM kv))",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            revision: (revision as u64).into(),
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: Default::default(),
            events,
            checkpointer: None,
        })
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.lock()?;
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(backend)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))
    }

    /// A connection to read with: a free reader, else the next one in turn (the writer when
    /// there are none). A read sees every transaction committed before it began.
    fn read(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        if self.readers.is_empty() {
            return self.lock();
        }
        let start = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.readers.len();
        for i in 0..n {
            if let Ok(c) = self.readers[(start + i) % n].try_lock() {
                return Ok(c);
            }
        }
        self.readers[start % n].lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).map_err(backend)? as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the store has schema version {current}, newer than this oxvirt knows ({}): upgrade oxvirt",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(|e| StoreError::Backend(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn prefix_end(prefix: &str) -> Option<String> {
    // The smallest string greater than every string with this prefix.
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        // The writer's cache stays warm (a reader's is dropped at every commit): a point read
        // takes it when it is free, a reader when a transaction holds it.
        let conn = match self.conn.try_lock() {
            Ok(c) => c,
            Err(_) => self.read()?,
        };
        conn.prepare_cached("SELECT value, mod_revision FROM kv WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row(params![key], |r| {
                    Ok(Entry { key: key.to_string(), value: r.get(0)?, revision: r.get::<_, i64>(1)? as u64 })
                })
                .optional()
            })
            .map_err(backend)
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let conn = self.read()?;
        let map = |r: &rusqlite::Row| -> rusqlite::Result<Entry> {
            Ok(Entry { key: r.get(0)?, value: r.get(1)?, revision: r.get::<_, i64>(2)? as u64 })
        };
        let rows = match prefix_end(prefix) {
            Some(end) => {
                let mut st = conn
                    .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
                    .map_err(backend)?;
                let rows = st.query_map(params![prefix, end], map).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>()
            }
            None => {
                let mut st = conn
                    .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 ORDER BY key")
                    .map_err(backend)?;
                let rows = st.query_map(params![prefix], map).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>()
            }
        };
        rows.map_err(backend)
    }

    fn txn(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        // (Read under the writer's lock: no other commit changes it meanwhile.)
        let revision = self.revision.load(std::sync::atomic::Ordering::Acquire) as i64 + 1;
        let mut deleted = false;
        let pages = ops.len() as u64 + 1;
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, expect) = match &op {
                Op::Put { key, expect, .. } | Op::PutLeased { key, expect, .. } | Op::Delete { key, expect } => {
                    (key.clone(), *expect)
                }
            };
            let current: Option<i64> = tx
                .prepare_cached("SELECT mod_revision FROM kv WHERE key = ?1")
                .and_then(|mut st| st.query_row(params![key], |r| r.get(0)).optional())
                .map_err(backend)?;
            let holds = match expect {
                Expect::Any => true,
                Expect::Absent => current.is_none(),
                Expect::Revision(r) => current == Some(r as i64),
            };
            if !holds {
                return Err(StoreError::Conflict { key, expected: expect });
            }
            match op {
                Op::Put { key, value, .. } | Op::PutLeased { key, value, .. } => {
                    tx.prepare_cached(
                        "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?3)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
                    )
                    .and_then(|mut st| st.execute(params![key, value, revision]))
                    .map_err(backend)?;
                    changes.push(WatchEvent::Put(Entry { key, value, revision: revision as u64 }));
                }
                Op::Delete { key, .. } => {
                    if current.is_some() {
                        tx.prepare_cached("DELETE FROM kv WHERE key = ?1")
                            .and_then(|mut st| st.execute(params![key]))
                            .map_err(backend)?;
                        changes.push(WatchEvent::Delete { key, revision: revision as u64 });
                        deleted = true;
                    }
                }
            }
        }
        if deleted {
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")
                .and_then(|mut st| st.execute(params![revision]))
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.revision.store(revision as u64, std::sync::atomic::Ordering::Release);
        // Sent while the writer's lock is held: watchers see changes in revision order (sent
        // after it, a later commit's events could overtake these, as etcd's never do).
        for c in changes {
            // No watcher is not an error.
            let _ = self.events.send(c);
        }
        drop(conn);
        if let Some(c) = &self.checkpointer {
            c.written(pages);
        }
        Ok(revision as u64)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.revision.load(std::sync::atomic::Ordering::Acquire))
    }

    fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreExt;

    #[test]
    fn put_get_list_delete_with_revisions() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.revision().unwrap(), 0);
        let r1 = s.put("vms/a", b"1".to_vec(), Expect::Absent).unwrap();
        let r2 = s.put("vms/b", b"2".to_vec(), Expect::Absent).unwrap();
        s.put("vmsx", b"x".to_vec(), Expect::Any).unwrap();
        assert!(r2 > r1);
        assert_eq!(s.get("vms/a").unwrap().unwrap().revision, r1);
        let keys: Vec<_> = s.list("vms/").unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["vms/a", "vms/b"]);
        s.delete("vms/a", Expect::Revision(r1)).unwrap();
        assert!(s.get("vms/a").unwrap().is_none());
    }

    #[test]
    fn expectations_are_compare_and_swap() {
        let s = SqliteStore::in_memory().unwrap();
        let r1 = s.put("k", b"1".to_vec(), Expect::Absent).unwrap();
        assert!(matches!(s.put("k", b"2".to_vec(), Expect::Absent), Err(StoreError::Conflict { .. })));
        let r2 = s.put("k", b"2".to_vec(), Expect::Revision(r1)).unwrap();
        assert!(matches!(s.put("k", b"3".to_vec(), Expect::Revision(r1)), Err(StoreError::Conflict { .. })));
        assert_eq!(s.get("k").unwrap().unwrap().value, b"2");
        assert_eq!(s.get("k").unwrap().unwrap().revision, r2);
    }

    #[test]
    fn a_failed_txn_changes_nothing() {
        let s = SqliteStore::in_memory().unwrap();
        s.put("a", b"1".to_vec(), Expect::Absent).unwrap();
        let before = s.revision().unwrap();
        let err = s.txn(vec![
            Op::Put { key: "b".into(), value: b"2".to_vec(), expect: Expect::Absent },
            Op::Put { key: "a".into(), value: b"x".to_vec(), expect: Expect::Absent },
        ]);
        assert!(matches!(err, Err(StoreError::Conflict { key, .. }) if key == "a"));
        assert!(s.get("b").unwrap().is_none());
        assert_eq!(s.get("a").unwrap().unwrap().value, b"1");
        assert_eq!(s.revision().unwrap(), before);
    }

    #[test]
    fn watchers_see_changes_in_order() {
        let s = SqliteStore::in_memory().unwrap();
        let mut w = s.watch();
        s.put("a", b"1".to_vec(), Expect::Any).unwrap();
        s.delete("a", Expect::Any).unwrap();
        assert!(matches!(w.try_recv().unwrap(), WatchEvent::Put(e) if e.key == "a"));
        assert!(matches!(w.try_recv().unwrap(), WatchEvent::Delete { key, .. } if key == "a"));
    }

    #[test]
    fn watchers_see_concurrent_writers_in_revision_order() {
        let s = std::sync::Arc::new(SqliteStore::in_memory().unwrap());
        let mut w = s.watch();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let key = format!("k{t}/{}", i % 3);
                        s.put(&key, b"v".to_vec(), Expect::Any).unwrap();
                        if i % 2 == 0 {
                            s.delete(&key, Expect::Any).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in writers {
            t.join().unwrap();
        }
        let mut last = 0;
        let mut seen = 0;
        while let Ok(e) = w.try_recv() {
            let rev = match e {
                WatchEvent::Put(e) => e.revision,
                WatchEvent::Delete { revision, .. } => revision,
            };
            assert!(rev > last, "revision {rev} after {last}");
            (last, seen) = (rev, seen + 1);
        }
        assert_eq!(seen, 4 * 300, "every change is seen once");
    }

    #[test]
    fn survives_reopen_and_keeps_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let rev = {
            let s = SqliteStore::open(&path).unwrap();
            s.put("a", b"1".to_vec(), Expect::Any).unwrap()
        };
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(s.revision().unwrap(), rev);
        assert_eq!(s.get("a").unwrap().unwrap().value, b"1");
    }

    #[test]
    fn a_deleted_newest_key_keeps_its_revision_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let (old, deleted_at) = {
            let s = SqliteStore::open(&path).unwrap();
            s.put("a", b"1".to_vec(), Expect::Any).unwrap();
            let old = s.put("b", b"1".to_vec(), Expect::Any).unwrap();
            (old, s.delete("b", Expect::Revision(old)).unwrap())
        };
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.revision().unwrap(), deleted_at);
        // A holder of b's old revision must not match the b made anew.
        let again = s.put("b", b"2".to_vec(), Expect::Absent).unwrap();
        assert!(again > deleted_at && again != old);
        assert!(matches!(s.put("b", b"3".to_vec(), Expect::Revision(old)), Err(StoreError::Conflict { .. })));
        // And the newest put survives a reopen as the store's revision.
        drop(s);
        assert_eq!(SqliteStore::open(&path).unwrap().revision().unwrap(), again);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn typed_records_round_trip_and_update() {
        let s = SqliteStore::in_memory().unwrap();
        let t = oxvirt_model::Task {
            id: "t1".into(),
            kind: "vm.start".into(),
            target: "vms/a".into(),
            state: oxvirt_model::TaskState::Running,
            progress: 0,
            message: String::new(),
            error: None,
            created_at: 1,
            finished_at: None,
            host: None,
        };
        s.put_record("t1", &t, Expect::Absent).unwrap();
        let updated = s.update_record::<oxvirt_model::Task>("t1", |t| t.progress = 50).unwrap().unwrap();
        assert_eq!(updated.progress, 50);
        let all = s.list_records::<oxvirt_model::Task>().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.progress, 50);
        assert!(s.update_record::<oxvirt_model::Task>("none", |_| {}).unwrap().is_none());
        s.put("tasks/bad", b"{".to_vec(), Expect::Any).unwrap();
        assert!(matches!(s.list_records::<oxvirt_model::Task>(), Err(StoreError::Corrupt { .. })));
    }
}
