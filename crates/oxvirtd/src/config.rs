//! oxvirtd's configuration file (TOML). Every setting has a default; unknown keys are refused.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The QEMU system emulator to run.
    pub qemu_binary: String,
    /// `auto` (KVM where the host really runs guests natively, else TCG), `kvm` or `tcg`.
    pub accelerator: String,
    /// Seconds a graceful stop waits for the guest before forcing it off.
    pub stop_timeout_secs: u64,
    /// Console logs are rotated past this many bytes.
    pub console_log_max_bytes: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// Address of the HTTPS API (token required), e.g. `0.0.0.0:8443`; empty turns it off.
    pub https_listen: String,
    /// Connections the HTTPS listener holds at once, in all and from one address (past them a
    /// new connection is closed at once).
    pub https_max_connections: usize,
    pub https_max_connections_per_address: usize,
    /// Each VM's QEMU runs as a uid of its own from its first instruction.
    pub confine_qemu: bool,
    /// Requests per second each API token may make over HTTPS (0: no limit), and the burst.
    pub api_rate_per_token: f64,
    pub api_burst_per_token: f64,
    /// Directories under which an administrator may name host paths: disk images and kernels
    /// outside pools, volume import sources and export destinations, pool directories. Empty
    /// (the default) turns host paths off; system trees (/etc, /dev, /proc, /sys...) and the data
    /// directory's secrets are refused whatever is listed. Non-administrators never name a path.
    pub host_path_roots: Vec<PathBuf>,
    /// The name of oxvirt's nftables tables (`inet` and `bridge`); oxvirt touches no other. One
    /// daemon per host keeps `oxvirt`; daemons sharing a kernel (tests) each need their own.
    pub nft_table: String,
    /// Built-in alerting.
    pub alerts: AlertsConfig,
    /// Where state lives: the embedded SQLite store (one host), or etcd (a cluster).
    pub store: StoreConfig,
    /// High availability's timing, in a cluster (see `HaConfig`).
    pub ha: HaConfig,
}

/// High availability's timing budget. A host that has not renewed its cluster lease for
/// `fence_after_ms` kills its HA VMs (itself, and its watchdog when oxvirtd cannot); the leader
/// recovers a lost host's HA VMs `recover_after_ms` after the host's lease ended, which is at
/// least `store.member_ttl_secs` after its last renewal. So no VM runs twice when
/// `fence_after_ms + 500` (the time a kill may take) is at most
/// `member_ttl_secs * 1000 + recover_after_ms`: a configuration that breaks it is refused.
/// A lost host's VMs run again elsewhere about `member_ttl_secs + recover_after_ms` (plus a
/// reconcile round and the guest's boot) after the failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Default: the lease's TTL less one second.
    pub fence_after_ms: Option<u64>,
    pub recover_after_ms: u64,
    /// The watchdog process (`oxvirt-watchdog`, next to oxvirtd) that fences when oxvirtd
    /// cannot; off only where something else fences.
    pub watchdog: bool,
    /// The kernel's watchdog device (`/dev/watchdog`) the watchdog process keeps armed while the
    /// host guards HA QEMUs: if the process dies or hangs, or a fenced QEMU does not die, the
    /// kernel resets the host. Off by default (a reset takes every VM of the host down).
    pub kernel_watchdog: Option<PathBuf>,
    /// The device's timeout. Default: the most the timing budget allows (`Config::kernel_watchdog_timeout_secs`).
    pub kernel_watchdog_timeout_secs: Option<u32>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            fence_after_ms: None,
            recover_after_ms: 1000,
            watchdog: true,
            kernel_watchdog: None,
            kernel_watchdog_timeout_secs: None,
        }
    }
}

/// The most a kill of the fenced QEMUs may take.
pub const KILL_MARGIN_MS: u64 = 500;

impl Config {
    /// `ha.kernel_watchdog_timeout_secs`, or the most the budget allows: a device last petted at
    /// the fencing deadline resets the host before the leader may recover its VMs.
    pub fn kernel_watchdog_timeout_secs(&self) -> u32 {
        self.ha.kernel_watchdog_timeout_secs.unwrap_or_else(|| self.kernel_watchdog_max_secs())
    }

