//! The controller makes the host match the store.
//!
//! The API hands it requests; it validates them against the host, records desired state in the
//! store, runs long operations as tasks and drives the hypervisor. A reconciler re-adopts guests
//! after a daemon restart and notices guests that stopped on their own. Every change of state is
//! written to the store first and announced on the event bus.

/// Declares a service of the controller: the operations of one concern, over the shared core
/// (store, hypervisor, tasks, VM slots) and the concern's own state. A service is a handle: it
/// holds a clone of the controller (one `Arc`), so it may be moved into a task.
macro_rules! service {
    ($(#[$doc:meta])* $name:ident, $accessor:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            pub(crate) ctl: $crate::Controller,
        }

        impl $crate::Controller {
            $(#[$doc])*
            pub fn $accessor(&self) -> $name {
                $name { ctl: self.clone() }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $accessor:ident, state = $field:ident) => {
        $crate::service!($(#[$doc])* $name, $accessor);

        impl $name {
            /// This service's own state (the module's `State`).
            pub(crate) fn state(&self) -> &State {
                &self.ctl.inner.$field
            }
        }
    };
}
pub(crate) use service;

pub mod access;
pub mod backup;
pub mod cluster;
mod error;
pub mod ha;
mod host;
pub mod jobs;
mod migrate;
pub mod monitoring;
pub mod network;
pub mod resources;
pub mod storage;
mod tasks;
pub mod templates;
mod vms;

pub use access::Access;
pub use access::Projects;
pub use backup::Backups;
pub use cluster::Hosts;
pub use error::ControlError;
pub use jobs::{Job, JobFigures};
pub use migrate::Migrations;
pub use monitoring::Monitoring;
pub use network::Ipam;
pub use network::Networks;
pub use network::SecurityGroups;
pub use resources::ResourceControl;
pub use storage::Nbd;
pub use storage::Snapshots;
pub use storage::Storage;
pub use tasks::TaskRegistry;
pub use templates::Templates;
pub use vms::Vms;

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
    /// High availability's timing (a cluster's hosts must agree on it: see `ha/`).
    pub ha: HaTiming,
    /// The name of oxvirt's two nftables tables (`inet` and `bridge`), the only ones it touches.
    pub nft_table: String,
}

/// When a host fences itself and when the leader may recover a lost host's VMs. Safe when
/// `fence_after` (from the last lease renewal) plus the time a kill takes is below the lease's
/// TTL plus `recover_after` (from the lease's end): oxvirtd checks it at start.
#[derive(Debug, Clone)]
pub struct HaTiming {
    /// A host that has not renewed its lease for this long kills its HA VMs (itself, and its
    /// watchdog if oxvirtd cannot).
    pub fence_after: Duration,
    /// The leader recovers a lost host's HA VMs this long after the host's lease ended.
    pub recover_after: Duration,
    /// The watchdog's socket (oxvirtd starts it); none: no watchdog.
    pub watchdog_socket: Option<PathBuf>,
}

impl Default for HaTiming {
    fn default() -> Self {
        HaTiming { fence_after: Duration::from_secs(9), recover_after: Duration::from_secs(1), watchdog_socket: None }
    }
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
            ha: HaTiming::default(),
            nft_table: network::firewall::DEFAULT_TABLE.to_string(),
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
    /// What each background job did (`jobs.rs`).
    pub jobs: jobs::JobBook,
    // Each service's own state.
    pub vms: vms::State,
    pub storage: storage::State,
    pub nbd: storage::nbd::State,
    pub migrations: migrate::State,
    pub hosts: cluster::State,
    pub ha: ha::State,
    pub backups: backup::State,
    pub templates: templates::State,
    pub access: access::State,
    pub resources: resources::State,
    pub monitoring: monitoring::State,
    pub networks: network::State,
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
            jobs: Default::default(),
            vms: Default::default(),
            storage: Default::default(),
            nbd: Default::default(),
            migrations: Default::default(),
            hosts: Default::default(),
            ha: Default::default(),
            backups: Default::default(),
            templates: Default::default(),
            access: Default::default(),
            resources: Default::default(),
            monitoring: Default::default(),
            networks: Default::default(),
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
        self.ipam().claim_all_macs();
        self.networks().ensure_networks().await;
        self.migrations().recover_migrations(false).await;
        self.reconcile_round(true).await;
        self.vms().canonicalize_records();
        self.migrations().recover_migrations(true).await;
        self.backups().recover_interrupted().await;
        self.templates().remove_leftovers();
        self.networks().remove_orphans().await;
        if let Ok(p) = self.resources().host_policy() {
            if let Err(e) = resources::apply_ksm(p.ksm) {
                tracing::warn!("{e}");
            }
        }
        self.migrations().watch_migrations();
        self.ha().start_fencing();
        self.ha().watch_cluster();
        let balloon = self.resources();
        let every = Duration::from_secs(2);
        self.spawn_job(Job::AutoBalloon, every, every, move || {
            let b = balloon.clone();
            async move { b.auto_balloon_round().await }
        });
        let monitoring = self.monitoring();
        self.spawn_job(Job::History, monitoring::history::STEP, Duration::ZERO, move || {
            let m = monitoring.clone();
            async move { m.sample().await }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.inner.config.reconcile_interval).await;
                me.reconcile_round(false).await;
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
