use crate::size::MIB;
use crate::{validate_name, ByteSize, Millis, ValidationError};

/// Most vCPUs one VM may have (QEMU's q35 limit).
pub const MAX_CPUS: u32 = 288;
/// Least memory a VM may have.
pub const MIN_MEMORY: u64 = 32 * MIB;

/// What a VM should be: the part of a VM that the user writes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    /// In a cluster: the host to run on; the scheduler picks one when it is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// In a cluster: VMs of one affinity group run on one host (the first one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub affinity: Option<String>,
    /// In a cluster: VMs of one anti-affinity group run on different hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub anti_affinity: Option<String>,
    /// The project (tenant) the VM belongs to, whose quotas it counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub project: Option<String>,
    #[schemars(range(min = 1, max = crate::MAX_CPUS))]
    pub cpus: u32,
    pub memory: ByteSize,
    #[serde(default)]
    pub machine: MachineType,
    /// Direct kernel boot. Without it the VM boots through its firmware from its first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub accel: AccelChoice,
    /// Encrypted guest memory (AMD SEV / SEV-SNP): only on hosts that have it, under KVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_encryption: Option<MemoryEncryption>,
    /// A virtio-rng device fed from the host's /dev/urandom.
    #[serde(default = "yes")]
    pub rng: bool,
    /// A virtio-balloon device.
    #[serde(default = "yes")]
    pub balloon: bool,
    /// The VM's share of the host: CPU weight, cap, pinning, memory limit, NUMA, huge pages...
    #[serde(default)]
    pub resources: crate::Resources,
    /// Made from this template: each start restores the template's saved guest instead of
    /// booting (the template's shape: machine, CPUs, memory, kernel, devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub template: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryEncryption {
    Sev,
    SevSnp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// A modern PC (PCIe, SeaBIOS firmware): boots from disks or a kernel.
    #[default]
    Q35,
    /// QEMU's minimal machine (virtio-mmio, no PCI, no firmware boot): boots a kernel fast.
    Microvm,
}

impl MachineType {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35",
            MachineType::Microvm => "microvm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
}

/// `Default` is the disk `{}` reads as: a qcow2 on virtio-blk, read-write, no limits (a volume
/// or a path still to be named).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The disk's device id in the VM (`disk0`, `disk1`...): given by oxvirt when left out, and
    /// kept for the disk's life so that hot-plug and live changes find it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// A volume of a storage pool, as `pool/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[^/]+/[^/]+$"))]
    pub volume: Option<String>,
    /// Or an image file on the host, outside any pool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub readonly: bool,
    /// I/O limits; changeable while the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<crate::DiskQos>,
    /// Where an `nbd` pool's volume is served: set by oxvirt when it resolves the volume for QEMU,
    /// never read from or shown to users.
    #[serde(skip)]
    pub nbd: Option<NbdSource>,
    /// A host-path disk as QEMU gets it: a descriptor oxvirt opened (QEMU never opens the path
    /// itself, and the file's owner and mode are never changed). Set by the QEMU driver at
    /// launch, never read from or shown to users.
    #[serde(skip)]
    pub fd: Option<PassedFd>,
}

/// A descriptor handed to QEMU in an fd set (`-add-fd` / QMP `add-fd`), opened as `/dev/fdset/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassedFd {
    /// The descriptor's number in the process that starts QEMU (command line only).
    pub fd: i32,
    pub set: u32,
}

impl DiskSpec {
    /// A disk that is a file the user named on the host (not a volume, not served over NBD).
    pub fn is_host_path(&self) -> bool {
        self.volume.is_none() && self.nbd.is_none() && !self.path.is_empty()
    }
}

