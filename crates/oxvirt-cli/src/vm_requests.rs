//! What `oxvirt vm create`, `vm attach`, `vm qos` and `vm migrate` send, built from their flags:
//! the model's types, an argument that does not parse refused with its flag.

use crate::args::{size, word};
use crate::{absolute, CreateArgs, QosArgs};
use oxvirt_client::ClientError;
use oxvirt_model::{DiskFormat, DiskQos, DiskSpec, KernelBoot, NicMode, NicSpec, VmSpec};
use std::path::Path;

/// `--disk PATH` or `--disk PATH:FORMAT`: the format named, else qcow2 for a `.qcow2` file, raw
/// for any other.
fn image(disk: &str) -> (&str, DiskFormat) {
    match disk.rsplit_once(':') {
        Some((path, "qcow2")) => (path, DiskFormat::Qcow2),
        Some((path, "raw")) => (path, DiskFormat::Raw),
        _ => (disk, if disk.ends_with(".qcow2") { DiskFormat::Qcow2 } else { DiskFormat::Raw }),
    }
}

pub fn create_spec(a: &CreateArgs) -> Result<VmSpec, ClientError> {
    let mut spec = VmSpec::new(&a.name, a.cpus, size("--memory", &a.memory)?);
    spec.machine = word("--machine", &a.machine)?;
    spec.restart_policy = word("--restart-policy", &a.restart_policy)?;
    spec.accel = word("--accel", &a.accel)?;
    if let Some(k) = &a.kernel {
        let initrd = a.initrd.as_deref().map(absolute).transpose()?;
        spec.kernel = Some(KernelBoot { kernel: absolute(k)?, initrd, cmdline: a.cmdline.clone() });
    }
    for d in &a.disks {
        let (path, format) = image(d);
        spec.disks.push(DiskSpec { path: absolute(Path::new(path))?, format, ..DiskSpec::default() });
    }
    for v in &a.volumes {
        spec.disks.push(DiskSpec { volume: Some(v.clone()), ..DiskSpec::default() });
    }
    spec.nics.extend((0..a.nics).map(|_| NicSpec::user()));
    for b in &a.bridges {
        spec.nics.push(NicSpec { mode: NicMode::Bridged, bridge: Some(b.clone()), ..NicSpec::user() });
    }
    for n in &a.networks {
        spec.nics.push(NicSpec { mode: NicMode::Network, network: Some(n.clone()), ..NicSpec::user() });
    }
    spec.host = a.host.clone();
    spec.affinity = a.affinity.clone();
    spec.anti_affinity = a.anti_affinity.clone();
    // The template's shape replaces the rest, on the server.
    spec.template = a.template.clone();
    Ok(spec)
}

/// `vm attach`: a volume (`--volume POOL/NAME`) or a file (`--path FILE`, qcow2 when it ends so,
/// else raw).
pub fn attached_disk(
    volume: Option<String>,
    path: Option<&Path>,
    bus: &str,
    readonly: bool,
) -> Result<DiskSpec, ClientError> {
    let disk = DiskSpec { bus: word("--bus", bus)?, readonly, ..DiskSpec::default() };
    match (volume, path) {
        (Some(v), _) => Ok(DiskSpec { volume: Some(v), ..disk }),
        (None, Some(p)) => {
            let format = if p.extension().is_some_and(|e| e == "qcow2") { DiskFormat::Qcow2 } else { DiskFormat::Raw };
            Ok(DiskSpec { path: absolute(p)?, format, ..disk })
        }
        (None, None) => Err(ClientError::Usage("give --volume POOL/NAME or --path FILE".into())),
    }
}

