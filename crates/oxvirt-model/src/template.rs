//! Templates: a booted, quiet microvm's whole state (memory and devices) saved once, from which
//! new VMs are restored instead of booted.

use crate::{validate_name, Millis, ValidationError, VmSpec};

/// `POST /api/v1/templates`: take a template of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    /// The VM to capture: a running `microvm` whose guest has booted and is quiet, with no disks
    /// and no NICs (their state would be shared by every clone).
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub from: String,
}

impl TemplateRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_name("from", &self.from)
    }
}

/// A template, as stored. Immutable once taken: its state file never changes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Template {
    pub name: String,
    /// The VM it was taken from (which may have changed or gone since).
    pub from: String,
    /// The guest's shape at the instant it was taken; a VM made from the template has it (its
    /// own name, project and resources aside).
    pub spec: VmSpec,
    /// In a cluster: the host that keeps its state file (VMs from it run there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Bytes of its devices' state (its memory apart: `memory_bytes`, mapped copy-on-write by
    /// every VM made from it, so shared until they write).
    pub state_bytes: u64,
    pub memory_bytes: u64,
    /// How long the guest was paused to take it, in ms.
    pub pause_ms: u64,
    pub created_at: Millis,
    /// How many VMs its host keeps restored and paused, ready to be taken by a create that
    /// starts at once (`PUT /api/v1/templates/{template}/pool`). 0: no warm pool.
    #[serde(default)]
    pub pool_size: u32,
    /// Its guest ran oxvirt's guest agent when it was taken: each VM made from it is told its
    /// own hostname, machine id, random seed and clock as it starts.
    #[serde(default)]
    pub agent: bool,
}

/// A template as the API shows it: with what its warm pool holds now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct TemplateView {
    #[serde(flatten)]
    pub template: Template,
    /// Restored, paused VMs waiting in its warm pool on this host.
    pub pool_ready: u32,
}

/// The most VMs one template's warm pool keeps.
pub const MAX_POOL_SIZE: u32 = 64;

/// `PUT /api/v1/templates/{template}/pool`: how many restored VMs to keep ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePool {
    /// 0 (no pool) to 64.
    #[schemars(range(max = 64))]
    pub size: u32,
}

impl TemplatePool {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.size > MAX_POOL_SIZE {
            return Err(ValidationError::new("size", format!("must be at most {MAX_POOL_SIZE} (got {})", self.size)));
        }
        Ok(())
    }
}

impl Template {
    /// The spec of a VM `name` made from this template: the template's shape; what is the new
    /// VM's own (name, project, host affinity, restart policy, resources) comes from `mine`.
    pub fn shape_of(&self, mine: &VmSpec) -> VmSpec {
        VmSpec {
            name: mine.name.clone(),
            host: mine.host.clone().or_else(|| self.host.clone()),
            affinity: mine.affinity.clone(),
            anti_affinity: mine.anti_affinity.clone(),
            project: mine.project.clone(),
            restart_policy: mine.restart_policy,
            template: Some(self.name.clone()),
            resources: mine.resources.clone(),
            ..self.spec.clone()
        }
    }

    /// Whether `spec` (a VM made from this template) still has its shape: the restored devices
    /// must be the ones QEMU is started with.
    pub fn check_shape(&self, spec: &VmSpec) -> Result<(), ValidationError> {
        let t = &self.spec;
        let same = [
            ("machine", spec.machine == t.machine),
            ("cpus", spec.cpus == t.cpus),
            ("memory", spec.memory == t.memory),
            ("kernel", spec.kernel == t.kernel),
            ("disks", spec.disks == t.disks),
            ("nics", spec.nics == t.nics),
            ("rng", spec.rng == t.rng),
            ("balloon", spec.balloon == t.balloon),
            ("accel", spec.accel == t.accel),
            ("memory_encryption", spec.memory_encryption == t.memory_encryption),
            ("resources.hugepages", spec.resources.hugepages == t.resources.hugepages),
        ];
        match same.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(ValidationError::new(
                *field,
                format!("must be the template's ({}): a VM restored from a template has its devices", self.name),
            )),
            None => Ok(()),
        }
    }
}
