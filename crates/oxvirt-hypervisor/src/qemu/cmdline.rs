//! From a VM spec to QEMU's argument vector. No shell is ever involved: each argument is one
//! vector element. Values inside QEMU's `key=value,...` option syntax are escaped (`,` doubled);
//! devices and block nodes use QEMU's JSON syntax, where no value can add an option.

pub use super::handoff::{Handoff, Layer};
use crate::{Accel, Launch, RuntimePaths};
use oxvirt_model::{DiskBus, MachineType, NicMode, VmSpec, MIB};
use serde_json::json;

/// Host facts the command line depends on.
#[derive(Debug, Clone)]
pub struct CmdlineHost {
    /// The host CPU's clock in kHz: microvm under TCG needs `tsc_early_khz`, or the guest hangs
    /// calibrating its TSC.
    pub tsc_khz: Option<u64>,
    /// The cluster's migration TLS directory (QEMU's `tls-creds-x509` layout), if migration goes
    /// over TLS: a QEMU is given its end's credentials only while it migrates (`migration.rs`),
    /// never on its command line.
    pub migration_tls: Option<std::path::PathBuf>,
}

impl CmdlineHost {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mhz = cpuinfo
            .lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok());
        CmdlineHost { tsc_khz: mhz.map(|m| (m * 1000.0).round() as u64), migration_tls: None }
    }
}

/// Empty PCIe root ports a q35 VM gets for hot-plugging disks and NICs (`hp0`...).
pub const HOTPLUG_PORTS: usize = 8;

/// The id of the serial console's character device (a socket oxvirtd binds; see console_hold.rs).
pub const CONSOLE_CHARDEV: &str = "console0";

/// The id of the TLS credentials a QEMU serves incoming migrations and NBD disk copies with
/// (peers must show a certificate of the same CA).
pub const TLS_SERVER_CREDS: &str = "oxv-tls-server";
/// The id of the TLS credentials a QEMU migrates out and connects to NBD disk copies with.
pub const TLS_CLIENT_CREDS: &str = "oxv-tls-client";

/// Escapes a value for QEMU's option syntax: a `,` is written `,,`.
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// QEMU's seccomp filter: no obsolete system calls, no scheduling or resource-limit changes, no
/// new processes or programs (`spawn`: QEMU is started without `-daemonize`, which would fork
/// after the filter is in), no change of user or group (`elevateprivileges`: QEMU starts as the
/// VM's user, with what it needs of the host's opened for it — `handoff.rs`).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny,spawn=deny";

/// The TAP device of NIC `index` of VM `id` (15 characters at most, as Linux wants).
pub fn tap_name(id: &str, index: usize) -> String {
    let hex: String = id.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect();
    format!("oxv{hex}n{index}")
}

/// Queue pairs of a TAP NIC: as asked, else one per vCPU (multi-queue virtio-net, the RSS of a
/// virtual NIC); microvm NICs have one.
pub fn nic_queues(spec: &VmSpec, n: &oxvirt_model::NicSpec) -> u32 {
    if spec.machine == MachineType::Microvm {
        1
    } else if n.queues > 0 {
        n.queues
    } else {
        spec.cpus.clamp(1, 16)
    }
}

/// The `-netdev` option string and the `-device` JSON of a NIC (at index `index` of the spec).
pub fn nic_args(
    id: &str,
    spec: &VmSpec,
    n: &oxvirt_model::NicSpec,
    index: usize,
    bus_suffix: &str,
    tap_fds: Option<&[i32]>,
) -> (String, serde_json::Value) {
    let slot = if n.id.is_empty() { index } else { n.slot() };
    let mac = n.mac.clone().unwrap_or_else(|| default_mac(id, slot));
    let nic_id = if n.id.is_empty() { format!("nic{slot}") } else { n.id.clone() };
    let mut dev = json!({ "driver": format!("virtio-net-{bus_suffix}"), "netdev": format!("net{slot}"), "mac": mac, "id": nic_id });
    if n.mode == NicMode::User {
        return (format!("user,id=net{slot},restrict=on"), dev);
    }
    let queues = nic_queues(spec, n);
    let mut netdev = match tap_fds {
        // Opened by oxvirtd (QEMU may not open /dev/net/tun): one descriptor per queue.
        Some([one]) => format!("tap,id=net{slot},fd={one}"),
        Some(fds) => {
            let list: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
            format!("tap,id=net{slot},fds={}", list.join(":"))
        }
        None => format!("tap,id=net{slot},ifname={},script=no,downscript=no", escape_opt(&tap_name(id, slot))),
    };
    if queues > 1 {
        // With descriptors their number says how many queues (QEMU refuses `queues=` with them).
        if tap_fds.is_none() {
            netdev.push_str(&format!(",queues={queues}"));
        }
        dev["mq"] = json!(true);
        dev["vectors"] = json!(2 * queues + 2);
    }
    if let Some(mtu) = n.mtu.filter(|m| *m != 1500) {
        // The guest's driver takes the MTU from the device (VIRTIO_NET_F_MTU).
        dev["host_mtu"] = json!(mtu);
    }
    if n.no_offloads {
        // Frames of at most the MTU with their checksums done, both ways.
        for feature in [
            "csum",
            "gso",
            "host_tso4",
            "host_tso6",
            "host_ecn",
            "host_ufo",
            "guest_csum",
            "guest_tso4",
            "guest_tso6",
            "guest_ecn",
            "guest_ufo",
        ] {
            dev[feature] = json!(false);
        }
    }
    (netdev, dev)
}

