//! The target's side of a migration, run each reconcile round: get ready (a QEMU waiting for
//! the stream, empty copies of local disks served over NBD), take over a VM that arrived,
//! remove what a failed migration left here.

use super::disks::{self, LocalDisk};
use super::tls::set_stream_tls;
use crate::{lock, ControlError};
use oxvirt_hypervisor::ops::StreamEnd;
use oxvirt_hypervisor::{Instance, RunState};
use oxvirt_model::HostRecord;
use oxvirt_model::{Migration, MigrationState, VmState};
use oxvirt_store::{Expect, Record, StoreExt};
use std::path::PathBuf;
use std::sync::Arc;

/// A QEMU waiting for a VM, and the disk copies made for it.
pub(crate) struct Incoming {
    instance: Arc<dyn Instance>,
    copies: Vec<PathBuf>,
}

impl crate::Migrations {
    /// The target's side, each reconcile round: get ready for migrations to this host, take over
    /// VMs that arrived, remove what failed ones left.
    pub(crate) async fn serve_migrations(&self) {
        let Some(me) = self.ctl.hosts().host_name() else { return };
        let _one_at_a_time = self.state().serving_migrations.lock().await;
        let Ok(all) = self.ctl.inner.store.list_records::<Migration>() else { return };
        for (m, rev) in all {
            if m.source == me && m.state == MigrationState::Asked {
                self.start_asked(&m, rev);
            }
            if m.target != me {
                continue;
            }
            match m.state {
                MigrationState::Requested => {
                    tracing::info!(vm = %m.vm, from = %m.source, "getting ready for a migration");
                    if let Err(e) = self.receive(&m).await {
                        tracing::warn!(vm = %m.vm, "cannot receive the migration: {e}");
                        self.end_migration(&m.vm, MigrationState::Refused, Some(e.to_string()));
                    }
                }
                MigrationState::Completed => {
                    let taken = lock(&self.state().incoming).remove(&m.vm);
                    if let Some(i) = taken {
                        tracing::info!(vm = %m.vm, from = %m.source, "migrated in");
                        let held = !i.copies.is_empty();
                        if held {
                            disks::stop_serving(&*i.instance).await;
                        }
                        if let Some(text) = &m.console {
                            self.ctl.vms().carry_console_over(&m.vm, text.as_bytes());
                        }
                        self.ctl.vms().attach(&m.vm, i.instance.clone());
                        self.settle_arrival(&m.vm, &*i.instance, held).await;
                    } else if let Some(instance) = self.waiting_qemu(&m.vm).await {
                        // This daemon restarted after the guest arrived: its QEMU waits (or
                        // runs) without us; it is taken over and settled the same way.
                        tracing::info!(vm = %m.vm, from = %m.source, "migrated in while oxvirtd restarted");
                        disks::stop_serving(&*instance).await;
                        self.ctl.vms().attach(&m.vm, instance.clone());
                        self.settle_arrival(&m.vm, &*instance, true).await;
                    }
                    let _ = self.ctl.inner.store.delete_record::<Migration>(&m.vm, Expect::Any);
                }
                MigrationState::Failed => {
                    let taken = lock(&self.state().incoming).remove(&m.vm);
                    if let (Some(i), Ok(vm)) = (taken, self.ctl.vms().get_vm(&m.vm)) {
                        self.drop_incoming(&vm, Some(&*i.instance), &i.copies).await;
                    }
                    let _ = self.ctl.inner.store.delete_record::<Migration>(&m.vm, Expect::Any);
                }
                MigrationState::Ready | MigrationState::Asked | MigrationState::Refused => {}
            }
        }
    }

