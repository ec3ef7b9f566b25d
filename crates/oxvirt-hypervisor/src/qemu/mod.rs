//! The QEMU driver: QEMU processes controlled over QMP.

mod agent;
mod backup;
pub mod cmdline;
pub mod confine;
mod console_hold;
mod disks;
pub mod handoff;
mod memory;
mod migration;
mod state;
use oxvirt_qemu::ProcessError;
pub use oxvirt_qemu::{identity, process, qmp};

use crate::{Accel, AccelDecision, HvError, Hypervisor, Instance, InstanceEvent, Launch, RunState, RuntimePaths};
use cmdline::CmdlineHost;
use oxvirt_model::VmSpec;
use oxvirt_qemu::commands::{block, devices, run};
use process::Pidfd;
use qmp::{Qmp, QmpEvent};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const QMP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct QemuDriver {
    program: String,
    version: String,
    accel: AccelDecision,
    host: CmdlineHost,
    cgroups: oxvirt_cgroup::Cgroups,
}

/// The name of a VM's cgroup.
pub fn cgroup_name(id: &str) -> String {
    format!("vm-{id}")
}

impl QemuDriver {
    /// A driver for the QEMU binary `program`, with the host's accelerator decision.
    pub fn new(program: impl Into<String>, accel: AccelDecision) -> Self {
        let program = program.into();
        let version = std::process::Command::new(&program)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("QEMU emulator version ").to_string()))
            .unwrap_or_else(|| "unknown".into());
        let cgroups = oxvirt_cgroup::Cgroups::detect();
        if cgroups.hierarchies.is_empty() {
            tracing::warn!("no cgroup hierarchy found: VMs will run without cgroups");
        }
        QemuDriver { program, version, accel, host: CmdlineHost::detect(), cgroups }
    }

    /// Migration over TLS: every QEMU this driver starts gets the credentials in `dir` (see
    /// [`CmdlineHost::migration_tls`]).
    pub fn with_migration_tls(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.host.migration_tls = Some(dir.into());
        self
    }

    /// The cgroups a VM's QEMU runs in.
    pub fn cgroup(&self, id: &str) -> oxvirt_cgroup::VmCgroup {
        self.cgroups.vm(&cgroup_name(id))
    }

    /// The argument vector of a QEMU that opens its own files (as root) and writes its pidfile:
    /// the benchmark's raw baselines.
    pub fn args(&self, id: &str, spec: &VmSpec, launch: &Launch, paths: &RuntimePaths) -> Vec<String> {
        let accel = crate::accel::resolve(spec.accel, &self.accel);
        let mut args = cmdline::build(id, spec, launch, paths, accel, &self.host, &handoff::Handoff::default());
        args.extend(["-pidfile".to_string(), paths.pidfile().to_string_lossy().into_owned()]);
        args
    }

    pub fn program(&self) -> &str {
        &self.program
    }
}

/// Removes a VM's cgroups; while the kernel still counts its exited process (a zombie not yet
/// reaped by whoever inherited it) they are busy, so it keeps trying for a minute.
fn remove_cgroup_eventually(cgroup: oxvirt_cgroup::VmCgroup) {
    if cgroup.remove().is_ok() {
        return;
    }
    std::thread::spawn(move || {
        for _ in 0..60 {
            std::thread::sleep(Duration::from_secs(1));
            if cgroup.remove().is_ok() {
                return;
            }
        }
        if let Err(e) = cgroup.remove() {
            tracing::warn!("{e}");
        }
    });
}

fn prepare_run_dir(paths: &RuntimePaths) -> Result<(), HvError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(paths.dir())
        .map_err(|e| HvError::io(format!("create {}", paths.dir().display()), e))?;
    for p in [paths.qmp_socket(), paths.console_socket(), paths.agent_socket()] {
        let len = p.as_os_str().len();
        if len >= 108 {
            return Err(HvError::Invalid(format!(
                "socket path {} is {len} bytes; Unix sockets allow 107: use a shorter data dir",
                p.display()
            )));
        }
        let _ = std::fs::remove_file(&p);
    }
    Ok(())
}

