//! Templates: a booted, quiet microvm's whole state saved once, and VMs made from it that
//! restore it at each start instead of booting.
//!
//! Taking one: the guest is paused while QEMU writes its whole state (memory included) to a file;
//! it runs on at once. A QEMU of oxvirt's own (as the source's uid, started paused for the
//! purpose) then loads that stream into a memory *file* and saves its devices apart:
//! `<data-dir>/templates/<name>/memory` (the guest's memory, as its RAM) and `state` (devices).
//! Both are root's and read-only.
//!
//! Restoring: each VM's QEMU maps the template's memory copy-on-write (`share=off`) and reads the
//! devices' state; its memory is not copied, only the pages it writes become its own. QEMU 7.2
//! opens a memory file read-write, so it is never given the file itself: oxvirtd keeps one
//! sealed memfd per template (no write, no resize: the kernel refuses them to every process)
//! holding the memory, and each QEMU inherits it. Pages of that memfd are shared by all the
//! template's VMs (`memory_bytes` once, not per VM).

use crate::tasks::TaskHandle;
use crate::ControlError;
use oxvirt_model::{Privilege, Task, Template, TemplateRequest, ValidationError, Vm, VmSpec, VmState};
use oxvirt_store::{Expect, StoreError, StoreExt};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod identity;
mod pool;

/// The templates' sealed memories, made on a template's first restore since the daemon started,
/// and their warm pools.
#[derive(Default)]
pub struct State {
    memories: Mutex<HashMap<String, Arc<OwnedFd>>>,
    pools: pool::Pools,
}

/// What a VM made from a template starts from: the devices' state, and the memory it maps.
pub(crate) struct Restore {
    pub state: std::fs::File,
    pub memory: Arc<OwnedFd>,
}

impl Restore {
    /// A start that waits for this state (`-incoming defer`), the template's memory mapped
    /// copy-on-write; `paused`: it stays paused once the state is loaded.
    pub fn launch(&self, run_as: Option<(u32, u32)>, paused: bool) -> oxvirt_hypervisor::Launch {
        oxvirt_hypervisor::Launch {
            run_as,
            incoming: Some("defer".into()),
            paused,
            memory_file: Some(oxvirt_hypervisor::MemoryFile { fd: self.memory.as_raw_fd(), shared: false }),
        }
    }
}

crate::service! {
    /// Templates of quiet microvms, and restoring VMs made from them.
    Templates, templates, state = templates
}

/// A guest whose vCPUs use more than this share of a CPU is still busy (booting, working): its
/// clones would all wake up in the middle of it.
const BUSY_PERCENT: u64 = 50;
/// Over this long.
const QUIET_WINDOW: Duration = Duration::from_millis(500);

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound { kind: "template", name: name.to_string() }
}

impl Templates {
    fn dir(&self, name: &str) -> PathBuf {
        self.ctl.inner.config.data_dir.join("templates").join(name)
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.dir(name).join("state")
    }

    fn memory_file(&self, name: &str) -> PathBuf {
        self.dir(name).join("memory")
    }

    pub fn list(&self) -> Result<Vec<Template>, ControlError> {
        Ok(self.ctl.inner.store.list_records::<Template>()?.into_iter().map(|(t, _)| t).collect())
    }

    pub fn get(&self, name: &str) -> Result<Template, ControlError> {
        self.ctl.inner.store.get_record::<Template>(name)?.map(|(t, _)| t).ok_or_else(|| not_found(name))
    }

