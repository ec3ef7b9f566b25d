//! oxvirtd: the oxvirt daemon, one per host.

mod cluster_tls;
mod config;
mod https;
mod tls;
mod watchdog;

use clap::Parser;
use config::Config;
use oxvirt_controller::{Controller, ControllerConfig};
use oxvirt_hypervisor::{accel, Accel, AccelDecision};
use oxvirt_store::SqliteStore;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "oxvirtd", version, about = "The oxvirt daemon: runs and watches this host's VMs")]
struct Args {
    /// Where the store, the API socket and the VMs' runtime files live.
    #[arg(long, env = "OXVIRT_DATA_DIR", default_value = "/var/lib/oxvirt")]
    data_dir: PathBuf,
    /// Configuration file (TOML); default: oxvirtd.toml in the data dir, if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Join a cluster: keep state in the etcd cluster at these endpoints (comma-separated,
    /// e.g. http://10.0.0.1:2379,http://10.0.0.2:2379) instead of the local store; the same as
    /// `[store] backend = "etcd"` in the config file. A host joins with no VMs of its own.
    #[arg(long, value_name = "ENDPOINTS")]
    join: Option<String>,
    /// With --join: this host's name in the cluster (default: the config's, or the machine's).
    #[arg(long, requires = "join")]
    host_name: Option<String>,
}

