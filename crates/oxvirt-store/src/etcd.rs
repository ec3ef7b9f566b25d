//! The cluster backend: the same [`Store`] on etcd (its v3 API), which has the same shape:
//! revisions (etcd's `mod_revision`), compare-and-swap transactions and watches. Every key lives
//! under a prefix (default `oxvirt/`), so one etcd cluster can serve other tools too.
//!
//! The trait is synchronous (as SQLite is); the etcd client is async. The store keeps a small
//! runtime of its own and its calls wait on it, so they work from any thread, inside another
//! runtime or not.

use crate::{Entry, Expect, Op, Store, StoreError, WatchEvent};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long one call to etcd may take before it is an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of a request while etcd elects a leader.
const RETRIES: u32 = 8;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * u64::from(attempt + 1).min(10))
}

enum CallError {
    Transient(String),
    Fatal(StoreError),
}

pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    events: broadcast::Sender<WatchEvent>,
    /// Dropped with the store: background loops see it gone and stop.
    alive: Arc<()>,
    /// The lease this member's cluster session holds now (0: none yet), for `Op::PutLeased`.
    member_lease: Arc<std::sync::atomic::AtomicI64>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// TLS to etcd: the CA that signed the members' certificates, and this client's certificate and
/// key (PEM), which members started with `--client-cert-auth` require.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for EtcdTls {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

