//! The controller makes the host match the store.
//!
//! The API hands it requests; it validates them against the host, records desired state in the
//! store, runs long operations as tasks and drives the hypervisor. A reconciler re-adopts guests
//! after a daemon restart and notices guests that stopped on their own. Every change of state is
//! written to the store first and announced on the event bus.

pub mod alerts;
pub mod audit;
pub mod cluster;
mod confine;
mod console;
mod disks;
mod error;
pub mod history;
mod host;
mod lifecycle;
pub mod login_guard;
mod migrate;
mod nbd;
pub mod network;
pub mod placement;
pub mod projects;
mod reconcile;
mod references;
pub mod resources;
mod snapshots;
pub mod stats;
pub mod storage;
mod tasks;
pub mod tokens;
pub mod users;
mod vms;

pub use error::ControlError;
pub use tasks::TaskRegistry;

use oxvirt_hypervisor::{Hypervisor, Instance, RuntimePaths};
use oxvirt_model::Event;
use oxvirt_store::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Settings of the controller (from the daemon's config file).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// How long a graceful stop waits for the guest before forcing it off.
    pub stop_timeout: Duration,
    /// Console logs are rotated past this size (one older file is kept).
    pub console_log_max: u64,
    /// How often the reconciler looks at every VM.
    pub reconcile_interval: Duration,
    /// Each VM's QEMU runs as a uid of its own from its first instruction.
    pub confine_qemu: bool,
    /// Directories under which an administrator may name host paths (disk images, kernels,
    /// import sources, export destinations, pool directories); empty turns host paths off.
    pub host_path_roots: Vec<PathBuf>,
    /// The daemon's secrets outside its data directory (TLS keys and certificates, its config
    /// file): never a host path, whatever the roots say.
    pub host_path_secrets: Vec<PathBuf>,
    /// Live migrations go over TLS (the QEMU driver gives every QEMU the credentials): only to
    /// and from hosts that say the same in their host record.
    pub migration_tls: bool,
}

impl ControllerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            data_dir: data_dir.into(),
            stop_timeout: Duration::from_secs(30),
            console_log_max: 1024 * 1024,
            reconcile_interval: Duration::from_secs(2),
            confine_qemu: true,
            host_path_roots: Vec::new(),
            host_path_secrets: Vec::new(),
            migration_tls: false,
        }
    }
}

/// The runtime side of one VM: the lock that serialises its operations and its running guest.
#[derive(Default)]
pub(crate) struct VmSlot {
    pub op: Arc<tokio::sync::Mutex<()>>,
    pub instance: Mutex<Option<Arc<dyn Instance>>>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub hv: Arc<dyn Hypervisor>,
    pub config: ControllerConfig,
    /// Which host paths a request may name (see `references.rs`).
    pub host_paths: oxvirt_storage::host_paths::HostPaths,
    pub events: broadcast::Sender<Event>,
    pub tasks: TaskRegistry,
    pub slots: Mutex<HashMap<String, Arc<VmSlot>>>,
    pub host: host::HostLimits,
    /// Volumes a task is working on (`pool/name`).
    pub busy_volumes: Mutex<std::collections::HashSet<String>>,
    pub alerts: Mutex<alerts::AlertBook>,
    pub history: Mutex<history::History>,
    /// The last figures gathered for monitoring, and when.
    pub stats_cache: Mutex<Option<(std::time::Instant, stats::Stats)>>,
    /// The export daemons of `nbd` pools, by pool.
    pub export_daemons: tokio::sync::Mutex<HashMap<String, Arc<oxvirt_storage::nbd::ExportDaemon>>>,
    /// QEMUs waiting for a VM migrating to this host, by VM.
    pub incoming: Mutex<HashMap<String, migrate::Incoming>>,
    /// Held while migration records are served (by the reconciler or the store watch).
    pub serving_migrations: tokio::sync::Mutex<()>,
    /// When the leader last rebalanced.
    pub last_rebalance: Mutex<Option<std::time::Instant>>,
    /// This daemon's cluster membership (etcd store only).
    pub membership: Mutex<Option<Arc<cluster::Membership>>>,
    /// Serialises appends to the audit log.
    pub audit_lock: Mutex<()>,
    /// Failed logins per user and per address (`login_guard.rs`).
    pub login_guard: Mutex<login_guard::LoginGuard>,
    /// VMs automatic ballooning shrank, with the target it set.
    pub auto_ballooned: Mutex<HashMap<String, u64>>,
    /// Serialises changes of networks and of oxvirt's nftables tables.
    pub net_lock: tokio::sync::Mutex<()>,
}

/// Cheap to clone: every clone is the same controller.
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, hv: Arc<dyn Hypervisor>, config: ControllerConfig) -> Result<Self, ControlError> {
        let (events, _) = broadcast::channel(1024);
        let tasks = TaskRegistry::new(store.clone(), events.clone())?;
        let inner = Inner {
            store,
            hv,
            host_paths: oxvirt_storage::host_paths::HostPaths::new(&config.host_path_roots, &config.data_dir)
                .refusing(&config.host_path_secrets),
            config,
            events,
            tasks,
            slots: Mutex::default(),
            host: host::HostLimits::detect(),
            busy_volumes: Mutex::default(),
            export_daemons: Default::default(),
            net_lock: Default::default(),
            auto_ballooned: Mutex::default(),
            audit_lock: Mutex::default(),
            login_guard: Mutex::default(),
            membership: Mutex::default(),
            incoming: Mutex::default(),
            last_rebalance: Mutex::default(),
            serving_migrations: tokio::sync::Mutex::default(),
            stats_cache: Mutex::default(),
            alerts: Mutex::default(),
            history: Mutex::default(),
        };
        Ok(Controller { inner: Arc::new(inner) })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn tasks(&self) -> &TaskRegistry {
        &self.inner.tasks
    }

    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.inner.hv
    }

    /// Adopts the guests that run, then keeps reconciling in the background.
    pub async fn start_background(&self) {
        if let Err(e) = self.inner.tasks.interrupt_leftovers() {
            tracing::error!("tasks: {e}");
        }
        self.claim_all_macs();
        self.ensure_networks().await;
        self.recover_migrations(false).await;
        self.reconcile_all().await;
        self.recover_migrations(true).await;
        self.remove_orphans().await;
        if let Ok(p) = self.host_policy() {
            if let Err(e) = resources::apply_ksm(p.ksm) {
                tracing::warn!("{e}");
            }
        }
        self.watch_migrations();
        self.start_auto_balloon(Duration::from_secs(2));
        self.start_history();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.inner.config.reconcile_interval).await;
                me.reconcile(false).await;
            }
        });
    }
}

impl Inner {
    pub fn slot(&self, name: &str) -> Arc<VmSlot> {
        lock(&self.slots).entry(name.to_string()).or_default().clone()
    }

    pub fn paths(&self, id: &str) -> RuntimePaths {
        // Named by id, not name: short (socket paths are limited) and never reused.
        RuntimePaths::new(self.config.data_dir.join("run").join(&id[..id.len().min(13)]))
    }

    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
