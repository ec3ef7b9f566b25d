//! Confined QEMU: each VM's QEMU runs as a uid of its own from its first instruction, in a group
//! all VMs' QEMUs share. Its run directory and the writable files of
//! its volumes (files oxvirt made) are made its own (mode 0600/0700), so it cannot open another
//! VM's disks or sockets; what VMs share on purpose (NBD export sockets) is the group's (0660).
//! A host-path disk (a file oxvirt did not make) is never given away: oxvirt opens it and hands
//! QEMU the descriptor ([`open_host_disk`]), and its owner and mode stay as they were.

use std::io;
use std::path::Path;

/// The group of every VM's QEMU.
pub const QEMU_GID: u32 = 1_100_000;
/// VM uids are `UID_BASE + n`.
pub const UID_BASE: u32 = 1_100_001;

pub use oxvirt_qemu::identity::{make_passable_dirs, own, reachable};

/// Lets every VM's QEMU use a socket oxvirt made below `data_dir` (root's, group QEMU_GID, 0660).
pub fn share_with_qemus(path: &Path, data_dir: &Path) -> io::Result<()> {
    own(path, 0, QEMU_GID, 0o660)?;
    reachable(path, data_dir)
}

/// The uid and gid a running process has (for guests re-adopted after a daemon restart).
pub fn ids_of(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field =
        |k: &str| -> Option<u32> { status.lines().find(|l| l.starts_with(k))?.split_whitespace().nth(1)?.parse().ok() };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Attaches a descriptor of `/dev/net/tun` to the TAP device `name` (`TUNSETIFF`), making it when
/// it does not exist; `vnet_hdr` as QEMU's queues have it, `multi_queue` for a device of several.
pub fn attach_tap(name: &str, vnet_hdr: bool, multi_queue: bool) -> io::Result<std::fs::File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
    if name.is_empty() || name.len() > 15 || name.as_bytes().contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    if vnet_hdr {
        req.flags |= IFF_VNET_HDR;
    }
    if multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is (40 bytes).
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Opens a queue of an existing TAP device (as QEMU would with `ifname=`), for a QEMU that
/// cannot open `/dev/net/tun` itself any more.
pub fn open_tap_queue(name: &str, multi_queue: bool) -> io::Result<std::fs::File> {
    attach_tap(name, true, multi_queue)
}

/// Before QEMU starts: its volumes' writable files become the VM's own. Its run directory stays
/// root's (oxvirtd binds QEMU's sockets and makes its pid file, logs and copies there),
/// passable by the QEMU group only: QEMU can put nothing there, so no link of its making is
/// ever followed by oxvirtd.
pub fn prepare(spec: &oxvirt_model::VmSpec, run_as: Option<(u32, u32)>, run_dir: &Path) -> io::Result<()> {
    let Some((uid, gid)) = run_as else { return Ok(()) };
    own(run_dir, 0, gid, 0o710)?;
    // `<data dir>/run/<id>`: the directories below the data directory are oxvirt's.
    reachable(run_dir, run_dir.parent().and_then(Path::parent).unwrap_or(run_dir))?;
    for d in spec.disks.iter().filter(|d| gives_file(d)) {
        give_disk(Path::new(&d.path), uid, gid)?;
    }
    Ok(())
}

/// Whether a disk's file becomes the VM's: a writable file of a volume (oxvirt made it).
pub fn gives_file(d: &oxvirt_model::DiskSpec) -> bool {
    d.volume.is_some() && d.nbd.is_none() && !d.readonly && !d.path.is_empty()
}

/// Whether a disk's file reaches QEMU as a descriptor opened by oxvirtd: a host path always
/// (never given away), and, for a `confined` QEMU, a volume's file it is not given (read-only:
/// it may be shared).
pub fn passes_file(d: &oxvirt_model::DiskSpec, confined: bool) -> bool {
    d.is_host_path() || (confined && d.nbd.is_none() && !d.path.is_empty() && !gives_file(d))
}

/// The kvm group (owner of /dev/kvm), if the host has one.
pub fn kvm_gid() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some("kvm")).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

