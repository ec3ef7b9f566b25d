//! A hypervisor with no guests behind it, for the control plane's unit tests (a backend of its
//! own, as Cloud Hypervisor's `hypervisor` crate has one per platform). Each instance is a small
//! state machine that sends the events QEMU would; a test plays the guest through its handle
//! ([`FakeInstance::guest_poweroff`], [`FakeInstance::crash`]...). Instances outlive the
//! controller that started them, as QEMU outlives oxvirtd: a second controller given the same
//! [`FakeHypervisor`] re-adopts those still running.
//!
//! Instances migrate to one another (memory only; no local disks, no post-copy): a target
//! listens on a URI, a source's `send` to that URI hands the guest over at once (the target runs
//! it, the source is left paused as QEMU leaves it), unless the test said the next send fails
//! ([`FakeInstance::fail_next_migration`]).

use crate::ops::{
    DiskOps, DiskStats, GuestMemory, MemoryOps, MigrationInfo, MigrationOps, MigrationStatus, MirrorJob, SendOptions,
    StreamEnd,
};
use crate::{Accel, AccelDecision, HvError, Hypervisor, Instance, InstanceEvent, Launch, RunState, RuntimePaths};
use oxvirt_model::VmSpec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The URIs fake targets listen on, across every fake hypervisor of the process (two hosts of
/// a test are two hypervisors).
static LISTENING: Mutex<Option<HashMap<String, std::sync::Weak<FakeInstance>>>> = Mutex::new(None);

/// A fake instance's side of migrations.
#[derive(Default)]
struct Migrating {
    /// What `query-migrate` says on this source.
    status: Option<MigrationStatus>,
    /// The next send fails with this.
    fail_next: Option<String>,
    /// Sent so far (fake: one count per send).
    sends: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One start as the fake saw it.
#[derive(Debug, Clone)]
pub struct FakeStart {
    pub id: String,
    pub spec: VmSpec,
    pub launch: Launch,
}

#[derive(Default)]
struct Guests {
    running: HashMap<String, Arc<FakeInstance>>,
    starts: Vec<FakeStart>,
    fail_next_start: Option<String>,
}

pub struct FakeHypervisor {
    accel: AccelDecision,
    next_pid: AtomicU32,
    guests: Mutex<Guests>,
}

impl FakeHypervisor {
    pub fn new() -> Arc<FakeHypervisor> {
        Arc::new(FakeHypervisor {
            accel: AccelDecision { accel: Accel::Tcg, reason: "a fake hypervisor".into() },
            next_pid: AtomicU32::new(10_000),
            guests: Mutex::default(),
        })
    }

    /// The running instance of VM `id`.
    pub fn instance(&self, id: &str) -> Option<Arc<FakeInstance>> {
        lock(&self.guests).running.get(id).cloned()
    }

    /// Every start so far, oldest first.
    pub fn starts(&self) -> Vec<FakeStart> {
        lock(&self.guests).starts.clone()
    }

    /// The next start fails with `why` (as a QEMU that refuses its command line).
    pub fn fail_next_start(&self, why: &str) {
        lock(&self.guests).fail_next_start = Some(why.to_string());
    }
}

#[async_trait::async_trait]
impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "0".into()
    }

    fn accel(&self) -> &AccelDecision {
        &self.accel
    }

    async fn start(
        &self,
        id: &str,
        spec: &VmSpec,
        launch: &Launch,
        _paths: &RuntimePaths,
    ) -> Result<Arc<dyn Instance>, HvError> {
        let mut g = lock(&self.guests);
        g.starts.push(FakeStart { id: id.to_string(), spec: spec.clone(), launch: launch.clone() });
        // Gone processes are no VM's any more.
        g.running.retain(|_, i| !i.has_exited());
        if let Some(why) = g.fail_next_start.take() {
            return Err(HvError::Invalid(why));
        }
        if g.running.contains_key(id) {
            return Err(HvError::Unsupported(format!("VM {id} runs already")));
        }
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let paused = launch.incoming.is_some();
        let instance = FakeInstance::new(pid, spec.memory.0, paused);
        g.running.insert(id.to_string(), instance.clone());
        Ok(instance)
    }

    fn cleanup(&self, _id: &str) {}

    async fn adopt(&self, id: &str, _paths: &RuntimePaths) -> Result<Option<Arc<dyn Instance>>, HvError> {
        let mut g = lock(&self.guests);
        g.running.retain(|_, i| !i.has_exited());
        Ok(g.running.get(id).cloned().map(|i| i as Arc<dyn Instance>))
    }

    fn set_limits(&self, _id: &str, _limits: &oxvirt_cgroup::Limits) -> Result<Vec<&'static str>, HvError> {
        Ok(Vec::new())
    }

    fn cpu_usage_ns(&self, _id: &str) -> Option<u64> {
        None
    }
}