    /// Takes a template of a running VM, as a task: the guest is paused while its state is
    /// written, then runs on.
    pub async fn create(&self, caller: &str, req: TemplateRequest) -> Result<Task, ControlError> {
        req.validate()?;
        // Its memory becomes every clone's: only someone who may change the VM may take it.
        self.ctl.access().authorize(caller, Privilege::Modify, &format!("/vms/{}", req.from))?;
        if self.ctl.inner.store.get_record::<Template>(&req.name)?.is_some() {
            return Err(exists(&req.name));
        }
        let vm = self.ctl.vms().get_vm(&req.from)?;
        check_source(&vm)?;
        if let (Some(h), Some(me)) = (&vm.host, self.ctl.hosts().host_name()) {
            if *h != me {
                return Err(ControlError::Conflict(format!(
                    "VM {} runs on host {h}: take its template there (ask that host's API)",
                    req.from
                )));
            }
        }
        // The directory is the claim on the name while the state is written.
        let dir = self.dir(&req.name);
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ControlError::Host(format!("{}: {e}", parent.display())))?;
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ControlError::Busy(format!("template {} is being taken: wait for that task", req.name)))
            }
            Err(e) => return Err(ControlError::Host(format!("{}: {e}", dir.display()))),
        }
        let op = self.ctl.inner.slot(&req.from).op.clone();
        let guard = match tokio::time::timeout(crate::vms::lifecycle::BUSY_GRACE, op.lock_owned()).await {
            Ok(g) => g,
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(crate::vms::busy(&req.from));
            }
        };
        let task = match self.ctl.inner.tasks.create("template.create", &format!("templates/{}", req.name)) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let snapshot = task.snapshot();
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.take(&req, &task).await;
            drop(guard);
            if r.is_err() {
                let _ = std::fs::remove_dir_all(me.dir(&req.name));
            }
            task.finish_with(r.map_err(|e| e.to_string()));
        });
        Ok(snapshot)
    }

    async fn take(&self, req: &TemplateRequest, task: &TaskHandle) -> Result<String, ControlError> {
        let vm = self.ctl.vms().get_vm(&req.from)?;
        check_source(&vm)?;
        let instance = self.ctl.vms().instance(&req.from)?;
        task.progress(5, "checking that the guest is quiet");
        self.check_quiet(&vm).await?;
        // After: a guest still booting is refused at once, not after the agent's silence.
        let agent = self.has_agent(&*instance).await;
        task.progress(20, "saving the guest's state");
        let dir = self.dir(&req.name);
        let whole = dir.join("whole.partial");
        let file = create_private(&whole)?;
        let paused = Instant::now();
        let saved = instance.state().save_state(file.try_clone().map_err(host(&whole))?, false).await;
        // The guest runs on whatever happened to its copy.
        let resumed = instance.resume().await;
        let pause_ms = paused.elapsed().as_millis() as u64;
        saved?;
        resumed?;
        drop(file);
        task.progress(50, "setting the guest's memory apart");
        let run_as = self.ctl.vms().run_as(&req.from)?;
        let state_bytes = self.split(&req.name, &vm.spec, run_as, &whole).await;
        let _ = std::fs::remove_file(&whole);
        let state_bytes = state_bytes?;
        task.progress(90, "recording the template");
        let template = Template {
            name: req.name.clone(),
            from: req.from.clone(),
            spec: template_shape(&vm.spec),
            host: vm.host.clone(),
            state_bytes,
            memory_bytes: vm.spec.memory.0,
            pause_ms,
            created_at: crate::now_millis(),
            pool_size: 0,
            agent,
        };
        match self.ctl.inner.store.put_record(&req.name, &template, Expect::Absent) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Err(exists(&req.name)),
            Err(e) => return Err(e.into()),
        }
        Ok(format!("template {} taken from {} ({state_bytes} bytes, guest paused {pause_ms} ms)", req.name, req.from))
    }

    /// Loads the whole state saved in `whole` into a QEMU of oxvirt's whose memory is the new
    /// memory file, and saves its devices apart: `memory` and `state` in the template's
    /// directory, root's and read-only. Returns the bytes of `state`.
    async fn split(
        &self,
        name: &str,
        spec: &VmSpec,
        run_as: Option<(u32, u32)>,
        whole: &std::path::Path,
    ) -> Result<u64, ControlError> {
        let dir = self.dir(name);
        let (memory_partial, state_partial) = (dir.join("memory.partial"), dir.join("state.partial"));
        let memory = create_private(&memory_partial)?;
        memory.set_len(spec.memory.0).map_err(host(&memory_partial))?;
        // QEMU opens it again through its descriptor, as its own uid: the file is that uid's
        // while it is written (oxvirt made it), root's again after.
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::fchown(&memory, Some(uid), Some(gid)).map_err(host(&memory_partial))?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let paths = self.ctl.inner.paths(&id);
        let mut shape = template_shape(spec);
        shape.name = format!("template-{name}");
        let launch = oxvirt_hypervisor::Launch {
            run_as,
            incoming: Some("defer".into()),
            paused: true,
            memory_file: Some(oxvirt_hypervisor::MemoryFile { fd: memory.as_raw_fd(), shared: true }),
        };
        let hv = &self.ctl.inner.hv;
        let splitter = hv.start(&id, &shape, &launch, &paths).await?;
        let split = async {
            let whole = std::fs::File::open(whole).map_err(host(whole))?;
            splitter.state().load_state(whole, false).await?;
            let state = create_private(&state_partial)?;
            let bytes = splitter.state().save_state(state.try_clone().map_err(host(&state_partial))?, true).await?;
            state.sync_all().map_err(host(&state_partial))?;
            Ok::<u64, ControlError>(bytes)
        }
        .await;
        let _ = splitter.discard().await;
        hv.cleanup(&id);
        // What QEMU said of a failure is the error's.
        let said = std::fs::read_to_string(paths.qemu_log()).unwrap_or_default();
        let _ = std::fs::remove_dir_all(paths.dir());
        let bytes = split.map_err(|e| match said.trim() {
            "" => e,
            said => ControlError::Failed(format!("{e}; QEMU said: {}", said.lines().last().unwrap_or(said))),
        })?;
        std::os::unix::fs::fchown(&memory, Some(0), Some(0)).map_err(host(&memory_partial))?;
        use std::os::unix::fs::PermissionsExt;
        memory.set_permissions(std::fs::Permissions::from_mode(0o400)).map_err(host(&memory_partial))?;
        memory.sync_all().map_err(host(&memory_partial))?;
        std::fs::rename(&memory_partial, self.memory_file(name)).map_err(host(&memory_partial))?;
        std::fs::rename(&state_partial, self.state_file(name)).map_err(host(&state_partial))?;
        Ok(bytes)
    }

    /// Refuses a guest whose vCPUs are busy (still booting, or working).
    async fn check_quiet(&self, vm: &Vm) -> Result<(), ControlError> {
        let hv = &self.ctl.inner.hv;
        let before = hv.cpu_usage_ns(&vm.id);
        let start = Instant::now();
        tokio::time::sleep(QUIET_WINDOW).await;
        let (Some(a), Some(b)) = (before, hv.cpu_usage_ns(&vm.id)) else { return Ok(()) };
        let percent = (b.saturating_sub(a) as u128 * 100 / start.elapsed().as_nanos().max(1)) as u64;
        if percent > BUSY_PERCENT {
            return Err(ControlError::Conflict(format!(
                "from: VM {} is busy (it used {percent}% of a CPU over the last {} ms; still booting?): \
                 a template is taken of a booted, quiet guest",
                vm.spec.name,
                QUIET_WINDOW.as_millis()
            )));
        }
        Ok(())
    }

    /// Forgets a template no VM is made from, its state file and its warm pool.
    pub async fn remove(&self, name: &str) -> Result<(), ControlError> {
        let Some((_, rev)) = self.ctl.inner.store.get_record::<Template>(name)? else { return Err(not_found(name)) };
        let users: Vec<String> = self
            .ctl
            .inner
            .store
            .list_records::<Vm>()?
            .into_iter()
            .filter(|(v, _)| v.spec.template.as_deref() == Some(name))
            .map(|(v, _)| v.spec.name)
            .collect();
        if !users.is_empty() {
            return Err(ControlError::InUse(format!(
                "template {name} is in use by VM(s) {}: delete them first",
                users.join(", ")
            )));
        }
        // A VM made from it meanwhile touched the record (see `claim_for`): then this fails.
        match self.ctl.inner.store.delete_record::<Template>(name, Expect::Revision(rev)) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Busy(format!("template {name} changed meanwhile; try again")))
            }
            Err(e) => return Err(e.into()),
        }
        self.drain_pool(name).await;
        crate::lock(&self.state().memories).remove(name);
        let dir = self.dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("template {name}: {}: {e}", dir.display());
            }
        }
        Ok(())
    }

    /// For a new VM made from template `spec.template`: gives `spec` the template's shape and
    /// returns the operation that writes the template's record back unchanged in the VM's own
    /// transaction (so a removal that read the record before fails instead of leaving the VM
    /// without its template). `caller` must be allowed to read the template.
    pub(crate) fn claim_for(&self, caller: &str, spec: &mut VmSpec) -> Result<Option<oxvirt_store::Op>, ControlError> {
        let Some(name) = spec.template.clone() else { return Ok(None) };
        self.ctl.access().authorize(caller, Privilege::Read, &format!("/templates/{name}"))?;
        let (t, rev) = self
            .ctl
            .inner
            .store
            .get_record::<Template>(&name)?
            .ok_or_else(|| ControlError::invalid("template", format!("template {name:?} does not exist")))?;
        *spec = t.shape_of(spec);
        Ok(Some(oxvirt_store::Op::Put {
            key: <Template as oxvirt_store::Record>::key_of(&name),
            value: oxvirt_store::encode(&t),
            expect: Expect::Revision(rev),
        }))
    }

    /// What a VM made from a template starts from (none for other VMs): the template checked
    /// against the VM's spec, its devices' state opened read-only, its sealed memory.
    pub(crate) fn restore_for(&self, spec: &VmSpec) -> Result<Option<Restore>, ControlError> {
        let Some(name) = &spec.template else { return Ok(None) };
        let t = self.get(name).map_err(|_| {
            ControlError::Conflict(format!("the VM's template {name} is gone: the VM cannot be restored"))
        })?;
        t.check_shape(spec)?;
        let path = self.state_file(name);
        let state = std::fs::File::open(&path).map_err(host(&path))?;
        let memory = self.sealed_memory(name)?;
        Ok(Some(Restore { state, memory }))
    }

    /// Bytes of the templates' memories held (each once, however many VMs map it).
    pub(crate) fn shared_memory_bytes(&self) -> u64 {
        crate::lock(&self.state().memories)
            .values()
            .filter_map(|m| std::fs::File::from(m.try_clone().ok()?).metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Template `name`'s memory as a sealed memfd, made from its memory file the first time.
    fn sealed_memory(&self, name: &str) -> Result<Arc<OwnedFd>, ControlError> {
        let mut memories = crate::lock(&self.state().memories);
        if let Some(m) = memories.get(name) {
            return Ok(m.clone());
        }
        let path = self.memory_file(name);
        let memory = sealed_copy(&path).map_err(host(&path))?;
        let memory = Arc::new(memory);
        memories.insert(name.to_string(), memory.clone());
        Ok(memory)
    }

    /// Removes what a daemon stopped while taking a template left: directories without a record.
    pub fn remove_leftovers(&self) {
        let root = self.ctl.inner.config.data_dir.join("templates");
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if matches!(self.ctl.inner.store.get_record::<Template>(&name), Ok(None)) {
                tracing::info!("template {name}: removing what an interrupted capture left");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn exists(name: &str) -> ControlError {
    ControlError::Exists(ValidationError::new("name", format!("template {name:?} exists")))
}

fn host(path: &std::path::Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |e| ControlError::Host(format!("{}: {e}", path.display()))
}

/// A new file only root reads, never through a link.
fn create_private(path: &std::path::Path) -> Result<std::fs::File, ControlError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(host(path))
}

/// What a template keeps of its source's spec: its shape (what the restored devices need), none
/// of what is the source's own.
fn template_shape(spec: &VmSpec) -> VmSpec {
    let mut s = spec.clone();
    s.host = None;
    s.affinity = None;
    s.anti_affinity = None;
    s.project = None;
    s.template = None;
    s.resources = oxvirt_model::Resources { hugepages: spec.resources.hugepages, ..Default::default() };
    s
}

/// The rules a template's source follows, each naming what it breaks.
fn check_source(vm: &Vm) -> Result<(), ControlError> {
    let name = &vm.spec.name;
    if vm.spec.machine != oxvirt_model::MachineType::Microvm {
        return Err(ControlError::invalid(
            "from",
            format!("VM {name} is a {} VM: templates are taken of microvm VMs", vm.spec.machine.as_str()),
        ));
    }
    if !vm.spec.disks.is_empty() {
        return Err(ControlError::invalid(
            "from",
            format!("VM {name} has disks: a template is taken of a VM without disks (its clones would share them)"),
        ));
    }
    if !vm.spec.nics.is_empty() {
        return Err(ControlError::invalid(
            "from",
            format!("VM {name} has NICs: a template is taken of a VM without NICs (its clones would share their MACs)"),
        ));
    }
    if vm.spec.template.is_some() {
        return Err(ControlError::invalid("from", format!("VM {name} is made from a template: take that one")));
    }
    if vm.status.state != VmState::Running {
        return Err(ControlError::Conflict(format!(
            "from: VM {name} is {}: a template is taken of a running guest",
            vm.status.state.as_str()
        )));
    }
    Ok(())
}

/// A memfd holding `path`'s bytes, sealed: no process may write, grow or shrink it, nor lift the
/// seals. It may still be mapped privately (copy-on-write), which is all a restore needs.
fn sealed_copy(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let name = c"oxvirt-template";
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut copy = std::fs::File::from(fd);
    let mut source = std::fs::File::open(path)?;
    std::io::copy(&mut source, &mut copy)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(copy))
}
