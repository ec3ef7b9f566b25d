//! Fencing, so that an HA VM never runs on two hosts: a host that has not renewed its cluster
//! lease for `fence_after` kills its HA VMs' QEMUs — before the lease can have ended and the
//! leader may start them elsewhere (`recover.rs` waits `recover_after` past that end). oxvirtd
//! does it on a thread of its own (no store call, no async runtime on the way: a runtime whose
//! workers wait on an unreachable etcd must not delay it), and feeds the watchdog (a process of
//! its own, `oxvirt-watchdog`) the same deadline five times a second, so that the QEMUs are
//! killed at it even when oxvirtd hangs, crashes or is stopped.

use super::Ha;
use crate::lock;
use crate::ControlError;
use oxvirt_model::{HaResource, HaState, VmState};
use oxvirt_store::{Expect, Op, StoreExt};
use oxvirt_watchdog::{Feed, Guarded};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Operators' fences of hosts, asked: `ha/fence/<host>`.
const FENCE_PREFIX: &str = "ha/fence/";
/// Hosts' word that their operator's fence is carried out (none of their HA QEMUs runs):
/// `ha/fenced/<host>`.
pub(crate) const FENCED_PREFIX: &str = "ha/fenced/";

pub(crate) fn fence_key(host: &str) -> String {
    format!("{FENCE_PREFIX}{host}")
}

pub(crate) fn fenced_key(host: &str) -> String {
    format!("{FENCED_PREFIX}{host}")
}

/// How often the watchdog is fed and the deadline looked at.
pub(crate) const FEED_EVERY: Duration = Duration::from_millis(200);

/// What fencing keeps between rounds.
#[derive(Default)]
pub(crate) struct FenceState {
    /// This host fenced its HA VMs and has not renewed its lease since: nothing is restarted.
    pub fenced: std::sync::atomic::AtomicBool,
    /// An operator fenced this host (`oxvirt cluster fence`): it runs no HA VM until unfenced.
    pub by_request: std::sync::atomic::AtomicBool,
    /// This host's HA VMs (those HA keeps: not disabled ones), as last read from the store
    /// (each keeper round); their QEMUs are looked up at every tick, without the store.
    pub names: std::sync::Mutex<Vec<String>>,
}

impl Ha {
    /// Whether this host fenced itself and is still cut from the cluster, or was fenced by an
    /// operator.
    pub(crate) fn fenced(&self) -> bool {
        self.state().fence.fenced.load(Ordering::Acquire) || self.state().fence.by_request.load(Ordering::Acquire)
    }

    /// `oxvirt cluster fence HOST`: HOST kills its HA VMs' QEMUs and runs none until unfenced;
    /// once it says it has (`ha/fenced/<host>`), the leader recovers them on other hosts. For a
    /// host that still holds its lease but must not run them (failing storage or network).
    pub fn fence_host(&self, caller: &str, host: &str) -> Result<String, ControlError> {
        self.ctl
            .hosts()
            .host_record(host)?
            .ok_or_else(|| ControlError::NotFound { kind: "host", name: host.into() })?;
        let asked = format!("by {caller} at {}", crate::now_millis());
        self.ctl.inner.store.put(&fence_key(host), asked.into_bytes(), Expect::Any)?;
        Ok(format!(
            "host {host} is fenced: it kills its HA VMs and runs none until `oxvirt cluster unfence {host}`; they are recovered on other hosts once it has"
        ))
    }

    /// The hosts an operator fenced (and has not unfenced).
    pub fn fenced_hosts(&self) -> Result<Vec<String>, ControlError> {
        Ok(self
            .ctl
            .inner
            .store
            .list(FENCE_PREFIX)?
            .into_iter()
            .map(|e| e.key[FENCE_PREFIX.len()..].to_string())
            .collect())
    }

    /// Ends an operator's fence: the host may run HA VMs again (those still its own).
    pub fn unfence_host(&self, host: &str) -> Result<(), ControlError> {
        self.ctl
            .hosts()
            .host_record(host)?
            .ok_or_else(|| ControlError::NotFound { kind: "host", name: host.into() })?;
        self.ctl.inner.store.txn(vec![
            Op::Delete { key: fence_key(host), expect: Expect::Any },
            Op::Delete { key: fenced_key(host), expect: Expect::Any },
        ])?;
        Ok(())
    }

    /// Each keeper round, on the host: an operator's fence is carried out (and said done), or
    /// ended. False while it holds: the keeper starts nothing.
    pub(crate) fn follow_fence_request(&self, me: &str) -> bool {
        let asked = match self.ctl.inner.store.get(&fence_key(me)) {
            Ok(a) => a.is_some(),
            Err(_) => return false,
        };
        let was = self.state().fence.by_request.swap(asked, Ordering::AcqRel);
        if !asked {
            if was {
                tracing::warn!("HA: the operator's fence of this host ended");
            }
            return true;
        }
        let guarded = self.guarded();
        if !guarded.is_empty() {
            self.fence_here(&guarded, &tokio::runtime::Handle::current());
        }
        // Said once none of its HA QEMUs runs, their run leases given up: the leader may
        // recover them then.
        if self.guarded().is_empty() {
            self.release_run_leases(me, &[]);
            let _ =
                self.ctl.inner.store.put(&fenced_key(me), crate::now_millis().to_string().into_bytes(), Expect::Any);
        }
        false
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

    /// Reads which VMs to guard: this host's HA VMs that HA keeps (not disabled ones); then
    /// says so in each one's record (`guarded_by`), once it is in the list the fencing thread
    /// reads: the leader recovers only VMs their host said it guards.
    pub(crate) fn refresh_guarded(&self) {
        let Some(me) = self.ctl.hosts().host_name() else { return };
        // While the store does not answer (cut from etcd), the last list stays.
        let Ok(resources) = self.ctl.inner.store.list_records::<HaResource>() else { return };
        let mine: Vec<(HaResource, u64)> = resources
            .into_iter()
            .filter(|(r, _)| r.spec.state != HaState::Disabled)
            .filter(|(r, _)| self.ctl.vms().get_vm(&r.spec.vm).is_ok_and(|v| v.host.as_deref() == Some(me.as_str())))
            .collect();
        let names: Vec<String> = mine.iter().map(|(r, _)| r.spec.vm.clone()).collect();
        *lock(&self.state().fence.names) = names.clone();
        // Run leases: taken for the VMs guarded here (not while fenced, nor while this host's
        // presence is not in the store: the leader may be moving them), given up for those
        // that are not this host's any more.
        let present = matches!(self.ctl.inner.store.get(&format!("alive/{me}")), Ok(Some(_)));
        if present && !self.fenced() && !self.state().fence.by_request.load(Ordering::Acquire) {
            for vm in &names {
                if let Err(holder) = self.hold_run_lease(vm, &me) {
                    tracing::debug!(vm = %vm, "HA: run lease not taken: held by {holder}");
                }
            }
        }
        self.release_run_leases(&me, &names);
        for (mut r, rev) in mine {
            if r.status.guarded_by.as_deref() != Some(me.as_str()) {
                r.status.guarded_by = Some(me.clone());
                let _ = self.ctl.inner.store.put_record(&r.spec.vm, &r, Expect::Revision(rev));
            }
        }
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
        let why = if self.state().fence.by_request.load(Ordering::Acquire) {
            "an operator fenced this host (`oxvirt cluster fence`)".to_string()
        } else {
            self.state().fence.fenced.store(true, Ordering::Release);
            format!(
                "this host has not renewed its cluster lease for {:?}: its HA VMs may be started elsewhere",
                self.ctl.inner.config.ha.fence_after
            )
        };
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