/// `vm qos`: bytes/s as sizes (`10MiB`), operations/s as numbers; 0 is no limit.
pub fn disk_qos(a: &QosArgs) -> Result<DiskQos, ClientError> {
    Ok(DiskQos {
        bps_total: size("--bps-total", &a.bps_total)?.0,
        bps_read: size("--bps-read", &a.bps_read)?.0,
        bps_write: size("--bps-write", &a.bps_write)?.0,
        iops_total: a.iops_total,
        iops_read: a.iops_read,
        iops_write: a.iops_write,
        group: a.group.clone(),
        ..DiskQos::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::usage;
    use clap::Parser;

    fn vm(args: &[&str]) -> Result<VmSpec, ClientError> {
        let cli = crate::Cli::try_parse_from([&["oxvirt", "vm", "create"], args].concat()).unwrap();
        match cli.command {
            crate::Command::Vm(crate::VmCmd::Create(a)) => create_spec(&a),
            _ => unreachable!("vm create"),
        }
    }

    #[test]
    fn disk_formats_come_from_the_suffix_or_the_name() {
        assert_eq!(image("/a/b.qcow2"), ("/a/b.qcow2", DiskFormat::Qcow2));
        assert_eq!(image("/a/b.img"), ("/a/b.img", DiskFormat::Raw));
        assert_eq!(image("/a/b.img:qcow2"), ("/a/b.img", DiskFormat::Qcow2));
        assert_eq!(image("/a/b.qcow2:raw"), ("/a/b.qcow2", DiskFormat::Raw));
        assert_eq!(image("/a/b:c"), ("/a/b:c", DiskFormat::Raw));
    }

    #[test]
    fn a_create_is_the_spec_its_flags_say() {
        let s = vm(&["web", "--memory", "1GiB", "--disk", "/i/root.qcow2", "--volume", "p/data", "--nic"]).unwrap();
        let mut want = VmSpec::new("web", 1, oxvirt_model::ByteSize(1 << 30));
        want.disks = vec![
            DiskSpec { path: "/i/root.qcow2".into(), ..DiskSpec::default() },
            DiskSpec { volume: Some("p/data".into()), ..DiskSpec::default() },
        ];
        want.nics = vec![NicSpec::user()];
        assert_eq!(s, want);
        let s = vm(&["n", "--network", "lan", "--bridge", "br0", "--machine", "microvm", "--anti-affinity", "db"]);
        let s = s.unwrap();
        assert_eq!(s.nics.iter().map(|n| n.mode).collect::<Vec<_>>(), [NicMode::Bridged, NicMode::Network]);
        assert_eq!((s.machine.as_str(), s.anti_affinity.as_deref()), ("microvm", Some("db")));
        let k = vm(&["k", "--kernel", "/b/vmlinuz", "--initrd", "/b/initrd", "--cmdline", "quiet"]).unwrap();
        let k = k.kernel.unwrap();
        assert_eq!(
            (k.kernel.as_str(), k.initrd.as_deref(), k.cmdline.as_str()),
            ("/b/vmlinuz", Some("/b/initrd"), "quiet")
        );
    }

    #[test]
    fn a_create_refuses_what_does_not_parse_by_its_flag() {
        assert!(usage(vm(&["x", "--memory", "512XB"])).starts_with("--memory \"512XB\": unknown unit \"XB\""));
        assert!(usage(vm(&["x", "--machine", "pc"])).starts_with("--machine \"pc\": unknown variant `pc`"));
        assert!(usage(vm(&["x", "--restart-policy", "sometimes"])).starts_with("--restart-policy \"sometimes\""));
        assert!(usage(vm(&["x", "--accel", "hvf"])).starts_with("--accel \"hvf\""));
    }

    #[test]
    fn an_attached_disk_is_a_volume_or_a_file() {
        let d = attached_disk(Some("p/v".into()), None, "virtio-scsi", true).unwrap();
        assert_eq!((d.volume.as_deref(), d.bus, d.readonly), (Some("p/v"), oxvirt_model::DiskBus::VirtioScsi, true));
        let d = attached_disk(None, Some(Path::new("/d/x.img")), "virtio-blk", false).unwrap();
        assert_eq!((d.path.as_str(), d.format), ("/d/x.img", DiskFormat::Raw));
        assert!(usage(attached_disk(None, None, "virtio-blk", false)).contains("--volume"));
        assert!(usage(attached_disk(Some("p/v".into()), None, "ide", false)).starts_with("--bus \"ide\""));
    }

    #[test]
    fn qos_sizes_are_bytes_per_second() {
        let cli = crate::Cli::try_parse_from(["oxvirt", "vm", "qos", "a", "disk1", "--bps-read", "10MiB"]).unwrap();
        let crate::Command::Vm(crate::VmCmd::Qos(a)) = cli.command else { unreachable!("vm qos") };
        let q = disk_qos(&a).unwrap();
        assert_eq!((q.bps_read, q.bps_total, q.iops_total, q.group), (10 << 20, 0, 0, None));
        let bad = QosArgs { bps_write: "1.5.3M".into(), ..a };
        assert!(usage(disk_qos(&bad)).starts_with("--bps-write \"1.5.3M\""));
    }
}