/// An NBD export: a Unix socket of an export daemon and the export's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdSource {
    pub socket: String,
    pub export: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBus {
    #[default]
    VirtioBlk,
    VirtioScsi,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The NIC's name within the VM (`nic0`, `nic1`...): given at creation when left out, kept
    /// when other NICs come and go.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = "^(nic([0-9]|1[0-5]))?$"))]
    pub id: String,
    /// `network` when `network` is given, `bridged` when `bridge` is, else `user`.
    #[serde(default)]
    pub mode: NicMode,
    /// Given at creation when left out: `52:54:00` and three bytes no other VM's NIC has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Number of queue pairs (multi-queue virtio-net); 0 means one per vCPU.
    #[serde(default)]
    #[schemars(range(max = 16))]
    pub queues: u32,
    /// For `bridged`: the host bridge the NIC's TAP device joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub bridge: Option<String>,
    /// For `network`: the oxvirt network the NIC joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub network: Option<String>,
    /// The NIC's IPv4 address. On an oxvirt network: asked for (a static lease) or given by
    /// oxvirt's IPAM at creation. On a host bridge: the address the guest is set up with on that
    /// LAN, given by the administrator (oxvirt runs no DHCP there) — with it the NIC may send
    /// from no other address (IP anti-spoofing, as Incus' `security.ipv4_filtering`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Security groups whose rules filter the NIC's traffic (none: no filtering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = crate::name::NAME_PATTERN)))]
    pub security_groups: Vec<String>,
    /// Bandwidth limits.
    #[serde(default, skip_serializing_if = "NicQos::is_unlimited")]
    pub qos: NicQos,
    /// The MTU of the NIC's network, filled in by the controller when it starts the VM (the
    /// guest learns it from the device). Not stored.
    #[serde(skip)]
    #[schemars(range(min = crate::network::MIN_MTU, max = crate::MAX_MTU))]
    pub mtu: Option<u32>,
    /// Set by the controller for a NIC on oxvirt's Open vSwitch, whose userspace datapath takes
    /// no checksum or segmentation offloads: the device offers none to the guest. Not stored.
    #[serde(skip)]
    pub no_offloads: bool,
}

impl NicSpec {
    /// A user-mode NIC with everything else left to defaults.
    pub fn user() -> Self {
        NicSpec {
            id: String::new(),
            mode: NicMode::User,
            mac: None,
            queues: 0,
            bridge: None,
            network: None,
            ip: None,
            security_groups: vec![],
            qos: NicQos::default(),
            mtu: None,
            no_offloads: false,
        }
    }

