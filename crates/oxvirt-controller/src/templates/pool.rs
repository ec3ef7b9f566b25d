//! A template's warm pool: VMs restored from it ahead of need and left paused, so that a create
//! which starts the VM at once takes one and only resumes it.
//!
//! A member is a QEMU of this host named by a fresh id, the id the VM that takes it gets: its
//! runtime directory, cgroup and uid are the VM's from its first instant. Each has a marker file,
//! `templates/<name>/pool/<id>` (its uid inside), so that a restarted oxvirtd re-adopts it; a
//! marker whose QEMU is gone is removed with what it left. The `template_pools` job fills each
//! pool to its size (taking one wakes it at once) and ends members beyond it.

use super::{host, not_found, Templates};
use crate::{lock, ControlError};
use oxvirt_hypervisor::{Instance, RunState};
use oxvirt_model::{Template, TemplatePool, TemplateView, Vm};
use oxvirt_store::{Expect, StoreError, StoreExt};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A member a VM record took but did not start within this long goes back to nothing (ended):
/// its VM then restores the template as usual when it starts.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

/// One restored, paused QEMU of a warm pool.
pub(crate) struct Member {
    pub id: String,
    pub uid: Option<u32>,
    pub instance: Arc<dyn Instance>,
    template: String,
}

/// The warm pools of this host.
#[derive(Default)]
pub struct Pools {
    /// Template name → its members, ready.
    ready: Mutex<HashMap<String, Vec<Member>>>,
    /// VM id → the member its record took, and when (see `CLAIM_TIMEOUT`).
    claimed: Mutex<HashMap<String, (Member, Instant)>>,
    /// Templates a refill runs for.
    refilling: Mutex<HashSet<String>>,
    /// Markers were read (once, at the first round after the daemon started).
    adopted: AtomicBool,
}

impl Templates {
    fn pools(&self) -> &Pools {
        &self.state().pools
    }

    fn marker_dir(&self, template: &str) -> PathBuf {
        self.dir(template).join("pool")
    }