    /// In a cluster: migration records are served as soon as they change (not only each
    /// reconcile round), so neither end waits for the other's round.
    pub(crate) fn watch_migrations(&self) {
        if self.ctl.hosts().host_name().is_none() {
            return;
        }
        let mut events = self.ctl.inner.store.watch();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let key = match events.recv().await {
                    Ok(oxvirt_store::WatchEvent::Put(e)) => e.key,
                    Ok(oxvirt_store::WatchEvent::Delete { key, .. }) => key,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Migration::PREFIX.to_string(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if key.contains(Migration::PREFIX) {
                    me.serve_migrations().await;
                }
            }
        });
    }

    /// Starts a QEMU that waits for the VM's memory (and serves copies of its local disks), and
    /// says where.
    async fn receive(&self, m: &Migration) -> Result<(), ControlError> {
        if lock(&self.state().incoming).contains_key(&m.vm) {
            return Ok(());
        }
        let vm = self.ctl.vms().get_vm(&m.vm)?;
        let me: HostRecord = self
            .ctl
            .hosts()
            .host_record(&m.target)?
            .ok_or_else(|| ControlError::Failed("this host has no record".into()))?;
        let source = self
            .ctl
            .hosts()
            .host_record(&m.source)?
            .ok_or_else(|| ControlError::Failed(format!("the source host {} has no record", m.source)))?;
        self.check_peer_tls("source", &source)?;
        let ip = match me.address_host() {
            "" | "0.0.0.0" => "127.0.0.1",
            ip => ip,
        }
        .to_string();
        if m.postcopy && self.ctl.vms().run_as(&m.vm)?.is_some() && !unprivileged_userfaultfd() {
            return Err(ControlError::invalid(
                "postcopy",
                format!(
                    "host {} cannot take post-copy: its QEMU runs as its own user and the kernel lets only privileged processes use userfaultfd (vm.unprivileged_userfaultfd = 0); migrate without post-copy",
                    m.target
                ),
            ));
        }
        let local: Vec<LocalDisk> = self.local_disks(&vm.spec)?;
        let copies = disks::make_copies(&self.ctl, &local).await?;
        // With local disks the guest waits, paused, until their copies are served no more:
        // QEMU takes the disks over on the resume (an export still holding them would stop it).
        let hold_disks = !local.is_empty();
        let instance = match self.start_incoming(&vm, hold_disks).await {
            Ok(i) => i,
            Err(e) => {
                self.drop_incoming(&vm, None, &copies).await;
                return Err(e);
            }
        };
        let tls = self.migration_tls();
        let ready = async {
            // Before the source can connect. Post-copy needs the capability on both ends.
            if m.postcopy || hold_disks {
                instance.migration().prepare_to_receive(m.postcopy, hold_disks).await?;
            }
            if tls {
                set_stream_tls(&*instance, StreamEnd::Target).await?;
            }
            // The QEMU waits (`-incoming defer`) until all that is set, then listens.
            let uri = listen_on_a_free_port(&*instance, &ip).await?;
            // The disk copies' server gets a socket bound here (no port to lose meanwhile).
            let nbd = if local.is_empty() {
                None
            } else {
                let listener = std::net::TcpListener::bind(format!("{ip}:0"))
                    .map_err(|e| ControlError::Host(format!("no free port on {ip}: {e}")))?;
                let port = listener.local_addr().map_err(|e| ControlError::Host(format!("{ip}: {e}")))?.port();
                disks::serve(&*instance, listener, &local, tls).await?;
                Some(format!("{ip}:{port}"))
            };
            Ok::<_, ControlError>((uri, nbd))
        };
        let (uri, nbd) = match ready.await {
            Ok(r) => r,
            Err(e) => {
                self.drop_incoming(&vm, Some(&*instance), &copies).await;
                return Err(e);
            }
        };
        lock(&self.state().incoming).insert(m.vm.clone(), Incoming { instance, copies });
        self.ctl.inner.store.update_record::<Migration>(&m.vm, |r| {
            r.state = MigrationState::Ready;
            r.uri = Some(uri.clone());
            r.nbd = nbd.clone();
        })?;
        Ok(())
    }

    /// At start: a migration to this host that this daemon's restart interrupted (its waiting
    /// QEMU is no longer ours) is ended: that QEMU, the disk copies and TAP devices made for it go.
    pub(crate) async fn recover_as_target(&self, m: &Migration) {
        let Ok(vm) = self.ctl.vms().get_vm(&m.vm) else { return };
        let waiting = self.ctl.inner.hv.adopt(&vm.id, &self.ctl.inner.paths(&vm.id)).await.ok().flatten();
        // The VM is not this host's (the migration did not complete): a file of one of its
        // local volumes here is a copy made for the migration.
        let copies: Vec<PathBuf> = self
            .local_disks(&vm.spec)
            .unwrap_or_default()
            .iter()
            .filter_map(|d| self.local_disk_file(d).ok())
            .filter(|f| f.exists())
            .collect();
        self.drop_incoming(&vm, waiting.as_deref(), &copies).await;
        tracing::info!(vm = %m.vm, from = %m.source, "ended a migration to this host that oxvirtd's restart interrupted");
        self.end_migration(
            &m.vm,
            MigrationState::Failed,
            Some("the target's oxvirtd restarted during the migration: undone, the VM runs on the source".into()),
        );
    }

    /// A guest that arrived: its disks' I/O limits (QEMU does not carry them over), then it
    /// runs. One that waits on purpose (`held`: its disk copies were served until now; I/O
    /// limits to set first) is resumed here, which takes its disks over. QEMU also leaves one
    /// paused when it could not take its disks over: it is resumed once more (which tries the
    /// disks again), and when that fails too the VM shows as paused, with why.
    async fn settle_arrival(&self, name: &str, instance: &dyn Instance, held: bool) {
        if self.migration_tls() {
            super::tls::drop_stream_tls(instance, StreamEnd::Target).await;
        }
        if let Ok(vm) = self.ctl.vms().get_vm(name) {
            for (id, q) in crate::vms::lifecycle::disk_limits(&vm.spec).filter(|(_, q)| !q.is_unlimited()) {
                if let Err(e) = instance.set_disk_qos(&id, q).await {
                    tracing::warn!(vm = name, disk = %id, "I/O limits after the migration: {e}");
                }
            }
        }
        match instance.run_state().await {
            Ok(RunState::Running) | Err(_) => return,
            Ok(_) => {}
        }
        // QEMU's log is read only when it has something to explain (the guest is paused while
        // this runs: no file read on the way).
        if held {
            tracing::debug!(vm = name, "resuming the guest that arrived");
        } else {
            let log = self.ctl.vms().qemu_log_tail(name);
            tracing::warn!(vm = name, "the guest did not start after the migration; resuming it: {log}");
        }
        if let Err(e) = instance.resume().await {
            let why =
                format!("arrived by migration but could not run here: {e} ({})", self.ctl.vms().qemu_log_tail(name));
            tracing::warn!(vm = name, "{why}");
            self.ctl.vms().set_state(name, VmState::Paused, &why);
        }
    }

    /// The QEMU of VM `name` on this host that no one controls yet (found by the hypervisor).
    async fn waiting_qemu(&self, name: &str) -> Option<Arc<dyn Instance>> {
        let vm = self.ctl.vms().get_vm(name).ok()?;
        if lock(&self.ctl.inner.slot(name).instance).is_some() {
            return None;
        }
        self.ctl.inner.hv.adopt(&vm.id, &self.ctl.inner.paths(&vm.id)).await.ok().flatten()
    }

    /// Removes what this host made for a migration that will not come: the waiting QEMU (its
    /// exit removes its cgroup), the disk copies, the NICs' TAP devices.
    async fn drop_incoming(&self, vm: &oxvirt_model::Vm, instance: Option<&dyn Instance>, copies: &[PathBuf]) {
        if let Some(i) = instance {
            let _ = i.kill().await;
        }
        disks::remove_copies(copies);
        self.ctl.networks().release_network(&vm.id, &vm.spec);
    }

    async fn start_incoming(&self, vm: &oxvirt_model::Vm, paused: bool) -> Result<Arc<dyn Instance>, ControlError> {
        // What this host kept of the VM's console from an earlier stay comes back with the VM
        // (carried over, with what it printed since): the waiting QEMU starts a log of its own.
        self.ctl.vms().forget_console_log(vm);
        let with_mtu = self.ctl.networks().prepare_network(&vm.id, &vm.spec, vm.uid).await?;
        self.ctl.nbd().prepare_storage(&vm.id, &vm.spec).await?;
        let mut spec = self.ctl.storage().resolve_disks(&vm.id, &with_mtu)?;
        self.ctl.resources().ksm_for_launch(&mut spec)?;
        spec.resources.placement = None;
        let launch = oxvirt_hypervisor::Launch {
            run_as: self.ctl.vms().run_as(&vm.spec.name)?,
            // It listens once told where (`receive`): after the stream's credentials, if any.
            incoming: Some("defer".to_string()),
            paused,
            // (A VM made from a template arrives with all its memory: the stream carries it.)
            memory_file: None,
        };
        Ok(self.ctl.inner.hv.start(&vm.id, &spec, &launch, &self.ctl.inner.paths(&vm.id)).await?)
    }
}

/// Makes a waiting QEMU listen for the stream on a free port of `ip`; its URI. A port found free
/// may be taken before QEMU binds it (another process's bind or connection): another is tried.
async fn listen_on_a_free_port(instance: &dyn Instance, ip: &str) -> Result<String, ControlError> {
    let mut last = String::new();
    for _ in 0..8 {
        let port = std::net::TcpListener::bind(format!("{ip}:0"))
            .and_then(|l| l.local_addr())
            .map_err(|e| ControlError::Host(format!("no free port on {ip}: {e}")))?
            .port();
        let uri = format!("tcp:{ip}:{port}");
        match instance.migration().listen(&uri).await {
            Ok(()) => return Ok(uri),
            Err(e) if e.to_string().contains("Address already in use") => last = e.to_string(),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ControlError::Failed(format!("no port of {ip} stayed free for the migration stream: {last}")))
}

/// Whether unprivileged processes may use userfaultfd (which post-copy needs on the target).
fn unprivileged_userfaultfd() -> bool {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").map(|v| v.trim() == "1").unwrap_or(false)
}
