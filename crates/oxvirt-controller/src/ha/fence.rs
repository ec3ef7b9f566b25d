//! Fencing, so that an HA VM never runs on two hosts: a host that has not renewed its cluster
//! lease for `fence_after` kills its HA VMs' QEMUs — before the lease can have ended and the
//! leader may start them elsewhere (`recover.rs` waits `recover_after` past that end). oxvirtd
//! does it on a thread of its own (no store call, no async runtime on the way: a runtime whose
//! workers wait on an unreachable etcd must not delay it), and feeds the watchdog (a process of
//! its own, `oxvirt-watchdog`) the same deadline five times a second, so that the QEMUs are
//! killed at it even when oxvirtd hangs, crashes or is stopped.

use super::Ha;
use crate::lock;
use oxvirt_model::{HaResource, HaState, VmState};
use oxvirt_store::StoreExt;
use oxvirt_watchdog::{Feed, Guarded};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the watchdog is fed and the deadline looked at.
pub(crate) const FEED_EVERY: Duration = Duration::from_millis(200);

/// What fencing keeps between rounds.
#[derive(Default)]
pub(crate) struct FenceState {
    /// This host fenced its HA VMs and has not renewed its lease since: nothing is restarted.
    pub fenced: std::sync::atomic::AtomicBool,
    /// This host's HA VMs (those HA keeps: not disabled ones), as last read from the store
    /// (each keeper round); their QEMUs are looked up at every tick, without the store.
    pub names: std::sync::Mutex<Vec<String>>,
}

impl Ha {
    /// Whether this host fenced itself and is still cut from the cluster.
    pub(crate) fn fenced(&self) -> bool {
        self.state().fence.fenced.load(Ordering::Acquire)
    }

    /// How long this host may still run its HA VMs (`None` outside a cluster, or before the
    /// first lease renewal).
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let m = lock(&self.ctl.hosts().state().membership).clone()?;
        let renewed = m.session.lease_renewed()?;
        Some(self.ctl.inner.config.ha.fence_after.saturating_sub(renewed.elapsed()))
    }

    /// Starts the fencing thread (in a cluster): every [`FEED_EVERY`], the time left is fed to
    /// the watchdog; at zero, the guarded QEMUs are killed.
    pub(crate) fn start_fencing(&self) {
        if self.ctl.hosts().host_name().is_none() {
            return;
        }
        let me = self.clone();
        let rt = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new().name("ha-fence".into()).spawn(move || {
            let mut feeder: Option<std::os::unix::net::UnixStream> = None;
            loop {
                std::thread::sleep(FEED_EVERY);
                me.fence_tick(&mut feeder, &rt);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("HA: cannot start the fencing thread: {e}");
        }
    }

    fn fence_tick(&self, feeder: &mut Option<std::os::unix::net::UnixStream>, rt: &tokio::runtime::Handle) {
        // Before the first renewal (a daemon starting), nothing is said: the watchdog keeps the
        // deadline the last feed gave it.
        let Some(left) = self.time_left() else { return };
        if left > Duration::ZERO && self.fenced() {
            tracing::warn!("HA: the cluster lease is renewed again: this host runs HA VMs again");
            self.state().fence.fenced.store(false, Ordering::Release);
        }
        let guarded = self.guarded();
        let feed = Feed { valid_for_ms: left.as_millis() as u64, guard: guarded.iter().map(|(_, g)| *g).collect() };
        self.feed(feeder, &feed);
        if left == Duration::ZERO && !guarded.is_empty() {
            self.fence_here(&guarded, rt);
        }
    }

    /// Reads which VMs to guard: this host's HA VMs that HA keeps (not disabled ones).
    pub(crate) fn refresh_guarded(&self) {
        let Some(me) = self.ctl.hosts().host_name() else { return };
        // While the store does not answer (cut from etcd), the last list stays.
        let Ok(resources) = self.ctl.inner.store.list_records::<HaResource>() else { return };
        let names: Vec<String> = resources
            .into_iter()
            .filter(|(r, _)| r.spec.state != HaState::Disabled)
            .map(|(r, _)| r.spec.vm)
            .filter(|n| self.ctl.vms().get_vm(n).is_ok_and(|v| v.host.as_deref() == Some(me.as_str())))
            .collect();
        *lock(&self.state().fence.names) = names;
    }

    /// The QEMUs of the guarded VMs running here now (read from memory and `/proc` only).
    fn guarded(&self) -> Vec<(String, Guarded)> {
        let names = lock(&self.state().fence.names).clone();
        names
            .into_iter()
            .filter_map(|name| {
                let pid = lock(&self.ctl.inner.slot(&name).instance).as_ref()?.pid();
                let start_time = oxvirt_watchdog::start_time(pid)?;
                Some((name, Guarded { pid, start_time }))
            })
            .collect()
    }

    /// Kills the guarded QEMUs now (SIGKILL, by pid and start time).
    fn fence_here(&self, guarded: &[(String, Guarded)], rt: &tokio::runtime::Handle) {
        self.state().fence.fenced.store(true, Ordering::Release);
        let why = format!(
            "this host has not renewed its cluster lease for {:?}: its HA VMs may be started elsewhere",
            self.ctl.inner.config.ha.fence_after
        );
        for (vm, g) in guarded {
            let killed = oxvirt_watchdog::kill(*g);
            tracing::error!(vm = %vm, pid = g.pid, killed, "HA fenced: {why}");
        }
        // The store hears of it when it answers again.
        // By then the VM may be another host's (recovered): its record is that host's to write.
        let (me, names) = (self.clone(), guarded.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
        let host = self.ctl.hosts().host_name();
        rt.spawn_blocking(move || {
            for n in names {
                let ours = me.ctl.vms().get_vm(&n).is_ok_and(|v| v.host == host && v.status.state != VmState::Stopped);
                if ours {
                    me.ctl.vms().mark_stopped(&n, &format!("fenced: {why}"));
                }
            }
        });
    }

    /// Sends a feed to the watchdog, connecting first if need be (no watchdog: nothing).
    fn feed(&self, feeder: &mut Option<std::os::unix::net::UnixStream>, f: &Feed) {
        let Some(path) = self.ctl.inner.config.ha.watchdog_socket.as_ref() else { return };
        let Ok(mut line) = serde_json::to_vec(f) else { return };
        line.push(b'\n');
        if feeder.is_none() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(FEED_EVERY));
                    *feeder = Some(s);
                }
                Err(e) => {
                    tracing::warn!("HA: the watchdog at {} does not answer: {e}", path.display());
                    return;
                }
            }
        }
        if let Some(s) = feeder.as_mut() {
            if s.write_all(&line).is_err() {
                *feeder = None;
            }
        }
    }
}