/// glibc keeps freed memory for reuse, and once a large block is freed it raises its thresholds,
/// so that later large blocks (the JSON of a list of 10,000 VMs) stay in the heap after use.
/// Fixed thresholds (the defaults, kept) give them back: with 10,000 VMs the daemon's RSS went
/// from 46 to 34 MiB, with no change measured in request rates (`oxvirt-bench scale`).
fn give_freed_memory_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn main() {
    give_freed_memory_back();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("oxvirtd: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    // Everything the daemon creates (store, sockets, tokens, QEMU's logs) is private to root.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let config_path = args.config.clone().unwrap_or_else(|| args.data_dir.join("oxvirtd.toml"));
    let mut config = Config::load(&config_path).map_err(|e| e.to_string())?;
    if let Some(endpoints) = &args.join {
        config = config.join(endpoints, args.host_name.clone())?;
        refuse_join_with_vms(&args.data_dir)?;
    }
    // The cluster's TLS files, before anything starts: a bad one names its setting.
    let etcd_tls = cluster_tls::load_etcd(&config.store).map_err(|e| e.to_string())?;
    let migration_tls = cluster_tls::check_migration_dir(&config.store).map_err(|e| e.to_string())?;
    init_logging(&config.log_format);
    // Made here when missing (and so oxvirt's): passable by QEMU's users (0711), whatever the
    // umask; an operator's existing directory is left as it is.
    oxvirt_hypervisor::qemu::confine::make_passable_dirs(&args.data_dir)
        .map_err(|e| format!("create {}: {e}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&args.data_dir)?;

    let decision = match config.accelerator.as_str() {
        "kvm" => AccelDecision { accel: Accel::Kvm, reason: "using KVM: set by the accelerator setting".into() },
        "tcg" => AccelDecision { accel: Accel::Tcg, reason: "using TCG: set by the accelerator setting".into() },
        _ => accel::detect(),
    };
    // The one-line notice operators look for.
    eprintln!("oxvirtd: {}", decision.reason);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(args, config, decision, Transport { etcd_tls, migration_tls }))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXVIRT_LOG").unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// A host joins a cluster empty: VMs in its own store would be left behind, unmanaged.
fn refuse_join_with_vms(dir: &std::path::Path) -> Result<(), String> {
    let db = dir.join("store.db");
    if !db.exists() {
        return Ok(());
    }
    let local = SqliteStore::open(&db).map_err(|e| e.to_string())?;
    let vms = oxvirt_store::StoreExt::list_records::<oxvirt_model::Vm>(&local).map_err(|e| e.to_string())?;
    if !vms.is_empty() {
        let names: Vec<String> = vms.into_iter().map(|(v, _)| v.spec.name).collect();
        return Err(format!(
            "--join: this host has VM(s) {} in its own store ({}): move or delete them first, a host joins empty",
            names.join(", "),
            db.display()
        ));
    }
    Ok(())
}

/// Only one daemon per data dir: an exclusive lock held for the daemon's life.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("oxvirtd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("another oxvirtd runs on {} (it holds {})", dir.display(), path.display()));
    }
    Ok(f)
}

/// How this host talks to the rest of the cluster (checked, read).
struct Transport {
    etcd_tls: Option<oxvirt_store::EtcdTls>,
    migration_tls: Option<PathBuf>,
}

async fn serve(args: Args, config: Config, decision: AccelDecision, transport: Transport) -> Result<(), String> {
    let mut etcd: Option<Arc<oxvirt_store::EtcdStore>> = None;
    let store: Arc<dyn oxvirt_store::Store> = match config.store.backend.as_str() {
        "etcd" => {
            let s = oxvirt_store::EtcdStore::connect_with(
                &config.store.etcd_endpoints,
                &config.store.etcd_prefix,
                transport.etcd_tls.as_ref(),
            )
            .map_err(|e| match transport.etcd_tls {
                // A refused handshake reads as a closed connection: say what was tried.
                Some(_) => format!("store: {e} (over TLS as store.etcd_cert, members checked against store.etcd_ca)"),
                None => format!("store: {e}"),
            })?;
            tracing::info!(endpoints = ?config.store.etcd_endpoints, prefix = %config.store.etcd_prefix, tls = transport.etcd_tls.is_some(), "state in etcd");
            let s = Arc::new(s);
            etcd = Some(s.clone());
            s
        }
        _ => Arc::new(SqliteStore::open(&args.data_dir.join("store.db")).map_err(|e| e.to_string())?),
    };
    let mut hv = oxvirt_hypervisor::qemu::QemuDriver::new(config.qemu_binary.clone(), decision);
    if let Some(dir) = &transport.migration_tls {
        // Every QEMU of this host reads a copy of the certificates made its own as it starts.
        hv = hv.with_migration_tls(dir);
        tracing::info!(dir = %dir.display(), "live migration over TLS");
    }
    let mut cc = ControllerConfig::new(&args.data_dir);
    cc.migration_tls = transport.migration_tls.is_some();
    cc.stop_timeout = Duration::from_secs(config.stop_timeout_secs);
    cc.console_log_max = config.console_log_max_bytes;
    cc.confine_qemu = config.confine_qemu;
    cc.host_path_roots = config.host_path_roots.clone();
    cc.nft_table = config.nft_table.clone();
    cc.ha = oxvirt_controller::HaTiming {
        fence_after: Duration::from_millis(config.fence_after_ms()),
        recover_after: Duration::from_millis(config.ha.recover_after_ms),
        watchdog_socket: None,
    };
    if etcd.is_some() {
        if config.ha.watchdog {
            let kernel = config.ha.kernel_watchdog.as_deref().map(|d| (d, config.kernel_watchdog_timeout_secs()));
            cc.ha.watchdog_socket = Some(watchdog::ensure(&args.data_dir, kernel)?);
        } else {
            tracing::warn!("ha.watchdog = false: a hung oxvirtd does not fence its HA VMs (something else must)");
        }
    }
    cc.host_path_secrets =
        [&config.store.etcd_ca, &config.store.etcd_cert, &config.store.etcd_key, &config.store.migration_tls_dir]
            .into_iter()
            .flatten()
            .cloned()
            .chain([args.config.clone().unwrap_or_else(|| args.data_dir.join("oxvirtd.toml"))])
            .collect();
    let ctrl = Controller::new(store, Arc::new(hv), cc).map_err(|e| e.to_string())?;
    if let Some(etcd) = &etcd {
        // Joined before anything is reconciled: a host looks after its own VMs only.
        let name = config.store.host_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
        });
        let address = config.store.address.clone().unwrap_or_else(|| config.https_listen.clone());
        let session = etcd.join(&name, config.store.member_ttl_secs as i64);
        ctrl.hosts().join_cluster(&name, &address, session).map_err(|e| format!("cluster: {e}"))?;
        tracing::info!(host = %name, "joined the cluster");
    }
    ctrl.start_background().await;
    ctrl.monitoring().start_alerting(oxvirt_controller::monitoring::alerts::AlertConfig {
        interval: Duration::from_secs(config.alerts.interval_secs),
        rules: config.alerts.rules.clone(),
        webhook: config.alerts.webhook.clone(),
    });

    let api_metrics = std::sync::Arc::new(oxvirt_api::metrics::ApiMetrics::default());
    let made = ctrl.access().ensure_admin_token(&args.data_dir.join("admin.token")).map_err(|e| e.to_string())?;
    if made == oxvirt_controller::access::tokens::AdminToken::Made {
        tracing::info!(file = %args.data_dir.join("admin.token").display(), "made the administrator API token");
    }
    if !config.https_listen.is_empty() {
        let tls = tls::load_or_create(&args.data_dir.join("tls"))?;
        let tcp = tokio::net::TcpListener::bind(&config.https_listen)
            .await
            .map_err(|e| format!("https_listen {}: {e}", config.https_listen))?;
        let addr = tcp.local_addr().map_err(|e| e.to_string())?;
        // Where clients find the API when the port was chosen by the kernel (`:0`).
        std::fs::write(args.data_dir.join("https.addr"), format!("{addr}\n")).map_err(|e| e.to_string())?;
        tracing::info!(address = %addr, certificate = %tls.cert_path.display(), "HTTPS API ready");
        // Operators pin this in the CLI (--fingerprint / OXVIRT_FINGERPRINT).
        eprintln!("oxvirtd: HTTPS API on {addr}, certificate fingerprint (SHA-256) {}", tls.fingerprint);
        tokio::spawn(https::serve(
            tcp,
            tls.config.clone(),
            oxvirt_api::auth::https_router(
                ctrl.clone(),
                api_metrics.clone(),
                std::sync::Arc::new(oxvirt_api::auth::RateLimiter::new(
                    config.api_rate_per_token,
                    config.api_burst_per_token,
                )),
            ),
            https::ConnectionLimits {
                total: config.https_max_connections,
                per_address: config.https_max_connections_per_address,
            },
        ));
    }

    let sock = args.data_dir.join("oxvirtd.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| format!("listen on {}: {e}", sock.display()))?;
    // Local root is the administrator (as with Incus): nobody else may connect.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    tracing::info!(socket = %sock.display(), "oxvirtd ready");

    let app = oxvirt_api::router_with_metrics(ctrl, api_metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("oxvirtd stopping; running VMs keep running");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        _ = async { if let Some(i) = int.as_mut() { i.recv().await; } else { std::future::pending::<()>().await } } => {}
    }
}