/// MAC address of NIC `index` of VM `id` when the spec gives none: stable per VM and NIC.
pub fn default_mac(id: &str, index: usize) -> String {
    // FNV-1a over the id and index: stable, spread, no extra dependency.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes().chain(std::iter::once(index as u8)) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (h >> 16) as u8, (h >> 8) as u8, h as u8)
}

/// A disk's device id: its own `id` when it has one (stable across hot-plug), else `disk<index>`.
pub fn disk_id(d: &oxvirt_model::DiskSpec, index: usize) -> String {
    if d.id.is_empty() {
        format!("disk{index}")
    } else {
        d.id.clone()
    }
}

/// Block node names of a disk: the file and the format (qcow2/raw) node, which QMP commands use.
pub fn file_node(id: &str) -> String {
    format!("{id}-file")
}
pub fn format_node(id: &str) -> String {
    format!("{id}-fmt")
}

/// How long QEMU's NBD client keeps retrying a lost connection (holding the guest's I/O, not
/// failing it) before it reports errors.
pub const NBD_RECONNECT_SECS: u64 = 30;

/// The block nodes of a disk, bottom first; the last is its format node (`format_node`): a file
/// and a qcow2/raw node, or one NBD client node for a volume served over NBD.
pub fn block_nodes(d: &oxvirt_model::DiskSpec, id: &str, chain: Option<&[Layer]>) -> Vec<serde_json::Value> {
    if let (None, Some(chain), oxvirt_model::DiskFormat::Qcow2) = (&d.nbd, chain, d.format) {
        // The backing chain, bottom first, each layer from the descriptor oxvirtd opened: QEMU
        // opens no file the image names.
        let mut nodes = Vec::new();
        for (k, layer) in chain.iter().enumerate().rev() {
            let name = layer_node(id, k);
            nodes.push(json!({ "driver": "file", "filename": format!("/dev/fdset/{}", layer.set), "node-name": format!("{name}-file"), "read-only": true }));
            let below = if k + 1 < chain.len() { json!(layer_node(id, k + 1)) } else { serde_json::Value::Null };
            let mut fmt = json!({ "driver": layer.format.as_str(), "file": format!("{name}-file"), "node-name": name, "read-only": true });
            if layer.format == oxvirt_model::DiskFormat::Qcow2 {
                fmt["backing"] = below;
            }
            nodes.push(fmt);
        }
        let mut own = block_nodes(d, id, None);
        if let Some(top) = own.last_mut() {
            top["backing"] = chain.first().map(|_| json!(layer_node(id, 0))).unwrap_or(serde_json::Value::Null);
        }
        nodes.extend(own);
        return nodes;
    }
    match &d.nbd {
        Some(n) => vec![json!({
            "driver": "nbd", "server": { "type": "unix", "path": n.socket }, "export": n.export,
            "node-name": format_node(id), "read-only": d.readonly, "reconnect-delay": NBD_RECONNECT_SECS,
        })],
        None => vec![
            json!({ "driver": "file", "filename": file_name(d), "node-name": file_node(id), "read-only": d.readonly }),
            json!({ "driver": d.format.as_str(), "file": file_node(id), "node-name": format_node(id), "read-only": d.readonly }),
        ],
    }
}

/// The node of layer `k` below disk `id`'s image (0: its backing file).
pub fn layer_node(id: &str, k: usize) -> String {
    format!("{id}-b{k}")
}

/// The mark of a host-path disk's fd set (found again to remove it when the disk goes).
pub fn fdset_opaque(disk_id: &str) -> String {
    format!("disk-{disk_id}")
}