#[async_trait::async_trait]
impl Hypervisor for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn accel(&self) -> &AccelDecision {
        &self.accel
    }

    async fn start(
        &self,
        id: &str,
        spec: &VmSpec,
        launch: &Launch,
        paths: &RuntimePaths,
    ) -> Result<Arc<dyn Instance>, HvError> {
        let accel = crate::accel::resolve(spec.accel, &self.accel);
        if accel == Accel::Kvm && !std::path::Path::new("/dev/kvm").exists() {
            return Err(HvError::AccelUnavailable("kvm", "/dev/kvm does not exist".into()));
        }
        prepare_run_dir(paths)?;
        confine::prepare(spec, launch.run_as, paths.dir()).map_err(|e| HvError::io("confine QEMU", e))?;
        // Disk files QEMU is not given (host paths; read-only volumes of a confined QEMU) reach it
        // as descriptors opened here (closed again when this returns: QEMU has its own copies).
        let mut spec = spec.clone();
        let mut passed = Vec::new();
        let confined = launch.run_as.is_some();
        for (i, d) in spec.disks.iter_mut().enumerate().filter(|(_, d)| confine::passes_file(d, confined)) {
            let f = confine::open_host_disk(d).map_err(|e| HvError::io("open a disk file", e))?;
            d.fd = Some(oxvirt_model::PassedFd { fd: f.as_raw_fd(), set: i as u32 + 1 });
            passed.push(f);
        }
        let spec = &spec;
        let handoff = handoff::prepare(id, spec, launch, paths)?;
        let mut keep: Vec<i32> = passed.iter().map(|f| f.as_raw_fd()).collect();
        keep.extend(handoff.inherited());
        keep.extend(launch.memory_file.map(|m| m.fd));
        let args = cmdline::build(id, spec, launch, paths, accel, &self.host, &handoff);
        let cgroup = self.cgroup(id);
        cgroup.create().map_err(|e| HvError::io("VM cgroup", e))?;
        // Limits hold from QEMU's first instruction.
        if let Err(e) = cgroup.apply(&crate::limits_of(spec)) {
            let _ = cgroup.remove();
            return Err(HvError::io("VM cgroup limits", e));
        }
        let procs = cgroup.procs_files().map_err(|e| HvError::io("VM cgroup", e))?;
        let _ = std::fs::remove_file(paths.pidfile());
        let user = launch.run_as.map(|(uid, gid)| process::Identity {
            uid,
            gid,
            // /dev/kvm is the kvm group's.
            groups: if accel == Accel::Kvm { confine::kvm_gid().into_iter().collect() } else { vec![] },
        });
        let spawned = process::spawn_detached(&self.program, &args, &paths.qemu_log(), &procs, &keep, user.as_ref());
        drop(procs);
        drop(passed);
        drop(handoff);
        if let Ok(pid) = &spawned {
            // QEMU writes no pidfile (it could not, in root's directory): found by it again after
            // a daemon restart.
            if let Err(e) = write_pidfile(&paths.pidfile(), *pid) {
                tracing::warn!("pidfile of QEMU {pid}: {e}");
            }
        }
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let pidfd = Pidfd::open(pid)?;
        // Ready once QMP greets (QEMU's main loop runs: devices made, files opened); a QEMU that
        // exits first failed, and its log says why.
        let qmp_socket = paths.qmp_socket();
        let ready = tokio::select! {
            q = connect_when_ready(&qmp_socket, process::START_TIMEOUT) => q.map_err(HvError::from),
            _ = pidfd.exited() => Err(HvError::Process(ProcessError::StartFailed(
                self.program.clone(),
                process::log_tail(&paths.qemu_log()),
            ))),
        };
        // Read by now (or never to be).
        handoff::remove_copies(paths);
        match ready {
            Ok(qmp) => Ok(QemuInstance::spawn(
                pid,
                accel,
                qmp,
                pidfd,
                cgroup,
                launch.run_as,
                paths,
                self.host.migration_tls.clone(),
            )),
            Err(e) => {
                // A QEMU we cannot control must not be left behind, nor its cgroup.
                let _ = pidfd.signal(libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(10), pidfd.exited()).await;
                let _ = tokio::task::spawn_blocking(move || remove_cgroup_eventually(cgroup)).await;
                Err(e)
            }
        }
    }

    fn cleanup(&self, id: &str) {
        remove_cgroup_eventually(self.cgroup(id));
    }

    fn set_limits(&self, id: &str, limits: &oxvirt_cgroup::Limits) -> Result<Vec<&'static str>, HvError> {
        let cg = self.cgroup(id);
        Ok(cg.apply(limits).map_err(|e| HvError::io("VM cgroup limits", e))?.0)
    }

    fn cpu_usage_ns(&self, id: &str) -> Option<u64> {
        self.cgroup(id).cpu_usage_ns()
    }

    async fn adopt(&self, id: &str, paths: &RuntimePaths) -> Result<Option<Arc<dyn Instance>>, HvError> {
        let Some(pid) = process::read_pidfile(&paths.pidfile())? else { return Ok(None) };
        if !process::is_our_qemu(pid, id) {
            return Ok(None);
        }
        let pidfd = Pidfd::open(pid)?;
        // Checked again with the pidfd held: the pid now cannot be reused under us.
        if !process::is_our_qemu(pid, id) {
            return Ok(None);
        }
        let qmp = Qmp::connect(&paths.qmp_socket(), QMP_TIMEOUT).await?;
        let accel = cmdline_accel(pid).unwrap_or(self.accel.accel);
        let run_as = confine::ids_of(pid).filter(|(uid, _)| *uid != 0);
        Ok(Some(QemuInstance::spawn(
            pid,
            accel,
            qmp,
            pidfd,
            self.cgroup(id),
            run_as,
            paths,
            self.host.migration_tls.clone(),
        )))
    }
}