/// How the fake guest behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The guest shuts down when the power button is pressed (a guest without ACPI does not).
    pub obeys_power_button: bool,
}

pub struct FakeInstance {
    pid: u32,
    events: broadcast::Sender<InstanceEvent>,
    exited: AtomicBool,
    exit_tx: watch::Sender<bool>,
    state: Mutex<RunState>,
    balloon: AtomicU64,
    pub behaviour: Mutex<Behaviour>,
    migrating: Mutex<Migrating>,
    /// What its guest agent was told last.
    identity: Mutex<Option<crate::GuestIdentity>>,
    me: std::sync::Weak<FakeInstance>,
}

impl FakeInstance {
    /// What its guest agent was told last (a restored clone's identity).
    pub fn told_identity(&self) -> Option<crate::GuestIdentity> {
        lock(&self.identity).clone()
    }

    fn new(pid: u32, memory: u64, paused: bool) -> Arc<FakeInstance> {
        let (events, _) = broadcast::channel(64);
        let (exit_tx, _) = watch::channel(false);
        Arc::new_cyclic(|me| FakeInstance {
            me: me.clone(),
            migrating: Mutex::default(),
            identity: Mutex::default(),
            pid,
            events,
            exited: AtomicBool::new(false),
            exit_tx,
            state: Mutex::new(if paused { RunState::Other } else { RunState::Running }),
            balloon: AtomicU64::new(memory),
            behaviour: Mutex::new(Behaviour { obeys_power_button: true }),
        })
    }

    fn send(&self, e: InstanceEvent) {
        let _ = self.events.send(e);
    }

    fn exit(&self) {
        if !self.exited.swap(true, Ordering::SeqCst) {
            self.exit_tx.send_replace(true);
            self.send(InstanceEvent::Exited);
        }
    }

    /// The guest powers itself off (`poweroff` inside it).
    pub fn guest_poweroff(&self) {
        self.send(InstanceEvent::Shutdown { guest: true, reason: "guest-shutdown".into() });
        self.exit();
    }

    /// The hypervisor process dies without a word (killed, or crashed).
    pub fn crash(&self) {
        self.exit();
    }

    /// The guest's kernel panics: the guest stops where it is (`-action panic=pause`).
    pub fn guest_panic(&self) {
        *lock(&self.state) = RunState::Panicked;
        self.send(InstanceEvent::Panicked);
    }

    /// The guest is paused from outside oxvirt (a `stop` someone sent QEMU).
    pub fn paused_from_outside(&self) {
        *lock(&self.state) = RunState::Paused;
        self.send(InstanceEvent::Paused);
    }

    pub fn state(&self) -> RunState {
        *lock(&self.state)
    }

    /// The next migration sent from this instance fails with `why` (the stream broke): the
    /// target got nothing and this guest is where it was.
    pub fn fail_next_migration(&self, why: &str) {
        lock(&self.migrating).fail_next = Some(why.to_string());
    }

    /// How many migrations were sent from this instance.
    pub fn migrations_sent(&self) -> u32 {
        lock(&self.migrating).sends
    }
}

#[async_trait::async_trait]
impl Instance for FakeInstance {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn accel(&self) -> Accel {
        Accel::Tcg
    }

    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    async fn run_state(&self) -> Result<RunState, HvError> {
        if self.has_exited() {
            return Err(HvError::Unsupported("the fake guest has exited".into()));
        }
        Ok(self.state())
    }

    async fn power_button(&self) -> Result<(), HvError> {
        let obeys = lock(&self.behaviour).obeys_power_button;
        if obeys && self.state() == RunState::Running {
            self.guest_poweroff();
        }
        Ok(())
    }

    async fn reset(&self) -> Result<(), HvError> {
        self.send(InstanceEvent::Reset { guest: false });
        Ok(())
    }

    async fn pause(&self) -> Result<(), HvError> {
        *lock(&self.state) = RunState::Paused;
        self.send(InstanceEvent::Paused);
        Ok(())
    }

    async fn resume(&self) -> Result<(), HvError> {
        *lock(&self.state) = RunState::Running;
        self.send(InstanceEvent::Resumed);
        Ok(())
    }

    async fn kill(&self) -> Result<(), HvError> {
        if !self.has_exited() {
            self.send(InstanceEvent::Shutdown { guest: false, reason: "host-qmp-quit".into() });
            self.exit();
        }
        Ok(())
    }