/// The file QEMU opens for a disk: the descriptor oxvirt passed it (`/dev/fdset/N`) for a
/// host-path disk, else the volume's file.
pub fn file_name(d: &oxvirt_model::DiskSpec) -> String {
    match d.fd {
        Some(f) => format!("/dev/fdset/{}", f.set),
        None => d.path.clone(),
    }
}

/// Arguments of QMP `block_set_io_throttle` for a disk (found by its QOM path, which works for
/// disks defined with -blockdev) with these limits; every field is given, 0 meaning none.
pub fn throttle_args(disk_id: &str, q: &oxvirt_model::DiskQos) -> serde_json::Value {
    let burst = if q.burst_seconds == 0 { 1 } else { q.burst_seconds };
    let mut v = json!({
        "id": format!("/machine/peripheral/{disk_id}/virtio-backend"),
        "bps": q.bps_total, "bps_rd": q.bps_read, "bps_wr": q.bps_write,
        "iops": q.iops_total, "iops_rd": q.iops_read, "iops_wr": q.iops_write,
        "bps_max": q.bps_total_max, "bps_rd_max": q.bps_read_max, "bps_wr_max": q.bps_write_max,
        "iops_max": q.iops_total_max, "iops_rd_max": q.iops_read_max, "iops_wr_max": q.iops_write_max,
    });
    for (k, max) in [
        ("bps_max_length", q.bps_total_max),
        ("bps_rd_max_length", q.bps_read_max),
        ("bps_wr_max_length", q.bps_write_max),
        ("iops_max_length", q.iops_total_max),
        ("iops_rd_max_length", q.iops_read_max),
        ("iops_wr_max_length", q.iops_write_max),
    ] {
        if max > 0 {
            v[k] = json!(burst);
        }
    }
    // Always a group: a disk named in no group gets one of its own (user group names are DNS
    // labels, so `~disk0` is never one), which also takes it out of a group it was in.
    v["group"] = json!(q.group.clone().unwrap_or_else(|| format!("~{disk_id}")));
    v
}

/// A disk served over NBD writes through: a write is done only once the server has it stable,
/// so an export daemon that dies loses nothing the guest was told was written.
pub fn disk_device_extras(d: &oxvirt_model::DiskSpec, dev: &mut serde_json::Value) {
    if d.nbd.is_some() {
        dev["write-cache"] = json!("off");
    }
}

/// `-machine` options: the type, whether KSM may merge guest memory, and the memory backend when
/// the guest has one node with a backend of its own.
fn machine_opts(base: &str, spec: &VmSpec, launch: &Launch) -> String {
    let mut m = base.to_string();
    m.push_str(if spec.resources.ksm { ",mem-merge=on" } else { ",mem-merge=off" });
    if spec.memory_encryption.is_some() {
        m.push_str(",confidential-guest-support=sev0");
    }
    if launch.memory_file.is_some() {
        m.push_str(&format!(",memory-backend={}", default_ram_id(spec)));
        return m;
    }
    let backends = memory_backends(spec, launch);
    if backends.len() == 1 && backends[0].1.is_none() {
        m.push_str(",memory-backend=ram0");
    }
    m
}

/// Explicit memory backends (`-object`) with their guest NUMA nodes (`-numa`): for huge pages,
/// binding memory to host nodes, or guest NUMA nodes. None when plain `-m` does.
pub fn memory_backends(spec: &VmSpec, launch: &Launch) -> Vec<(String, Option<String>)> {
    let r = &spec.resources;
    if let Some(f) = launch.memory_file {
        let share = if f.shared { "on" } else { "off" };
        let merge = if r.ksm { "on" } else { "off" };
        // Named as QEMU names the memory it makes for `-m` alone: a guest saved with that memory
        // loads into this one (a migration stream names its memory blocks).
        return vec![(
            format!(
                "memory-backend-file,id={},x-use-canonical-path-for-ramblock-id=off,size={},mem-path=/proc/self/fd/{},share={share},merge={merge}",
                default_ram_id(spec),
                spec.memory.0,
                f.fd
            ),
            None,
        )];
    }
    let placement = r.placement.clone().unwrap_or_default();
    let backend = |id: &str, size: u64, host_nodes: Option<&str>| {
        let mut o = if r.hugepages {
            format!("memory-backend-memfd,id={id},size={size},hugetlb=on,hugetlbsize=2097152,prealloc=on")
        } else {
            format!("memory-backend-ram,id={id},size={size}")
        };
        if let Some(n) = host_nodes {
            o.push_str(&format!(",host-nodes={},policy=bind", n.replace(',', ";")));
        }
        o.push_str(if r.ksm { ",merge=on" } else { ",merge=off" });
        o
    };
    if !placement.guest_nodes.is_empty() {
        return placement
            .guest_nodes
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let last = g.first_vcpu + g.vcpus.max(1) - 1;
                (
                    backend(&format!("ram{i}"), g.memory, Some(&g.host_node.to_string())),
                    Some(format!("node,nodeid={i},cpus={}-{last},memdev=ram{i}", g.first_vcpu)),
                )
            })
            .collect();
    }
    if r.hugepages || placement.mems.is_some() {
        return vec![(backend("ram0", spec.memory.0, placement.mems.as_deref()), None)];
    }
    vec![]
}