/// Writes `pid` to `path` whole (a new file renamed over the old one, never through a link).
fn write_pidfile(path: &std::path::Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pid.new");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        writeln!(f, "{pid}")?;
    }
    std::fs::rename(&tmp, path)
}

fn cmdline_accel(pid: u32) -> Option<Accel> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).find(|w| w[0] == b"-accel").map(|w| if w[1] == b"kvm" { Accel::Kvm } else { Accel::Tcg })
}

pub struct QemuInstance {
    pid: u32,
    accel: Accel,
    qmp: Arc<Qmp>,
    pidfd: Arc<Pidfd>,
    events: broadcast::Sender<InstanceEvent>,
    exited: Arc<AtomicBool>,
    exit_watch: watch::Receiver<bool>,
    /// The uid and gid QEMU runs as (None: root).
    run_as: Option<(u32, u32)>,
    /// Its run directory (root's), where copies made for it go.
    run_dir: std::path::PathBuf,
    /// The host's migration TLS credentials, given to QEMU only while it migrates.
    migration_tls: Option<std::path::PathBuf>,
    /// oxvirtd holds the console while a state loads (console_hold.rs).
    console_held: Arc<AtomicBool>,
}

/// A `-netdev` option string (`tap,id=net0,ifname=...,queues=2`) as `netdev_add` arguments.
/// Connects to a starting QEMU's QMP socket, trying again while the socket is not there yet,
/// until `timeout`; the greeting comes once QEMU has initialised.
async fn connect_when_ready(path: &std::path::Path, timeout: Duration) -> Result<Arc<Qmp>, qmp::QmpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match Qmp::connect_with(path, left.max(Duration::from_millis(1)), QMP_TIMEOUT).await {
            Err(qmp::QmpError::Connect { .. }) if !left.is_zero() => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            r => return r,
        }
    }
}

fn netdev_json(opts: &str) -> Value {
    let mut parts = opts.split(',');
    let mut args = serde_json::Map::new();
    args.insert("type".into(), json!(parts.next().unwrap_or_default()));
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            let value = match (k, v) {
                ("queues", n) => json!(n.parse::<u32>().unwrap_or(1)),
                ("restrict", "on") => json!(true),
                _ => json!(v),
            };
            args.insert(k.into(), value);
        }
    }
    Value::Object(args)
}