impl EtcdTls {
    fn options(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

impl EtcdStore {
    /// Connects to the cluster (any of `endpoints`, e.g. `http://127.0.0.1:2379`) in plaintext
    /// and starts following its changes.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        Self::connect_with(endpoints, prefix, None)
    }

    /// Connects as [`EtcdStore::connect`] does; with `tls`, over TLS (`https://` endpoints), the
    /// members' certificates checked against its CA and this client's certificate shown.
    pub fn connect_with(endpoints: &[String], prefix: &str, tls: Option<&EtcdTls>) -> Result<EtcdStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("oxvirt-etcd")
            .enable_all()
            .build()
            .map_err(backend)?;
        let eps = endpoints.to_vec();
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(CALL_TIMEOUT);
        if let Some(tls) = tls {
            options = options.with_tls(tls.options());
        }
        // Not `block_on`: the caller may itself be inside a runtime.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, Client::connect(eps, Some(options))).await);
        });
        let client = match rx.recv() {
            Ok(Ok(r)) => r.map_err(backend)?,
            Ok(Err(_)) => return Err(backend("no member answered")),
            Err(_) => return Err(backend("the store's runtime stopped")),
        };
        let (events, _) = broadcast::channel(4096);
        let store = EtcdStore {
            rt: Some(rt),
            client,
            prefix: prefix.to_string(),
            events,
            alive: Arc::new(()),
            member_lease: Arc::default(),
        };
        // Fail now, not at the first request, when no member answers.
        store.revision()?;
        store.follow();
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Only taken in Drop.
        self.rt.as_ref().expect("runtime")
    }

    /// Runs `f` on the store's runtime and waits for it from this thread. `Err(Transient)`: etcd
    /// could not answer now (no leader, a member gone) and the request may be tried again.
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, CallError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt().spawn(async move {
            let r = tokio::time::timeout(CALL_TIMEOUT, f).await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => {
                let text = e.to_string();
                let lower = text.to_lowercase();
                let transient = ["unavailable", "timed out", "deadline", "transport", "leader", "connection"]
                    .iter()
                    .any(|w| lower.contains(w));
                Err(if transient { CallError::Transient(text) } else { CallError::Fatal(backend(text)) })
            }
            Ok(Err(_)) => Err(CallError::Transient(format!("no answer within {CALL_TIMEOUT:?}"))),
            Err(_) => Err(CallError::Fatal(backend("the store's runtime stopped"))),
        }
    }

    /// A request that changes nothing, tried again (for up to ~10 s) while etcd is between leaders.
    fn read<T: Send + 'static, F>(&self, make: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let mut last = String::new();
        for attempt in 0..RETRIES {
            match self.call(make()) {
                Ok(v) => return Ok(v),
                Err(CallError::Fatal(e)) => return Err(e),
                Err(CallError::Transient(e)) => last = e,
            }
            std::thread::sleep(backoff(attempt));
        }
        Err(backend(last))
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Entry {
        let key = String::from_utf8_lossy(kv.key());
        Entry {
            key: key.strip_prefix(&self.prefix).unwrap_or(&key).to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
        }
    }

    /// Follows every change under the prefix into the broadcast channel; after an interruption it
    /// resumes from the revision after the last one it saw, so watchers miss nothing.
    fn follow(&self) {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let events = self.events.clone();
        self.rt().spawn(async move {
            let mut next: i64 = 0;
            loop {
                let mut w = client.watch_client();
                let mut opts = WatchOptions::new().with_prefix();
                if next > 0 {
                    opts = opts.with_start_revision(next);
                }
                match w.watch(prefix.clone(), Some(opts)).await {
                    Ok(mut stream) => {
                        while let Ok(Some(resp)) = stream.message().await {
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                let key = String::from_utf8_lossy(kv.key());
                                let key = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                                next = next.max(kv.mod_revision() + 1);
                                let e = match ev.event_type() {
                                    EventType::Put => WatchEvent::Put(Entry {
                                        key,
                                        value: kv.value().to_vec(),
                                        revision: kv.mod_revision() as u64,
                                    }),
                                    EventType::Delete => WatchEvent::Delete { key, revision: kv.mod_revision() as u64 },
                                };
                                let _ = events.send(e);
                            }
                        }
                    }
                    Err(e) => tracing::warn!("etcd watch: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Whether the store holds what `ops` write (after a try whose outcome was unknown).
    fn applied(&self, ops: &[Op]) -> bool {
        ops.iter().all(|op| match op {
            Op::Put { key, value, .. } | Op::PutLeased { key, value, .. } => {
                self.get(key).ok().flatten().is_some_and(|e| &e.value == value)
            }
            Op::Delete { key, .. } => self.get(key).ok().flatten().is_none(),
        })
    }

    /// After a failed transaction: the first key whose expectation does not hold (for the error).
    fn failed_key(&self, ops: &[Op]) -> (String, Expect) {
        for op in ops {
            let (key, expect) = match op {
                Op::Put { key, expect, .. } | Op::PutLeased { key, expect, .. } | Op::Delete { key, expect } => {
                    (key, *expect)
                }
            };
            let now = self.get(key).ok().flatten().map(|e| e.revision);
            let holds = match expect {
                Expect::Any => true,
                Expect::Absent => now.is_none(),
                Expect::Revision(r) => now == Some(r),
            };
            if !holds {
                return (key.clone(), expect);
            }
        }
        ops.first()
            .map(|op| match op {
                Op::Put { key, expect, .. } | Op::PutLeased { key, expect, .. } | Op::Delete { key, expect } => {
                    (key.clone(), *expect)
                }
            })
            .unwrap_or_default()
    }
}

/// This process's presence in a cluster: a key that exists while it lives, and its turn at leading.
pub struct Session {
    leader: Arc<AtomicBool>,
    /// When the lease was last renewed (see [`crate::ClusterSession::lease_renewed`]).
    renewed: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    client: Client,
    election: String,
    store: std::sync::Weak<()>,
}

impl EtcdStore {
    /// Joins the cluster as `member`: `alive/<member>` exists while this process keeps its etcd
    /// lease (`ttl` seconds, renewed several times a second; put again after an interruption),
    /// and the member campaigns in the `leader` election, leading while it holds it.
    pub fn join(&self, member: &str, ttl: i64) -> Session {
        let leader = Arc::new(AtomicBool::new(false));
        let renewed: Arc<std::sync::Mutex<Option<std::time::Instant>>> = Default::default();
        let renewed_here = renewed.clone();
        let (client, key, election, name) =
            (self.client.clone(), self.full(&format!("alive/{member}")), self.full("leader"), member.to_string());
        let flag = leader.clone();
        let alive = Arc::downgrade(&self.alive);
        let lease_now = self.member_lease.clone();
        self.rt().spawn(async move {
            loop {
                let held = Held { leader: &flag, renewed: &renewed_here, lease: &lease_now };
                if let Err(e) = hold(&client, &key, &election, &name, ttl, held).await {
                    tracing::warn!("cluster membership: {e}; trying again");
                }
                flag.store(false, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                if alive.upgrade().is_none() {
                    return;
                }
            }
        });
        Session {
            leader,
            renewed,
            client: self.client.clone(),
            election: self.full("leader"),
            store: Arc::downgrade(&self.alive),
        }
    }
}

/// What a member's session shares with its lease's keeper.
struct Held<'a> {
    leader: &'a Arc<AtomicBool>,
    renewed: &'a std::sync::Mutex<Option<std::time::Instant>>,
    /// The lease now (0 between leases), for keys put with it.
    lease: &'a std::sync::atomic::AtomicI64,
}

/// One lease's life: the member's key put with it, a campaign on it, renewals until it lapses.
async fn hold(
    client: &Client,
    key: &str,
    election: &str,
    name: &str,
    ttl: i64,
    held: Held<'_>,
) -> Result<(), etcd_client::Error> {
    let Held { leader, renewed, lease: lease_now } = held;
    let asked = std::time::Instant::now();
    let lease = client.lease_client().grant(ttl, None).await?.id();
    lease_now.store(lease, Ordering::SeqCst);
    set_renewed(renewed, asked);
    client.kv_client().put(key, name, Some(PutOptions::new().with_lease(lease))).await?;
    let mut el = client.election_client();
    let (election, name, flag) = (election.to_string(), name.to_string(), leader.clone());
    // Waits (as long as it takes: each call is bounded by the client's timeout, so it is asked
    // again) for its turn; leads until the lease lapses.
    let campaign = tokio::spawn(async move {
        loop {
            match el.campaign(election.clone(), name.clone(), lease).await {
                Ok(_) => {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let result = renew(client, lease, ttl, renewed).await;
    lease_now.store(0, Ordering::SeqCst);
    campaign.abort();
    leader.store(false, Ordering::SeqCst);
    result
}

/// How often a lease is renewed: a tenth of its TTL, from 100 to 500 ms, so that a host knows
/// within a fraction of a second that it can no longer renew (high availability's fencing
/// counts from the last renewal).
fn renew_every(ttl: i64) -> Duration {
    Duration::from_millis((ttl.max(1) as u64 * 100).clamp(100, 500))
}

fn set_renewed(renewed: &std::sync::Mutex<Option<std::time::Instant>>, at: std::time::Instant) {
    let mut r = renewed.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none_or(|old| at > old) {
        *r = Some(at);
    }
}

/// Keeps `lease` alive, renewing it every [`renew_every`], until it lapses (Ok) or cannot be
/// renewed before it would (Err). A broken renewal stream (the etcd member it went to stopped)
/// is opened again at once on the same lease: the member's key stays while the lease runs,
/// instead of vanishing until a new lease is granted. Each renewal etcd answers is recorded, as
/// the moment it was sent.
async fn renew(
    client: &Client,
    lease: i64,
    ttl: i64,
    renewed: &std::sync::Mutex<Option<std::time::Instant>>,
) -> Result<(), etcd_client::Error> {
    let every = renew_every(ttl);
    let mut lapses = tokio::time::Instant::now() + Duration::from_secs(ttl as u64);
    loop {
        let broken = match client.lease_client().keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                let sent = std::time::Instant::now();
                if let Err(e) = keeper.keep_alive().await {
                    break e;
                }
                // A member that went silent (not closed) must not hold the renewals up past the lease.
                let answer = tokio::time::timeout(every, stream.message()).await.unwrap_or_else(|_| {
                    Err(etcd_client::Error::LeaseKeepAliveError(format!("no answer within {every:?}")))
                });
                match answer {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        set_renewed(renewed, sent);
                        lapses = tokio::time::Instant::now() + Duration::from_secs(r.ttl() as u64);
                        tokio::time::sleep(every).await;
                    }
                    Ok(_) => return Ok(()),
                    Err(e) => break e,
                }
            },
            Err(e) => e,
        };
        if tokio::time::Instant::now() + Duration::from_millis(100) >= lapses {
            return Err(broken);
        }
        tracing::debug!("cluster membership: renewing the lease again after {broken}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Session {
    /// Whether this member leads now (as last known here, without asking etcd).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl crate::ClusterSession for Session {
    async fn leader(&self) -> Option<String> {
        let _ = self.store.upgrade()?;
        let mut el = self.client.election_client();
        let r = tokio::time::timeout(CALL_TIMEOUT, el.leader(self.election.clone())).await.ok()?.ok()?;
        r.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    fn lease_renewed(&self) -> Option<std::time::Instant> {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let k = self.full(key);
        let resp = self.read(|| {
            let (mut kv, k) = (self.client.kv_client(), k.clone());
            async move { kv.get(k, None).await }
        })?;
        Ok(resp.kvs().first().map(|kv| self.entry(kv)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let k = self.full(prefix);
        let resp = self.read(|| {
            let (mut kv, k) = (self.client.kv_client(), k.clone());
            async move { kv.get(k, Some(GetOptions::new().with_prefix())).await }
        })?;
        // etcd answers in key order.
        Ok(resp.kvs().iter().map(|kv| self.entry(kv)).collect())
    }

    fn txn(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut compares = Vec::new();
        let mut actions = Vec::new();
        for op in &ops {
            let (key, expect) = match op {
                Op::Put { key, expect, .. } | Op::PutLeased { key, expect, .. } | Op::Delete { key, expect } => {
                    (self.full(key), *expect)
                }
            };
            match expect {
                Expect::Any => {}
                Expect::Absent => compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
                Expect::Revision(r) => compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, r as i64)),
            }
            actions.push(match op {
                Op::Put { value, .. } => TxnOp::put(key, value.clone(), None),
                Op::PutLeased { value, .. } => {
                    let lease = self.member_lease.load(Ordering::SeqCst);
                    if lease == 0 {
                        return Err(backend(format!("{key}: this member holds no cluster lease yet")));
                    }
                    TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(lease)))
                }
                Op::Delete { .. } => TxnOp::delete(key, None),
            });
        }
        // Tried again while etcd is between leaders. A try that timed out may still have been
        // applied: if a later try then conflicts, the store is checked for our own writes.
        let mut ambiguous = false;
        let mut last = String::new();
        for attempt in 0..RETRIES {
            let txn = Txn::new().when(compares.clone()).and_then(actions.clone());
            let mut kv = self.client.kv_client();
            match self.call(async move { kv.txn(txn).await }) {
                Ok(resp) if resp.succeeded() => return Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0)),
                Ok(_) => {
                    if ambiguous && self.applied(&ops) {
                        return self.revision();
                    }
                    let (key, expected) = self.failed_key(&ops);
                    return Err(StoreError::Conflict { key, expected });
                }
                Err(CallError::Fatal(e)) => return Err(e),
                Err(CallError::Transient(e)) => {
                    ambiguous = true;
                    last = e;
                }
            }
            std::thread::sleep(backoff(attempt));
        }
        Err(backend(last))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let k = self.full("");
        let resp = self.read(|| {
            let (mut kv, k) = (self.client.kv_client(), k.clone());
            async move { kv.get(k, Some(GetOptions::new().with_prefix().with_count_only())).await }
        })?;
        Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0))
    }

    fn watch(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }
}