/// The id QEMU gives the memory it makes for `-m` on this machine type (its memory block's name).
fn default_ram_id(spec: &VmSpec) -> &'static str {
    match spec.machine {
        MachineType::Q35 => "pc.ram",
        MachineType::Microvm => "microvm.ram",
    }
}

/// Whether QEMU should start paused (`-S`) so that settings applied over QMP (I/O limits) hold
/// from the guest's first instruction.
pub fn needs_setup_before_run(spec: &VmSpec) -> bool {
    spec.disks.iter().any(|d| d.qos.as_ref().is_some_and(|q| !q.is_unlimited()))
}

/// The full argument vector (without the program) for one VM.
pub fn build(
    id: &str,
    spec: &VmSpec,
    launch: &Launch,
    paths: &RuntimePaths,
    accel: Accel,
    host: &CmdlineHost,
    h: &Handoff,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let microvm = spec.machine == MachineType::Microvm;
    let bus_suffix = if microvm { "device" } else { "pci" };

    push(&["-name", &format!("guest={},debug-threads=on", escape_opt(&spec.name))]);
    push(&["-uuid", id]);
    match spec.machine {
        MachineType::Q35 => push(&["-machine", &machine_opts("q35", spec, launch)]),
        MachineType::Microvm => push(&["-machine", &machine_opts("microvm,rtc=on", spec, launch)]),
    }
    push(&["-accel", accel.as_str()]);
    push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
    push(&["-smp", &spec.cpus.to_string()]);
    push(&["-m", &format!("{}M", spec.memory.0 / MIB)]);
    for (object, numa) in memory_backends(spec, launch) {
        push(&["-object", &object]);
        if let Some(n) = numa {
            push(&["-numa", &n]);
        }
    }
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    if let Some(uri) = &launch.incoming {
        // Waits for the migration stream; runs the guest when it is complete.
        push(&["-incoming", uri]);
    }
    for (fd, set, opaque) in &h.add_fds {
        push(&["-add-fd", &format!("fd={fd},set={set},opaque={}", escape_opt(opaque))]);
    }
    // seccomp: no obsolete system calls, no changes to scheduling priorities or resource limits.
    push(&["-sandbox", SANDBOX]);
    if let Some(enc) = spec.memory_encryption {
        let obj = match enc {
            oxvirt_model::MemoryEncryption::Sev => "sev-guest,id=sev0,cbitpos=47,reduced-phys-bits=1",
            oxvirt_model::MemoryEncryption::SevSnp => "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1",
        };
        push(&["-object", obj]);
    }
    if needs_setup_before_run(spec) || launch.paused {
        push(&["-S"]);
    }

    // Sockets and the console log: passed open (oxvirtd bound and opened them), else by path.
    let socket = |fd: Option<i32>, path: std::path::PathBuf| match fd {
        Some(fd) => format!("fd={fd}"),
        None => format!("path={}", escape_opt(&path.to_string_lossy())),
    };
    push(&["-chardev", &format!("socket,id=qmp,{},server=on,wait=off", socket(h.qmp, paths.qmp_socket()))]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    let console = socket(h.console, paths.console_socket());
    let log = match h.console_log {
        Some(set) => format!("/dev/fdset/{set}"),
        None => escape_opt(&paths.console_log().to_string_lossy()),
    };
    push(&[
        "-chardev",
        &format!("socket,id={CONSOLE_CHARDEV},{console},server=on,wait=off,logfile={log},logappend=on"),
    ]);
    push(&["-serial", &format!("chardev:{CONSOLE_CHARDEV}")]);

    if let Some(k) = &spec.kernel {
        let copy = |c: &Option<std::path::PathBuf>| c.as_ref().map(|p| p.to_string_lossy().into_owned());
        push(&["-kernel", &copy(&h.kernel).unwrap_or_else(|| k.kernel.clone())]);
        if let Some(initrd) = copy(&h.initrd).or_else(|| k.initrd.clone()) {
            push(&["-initrd", &initrd]);
        }
        let mut cmdline = k.cmdline.clone();
        if microvm && accel == Accel::Tcg && !cmdline.contains("tsc_early_khz=") {
            if let Some(khz) = host.tsc_khz {
                cmdline = format!("{cmdline} tsc_early_khz={khz}").trim().to_string();
            }
        }
        if !cmdline.is_empty() {
            push(&["-append", &cmdline]);
        }
    }

    if !microvm {
        for i in 0..HOTPLUG_PORTS {
            let n = i + 1;
            push(&["-device", &format!("pcie-root-port,id=hp{i},chassis={n},slot={n},bus=pcie.0")]);
        }
    }

    let mut scsi_added = false;
    for (i, d) in spec.disks.iter().enumerate() {
        let id = disk_id(d, i);
        if let Some(f) = d.fd {
            push(&["-add-fd", &format!("fd={},set={},opaque={}", f.fd, f.set, escape_opt(&fdset_opaque(&id)))]);
        }
        for node in block_nodes(d, &id, h.chains.get(&id).map(Vec::as_slice)) {
            push(&["-blockdev", &node.to_string()]);
        }
        let mut dev = match d.bus {
            DiskBus::VirtioBlk => {
                json!({ "driver": format!("virtio-blk-{bus_suffix}"), "drive": format_node(&id), "id": id })
            }
            DiskBus::VirtioScsi => {
                if !scsi_added {
                    push(&["-device", &json!({ "driver": "virtio-scsi-pci", "id": "scsi0" }).to_string()]);
                    scsi_added = true;
                }
                json!({ "driver": "scsi-hd", "bus": "scsi0.0", "drive": format_node(&id), "id": id })
            }
        };
        if spec.kernel.is_none() && i == 0 {
            dev["bootindex"] = json!(0);
        }
        disk_device_extras(d, &mut dev);
        push(&["-device", &dev.to_string()]);
    }

    for (i, n) in spec.nics.iter().enumerate() {
        let (netdev, dev) = nic_args(id, spec, n, i, bus_suffix, h.taps.get(&i).map(Vec::as_slice));
        push(&["-netdev", &netdev]);
        push(&["-device", &dev.to_string()]);
    }

    if spec.rng {
        push(&["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        push(&["-device", &format!("virtio-rng-{bus_suffix},rng=rng0,id=rng0dev")]);
    }
    if spec.balloon {
        push(&["-device", &format!("virtio-balloon-{bus_suffix},id=balloon0")]);
    }
    if microvm {
        // The guest agent's port: a clone restored from a template is told who it is there.
        let agent = socket(h.agent, paths.agent_socket());
        push(&["-chardev", &format!("socket,id=agent0,{agent},server=on,wait=off")]);
        push(&["-device", "virtio-serial-device,id=vser0"]);
        push(&[
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=agent0,name={}", oxvirt_guest_agent::PORT_NAME),
        ]);
    }
    if !microvm {
        // Lets the guest report a kernel panic; QEMU then pauses it for inspection.
        push(&["-device", "pvpanic"]);
    }
    push(&["-action", "panic=pause"]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxvirt_model::{ByteSize, DiskFormat, DiskSpec, KernelBoot, NicMode, NicSpec};

    /// The argv of a QEMU that opens its own files (nothing handed to it).
    fn plain(id: &str, s: &VmSpec, l: &Launch, p: &RuntimePaths, accel: Accel, h: &CmdlineHost) -> Vec<String> {
        build(id, s, l, p, accel, h, &Handoff::default())
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "web".into(),
            host: None,
            project: None,
            affinity: None,
            anti_affinity: None,
            cpus: 2,
            memory: ByteSize::mib(512),
            machine: MachineType::Q35,
            kernel: Some(KernelBoot {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
            }),
            disks: vec![],
            nics: vec![],
            restart_policy: Default::default(),
            accel: Default::default(),
            rng: true,
            balloon: true,
            memory_encryption: None,
            resources: Default::default(),
            template: None,
        }
    }

    fn host() -> CmdlineHost {
        CmdlineHost { tsc_khz: Some(2_600_000), migration_tls: None }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn basic_q35_kernel_boot() {
        let a = plain("id-1", &spec(), &Launch::default(), &RuntimePaths::new("/run/x"), Accel::Tcg, &host());
        assert_eq!(after(&a, "-machine"), ["q35,mem-merge=on"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-m"), ["512M"]);
        assert_eq!(after(&a, "-kernel"), ["/k"]);
        assert_eq!(after(&a, "-initrd"), ["/i"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0"]);
        assert!(!a.contains(&"-daemonize".to_string()), "spawn is denied: QEMU does not fork");
        assert_eq!(after(&a, "-sandbox"), ["on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny,spawn=deny"]);
        assert!(after(&a, "-device").contains(&"virtio-balloon-pci,id=balloon0"));
        assert!(after(&a, "-device").contains(&"virtio-rng-pci,rng=rng0,id=rng0dev"));
    }

    #[test]
    fn microvm_gets_mmio_devices_and_tsc_khz_under_tcg() {
        let mut s = spec();
        s.machine = MachineType::Microvm;
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: "/d.img".into(),
            format: DiskFormat::Raw,
            bus: DiskBus::VirtioBlk,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        });
        let a = plain("id", &s, &Launch::default(), &RuntimePaths::new("/r"), Accel::Tcg, &host());
        assert_eq!(after(&a, "-append"), ["console=ttyS0 tsc_early_khz=2600000"]);
        assert!(after(&a, "-device").iter().any(|d| d.contains("virtio-blk-device")));
        // The guest agent's port, on its own socket.
        assert!(after(&a, "-chardev").contains(&"socket,id=agent0,path=/r/agent.sock,server=on,wait=off"));
        assert!(after(&a, "-device").contains(&"virtserialport,bus=vser0.0,chardev=agent0,name=org.oxvirt.agent"));
        let q35 = plain("id", &spec(), &Launch::default(), &RuntimePaths::new("/r"), Accel::Tcg, &host());
        assert!(!q35.iter().any(|x| x.contains("agent0")), "q35 VMs have no agent port yet");
        assert!(!after(&a, "-device").contains(&"pvpanic"));
        let kvm = plain("id", &s, &Launch::default(), &RuntimePaths::new("/r"), Accel::Kvm, &host());
        assert_eq!(after(&kvm, "-append"), ["console=ttyS0"]);
        assert_eq!(after(&kvm, "-cpu"), ["host"]);
    }

    #[test]
    fn disk_boot_sets_bootindex_and_scsi_controller() {
        let mut s = spec();
        s.kernel = None;
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: "/a.qcow2".into(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::VirtioBlk,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        });
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: "/b.raw".into(),
            format: DiskFormat::Raw,
            bus: DiskBus::VirtioScsi,
            readonly: true,
            qos: None,
            nbd: None,
            fd: None,
        });
        let a = plain("id", &s, &Launch::default(), &RuntimePaths::new("/r"), Accel::Tcg, &host());
        let devs: Vec<serde_json::Value> = after(&a, "-device")
            .iter()
            .filter(|d| d.starts_with('{'))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(devs[0]["driver"], "virtio-blk-pci");
        assert_eq!(devs[0]["bootindex"], 0);
        assert_eq!(devs[1]["driver"], "virtio-scsi-pci");
        assert_eq!(devs[2]["driver"], "scsi-hd");
        let nodes: Vec<serde_json::Value> =
            after(&a, "-blockdev").iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(nodes[3]["driver"], "raw");
        assert_eq!(nodes[3]["read-only"], true);
    }

    /// Splits a QEMU option string the way QEMU does (`,,` is a literal comma).
    fn qemu_split(opt: &str) -> Vec<String> {
        let mut parts = vec![String::new()];
        let mut chars = opt.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    parts.last_mut().unwrap().push(',');
                } else {
                    parts.push(String::new());
                }
            } else {
                parts.last_mut().unwrap().push(c);
            }
        }
        parts
    }

    #[test]
    fn hostile_paths_never_add_options() {
        let evil = "/tmp/a,b=c,server=off\"'x y/../=;$(rm)";
        let mut s = spec();
        s.kernel = Some(KernelBoot { kernel: evil.into(), initrd: Some(evil.into()), cmdline: "a,b=c".into() });
        s.disks.push(DiskSpec {
            id: String::new(),
            volume: None,
            path: evil.into(),
            format: DiskFormat::Raw,
            bus: DiskBus::VirtioBlk,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        });
        s.nics.push(NicSpec::user());
        let a = plain("id", &s, &Launch::default(), &RuntimePaths::new(format!("{evil}/run")), Accel::Tcg, &host());
        // Every chardev keeps exactly its own keys, and the path comes back whole.
        for c in after(&a, "-chardev") {
            let parts = qemu_split(c);
            let keys: Vec<&str> = parts.iter().skip(1).map(|p| p.split('=').next().unwrap()).collect();
            assert!(
                keys.iter().all(|k| ["id", "path", "server", "wait", "logfile", "logappend"].contains(k)),
                "{keys:?}"
            );
            let path = parts.iter().find(|p| p.starts_with("path=")).unwrap();
            assert!(path.starts_with(&format!("path={evil}/run/")), "{path}");
        }
        assert_eq!(after(&a, "-kernel"), [evil]);
        let file: serde_json::Value = serde_json::from_str(after(&a, "-blockdev")[0]).unwrap();
        assert_eq!(file["filename"], evil);
        // No argument that is not one of ours appears.
        let flags: Vec<&String> = a.iter().filter(|x| x.starts_with('-') && !x.starts_with("-/")).collect();
        for f in flags {
            assert!(
                [
                    "-name",
                    "-uuid",
                    "-machine",
                    "-accel",
                    "-cpu",
                    "-smp",
                    "-m",
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "-chardev",
                    "-mon",
                    "-serial",
                    "-kernel",
                    "-initrd",
                    "-append",
                    "-blockdev",
                    "-device",
                    "-netdev",
                    "-object",
                    "-action",
                    "-sandbox",
                    "-incoming"
                ]
                .contains(&f.as_str()),
                "unexpected flag {f}"
            );
        }
    }

    #[test]
    fn a_qemu_handed_its_files_opens_nothing_by_name() {
        let mut s = spec();
        s.kernel = Some(KernelBoot {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd".into()),
            cmdline: String::new(),
        });
        s.disks = vec![DiskSpec {
            id: String::new(),
            volume: Some("pool/top".into()),
            path: "/pool/top.qcow2".into(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::VirtioBlk,
            readonly: false,
            qos: None,
            nbd: None,
            fd: None,
        }];
        s.nics = vec![NicSpec { mode: NicMode::Bridged, bridge: Some("br0".into()), queues: 2, ..NicSpec::user() }];
        let h = Handoff {
            qmp: Some(10),
            console: Some(11),
            console_log: Some(1000),
            taps: [(0, vec![12, 13])].into(),
            chains: [(
                "disk0".to_string(),
                vec![Layer { set: 1001, format: DiskFormat::Qcow2 }, Layer { set: 1002, format: DiskFormat::Raw }],
            )]
            .into(),
            add_fds: vec![
                (14, 1000, "console-log".into()),
                (15, 1001, "disk-disk0".into()),
                (16, 1002, "disk-disk0".into()),
            ],
            kernel: Some("/run/x/kernel".into()),
            initrd: Some("/run/x/initrd".into()),
            ..Default::default()
        };
        let tls = CmdlineHost { migration_tls: Some("/etc/oxvirt/tls".into()), ..host() };
        let l = Launch { run_as: Some((1_100_001, 1_100_000)), ..Default::default() };
        let a = build("c7726470", &s, &l, &RuntimePaths::new("/run/x"), Accel::Tcg, &tls, &h);
        assert!(!a.iter().any(|x| x == "-runas" || x == "-pidfile"), "{a:?}");
        assert_eq!(after(&a, "-sandbox"), [SANDBOX]);
        assert!(SANDBOX.contains("elevateprivileges=deny"));
        assert_eq!(
            after(&a, "-chardev"),
            [
                "socket,id=qmp,fd=10,server=on,wait=off",
                "socket,id=console0,fd=11,server=on,wait=off,logfile=/dev/fdset/1000,logappend=on"
            ]
        );
        assert_eq!(
            after(&a, "-add-fd")[..3],
            [
                "fd=14,set=1000,opaque=console-log",
                "fd=15,set=1001,opaque=disk-disk0",
                "fd=16,set=1002,opaque=disk-disk0"
            ]
        );
        assert_eq!((after(&a, "-kernel"), after(&a, "-initrd")), (vec!["/run/x/kernel"], vec!["/run/x/initrd"]));
        assert!(!a.iter().any(|x| x.contains("tls")), "no credentials from the start: {a:?}");
        assert_eq!(after(&a, "-netdev"), ["tap,id=net0,fds=12:13"]);
        // The chain bottom first; each layer read-only from its fd set; the top names its backing.
        let nodes: Vec<serde_json::Value> =
            after(&a, "-blockdev").iter().map(|n| serde_json::from_str(n).unwrap()).collect();
        let names: Vec<&str> = nodes.iter().map(|n| n["node-name"].as_str().unwrap()).collect();
        assert_eq!(names, ["disk0-b1-file", "disk0-b1", "disk0-b0-file", "disk0-b0", "disk0-file", "disk0-fmt"]);
        assert_eq!(
            (nodes[0]["filename"].as_str(), nodes[0]["read-only"].as_bool()),
            (Some("/dev/fdset/1002"), Some(true))
        );
        assert_eq!((nodes[1]["driver"].as_str(), nodes[1].get("backing")), (Some("raw"), None));
        assert_eq!((nodes[3]["driver"].as_str(), nodes[3]["backing"].as_str()), (Some("qcow2"), Some("disk0-b1")));
        assert_eq!(nodes[5]["backing"], "disk0-b0");
        // A qcow2 disk with no layers below opens none (the header's name is not followed).
        let h = Handoff { chains: [("disk0".to_string(), vec![])].into(), ..Default::default() };
        let a = build("c7726470", &s, &l, &RuntimePaths::new("/run/x"), Accel::Tcg, &host(), &h);
        let top: serde_json::Value = serde_json::from_str(after(&a, "-blockdev")[1]).unwrap();
        assert!(top["backing"].is_null() && top.get("backing").is_some(), "{top}");
    }

    #[test]
    fn no_qemu_holds_migration_credentials_from_its_start() {
        let s = spec();
        let l = Launch { run_as: Some((1000, 1000)), incoming: Some("defer".into()), ..Default::default() };
        let tls = CmdlineHost { migration_tls: Some("/etc/ox,tls".into()), ..host() };
        let a = plain("c7726470", &s, &l, &RuntimePaths::new("/run/x"), Accel::Tcg, &tls);
        assert!(!a.iter().any(|x| x.contains("tls-creds") || x.contains("/etc/ox")), "{a:?}");
    }

    #[test]
    fn huge_pages_numa_binding_and_guest_nodes_get_memory_backends() {
        let mut s = spec();
        s.resources.hugepages = true;
        let a = plain("c7726470", &s, &Launch::default(), &RuntimePaths::new("/run/x"), Accel::Tcg, &host());
        assert_eq!(after(&a, "-machine"), ["q35,mem-merge=on,memory-backend=ram0"]);
        assert!(
            after(&a, "-object")
                .iter()
                .any(|o| o.starts_with("memory-backend-memfd,id=ram0,size=536870912,hugetlb=on")),
            "{a:?}"
        );
        s.resources.hugepages = false;
        s.resources.ksm = false;
        s.resources.placement = Some(oxvirt_model::Placement {
            cpus: Some("0-7".into()),
            mems: Some("0,1".into()),
            guest_nodes: vec![
                oxvirt_model::GuestNode { first_vcpu: 0, vcpus: 1, memory: 256 << 20, host_node: 0 },
                oxvirt_model::GuestNode { first_vcpu: 1, vcpus: 1, memory: 256 << 20, host_node: 1 },
            ],
            reason: String::new(),
        });
        let a = plain("c7726470", &s, &Launch::default(), &RuntimePaths::new("/run/x"), Accel::Tcg, &host());
        assert_eq!(after(&a, "-machine"), ["q35,mem-merge=off"]);
        assert_eq!(after(&a, "-numa"), ["node,nodeid=0,cpus=0-0,memdev=ram0", "node,nodeid=1,cpus=1-1,memdev=ram1"]);
        assert!(
            after(&a, "-object")
                .contains(&"memory-backend-ram,id=ram1,size=268435456,host-nodes=1,policy=bind,merge=off"),
            "{a:?}"
        );
    }

    #[test]
    fn bridged_nics_get_a_tap_and_queues_per_vcpu() {
        let mut s = spec();
        s.nics.push(NicSpec { mode: NicMode::Bridged, bridge: Some("br0".into()), ..NicSpec::user() });
        let a = plain("c7726470-0171-4767", &s, &Launch::default(), &RuntimePaths::new("/r"), Accel::Tcg, &host());
        assert_eq!(after(&a, "-netdev"), ["tap,id=net0,ifname=oxvc7726470n0,script=no,downscript=no,queues=2"]);
        let dev: serde_json::Value =
            serde_json::from_str(after(&a, "-device").iter().find(|d| d.contains("virtio-net")).unwrap()).unwrap();
        assert_eq!((dev["mq"].clone(), dev["vectors"].clone()), (json!(true), json!(6)));
        assert!(tap_name("c7726470-0171-4767-b8c1-7ef33580d107", 7).len() <= 15);
    }

    #[test]
    fn macs_are_stable_and_distinct() {
        assert_eq!(default_mac("a", 0), default_mac("a", 0));
        assert_ne!(default_mac("a", 0), default_mac("a", 1));
        assert_ne!(default_mac("a", 0), default_mac("b", 0));
        assert!(oxvirt_model::validate_mac("m", &default_mac("x", 3)).is_ok());
    }
}
