//! The store of desired and observed state.
//!
//! [`Store`] is a key/value store with revisions and watches, the shape etcd has, so that a cluster
//! backend can stand where [`SqliteStore`] stands on a single host. Every write goes through
//! [`Store::txn`]: a list of puts and deletes, each with an expectation on the key's revision, that
//! happens whole or not at all. Typed access (JSON records) is in [`records`]. [`EtcdStore`] keeps
//! the same on an etcd cluster.

mod etcd;
mod records;
mod sqlite;

pub use etcd::{EtcdStore, EtcdTls, Session};
pub use records::{encode, Record, StoreExt};
pub use sqlite::SqliteStore;

use tokio::sync::broadcast;

/// A host's membership of a cluster, as the control plane sees it: who leads. [`Session`] holds
/// it on etcd (a lease and an election); tests hold it by hand.
#[async_trait::async_trait]
pub trait ClusterSession: Send + Sync {
    /// The leading member's name, asked of the cluster.
    async fn leader(&self) -> Option<String>;

    /// When this member's lease was last renewed: the moment the renewal that etcd answered
    /// was sent (the lease lives at least its TTL from then). `None` before the first.
    /// High availability fences this host when it grows too old.
    fn lease_renewed(&self) -> Option<std::time::Instant>;
}

/// One key and its value, with the store revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// What a write expects of its key before it happens (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Whatever is there.
    #[default]
    Any,
    /// The key does not exist.
    Absent,
    /// The key exists and was last changed at this revision.
    Revision(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        expect: Expect,
    },
    /// A put tied to this member's cluster lease (etcd): the key goes by itself when the lease
    /// lapses (the member crashed, hung, or was cut off). Where there are no leases (SQLite, one
    /// host) a plain put. Refused before the member's first lease.
    PutLeased {
        key: String,
        value: Vec<u8>,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
}

/// A change, as watchers see it, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Entry),
    Delete { key: String, revision: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An expectation of a write did not hold: someone else changed the key first.
    #[error("conflict on {key}: it was changed by someone else (expected {expected:?})")]
    Conflict { key: String, expected: Expect },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("record {key} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A key/value store with revisions and watches.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Applies all `ops` atomically, or none when an expectation fails. Returns the new revision.
    fn txn(&self, ops: Vec<Op>) -> Result<u64, StoreError>;
    /// The revision of the last change.
    fn revision(&self) -> Result<u64, StoreError>;
    /// Changes from now on. A receiver that lags behind learns it from `RecvError::Lagged` and
    /// should list again.
    fn watch(&self) -> broadcast::Receiver<WatchEvent>;

    fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::Put { key: key.to_string(), value, expect }])
    }
    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::Delete { key: key.to_string(), expect }])
    }
}