    /// The longest kernel watchdog timeout the budget allows, in whole seconds: lease TTL plus
    /// `recover_after_ms` less `fence_after_ms`.
    fn kernel_watchdog_max_secs(&self) -> u32 {
        let slack =
            (self.store.member_ttl_secs * 1000 + self.ha.recover_after_ms).saturating_sub(self.fence_after_ms());
        (slack / 1000) as u32
    }

    /// `ha.fence_after_ms`, or its default.
    pub fn fence_after_ms(&self) -> u64 {
        self.ha.fence_after_ms.unwrap_or((self.store.member_ttl_secs * 1000).saturating_sub(1000))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (`<data-dir>/store.db`) or `etcd`.
    pub backend: String,
    /// With etcd: this host's name in the cluster (default: the machine's host name).
    pub host_name: Option<String>,
    /// With etcd: where other hosts and clients reach this host's API (default: https_listen).
    pub address: Option<String>,
    /// With etcd: seconds without renewal after which this host counts as offline.
    pub member_ttl_secs: u64,
    /// etcd members, e.g. `["http://10.0.0.1:2379", "http://10.0.0.2:2379"]`.
    pub etcd_endpoints: Vec<String>,
    /// Every key lives under this prefix in etcd.
    pub etcd_prefix: String,
    /// With `https://` endpoints (all three, or none): the CA file (PEM) that signed the etcd
    /// members' certificates, and this host's client certificate and key (PEM) that members
    /// started with `--client-cert-auth` require.
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    /// With etcd: live migration (memory stream and local disks' NBD copies) over TLS with
    /// certificates on both ends. A directory of PEM files as QEMU's `tls-creds-x509` wants:
    /// `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (this host's certificate, naming its
    /// address), `client-cert.pem`, `client-key.pem`. A host with it migrates only to and from
    /// hosts with it.
    pub migration_tls_dir: Option<PathBuf>,
}

/// The shape of the settings: the etcd TLS files all three or none, with `https://` endpoints
/// only (and those only with them). On a single host (SQLite) they are kept for `--join` and
/// unused.
fn check_tls_shape(s: &StoreConfig) -> Result<(), String> {
    let files = [("etcd_ca", &s.etcd_ca), ("etcd_cert", &s.etcd_cert), ("etcd_key", &s.etcd_key)];
    let set: Vec<&str> = files.iter().filter(|(_, v)| v.is_some()).map(|(n, _)| *n).collect();
    if !set.is_empty() && set.len() < files.len() {
        let missing: Vec<&str> = files.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        return Err(format!(
            "store.{}: etcd_ca, etcd_cert and etcd_key go together (missing: {})",
            missing[0],
            missing.join(", ")
        ));
    }
    let tls = !set.is_empty();
    // With the SQLite backend they wait, unused, for `--join`.
    if s.backend != "etcd" {
        return Ok(());
    }
    if let Some(e) = s.etcd_endpoints.iter().find(|e| e.starts_with("https://")) {
        if !tls {
            return Err(format!(
                "store.etcd_endpoints: {e:?} is https://: set store.etcd_ca, store.etcd_cert and store.etcd_key"
            ));
        }
    }
    if let Some(e) = s.etcd_endpoints.iter().find(|e| e.starts_with("http://")) {
        if tls {
            return Err(format!(
                "store.etcd_ca: TLS to etcd needs https:// endpoints, and store.etcd_endpoints has {e:?}"
            ));
        }
    }
    Ok(())
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "sqlite".into(),
            etcd_endpoints: vec![],
            etcd_prefix: "oxvirt/".into(),
            host_name: None,
            address: None,
            member_ttl_secs: 10,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            migration_tls_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Seconds between two evaluations of the rules.
    pub interval_secs: u64,
    /// `http://host:port/path` that gets each firing and resolved alert as JSON.
    pub webhook: Option<String>,
    /// The rules; the defaults mirror monitoring/oxvirt-alerts.yml.
    pub rules: Vec<oxvirt_model::AlertRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig { interval_secs: 15, webhook: None, rules: oxvirt_model::AlertRule::defaults() }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            qemu_binary: "qemu-system-x86_64".into(),
            accelerator: "auto".into(),
            stop_timeout_secs: 30,
            console_log_max_bytes: 1024 * 1024,
            log_format: "text".into(),
            https_listen: "0.0.0.0:8443".into(),
            confine_qemu: true,
            api_rate_per_token: 50.0,
            api_burst_per_token: 200.0,
            host_path_roots: Vec::new(),
            nft_table: "oxvirt".into(),
            https_max_connections: 1024,
            https_max_connections_per_address: 64,
            alerts: AlertsConfig::default(),
            store: StoreConfig::default(),
            ha: HaConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()
    }

