//! Projects (tenants) and their quotas: a VM in a project may be created or grown only while the
//! project's VMs together stay within its quotas.

use crate::{now_millis, ControlError};
use oxvirt_model::{parse_volume_ref, Project, ProjectSpec, ProjectView, Usage, ValidationError, Vm, VmSpec, Volume};
use oxvirt_store::{Expect, StoreExt};

crate::service! {
    /// Projects and their quotas.
    Projects, projects
}

impl Projects {
    fn storage_of(&self, spec: &VmSpec) -> u64 {
        spec.disks
            .iter()
            .filter_map(|d| d.volume.as_deref())
            .filter_map(|r| {
                let (p, n) = parse_volume_ref("volume", r).ok()?;
                Some(self.ctl.inner.store.get_record::<Volume>(&format!("{p}/{n}")).ok()??.0.size.0)
            })
            .sum()
    }

    /// What a project's VMs hold; `replacing` (a VM's name) is counted as `with` instead.
    fn usage(&self, project: &str, replacing: Option<(&str, &VmSpec)>) -> Result<Usage, ControlError> {
        let mut u = Usage::default();
        let mut add = |s: &VmSpec| {
            u.vms += 1;
            u.vcpus += s.cpus;
            u.memory += s.memory.0;
            u.storage += self.storage_of(s);
        };
        for vm in self.ctl.vms().list_vms()? {
            if replacing.is_some_and(|(n, _)| n == vm.spec.name) {
                continue;
            }
            if vm.spec.project.as_deref() == Some(project) {
                add(&vm.spec);
            }
        }
        if let Some((_, s)) = replacing {
            if s.project.as_deref() == Some(project) {
                add(s);
            }
        }
        Ok(u)
    }

    /// Refuses a VM spec that would take its project beyond a quota (naming the quota).
    pub(crate) fn check_quota(&self, spec: &VmSpec) -> Result<(), ControlError> {
        let Some(name) = &spec.project else { return Ok(()) };
        let (p, _) = self
            .ctl
            .inner
            .store
            .get_record::<Project>(name)?
            .ok_or_else(|| ControlError::invalid("project", format!("there is no project named {name}")))?;
        let usage = self.usage(name, Some((&spec.name, spec)))?;
        if let Some((field, msg)) = usage.exceeds(&p.spec.quotas) {
            return Err(ControlError::invalid(format!("project.quotas.{field}"), format!("project {name}: {msg}")));
        }
        Ok(())
    }

    pub fn create_project(&self, spec: ProjectSpec) -> Result<ProjectView, ControlError> {
        spec.validate()?;
        let p = Project { spec, created_at: now_millis() };
        match self.ctl.inner.store.put_record(&p.spec.name, &p, Expect::Absent) {
            Ok(_) => self.project_view(p),
            Err(oxvirt_store::StoreError::Conflict { .. }) => Err(ControlError::Exists(ValidationError::new(
                "name",
                format!("a project named {:?} already exists", p.spec.name),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn project_view(&self, p: Project) -> Result<ProjectView, ControlError> {
        let usage = self.usage(&p.spec.name, None)?;
        Ok(ProjectView { project: p, usage })
    }

    pub fn list_projects(&self) -> Result<Vec<ProjectView>, ControlError> {
        self.ctl.inner.store.list_records::<Project>()?.into_iter().map(|(p, _)| self.project_view(p)).collect()
    }

    pub fn get_project(&self, name: &str) -> Result<ProjectView, ControlError> {
        let (p, _) = self
            .ctl
            .inner
            .store
            .get_record::<Project>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "project", name: name.into() })?;
        self.project_view(p)
    }

    /// Changes a project's quotas; lowering one below what its VMs hold is refused.
    pub fn set_project(&self, name: &str, spec: ProjectSpec) -> Result<ProjectView, ControlError> {
        spec.validate()?;
        if spec.name != name {
            return Err(ControlError::invalid("name", format!("must be the project's name, {name}")));
        }
        let (old, rev) = self
            .ctl
            .inner
            .store
            .get_record::<Project>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "project", name: name.into() })?;
        if let Some((field, msg)) = self.usage(name, None)?.exceeds(&spec.quotas) {
            return Err(ControlError::invalid(format!("quotas.{field}"), format!("its VMs hold more: {msg}")));
        }
        let p = Project { spec, created_at: old.created_at };
        self.ctl.inner.store.put_record(name, &p, Expect::Revision(rev))?;
        self.project_view(p)
    }

    pub fn delete_project(&self, name: &str) -> Result<(), ControlError> {
        let users: Vec<String> = self
            .ctl
            .vms()
            .list_vms()?
            .into_iter()
            .filter(|v: &Vm| v.spec.project.as_deref() == Some(name))
            .map(|v| v.spec.name)
            .collect();
        if !users.is_empty() {
            return Err(ControlError::InUse(format!("project {name} still has VM(s) {}", users.join(", "))));
        }
        let (_, rev) = self
            .ctl
            .inner
            .store
            .get_record::<Project>(name)?
            .ok_or_else(|| ControlError::NotFound { kind: "project", name: name.into() })?;
        self.ctl.inner.store.delete_record::<Project>(name, Expect::Revision(rev))?;
        Ok(())
    }
}