    /// The number in the NIC's id (`nic3` -> 3): names its TAP device and QEMU objects.
    pub fn slot(&self) -> usize {
        self.id.strip_prefix("nic").and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Fills in the mode the other fields imply.
    pub fn normalize(&mut self) {
        if self.mode == NicMode::User {
            if self.network.is_some() {
                self.mode = NicMode::Network;
            } else if self.bridge.is_some() {
                self.mode = NicMode::Bridged;
            }
        }
    }

    /// Whether oxvirt makes a TAP device on the host for it.
    pub fn has_tap(&self) -> bool {
        self.mode != NicMode::User
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let f = |name: &str| format!("{field}.{name}");
        if let Some(mac) = &self.mac {
            validate_mac(&f("mac"), mac)?;
        }
        if self.queues > 16 {
            return Err(ValidationError::new(f("queues"), "must be at most 16"));
        }
        let id_ok =
            self.id.is_empty() || (self.id.starts_with("nic") && self.id[3..].parse::<u8>().is_ok_and(|n| n < 16));
        if !id_ok {
            return Err(ValidationError::new(f("id"), "must be nic0 .. nic15"));
        }
        match (self.mode, &self.bridge, &self.network) {
            (NicMode::Bridged, Some(b), None) => validate_ifname(&f("bridge"), b)?,
            (NicMode::Bridged, None, _) => {
                return Err(ValidationError::new(f("bridge"), "a bridged NIC needs the host bridge's name"))
            }
            (NicMode::Network, None, Some(n)) => validate_name(&f("network"), n)?,
            (NicMode::Network, _, None) => {
                return Err(ValidationError::new(f("network"), "a network NIC needs the network's name"))
            }
            (NicMode::User, None, None) => {}
            (_, Some(_), _) => return Err(ValidationError::new(f("bridge"), "only a bridged NIC joins a bridge")),
            (_, _, Some(_)) => return Err(ValidationError::new(f("network"), "only a network NIC joins a network")),
        }
        if self.ip.is_some() && self.mode == NicMode::User {
            return Err(ValidationError::new(
                f("ip"),
                "a user-mode NIC has no host device to hold to an address (only network and bridged NICs take one)",
            ));
        }
        if let Some(ip) = self.ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(ValidationError::new(f("ip"), format!("{ip} is not a host's unicast address")));
            }
        }
        if self.mode == NicMode::User && (!self.security_groups.is_empty() || !self.qos.is_unlimited()) {
            let which = if self.security_groups.is_empty() { "qos" } else { "security_groups" };
            return Err(ValidationError::new(f(which), "a user-mode NIC has no host device to filter or shape"));
        }
        for (i, g) in self.security_groups.iter().enumerate() {
            validate_name(&format!("{field}.security_groups[{i}]"), g)?;
            if self.security_groups[..i].contains(g) {
                return Err(ValidationError::new(format!("{field}.security_groups[{i}]"), "is listed twice"));
            }
        }
        if self.security_groups.len() > 16 {
            return Err(ValidationError::new(f("security_groups"), "at most 16 groups"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicMode {
    /// QEMU's user-mode network, restricted: the guest gets an address by DHCP and reaches
    /// nothing beyond QEMU; there is no host device. (Called `isolated` before networks came.)
    #[default]
    #[serde(alias = "isolated")]
    User,
    /// A TAP device that oxvirt makes and joins to an existing host bridge.
    Bridged,
    /// A TAP device on one of oxvirt's networks.
    Network,
}

/// Bandwidth limits of a NIC, in bits per second (0 = none): `ingress` is traffic to the VM,
/// `egress` traffic from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NicQos {
    #[serde(with = "crate::rate")]
    #[schemars(schema_with = "crate::rate::schema")]
    pub ingress: u64,
    #[serde(with = "crate::rate")]
    #[schemars(schema_with = "crate::rate::schema")]
    pub egress: u64,
}

impl NicQos {
    pub fn is_unlimited(&self) -> bool {
        self.ingress == 0 && self.egress == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// A VM that stops by itself stays stopped.
    #[default]
    Never,
    /// A VM whose QEMU died or whose guest panicked is started again.
    OnFailure,
    /// A VM that stops for any reason but a user's request is started again.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where the host really runs guests natively, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The fields of a VM that `PATCH /api/v1/vms/{name}` may change (only while it is stopped).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmUpdate {
    #[schemars(range(min = 1, max = crate::MAX_CPUS))]
    pub cpus: Option<u32>,
    pub memory: Option<ByteSize>,
    pub kernel: Option<KernelBoot>,
    pub disks: Option<Vec<DiskSpec>>,
    pub nics: Option<Vec<NicSpec>>,
    pub restart_policy: Option<RestartPolicy>,
    pub accel: Option<AccelChoice>,
    pub resources: Option<crate::Resources>,
}

impl VmUpdate {
    /// The spec with this update applied. Validate the result before storing it.
    pub fn apply(&self, spec: &VmSpec) -> VmSpec {
        let mut s = spec.clone();
        if let Some(v) = self.cpus {
            s.cpus = v;
        }
        if let Some(v) = self.memory {
            s.memory = v;
        }
        if let Some(v) = &self.kernel {
            s.kernel = Some(v.clone());
        }
        if let Some(v) = &self.disks {
            s.disks = v.clone();
        }
        if let Some(v) = &self.nics {
            s.nics = v.clone();
        }
        if let Some(v) = self.restart_policy {
            s.restart_policy = v;
        }
        if let Some(v) = self.accel {
            s.accel = v;
        }
        if let Some(v) = &self.resources {
            s.resources = v.clone();
        }
        s
    }
}

impl VmSpec {
    /// A VM of `cpus` and `memory` with everything else as a spec that leaves it out reads:
    /// q35, no kernel, disks or NICs, never restarted, KVM where it can, rng and balloon devices,
    /// default resources.
    pub fn new(name: impl Into<String>, cpus: u32, memory: ByteSize) -> Self {
        VmSpec {
            name: name.into(),
            host: None,
            affinity: None,
            anti_affinity: None,
            project: None,
            cpus,
            memory,
            machine: MachineType::default(),
            kernel: None,
            disks: vec![],
            nics: vec![],
            restart_policy: RestartPolicy::default(),
            accel: AccelChoice::default(),
            memory_encryption: None,
            rng: yes(),
            balloon: yes(),
            resources: crate::Resources::default(),
            template: None,
        }
    }

    /// Fills in what the spec implies (each NIC's mode from its other fields).
    pub fn normalize(&mut self) {
        for n in self.nics.iter_mut() {
            n.normalize();
        }
    }

    /// The rules a spec must follow on its own. Rules that need the host (memory it has, files
    /// that exist) are checked by the controller.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if let Some(t) = &self.template {
            validate_name("template", t)?;
        }
        if self.cpus == 0 {
            return Err(ValidationError::new("cpus", "must be at least 1"));
        }
        if self.cpus > MAX_CPUS {
            return Err(ValidationError::new("cpus", format!("must be at most {MAX_CPUS}")));
        }
        if self.memory.0 < MIN_MEMORY {
            return Err(ValidationError::new("memory", "must be at least 32MiB"));
        }
        if !self.memory.0.is_multiple_of(MIB) {
            return Err(ValidationError::new("memory", "must be a whole number of MiB"));
        }
        if let Some(k) = &self.kernel {
            validate_host_path("kernel.kernel", &k.kernel)?;
            if let Some(initrd) = &k.initrd {
                validate_host_path("kernel.initrd", initrd)?;
            }
            if k.cmdline.len() > 4096 {
                return Err(ValidationError::new("kernel.cmdline", "must be at most 4096 bytes"));
            }
            if k.cmdline.contains(['\n', '\0']) {
                return Err(ValidationError::new("kernel.cmdline", "must be one line"));
            }
        }
        if self.kernel.is_none() && self.disks.is_empty() {
            return Err(ValidationError::new(
                "kernel",
                "a VM needs a kernel or a disk to boot from: give kernel.kernel or disks[0]",
            ));
        }
        if self.machine == MachineType::Microvm && self.kernel.is_none() {
            return Err(ValidationError::new("kernel", "a microvm VM boots only a kernel: give kernel.kernel"));
        }
        if self.disks.len() > 16 {
            return Err(ValidationError::new("disks", "at most 16 disks"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let Some(q) = &d.qos {
                q.validate(&format!("disks[{i}].qos"))?;
                if d.bus != DiskBus::VirtioBlk || self.machine == MachineType::Microvm {
                    return Err(ValidationError::new(
                        format!("disks[{i}].qos"),
                        "I/O limits are for virtio-blk disks of q35 VMs",
                    ));
                }
            }
            if !d.id.is_empty() {
                validate_name(&format!("disks[{i}].id"), &d.id)?;
                if d.id.len() > 20 {
                    // QEMU's node names (id + suffix) are limited to 31 characters.
                    return Err(ValidationError::new(format!("disks[{i}].id"), "must be at most 20 characters"));
                }
                if self.disks.iter().filter(|o| o.id == d.id).count() > 1 {
                    return Err(ValidationError::new(format!("disks[{i}].id"), "must be unique in the VM"));
                }
            }
            match (&d.volume, d.path.is_empty()) {
                (Some(v), true) => {
                    crate::parse_volume_ref(&format!("disks[{i}].volume"), v)?;
                }
                (None, false) => {
                    validate_host_path(&format!("disks[{i}].path"), &d.path)?;
                    // One file, one disk: a second (writable) view of the same image corrupts it.
                    if self.disks[..i].iter().any(|o| o.path == d.path) {
                        return Err(ValidationError::new(format!("disks[{i}].path"), "names a file another disk has"));
                    }
                }
                (Some(_), false) => {
                    return Err(ValidationError::new(format!("disks[{i}]"), "give either volume or path, not both"))
                }
                (None, true) => {
                    return Err(ValidationError::new(format!("disks[{i}]"), "give a volume (pool/name) or a path"))
                }
            }
            if self.machine == MachineType::Microvm && d.bus != DiskBus::VirtioBlk {
                return Err(ValidationError::new(
                    format!("disks[{i}].bus"),
                    "a microvm VM takes only virtio-blk disks",
                ));
            }
        }
        self.resources.validate(self.cpus, self.memory.0, self.balloon)?;
        if let Some(p) = &self.project {
            validate_name("project", p)?;
        }
        if let Some(h) = &self.host {
            validate_name("host", h)?;
        }
        if let Some(g) = &self.affinity {
            validate_name("affinity", g)?;
        }
        if let Some(g) = &self.anti_affinity {
            validate_name("anti_affinity", g)?;
        }
        if self.affinity.is_some() && self.affinity == self.anti_affinity {
            return Err(ValidationError::new("anti_affinity", "must differ from affinity: a group cannot be both"));
        }
        if self.nics.len() > 8 {
            return Err(ValidationError::new("nics", "at most 8 NICs"));
        }
        for (i, n) in self.nics.iter().enumerate() {
            n.validate(&format!("nics[{i}]"))?;
            if !n.id.is_empty() && self.nics[..i].iter().any(|o| o.id == n.id) {
                return Err(ValidationError::new(format!("nics[{i}].id"), "is used by another NIC"));
            }
        }
        Ok(())
    }
}

/// A path on the host that will reach QEMU: absolute, one line, no `..` step.
pub fn validate_host_path(field: &str, path: &str) -> Result<(), ValidationError> {
    if !path.starts_with('/') {
        return Err(ValidationError::new(field, "must be an absolute path"));
    }
    if path.contains(['\0', '\n', '\r']) {
        return Err(ValidationError::new(field, "must not hold NUL or line breaks"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(ValidationError::new(field, "must not hold a '..' step"));
    }
    if path.len() > 4096 {
        return Err(ValidationError::new(field, "must be at most 4096 bytes"));
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 characters of letters, digits, `-`, `_` and `.`, not `.`/`..`.
pub fn validate_ifname(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be an interface name: 1 to 15 letters, digits, '-', '_' or '.'"))
    }
}

/// A unicast MAC address written as six pairs of hex digits joined by `:`.
pub fn validate_mac(field: &str, mac: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let hex_ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !hex_ok {
        return Err(ValidationError::new(field, "must be six hex pairs joined by ':', e.g. 52:54:00:12:34:56"));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(ValidationError::new(field, "must be a unicast address (first byte even)"));
    }
    Ok(())
}

/// The state oxvirt observed a VM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    #[default]
    Stopped,
    Starting,
    Running,
    Paused,
    Stopping,
    /// The guest panicked; QEMU is kept paused so that it can be inspected.
    Crashed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }

    /// Whether a QEMU process belongs to a VM in this state.
    pub fn has_process(self) -> bool {
        !matches!(self, VmState::Stopped)
    }
}

/// What a user asks a VM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmAction {
    Start,
    /// Graceful: ACPI power button, then forced off after the timeout.
    Stop,
    Reboot,
    Reset,
    Pause,
    Resume,
    /// Forced off at once.
    Kill,
}

pub const VM_ACTIONS: &[&str] = &["start", "stop", "reboot", "reset", "pause", "resume", "kill"];

impl VmAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => VmAction::Start,
            "stop" => VmAction::Stop,
            "reboot" => VmAction::Reboot,
            "reset" => VmAction::Reset,
            "pause" => VmAction::Pause,
            "resume" => VmAction::Resume,
            "kill" => VmAction::Kill,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Reboot => "reboot",
            VmAction::Reset => "reset",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Kill => "kill",
        }
    }

    /// The lifecycle's state machine: whether this action may be taken from `state`, and if not,
    /// the rule that forbids it.
    pub fn check_from(self, state: VmState) -> Result<(), String> {
        use VmState::*;
        let ok = match self {
            VmAction::Start => matches!(state, Stopped),
            VmAction::Stop => matches!(state, Running | Paused | Starting | Crashed),
            VmAction::Reboot | VmAction::Reset => matches!(state, Running),
            VmAction::Pause => matches!(state, Running),
            VmAction::Resume => matches!(state, Paused),
            VmAction::Kill => state.has_process(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("cannot {} a VM that is {}", self.as_str(), state.as_str()))
        }
    }

    /// The state a VM should settle in once this action is done.
    pub fn desired_after(self) -> DesiredState {
        match self {
            VmAction::Start | VmAction::Reboot | VmAction::Reset | VmAction::Resume => DesiredState::Running,
            VmAction::Stop | VmAction::Kill => DesiredState::Stopped,
            VmAction::Pause => DesiredState::Paused,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    #[default]
    Stopped,
    Running,
    Paused,
}

/// What oxvirt observed of a VM on its host.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VmStatus {
    pub state: VmState,
    /// The QEMU process, while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `kvm` or `tcg`, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    /// Why the VM last stopped, or what went wrong.
    #[serde(default)]
    pub reason: String,
    pub changed_at: Millis,
    /// Where on the host it runs (CPUs, memory nodes) and why, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::Placement>,
}

/// A VM as the store keeps it: what the user asked for and what oxvirt observed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Vm {
    pub id: String,
    /// The cluster host the VM belongs to (none on a single host), and why that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_reason: Option<String>,
    /// The uid of the VM's QEMU once it runs (each VM its own), given at its first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub spec: VmSpec,
    pub desired: DesiredState,
    pub status: VmStatus,
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        serde_json::from_str(r#"{"name":"web-1","cpus":1,"memory":"256MiB","kernel":{"kernel":"/k"}}"#).unwrap()
    }

    #[test]
    fn defaults_are_what_an_operator_expects() {
        let s = spec();
        assert_eq!(s.machine, MachineType::Q35);
        assert!(s.rng && s.balloon);
        assert_eq!(s.restart_policy, RestartPolicy::Never);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn constructed_defaults_are_the_ones_json_reads() {
        let parsed: VmSpec = serde_json::from_str(r#"{"name":"a","cpus":2,"memory":"1GiB"}"#).unwrap();
        assert_eq!(VmSpec::new("a", 2, ByteSize(1 << 30)), parsed);
        assert_eq!(DiskSpec::default(), serde_json::from_str::<DiskSpec>("{}").unwrap());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.cpus = 0), "cpus"),
            (Box::new(|s| s.cpus = 1000), "cpus"),
            (Box::new(|s| s.memory = ByteSize(1024)), "memory"),
            (Box::new(|s| s.memory = ByteSize(MIB * 64 + 1)), "memory"),
            (Box::new(|s| s.name = "a,b".into()), "name"),
            (Box::new(|s| s.affinity = Some("Web Tier".into())), "affinity"),
            (Box::new(|s| s.anti_affinity = Some("../x".into())), "anti_affinity"),
            (
                Box::new(|s| {
                    s.affinity = Some("db".into());
                    s.anti_affinity = Some("db".into())
                }),
                "anti_affinity",
            ),
            (Box::new(|s| s.kernel = None), "kernel"),
            (Box::new(|s| s.kernel.as_mut().unwrap().kernel = "rel/path".into()), "kernel.kernel"),
            (Box::new(|s| s.kernel.as_mut().unwrap().initrd = Some("/a/../b".into())), "kernel.initrd"),
            (Box::new(|s| s.kernel.as_mut().unwrap().cmdline = "a\nb".into()), "kernel.cmdline"),
            (
                Box::new(|s| {
                    s.disks.push(DiskSpec {
                        id: String::new(),
                        volume: None,
                        path: "x".into(),
                        format: DiskFormat::Raw,
                        bus: DiskBus::VirtioBlk,
                        readonly: false,
                        qos: None,
                        nbd: None,
                        fd: None,
                    })
                }),
                "disks[0].path",
            ),
            (
                Box::new(|s| s.nics.push(NicSpec { mac: Some("01:00:00:00:00:00".into()), ..NicSpec::user() })),
                "nics[0].mac",
            ),
            (Box::new(|s| s.nics.push(NicSpec { mac: Some("zz".into()), ..NicSpec::user() })), "nics[0].mac"),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn microvm_needs_a_kernel_and_virtio_blk() {
        let mut s = spec();
        s.machine = MachineType::Microvm;
        assert_eq!(s.validate(), Ok(()));
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: "/d".into(),
            format: DiskFormat::Raw,
            bus: DiskBus::VirtioScsi,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        });
        assert_eq!(s.validate().unwrap_err().field, "disks[0].bus");
        s.disks.clear();
        s.kernel = None;
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: "/d".into(),
            format: DiskFormat::Raw,
            bus: DiskBus::VirtioBlk,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        });
        assert_eq!(s.validate().unwrap_err().field, "kernel");
    }

    #[test]
    fn io_limits_only_on_virtio_blk_of_q35_and_short_disk_ids() {
        let mut s: VmSpec = serde_json::from_str(
            r#"{"name":"a","cpus":1,"memory":"256MiB","kernel":{"kernel":"/k"},
                "disks":[{"path":"/d","bus":"virtio-scsi","qos":{"bps_total":1000}}]}"#,
        )
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "disks[0].qos");
        s.disks[0].bus = DiskBus::VirtioBlk;
        assert_eq!(s.validate(), Ok(()));
        s.machine = MachineType::Microvm;
        assert_eq!(s.validate().unwrap_err().field, "disks[0].qos");
        s.machine = MachineType::Q35;
        s.disks[0].id = "a".repeat(21);
        assert_eq!(s.validate().unwrap_err().field, "disks[0].id");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            serde_json::from_str::<VmSpec>(r#"{"name":"a","cpus":1,"memory":"1GiB","colour":"red"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn state_machine() {
        use VmAction::*;
        use VmState::*;
        assert!(Start.check_from(Stopped).is_ok());
        assert_eq!(Start.check_from(Running).unwrap_err(), "cannot start a VM that is running");
        assert!(Pause.check_from(Running).is_ok());
        assert!(Pause.check_from(Paused).is_err());
        assert!(Resume.check_from(Paused).is_ok());
        assert!(Resume.check_from(Running).is_err());
        assert!(Stop.check_from(Paused).is_ok());
        assert!(Stop.check_from(Stopped).is_err());
        assert!(Kill.check_from(Crashed).is_ok());
        assert!(Kill.check_from(Stopped).is_err());
        assert!(Reboot.check_from(Paused).is_err());
        for a in VM_ACTIONS {
            assert_eq!(VmAction::parse(a).unwrap().as_str(), *a);
        }
    }

    #[test]
    fn update_applies_only_given_fields() {
        let s = spec();
        let u: VmUpdate = serde_json::from_str(r#"{"cpus":4}"#).unwrap();
        let t = u.apply(&s);
        assert_eq!(t.cpus, 4);
        assert_eq!(t.memory, s.memory);
    }
}