    /// Sets how many restored VMs template `name` keeps ready on its host. Only for
    /// administrators (the API's rule): a pool's QEMUs are the host's, in no project's quota.
    pub fn set_pool(&self, name: &str, req: TemplatePool) -> Result<TemplateView, ControlError> {
        req.validate()?;
        let (mut t, rev) = self.ctl.inner.store.get_record::<Template>(name)?.ok_or_else(|| not_found(name))?;
        let host_memory = self.ctl.inner.host.memory_bytes;
        let wants = u64::from(req.size).saturating_mul(t.memory_bytes);
        if wants > host_memory / 2 {
            return Err(ControlError::invalid(
                "size",
                format!(
                    "{} VMs of {} MiB could hold {} MiB if each wrote all its memory: at most half the host's {} MiB",
                    req.size,
                    t.memory_bytes >> 20,
                    wants >> 20,
                    host_memory >> 20
                ),
            ));
        }
        t.pool_size = req.size;
        match self.ctl.inner.store.put_record(name, &t, Expect::Revision(rev)) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Busy(format!("template {name} changed meanwhile; try again")))
            }
            Err(e) => return Err(e.into()),
        }
        self.refill_in_background(name);
        Ok(self.view(t))
    }

    /// A template with what its pool holds now.
    pub fn view(&self, template: Template) -> TemplateView {
        let pool_ready = lock(&self.pools().ready).get(&template.name).map_or(0, |m| m.len()) as u32;
        TemplateView { template, pool_ready }
    }

    /// A member of template `name`'s pool, if one is ready (the pool refills behind it). The
    /// caller gives it back ([`Templates::give_back`]) or hands it to its VM's start
    /// ([`Templates::hold_for_start`]).
    pub(crate) fn take_warm(&self, name: &str) -> Option<Member> {
        let mut dead = Vec::new();
        let member = {
            let mut ready = lock(&self.pools().ready);
            let members = ready.get_mut(name)?;
            loop {
                match members.pop() {
                    // (A QEMU that died while it waited is no one's.)
                    Some(m) if m.instance.has_exited() => dead.push(m),
                    other => break other,
                }
            }
        };
        dead.into_iter().for_each(|m| self.forget_dead(m));
        self.refill_in_background(name);
        member
    }

    /// A member whose VM could not be made goes back to its pool (which may be full again by
    /// now: a refill ends what is beyond its size).
    pub(crate) fn give_back(&self, member: Member) {
        let template = member.template.clone();
        self.push_ready(member);
        self.refill_in_background(&template);
    }

    fn push_ready(&self, member: Member) {
        lock(&self.pools().ready).entry(member.template.clone()).or_default().push(member);
    }

    /// The member a new VM (whose id is the member's) starts from.
    pub(crate) fn hold_for_start(&self, member: Member) {
        lock(&self.pools().claimed).insert(member.id.clone(), (member, Instant::now()));
    }

    /// Whether the QEMU of VM `id` is a pool member its start will take (not a stranger to adopt).
    pub(crate) fn is_held(&self, id: &str) -> bool {
        lock(&self.pools().claimed).contains_key(id)
    }

    /// The pool member VM `id` starts from, if its record took one: it is the VM's from now on.
    pub(crate) fn warm_for(&self, id: &str) -> Option<Member> {
        let (member, _) = lock(&self.pools().claimed).remove(id)?;
        let _ = std::fs::remove_file(self.marker_dir(&member.template).join(&member.id));
        Some(member)
    }

    /// What warm pools hold on this host: members, and the memory they hold of their own.
    pub(crate) fn pool_figures(&self) -> (u32, u64) {
        let ready = lock(&self.pools().ready);
        let members = ready.values().flatten();
        let count = members.clone().count() as u32;
        let private = members.map(|m| private_bytes(m.instance.pid())).sum();
        (count, private)
    }

    /// The pool job: at its first run, the members a previous oxvirtd left are re-adopted; then
    /// members held too long by a VM that never started are ended, and each pool of this host is
    /// brought to its size.
    pub async fn pools_round(&self) {
        if !self.pools().adopted.swap(true, Ordering::AcqRel) {
            self.adopt_members().await;
        }
        let stale: Vec<Member> = {
            let mut claimed = lock(&self.pools().claimed);
            let ids: Vec<String> =
                claimed.iter().filter(|(_, (_, at))| at.elapsed() > CLAIM_TIMEOUT).map(|(id, _)| id.clone()).collect();
            ids.iter().filter_map(|id| claimed.remove(id)).map(|(m, _)| m).collect()
        };
        for m in stale {
            tracing::info!(template = %m.template, "pool member {} was never started by its VM: ending it", m.id);
            self.end_member(m).await;
        }
        let templates = match self.list() {
            Ok(t) => t,
            Err(e) => return tracing::warn!("template pools: {e}"),
        };
        let known: HashSet<String> = templates.iter().map(|t| t.name.clone()).collect();
        let (orphans, dead): (Vec<Member>, Vec<Member>) = {
            let mut ready = lock(&self.pools().ready);
            let gone: Vec<String> = ready.keys().filter(|k| !known.contains(*k)).cloned().collect();
            let orphans = gone.iter().filter_map(|k| ready.remove(k)).flatten().collect();
            let mut dead = Vec::new();
            for members in ready.values_mut() {
                let (gone, alive): (Vec<Member>, Vec<Member>) =
                    std::mem::take(members).into_iter().partition(|m| m.instance.has_exited());
                *members = alive;
                dead.extend(gone);
            }
            (orphans, dead)
        };
        for m in orphans {
            self.end_member(m).await;
        }
        // Members whose QEMU died while they waited: the refill replaces them.
        dead.into_iter().for_each(|m| self.forget_dead(m));
        // (In the background: a pool of many members takes seconds to fill, the round goes on.)
        for t in templates.iter().filter(|t| self.is_mine(t)) {
            self.refill_in_background(&t.name);
        }
    }

    /// Ends every member of template `name`'s pool (it is being removed).
    pub(crate) async fn drain_pool(&self, name: &str) {
        let members = lock(&self.pools().ready).remove(name).unwrap_or_default();
        for m in members {
            self.end_member(m).await;
        }
    }

    fn is_mine(&self, t: &Template) -> bool {
        match (&t.host, self.ctl.hosts().host_name()) {
            (Some(h), Some(me)) => *h == me,
            _ => true,
        }
    }

    fn refill_in_background(&self, name: &str) {
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move { me.refill(&name).await });
    }

    /// Starts members until template `name`'s pool has its size, and ends those beyond it. One
    /// refill per template at a time; a failure waits for the next round.
    async fn refill(&self, name: &str) {
        if !lock(&self.pools().refilling).insert(name.to_string()) {
            return;
        }
        loop {
            // Read each time: the size may change, the template go, while members start.
            let t = match self.get(name) {
                Ok(t) if self.is_mine(&t) => t,
                _ => break,
            };
            let extra = {
                let mut ready = lock(&self.pools().ready);
                let members = ready.entry(name.to_string()).or_default();
                if members.len() == t.pool_size as usize {
                    // Done, said under the pool's lock: a member given back after this check
                    // finds no refill running, and starts one that ends it.
                    lock(&self.pools().refilling).remove(name);
                    return;
                }
                members.len().checked_sub(t.pool_size as usize).map(|n| members.split_off(members.len() - n))
            };
            match extra {
                Some(extra) => {
                    for m in extra {
                        self.end_member(m).await;
                    }
                }
                None => match self.start_member(&t).await {
                    Ok(m) => self.push_ready(m),
                    Err(e) => {
                        tracing::warn!(template = %name, "warm pool: cannot restore a VM: {e}");
                        break;
                    }
                },
            }
        }
        lock(&self.pools().refilling).remove(name);
    }

    /// Restores template `t`'s guest into a new QEMU (paused) under a fresh id and uid.
    async fn start_member(&self, t: &Template) -> Result<Member, ControlError> {
        let id = uuid::Uuid::new_v4().to_string();
        let run_as = self.ctl.vms().fresh_uid()?;
        let markers = self.marker_dir(&t.name);
        std::fs::create_dir_all(&markers).map_err(host(&markers))?;
        let marker = markers.join(&id);
        // Written first: a daemon that dies while the member starts finds what to end.
        std::fs::write(&marker, run_as.map(|(uid, _)| uid.to_string()).unwrap_or_default()).map_err(host(&marker))?;
        let mut spec = t.spec.clone();
        spec.name = format!("pool-{}", t.name);
        spec.template = Some(t.name.clone());
        let started = async {
            let restore = self.restore_for(&spec)?.ok_or_else(|| not_found(&t.name))?;
            let launch = restore.launch(run_as, true);
            let paths = self.ctl.inner.paths(&id);
            let instance = self.ctl.inner.hv.start(&id, &spec, &launch, &paths).await?;
            if let Err(e) = instance.state().load_state(restore.state, true).await {
                let _ = instance.kill().await;
                return Err(e.into());
            }
            Ok::<_, ControlError>(instance)
        }
        .await;
        match started {
            Ok(instance) => Ok(Member { id, uid: run_as.map(|r| r.0), instance, template: t.name.clone() }),
            Err(e) => {
                self.forget_member(&t.name, &id);
                Err(e)
            }
        }
    }

    async fn end_member(&self, m: Member) {
        let _ = m.instance.discard().await;
        self.forget_member(&m.template, &m.id);
    }

    /// A member whose QEMU died while it waited: what it left goes.
    fn forget_dead(&self, m: Member) {
        tracing::warn!(template = %m.template, "warm pool: member {} had exited", m.id);
        self.forget_member(&m.template, &m.id);
    }

    /// Removes what member `id` left: its cgroups, runtime directory and marker.
    fn forget_member(&self, template: &str, id: &str) {
        self.ctl.inner.hv.cleanup(id);
        let _ = std::fs::remove_dir_all(self.ctl.inner.paths(id).dir());
        let _ = std::fs::remove_file(self.marker_dir(template).join(id));
    }

    /// Re-adopts the members an earlier oxvirtd left, by their markers: a paused QEMU rejoins its
    /// pool, anything else is ended. A marker whose id is a VM's is that VM's (its record took
    /// the member just before the daemon stopped): the VM reconciler adopts its QEMU.
    async fn adopt_members(&self) {
        let root = self.ctl.inner.config.data_dir.join("templates");
        let Ok(templates) = std::fs::read_dir(&root) else { return };
        let vm_ids: HashSet<String> = match self.ctl.inner.store.list_records::<Vm>() {
            Ok(vms) => vms.into_iter().map(|(v, _)| v.id).collect(),
            Err(e) => return tracing::warn!("template pools: {e}"),
        };
        for t in templates.flatten() {
            let template = t.file_name().to_string_lossy().into_owned();
            let Ok(markers) = std::fs::read_dir(t.path().join("pool")) else { continue };
            for marker in markers.flatten() {
                let id = marker.file_name().to_string_lossy().into_owned();
                if uuid::Uuid::parse_str(&id).is_err() {
                    let _ = std::fs::remove_file(marker.path());
                    continue;
                }
                if vm_ids.contains(&id) {
                    let _ = std::fs::remove_file(marker.path());
                    continue;
                }
                let uid = std::fs::read_to_string(marker.path()).ok().and_then(|s| s.trim().parse().ok());
                let paths = self.ctl.inner.paths(&id);
                let Ok(Some(instance)) = self.ctl.inner.hv.adopt(&id, &paths).await else {
                    self.forget_member(&template, &id);
                    continue;
                };
                let paused = matches!(instance.run_state().await, Ok(RunState::Paused));
                let m = Member { id, uid, instance, template: template.clone() };
                if paused {
                    tracing::info!(template = %template, "warm pool: re-adopted member {}", m.id);
                    self.push_ready(m);
                } else {
                    self.end_member(m).await;
                }
            }
        }
    }
}

/// Memory process `pid` holds of its own (anonymous resident pages, not the template's file).
fn private_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