impl QemuInstance {
    /// Adds a PCIe device on the first free hot-plug port.
    async fn device_add_on_free_port(&self, dev: Value) -> Result<(), HvError> {
        let mut last = None;
        for port in 0..cmdline::HOTPLUG_PORTS {
            let mut d = dev.clone();
            d["bus"] = json!(format!("hp{port}"));
            match devices::device_add(&self.qmp, d).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(HvError::Unsupported(format!(
            "no free hot-plug slot ({} in all): {}",
            cmdline::HOTPLUG_PORTS,
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Asks the guest to release a device and waits until QEMU says it is gone.
    async fn device_del_wait(&self, id: &str, timeout: Duration) -> Result<(), HvError> {
        let mut events = self.qmp.subscribe();
        devices::device_del(&self.qmp, id).await?;
        // The guest must let go (PCIe hot-plug takes it about 5 s); QEMU then says so.
        let deleted = tokio::time::timeout(timeout, async {
            loop {
                match events.recv().await {
                    Ok(e) if e.name == "DEVICE_DELETED" && e.data.get("device").and_then(Value::as_str) == Some(id) => {
                        return true
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        if !matches!(deleted, Ok(true)) {
            return Err(HvError::Timeout(timeout, format!("the guest to release device {id}")));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        pid: u32,
        accel: Accel,
        qmp: Arc<Qmp>,
        pidfd: Pidfd,
        cgroup: oxvirt_cgroup::VmCgroup,
        run_as: Option<(u32, u32)>,
        paths: &RuntimePaths,
        migration_tls: Option<std::path::PathBuf>,
    ) -> Arc<dyn Instance> {
        let (events, _) = broadcast::channel(256);
        let exited = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_watch) = watch::channel(false);
        let pidfd = Arc::new(pidfd);
        let mut qmp_events = qmp.subscribe();
        let tx = events.clone();
        tokio::spawn(async move {
            loop {
                match qmp_events.recv().await {
                    Ok(e) => {
                        let _ = tx.send(map_event(&e));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let (tx, flag, fd) = (events.clone(), exited.clone(), pidfd.clone());
        tokio::spawn(async move {
            fd.exited().await;
            // The cgroups go with the process.
            let _ = tokio::task::spawn_blocking(move || remove_cgroup_eventually(cgroup)).await;
            flag.store(true, Ordering::SeqCst);
            let _ = exit_tx.send(true);
            let _ = tx.send(InstanceEvent::Exited);
        });
        Arc::new(QemuInstance {
            pid,
            accel,
            qmp,
            pidfd,
            events,
            exited,
            exit_watch,
            run_as,
            run_dir: paths.dir().to_path_buf(),
            migration_tls,
            console_held: Arc::default(),
        })
    }

    /// The paths of its run directory (its sockets by name).
    fn paths(&self) -> RuntimePaths {
        RuntimePaths::new(self.run_dir.clone())
    }

    /// Removes the fd sets of host-path disk `disk_id` (marked with its opaque string).
    async fn drop_fdsets(&self, disk_id: &str) {
        let Ok(sets) = devices::fdsets_marked(&self.qmp, &cmdline::fdset_opaque(disk_id)).await else { return };
        for id in sets {
            let _ = devices::remove_fd(&self.qmp, id).await;
        }
    }
}

fn map_event(e: &QmpEvent) -> InstanceEvent {
    let s = |k: &str| e.data.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let guest = e.data.get("guest").and_then(Value::as_bool).unwrap_or(false);
    match e.name.as_str() {
        "SHUTDOWN" => InstanceEvent::Shutdown { guest, reason: s("reason") },
        "RESET" => InstanceEvent::Reset { guest },
        "STOP" => InstanceEvent::Paused,
        "RESUME" => InstanceEvent::Resumed,
        "GUEST_PANICKED" => InstanceEvent::Panicked,
        "BLOCK_IO_ERROR" => InstanceEvent::BlockIoError { device: s("device"), reason: s("reason") },
        "BALLOON_CHANGE" => {
            InstanceEvent::BalloonChange { actual: e.data.get("actual").and_then(Value::as_u64).unwrap_or(0) }
        }
        "MIGRATION" => InstanceEvent::Migration { status: s("status") },
        other => InstanceEvent::Other { name: other.to_string() },
    }
}

#[async_trait::async_trait]
impl Instance for QemuInstance {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    async fn run_state(&self) -> Result<RunState, HvError> {
        Ok(match run::query_status(&self.qmp).await?.as_str() {
            "running" => RunState::Running,
            "paused" | "suspended" => RunState::Paused,
            "guest-panicked" | "internal-error" => RunState::Panicked,
            "shutdown" => RunState::ShuttingDown,
            _ => RunState::Other,
        })
    }

    async fn power_button(&self) -> Result<(), HvError> {
        Ok(run::system_powerdown(&self.qmp).await?)
    }

    async fn reset(&self) -> Result<(), HvError> {
        Ok(run::system_reset(&self.qmp).await?)
    }

    async fn pause(&self) -> Result<(), HvError> {
        Ok(run::stop(&self.qmp).await?)
    }

    async fn resume(&self) -> Result<(), HvError> {
        Ok(run::cont(&self.qmp).await?)
    }

    async fn kill(&self) -> Result<(), HvError> {
        if self.has_exited() {
            return Ok(());
        }
        // `quit` lets QEMU close its files; SIGKILL when it does not go.
        let _ = run::quit(&self.qmp, Duration::from_secs(3)).await;
        if self.wait_exit(Duration::from_secs(5)).await {
            return Ok(());
        }
        self.discard().await
    }

    async fn discard(&self) -> Result<(), HvError> {
        if self.has_exited() {
            return Ok(());
        }
        self.pidfd.signal(libc::SIGKILL)?;
        if self.wait_exit(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(HvError::Timeout(Duration::from_secs(10), format!("QEMU {} to exit after SIGKILL", self.pid)))
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut w = self.exit_watch.clone();
        let done = tokio::time::timeout(timeout, async move { w.wait_for(|e| *e).await.is_ok() }).await;
        matches!(done, Ok(true))
    }

    async fn hotplug_disk(&self, disk: &oxvirt_model::DiskSpec) -> Result<(), HvError> {
        if disk.bus != oxvirt_model::DiskBus::VirtioBlk {
            return Err(HvError::Unsupported("hot-plug takes virtio-blk disks".into()));
        }
        let id = disk.id.as_str();
        let fmt = cmdline::format_node(id);
        if let Some((uid, gid)) = self.run_as {
            // QEMU opens it as the VM's user now: a volume's file becomes the VM's.
            if confine::gives_file(disk) {
                confine::give_disk(std::path::Path::new(&disk.path), uid, gid)
                    .map_err(|e| HvError::io("give the disk to the VM", e))?;
            }
        }
        let mut disk = disk.clone();
        if confine::passes_file(&disk, self.run_as.is_some()) {
            // A host-path disk (or a read-only volume): opened here, its descriptor put in a new
            // fd set of QEMU's.
            let f = confine::open_host_disk(&disk).map_err(|e| HvError::io("open a disk file", e))?;
            let set = devices::add_fd(&self.qmp, &cmdline::fdset_opaque(id), f.as_raw_fd()).await?;
            disk.fd = Some(oxvirt_model::PassedFd { fd: -1, set });
        }
        // The layers below a qcow2 image: opened here, each in a new fd set of QEMU's.
        let mut chain = Vec::new();
        if disk.nbd.is_none() && disk.format == oxvirt_model::DiskFormat::Qcow2 {
            let layers = handoff::open_chain(std::path::Path::new(&disk.path))
                .map_err(|e| HvError::io(format!("disk {}", disk.path), e))?;
            for b in layers {
                match devices::add_fd(&self.qmp, &cmdline::fdset_opaque(id), b.file.as_raw_fd()).await {
                    Ok(set) => chain.push(cmdline::Layer { set, format: b.format }),
                    Err(e) => {
                        self.drop_fdsets(id).await;
                        return Err(e.into());
                    }
                }
            }
        }
        let disk = &disk;
        let mut added: Vec<String> = Vec::new();
        for node in cmdline::block_nodes(disk, id, Some(&chain)) {
            let name = node["node-name"].as_str().unwrap_or_default().to_string();
            if let Err(e) = block::blockdev_add(&self.qmp, node).await {
                for n in added.iter().rev() {
                    let _ = block::blockdev_del(&self.qmp, n).await;
                }
                self.drop_fdsets(id).await;
                return Err(e.into());
            }
            added.push(name);
        }
        let mut dev = json!({ "driver": "virtio-blk-pci", "id": id, "drive": fmt });
        cmdline::disk_device_extras(disk, &mut dev);
        if let Err(e) = self.device_add_on_free_port(dev).await {
            for n in added.iter().rev() {
                let _ = block::blockdev_del(&self.qmp, n).await;
            }
            self.drop_fdsets(id).await;
            return Err(e);
        }
        if let Some(q) = &disk.qos {
            if let Err(e) = self.set_disk_qos(id, q).await {
                // Not half-plugged: take it out again.
                let _ = self.unplug_disk(id, Duration::from_secs(30)).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn unplug_disk(&self, disk_id: &str, timeout: Duration) -> Result<(), HvError> {
        self.device_del_wait(disk_id, timeout).await?;
        block::blockdev_del(&self.qmp, &cmdline::format_node(disk_id)).await?;
        // An NBD disk has no file node.
        let _ = block::blockdev_del(&self.qmp, &cmdline::file_node(disk_id)).await;
        // The layers below it, top first (a layer goes once nothing is above it).
        for k in 0..handoff::MAX_CHAIN {
            let layer = cmdline::layer_node(disk_id, k);
            if block::blockdev_del(&self.qmp, &layer).await.is_err() {
                break;
            }
            let _ = block::blockdev_del(&self.qmp, &format!("{layer}-file")).await;
        }
        // A host-path disk's descriptor goes too (QEMU would hold the file open).
        self.drop_fdsets(disk_id).await;
        Ok(())
    }

    async fn set_disk_qos(&self, disk_id: &str, qos: &oxvirt_model::DiskQos) -> Result<(), HvError> {
        block::block_set_io_throttle(&self.qmp, cmdline::throttle_args(disk_id, qos)).await?;
        Ok(())
    }

    async fn hotplug_nic(&self, vm_id: &str, spec: &VmSpec, index: usize) -> Result<(), HvError> {
        let nic = spec.nics.get(index).ok_or_else(|| HvError::Unsupported(format!("no NIC at index {index}")))?;
        let (netdev, dev) = cmdline::nic_args(vm_id, spec, nic, index, "pci", None);
        let netdev_id = dev["netdev"].as_str().unwrap_or_default().to_string();
        let mut args = netdev_json(&netdev);
        if self.run_as.is_some() && nic.mode != oxvirt_model::NicMode::User {
            // QEMU is not root: it gets the TAP device's queues opened here, over QMP.
            let tap = cmdline::tap_name(vm_id, nic.slot());
            let queues = args["queues"].as_u64().unwrap_or(1);
            let mut names = Vec::new();
            for q in 0..queues {
                let file =
                    confine::open_tap_queue(&tap, queues > 1).map_err(|e| HvError::io(format!("open TAP {tap}"), e))?;
                let fdname = format!("{netdev_id}-q{q}");
                use std::os::fd::AsRawFd;
                devices::getfd(&self.qmp, &fdname, file.as_raw_fd()).await?;
                names.push(fdname);
            }
            // (The descriptors' number says how many queues: QEMU refuses `queues` with them.)
            args = json!({ "type": "tap", "id": netdev_id, "fds": names.join(":") });
        }
        devices::netdev_add(&self.qmp, args).await?;
        if let Err(e) = self.device_add_on_free_port(dev).await {
            let _ = devices::netdev_del(&self.qmp, &netdev_id).await;
            return Err(e);
        }
        Ok(())
    }

    async fn unplug_nic(&self, nic: &oxvirt_model::NicSpec, timeout: Duration) -> Result<(), HvError> {
        self.device_del_wait(&nic.id, timeout).await?;
        devices::netdev_del(&self.qmp, &format!("net{}", nic.slot())).await?;
        Ok(())
    }

    async fn vcpu_threads(&self) -> Result<Vec<u32>, HvError> {
        Ok(devices::vcpu_threads(&self.qmp).await?)
    }

    async fn ask_agent(&self, request: &crate::GuestRequest, timeout: Duration) -> Result<(), HvError> {
        agent::tell(&self.paths().agent_socket(), request, timeout).await
    }

    fn disks(&self) -> &dyn crate::DiskOps {
        self
    }

    fn memory(&self) -> &dyn crate::MemoryOps {
        self
    }

    fn migration(&self) -> &dyn crate::MigrationOps {
        self
    }

    fn backup(&self) -> &dyn crate::BackupOps {
        self
    }

    fn state(&self) -> &dyn crate::StateOps {
        self
    }
}