    /// Joins a cluster: the store becomes etcd at `endpoints` (comma-separated), this host named
    /// `name` when given; checked as the config file is.
    pub fn join(mut self, endpoints: &str, name: Option<String>) -> Result<Self, String> {
        self.store.backend = "etcd".into();
        self.store.etcd_endpoints =
            endpoints.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if name.is_some() {
            self.store.host_name = name;
        }
        self.check().map_err(|e| format!("--join: {e}"))
    }

    fn check(self) -> Result<Self, String> {
        let c = self;
        if !["auto", "kvm", "tcg"].contains(&c.accelerator.as_str()) {
            return Err(format!("accelerator: must be auto, kvm or tcg, not {:?}", c.accelerator));
        }
        match (c.store.backend.as_str(), c.store.etcd_endpoints.is_empty()) {
            ("sqlite", _) => {}
            ("etcd", true) => return Err("store.etcd_endpoints: the etcd backend needs at least one endpoint".into()),
            ("etcd", false) => {
                if let Some(e) =
                    c.store.etcd_endpoints.iter().find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
                {
                    return Err(format!("store.etcd_endpoints: {e:?} must be an http:// or https:// URL"));
                }
            }
            (other, _) => return Err(format!("store.backend: must be sqlite or etcd, not {other:?}")),
        }
        check_tls_shape(&c.store)?;
        // A name nft takes as it is: a letter, then letters, digits or `_`; kept short.
        let t = &c.nft_table;
        if t.is_empty()
            || t.len() > 32
            || !t.starts_with(|ch: char| ch.is_ascii_alphabetic())
            || !t.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return Err(format!("nft_table: {t:?} must be 1..32 letters, digits or `_`, starting with a letter"));
        }
        if let Some(n) = &c.store.host_name {
            oxvirt_model::validate_name("store.host_name", n).map_err(|e| e.to_string())?;
        }
        if c.store.member_ttl_secs < 2 || c.store.member_ttl_secs > 300 {
            return Err("store.member_ttl_secs: must be 2..300".into());
        }
        if !(100..=600_000).contains(&c.ha.recover_after_ms) {
            return Err("ha.recover_after_ms: must be 100..600000".into());
        }
        let (fence, ttl_ms) = (c.fence_after_ms(), c.store.member_ttl_secs * 1000);
        // Renewals come every 100..500 ms: a shorter time would fence a healthy host.
        if fence < 1000 {
            return Err(format!("ha.fence_after_ms: must be at least 1000 (it is {fence})"));
        }
        if fence + KILL_MARGIN_MS > ttl_ms + c.ha.recover_after_ms {
            return Err(format!(
                "ha.fence_after_ms: {fence} ms plus {KILL_MARGIN_MS} ms to kill is more than the lease's {ttl_ms} ms \
                 (store.member_ttl_secs) plus ha.recover_after_ms {}: a lost host's VMs could be started \
                 elsewhere before it fenced them, and run twice",
                c.ha.recover_after_ms
            ));
        }
        if let Some(dev) = &c.ha.kernel_watchdog {
            if !c.ha.watchdog {
                return Err(
                    "ha.kernel_watchdog: needs ha.watchdog = true (the watchdog process keeps the device)".into()
                );
            }
            use std::os::unix::fs::FileTypeExt;
            let kind = std::fs::metadata(dev).map(|m| m.file_type());
            if !kind.as_ref().is_ok_and(|k| k.is_char_device() || k.is_fifo()) {
                return Err(format!(
                    "ha.kernel_watchdog: {} is not a watchdog device (a character device such as /dev/watchdog; load softdog for one)",
                    dev.display()
                ));
            }
            let t = c.kernel_watchdog_timeout_secs();
            if t == 0 || fence + u64::from(t) * 1000 > ttl_ms + c.ha.recover_after_ms {
                return Err(format!(
                    "ha.kernel_watchdog_timeout_secs: {t} s after the fencing deadline ({fence} ms) is past the lease's \
                     {ttl_ms} ms plus ha.recover_after_ms {}: the host could be reset after its VMs were started \
                     elsewhere, and run twice (it must be 1 or more and at most {} s)",
                    c.ha.recover_after_ms,
                    c.kernel_watchdog_max_secs()
                ));
            }
        }
        if !["text", "json"].contains(&c.log_format.as_str()) {
            return Err(format!("log_format: must be text or json, not {:?}", c.log_format));
        }
        if c.stop_timeout_secs == 0 || c.stop_timeout_secs > 3600 {
            return Err("stop_timeout_secs: must be 1 to 3600".into());
        }
        if !c.https_listen.is_empty() && c.https_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "https_listen: must be an address and port such as 0.0.0.0:8443, not {:?}",
                c.https_listen
            ));
        }
        if c.https_max_connections == 0 || c.https_max_connections_per_address == 0 {
            return Err("https_max_connections, https_max_connections_per_address: must be at least 1".into());
        }
        if c.https_max_connections_per_address > c.https_max_connections {
            return Err("https_max_connections_per_address: must not exceed https_max_connections".into());
        }
        if !(1..=3600).contains(&c.alerts.interval_secs) {
            return Err("alerts.interval_secs: must be 1 to 3600".into());
        }
        if let Some(w) = &c.alerts.webhook {
            if !w.starts_with("http://") || w.len() > 2048 {
                return Err("alerts.webhook: must be an http://host:port/path URL".into());
            }
        }
        for (i, r) in c.alerts.rules.iter().enumerate() {
            r.validate(&format!("alerts.rules[{i}]")).map_err(|e| e.to_string())?;
        }
        if c.console_log_max_bytes < 4096 {
            return Err("console_log_max_bytes: must be at least 4096".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.accelerator, "auto");
        let c = Config::parse("accelerator = \"tcg\"\nstop_timeout_secs = 5").unwrap();
        assert_eq!((c.accelerator.as_str(), c.stop_timeout_secs), ("tcg", 5));
    }

    #[test]
    fn the_ha_timing_that_could_run_a_vm_twice_is_refused() {
        // Defaults: fence one second before the lease's TTL, recover one second after it.
        let c = Config::parse("[store]\nmember_ttl_secs = 3\n").unwrap();
        assert_eq!((c.fence_after_ms(), c.ha.recover_after_ms), (2000, 1000));
        // Fencing up to 500 ms before the leader may recover is allowed...
        Config::parse("[store]\nmember_ttl_secs = 3\n[ha]\nfence_after_ms = 3500\n").unwrap();
        // ...not later.
        let e = Config::parse("[store]\nmember_ttl_secs = 3\n[ha]\nfence_after_ms = 3600\n").unwrap_err();
        assert!(e.starts_with("ha.fence_after_ms") && e.contains("run twice"), "{e}");
        let e = Config::parse("[store]\nmember_ttl_secs = 3\n[ha]\nrecover_after_ms = 0\n").unwrap_err();
        assert!(e.starts_with("ha.recover_after_ms"), "{e}");
        let e = Config::parse("[ha]\nfence_after_ms = 200\n").unwrap_err();
        assert!(e.starts_with("ha.fence_after_ms") && e.contains("at least 1000"), "{e}");
        assert!(Config::parse("[ha]\nwatchdog = \"yes\"\n").unwrap_err().contains("watchdog"));
    }

    #[test]
    fn the_kernel_watchdog_needs_a_device_and_a_timeout_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("file");
        std::fs::write(&plain, "").unwrap();
        let with = |extra: &str, dev: &Path| {
            Config::parse(&format!(
                "[store]\nmember_ttl_secs = 3\n[ha]\nkernel_watchdog = \"{}\"\n{extra}",
                dev.display()
            ))
        };
        let null = Path::new("/dev/null");
        // Lease 3 s, fence at 2 s, recover 1 s after the lease: 2 s of room.
        assert_eq!(with("", null).unwrap().kernel_watchdog_timeout_secs(), 2);
        with("kernel_watchdog_timeout_secs = 2\n", null).unwrap();
        let e = with("kernel_watchdog_timeout_secs = 3\n", null).unwrap_err();
        assert!(e.starts_with("ha.kernel_watchdog_timeout_secs") && e.contains("run twice"), "{e}");
        let e = with("kernel_watchdog_timeout_secs = 0\n", null).unwrap_err();
        assert!(e.starts_with("ha.kernel_watchdog_timeout_secs"), "{e}");
        let e = with("", &plain).unwrap_err();
        assert!(e.starts_with("ha.kernel_watchdog") && e.contains("not a watchdog device"), "{e}");
        let e = with("", &dir.path().join("none")).unwrap_err();
        assert!(e.contains("not a watchdog device"), "{e}");
        let e = with("watchdog = false\n", null).unwrap_err();
        assert!(e.contains("needs ha.watchdog = true"), "{e}");
        // A fence late in the budget leaves no whole second: refused, not a zero timeout.
        let e = with("fence_after_ms = 3500\n", null).unwrap_err();
        assert!(e.starts_with("ha.kernel_watchdog_timeout_secs"), "{e}");
        assert_eq!(Config::parse("").unwrap().ha.kernel_watchdog, None, "off by default");
    }

    #[test]
    fn refuses_bad_settings_naming_them() {
        assert!(Config::parse("accelerator = \"xen\"").unwrap_err().starts_with("accelerator"));
        assert!(Config::parse("nft_table = \"ox virt\"").unwrap_err().starts_with("nft_table"));
        assert!(Config::parse("nft_table = \"\"").unwrap_err().starts_with("nft_table"));
        assert_eq!(Config::parse("nft_table = \"oxv_1\"").unwrap().nft_table, "oxv_1");
        assert_eq!(Config::parse("").unwrap().nft_table, "oxvirt");
        assert!(Config::parse("colour = 1").unwrap_err().contains("colour"));
        assert!(Config::parse("stop_timeout_secs = 0").unwrap_err().starts_with("stop_timeout_secs"));
        assert!(Config::parse("https_listen = \"localhost\"").unwrap_err().starts_with("https_listen"));
        assert_eq!(Config::parse("https_listen = \"\"").unwrap().https_listen, "");
        assert!(Config::parse("[alerts]\nwebhook = \"ftp://x\"").unwrap_err().starts_with("alerts.webhook"));
        let c = Config::parse(
            "[alerts]\ninterval_secs = 1\n[[alerts.rules]]\nname = \"busy\"\nkind = \"vm-cpu-high\"\nthreshold = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.alerts.rules.len(), 1);
        assert!(Config::parse("[store]\nbackend = \"etcd\"").unwrap_err().starts_with("store.etcd_endpoints"));
        assert!(Config::parse("[store]\nbackend = \"zk\"").unwrap_err().starts_with("store.backend"));
        assert!(Config::parse("[store]\nhost_name = \"bad name\"").unwrap_err().starts_with("store.host_name"));
        assert!(Config::default()
            .join("http://e:2379", Some("Bad_Host".into()))
            .unwrap_err()
            .starts_with("--join: store.host_name"));
        assert!(Config::parse("[store]\nbackend = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\"]")
            .unwrap_err()
            .starts_with("store.etcd_endpoints"));
        assert!(Config::parse("[[alerts.rules]]\nname = \"b\"\nkind = \"vm-cpu-high\"\nthreshold = -1\n")
            .unwrap_err()
            .contains("threshold"));
    }
}