    async fn discard(&self) -> Result<(), HvError> {
        self.exit();
        Ok(())
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut w = self.exit_tx.subscribe();
        let done = tokio::time::timeout(timeout, async move { w.wait_for(|e| *e).await.is_ok() }).await;
        matches!(done, Ok(true))
    }

    async fn hotplug_disk(&self, _disk: &oxvirt_model::DiskSpec) -> Result<(), HvError> {
        Ok(())
    }

    async fn unplug_disk(&self, _disk_id: &str, _timeout: Duration) -> Result<(), HvError> {
        Ok(())
    }

    async fn set_disk_qos(&self, _disk_id: &str, _qos: &oxvirt_model::DiskQos) -> Result<(), HvError> {
        Ok(())
    }

    async fn hotplug_nic(&self, _vm_id: &str, _spec: &VmSpec, _index: usize) -> Result<(), HvError> {
        Ok(())
    }

    async fn unplug_nic(&self, _nic: &oxvirt_model::NicSpec, _timeout: Duration) -> Result<(), HvError> {
        Ok(())
    }

    async fn vcpu_threads(&self) -> Result<Vec<u32>, HvError> {
        Ok(Vec::new())
    }

    async fn ask_agent(&self, request: &crate::GuestRequest, _timeout: Duration) -> Result<(), HvError> {
        if let crate::GuestRequest::Identity(identity) = request {
            identity.check().map_err(|e| HvError::Refused(format!("the guest agent refused: {e}")))?;
            *lock(&self.identity) = Some(identity.clone());
        }
        Ok(())
    }

    fn disks(&self) -> &dyn DiskOps {
        self
    }

    fn memory(&self) -> &dyn MemoryOps {
        self
    }

    fn migration(&self) -> &dyn MigrationOps {
        self
    }

    fn backup(&self) -> &dyn crate::BackupOps {
        self
    }

    fn state(&self) -> &dyn crate::StateOps {
        self
    }
}

/// The fake keeps no disks: it tracks nothing and cannot serve a backup.
#[async_trait::async_trait]
impl crate::BackupOps for FakeInstance {
    async fn tracking(&self, _disk_ids: &[String]) -> Result<Vec<crate::ops::DiskTracking>, HvError> {
        Ok(Vec::new())
    }

    async fn begin_backup(
        &self,
        _disks: &[crate::ops::BackupDisk],
        _listener: std::os::unix::net::UnixListener,
    ) -> Result<(), HvError> {
        Err(HvError::Unsupported("the fake hypervisor has no disks to back up".into()))
    }

    async fn end_backup(&self, _disks: &[crate::ops::BackupDisk]) -> Result<(), HvError> {
        Ok(())
    }

    async fn remove_bitmap(&self, _disk_id: &str, _name: &str) -> Result<(), HvError> {
        Ok(())
    }
}

/// A fake guest's state is a line naming its pid and memory; loading it runs the guest.
#[async_trait::async_trait]
impl crate::StateOps for FakeInstance {
    async fn save_state(&self, mut file: std::fs::File, _memory_apart: bool) -> Result<u64, HvError> {
        use std::io::Write;
        *lock(&self.state) = RunState::Paused;
        let line = format!("fake guest {} balloon {}\n", self.pid, self.balloon.load(Ordering::SeqCst));
        file.write_all(line.as_bytes()).map_err(|e| HvError::io("the state file", e))?;
        Ok(line.len() as u64)
    }

    async fn load_state(&self, file: std::fs::File, _memory_apart: bool) -> Result<(), HvError> {
        let bytes = file.metadata().map_err(|e| HvError::io("the state file", e))?.len();
        if bytes == 0 {
            return Err(HvError::Refused("loading the guest's state: the file is empty".into()));
        }
        *lock(&self.state) = RunState::Paused;
        Ok(())
    }
}

#[async_trait::async_trait]
impl DiskOps for FakeInstance {
    async fn snapshot(&self, _disk_id: &str, _name: &str) -> Result<(), HvError> {
        Ok(())
    }

    async fn snapshot_all(&self, _disk_ids: &[String], _name: &str) -> Result<(), HvError> {
        Ok(())
    }

    async fn delete_snapshot(&self, _disk_id: &str, _name: &str) -> Result<(), HvError> {
        Ok(())
    }

    async fn resize(&self, _disk_id: &str, _size: u64) -> Result<(), HvError> {
        Ok(())
    }

    async fn disk_stats(&self) -> Result<Vec<DiskStats>, HvError> {
        Ok(Vec::new())
    }
}