/// Opens a host-path disk for QEMU as root: no link followed at its last step, a regular file
/// only (never a device), read-only unless the disk is writable. The descriptor is closed on
/// exec unless it is passed on on purpose.
pub fn open_host_disk(d: &oxvirt_model::DiskSpec) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking until it is known to be a regular file (a FIFO would block the open).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!d.readonly)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&d.path)
        .map_err(|e| io::Error::new(e.kind(), format!("disk {}: {e}", d.path)))?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("disk {} is not a regular file", d.path)));
    }
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if d.format == oxvirt_model::DiskFormat::Qcow2 {
        qcow2_backing(&f).map_err(|e| io::Error::new(e.kind(), format!("disk {}: {e}", d.path)))?;
    }
    Ok(f)
}

/// The start of a qcow2 image's header (through version 3's `header_length`) and how much of it
/// the file has; a file that is no qcow2 image is `Unsupported`.
fn qcow2_header(f: &std::fs::File) -> io::Result<([u8; 104], usize)> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; 104];
    let n = f.read_at(&mut h, 0)?;
    if n < 72 || h[..4] != 0x5146_49fb_u32.to_be_bytes() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "is not a qcow2 image"));
    }
    Ok((h, n))
}

/// The backing file a qcow2 image names (as written in it: maybe relative to the image), which
/// QEMU opens by path: the caller checks it is one that may be named. An external data file is
/// refused outright (QEMU would open it by path too, and oxvirt never makes such images).
pub fn qcow2_backing(f: &std::fs::File) -> io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let (h, n) = qcow2_header(f)?;
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
    let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap_or([0; 4]));
    // Version 3: incompatible feature bit 2 is an external data file.
    if be32(4) >= 3 && n >= 80 && be64(72) & 0b100 != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "has an external data file: use a standalone image"));
    }
    let (offset, size) = (be64(8), be32(16) as usize);
    if offset == 0 {
        return Ok(None);
    }
    if size == 0 || size > 1023 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "has a backing file name of a bad length"));
    }
    let mut name = vec![0u8; size];
    f.read_exact_at(&mut name, offset)?;
    String::from_utf8(name)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "has a backing file name that is not UTF-8"))
}

/// The format a qcow2 image records for its backing file (header extension `0xe2792aca`), if any.
pub fn qcow2_backing_format(f: &std::fs::File) -> io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let (h, n) = qcow2_header(f)?;
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    // Extensions follow the header (72 bytes in version 2, header_length in version 3), within
    // the first cluster.
    let start = if be32(&h, 4) >= 3 && n >= 104 { be32(&h, 100) as u64 } else { 72 };
    let cluster = 1u64 << be32(&h, 20).clamp(9, 21);
    let mut ext = vec![0u8; cluster.saturating_sub(start) as usize];
    let n = f.read_at(&mut ext, start)?;
    let mut at = 0usize;
    while at + 8 <= n {
        let (kind, len) = (be32(&ext, at), be32(&ext, at + 4) as usize);
        if kind == 0 {
            break;
        }
        let data = at + 8;
        if data + len > n {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "has a header extension past its first cluster"));
        }
        if kind == 0xe279_2aca {
            return String::from_utf8(ext[data..data + len].to_vec())
                .map(Some)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "has a backing format that is not UTF-8"));
        }
        at = data + len.div_ceil(8) * 8;
    }
    Ok(None)
}

/// A writable disk file becomes the VM's (0600); its directory (a pool's) must be passable.
pub fn give_disk(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    own(path, uid, gid, 0o600)
        .and_then(|_| reachable(path, path.parent().unwrap_or(path)))
        .map_err(|e| io::Error::new(e.kind(), format!("disk {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_not_followed() {
        let dir = std::env::temp_dir().join(format!("oxv-confine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("t");
        std::fs::write(&target, "x").unwrap();
        let link = dir.join("l");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(own(&link, 1, 1, 0o600).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