#[async_trait::async_trait]
impl MemoryOps for FakeInstance {
    async fn balloon_actual(&self) -> Result<u64, HvError> {
        Ok(self.balloon.load(Ordering::SeqCst))
    }

    async fn set_balloon(&self, bytes: u64) -> Result<(), HvError> {
        self.balloon.store(bytes, Ordering::SeqCst);
        self.send(InstanceEvent::BalloonChange { actual: bytes });
        Ok(())
    }

    async fn guest_memory(&self) -> Result<GuestMemory, HvError> {
        Ok(GuestMemory::default())
    }

    async fn set_balloon_stats_interval(&self, _seconds: u32) -> Result<(), HvError> {
        Ok(())
    }
}

/// What the fake does not migrate: local disks (NBD mirrors) and post-copy.
fn no_migration() -> HvError {
    HvError::Unsupported("the fake hypervisor migrates memory only".into())
}

#[async_trait::async_trait]
impl MigrationOps for FakeInstance {
    async fn use_tls(&self, _end: StreamEnd) -> Result<(), HvError> {
        Ok(())
    }

    async fn drop_tls(&self, _end: StreamEnd) -> Result<(), HvError> {
        Ok(())
    }

    async fn listen(&self, uri: &str) -> Result<(), HvError> {
        if self.has_exited() {
            return Err(HvError::Unsupported("the fake guest has exited".into()));
        }
        lock(&LISTENING).get_or_insert_with(HashMap::new).insert(uri.to_string(), self.me.clone());
        Ok(())
    }

    async fn prepare_to_receive(&self, postcopy: bool, hold_disks: bool) -> Result<(), HvError> {
        if postcopy || hold_disks {
            return Err(no_migration());
        }
        Ok(())
    }

    async fn serve_disks(
        &self,
        _listener: std::net::TcpListener,
        _disk_ids: &[String],
        _tls: bool,
    ) -> Result<(), HvError> {
        Err(no_migration())
    }

    async fn stop_serving_disks(&self) -> Result<(), HvError> {
        Ok(())
    }

    async fn mirror_disk(&self, _disk_id: &str, _host: &str, _port: &str, _tls: bool) -> Result<(), HvError> {
        Err(no_migration())
    }

    async fn mirror_jobs(&self) -> Result<Vec<MirrorJob>, HvError> {
        Ok(Vec::new())
    }

    async fn end_mirror(&self, _disk_id: &str, _abandon: bool) -> Result<(), HvError> {
        Ok(())
    }

    async fn drop_mirror_target(&self, _disk_id: &str) -> Result<(), HvError> {
        Ok(())
    }

    async fn send(&self, uri: &str, options: &SendOptions) -> Result<(), HvError> {
        if options.postcopy || options.pause_before_switchover {
            return Err(no_migration());
        }
        let target = lock(&LISTENING).as_mut().and_then(|l| l.remove(uri)).and_then(|t| t.upgrade());
        let Some(target) = target.filter(|t| !t.has_exited()) else {
            return Err(HvError::Unsupported(format!("{uri}: connection refused")));
        };
        let mut m = lock(&self.migrating);
        m.sends += 1;
        if let Some(why) = m.fail_next.take() {
            m.status = Some(MigrationStatus::Failed(why));
            return Ok(());
        }
        // The switch-over: this guest stops here (QEMU's `postmigrate`) and runs there.
        *lock(&self.state) = RunState::Other;
        self.send(InstanceEvent::Paused);
        *lock(&target.state) = RunState::Running;
        target.send(InstanceEvent::Resumed);
        m.status = Some(MigrationStatus::Completed);
        self.send(InstanceEvent::Migration { status: "completed".into() });
        Ok(())
    }

    async fn migration_info(&self) -> Result<MigrationInfo, HvError> {
        let status = lock(&self.migrating).status.clone().unwrap_or(MigrationStatus::None);
        let memory = self.balloon.load(Ordering::SeqCst);
        let done = status == MigrationStatus::Completed;
        Ok(MigrationInfo {
            status,
            ram_transferred: if done { memory } else { 0 },
            ram_total: memory,
            total_time_ms: u64::from(done),
            downtime_ms: 0,
            cpu_throttle_percentage: 0,
        })
    }

    async fn continue_switchover(&self) -> Result<(), HvError> {
        Err(no_migration())
    }

    async fn start_postcopy(&self) -> Result<(), HvError> {
        Err(no_migration())
    }

    async fn cancel(&self) -> Result<(), HvError> {
        let mut m = lock(&self.migrating);
        if matches!(m.status, Some(MigrationStatus::Active(_))) {
            m.status = Some(MigrationStatus::Failed("cancelled".into()));
        }
        Ok(())
    }
}
