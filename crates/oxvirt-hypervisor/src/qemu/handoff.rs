//! What oxvirtd opens for a QEMU before it starts. QEMU runs as the VM's own user from its first
//! instruction (its seccomp filter denies every change of privileges), so it opens nothing of
//! the host's by name that any user could not: its QMP and console sockets are bound here and
//! passed listening, its console log is passed open, its TAP devices' queues are opened here,
//! disk files it is not given and every layer of a qcow2 backing chain are passed as
//! descriptors (`-add-fd`), and a kernel or initrd only root may read is read from a copy made
//! its own in its run directory (root's, where QEMU can put nothing), removed once read — as are
//! the migration TLS credentials it is given while it migrates (`migration.rs`).

use super::confine;
use crate::{HvError, Launch, RuntimePaths};
use oxvirt_model::{DiskFormat, VmSpec};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The deepest backing chain oxvirt opens (QEMU's own limit is far higher; images this deep are
/// a mistake or an attack).
pub const MAX_CHAIN: usize = 16;
/// Fd sets of backing layers and the console log are numbered from here (a disk's own set is
/// its index + 1).
const FIRST_SET: u32 = 1000;

/// One layer below a qcow2 image, passed as fd set `set`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub set: u32,
    pub format: DiskFormat,
}

/// Descriptors and copies a QEMU gets; empty (the default) means QEMU opens its files itself
/// (the raw baselines of the benchmark).
#[derive(Debug, Default)]
pub struct Handoff {
    /// Listening QMP socket.
    pub qmp: Option<RawFd>,
    /// Listening serial console socket.
    pub console: Option<RawFd>,
    /// Listening guest agent socket (microvm).
    pub agent: Option<RawFd>,
    /// The console log's fd set.
    pub console_log: Option<u32>,
    /// TAP queues by NIC index.
    pub taps: BTreeMap<usize, Vec<RawFd>>,
    /// Backing chains by disk id, the top's backing first.
    pub chains: BTreeMap<String, Vec<Layer>>,
    /// `-add-fd` entries: descriptor, set, opaque mark.
    pub add_fds: Vec<(RawFd, u32, String)>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// What the numbers above are: open until QEMU has its own copies.
    pub(crate) held: Vec<OwnedFd>,
}

impl Handoff {
    /// The descriptors QEMU inherits.
    pub fn inherited(&self) -> Vec<RawFd> {
        self.held.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn hold(&mut self, fd: impl Into<OwnedFd>) -> RawFd {
        let fd: OwnedFd = fd.into();
        let raw = fd.as_raw_fd();
        self.held.push(fd);
        raw
    }

    fn next_set(&self) -> u32 {
        FIRST_SET + self.add_fds.iter().filter(|(_, s, _)| *s >= FIRST_SET).count() as u32
    }

    /// Passes `file` in a new fd set marked `opaque`; its number.
    fn pass(&mut self, file: File, opaque: &str) -> u32 {
        let set = self.next_set();
        let fd = self.hold(file);
        self.add_fds.push((fd, set, opaque.to_string()));
        set
    }
}

/// Everything VM `id`'s QEMU needs opened or copied, with `spec`'s disks already resolved (a
/// host-path disk's `fd` set by the caller); `launch.run_as`: the user QEMU runs as (copies are
/// made its own).
pub fn prepare(id: &str, spec: &VmSpec, launch: &Launch, paths: &RuntimePaths) -> Result<Handoff, HvError> {
    let mut h = Handoff::default();
    h.qmp = Some(listen(&mut h, &paths.qmp_socket())?);
    h.console = Some(listen(&mut h, &paths.console_socket())?);
    if spec.machine == oxvirt_model::MachineType::Microvm {
        h.agent = Some(listen(&mut h, &paths.agent_socket())?);
    }
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(paths.console_log())
        .map_err(|e| HvError::io(format!("open {}", paths.console_log().display()), e))?;
    h.console_log = Some(h.pass(log, "console-log"));
    for (i, n) in spec.nics.iter().enumerate().filter(|(_, n)| n.mode != oxvirt_model::NicMode::User) {
        let slot = if n.id.is_empty() { i } else { n.slot() };
        let tap = super::cmdline::tap_name(id, slot);
        let queues = super::cmdline::nic_queues(spec, n);
        let mut fds = Vec::new();
        for _ in 0..queues {
            let q = confine::open_tap_queue(&tap, queues > 1).map_err(|e| HvError::io(format!("open TAP {tap}"), e))?;
            fds.push(h.hold(q));
        }
        h.taps.insert(i, fds);
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let id = super::cmdline::disk_id(d, i);
        if d.nbd.is_some() || d.path.is_empty() || d.format != DiskFormat::Qcow2 {
            continue;
        }
        let chain = open_chain(Path::new(&d.path)).map_err(|e| HvError::io(format!("disk {}", d.path), e))?;
        let mut layers = Vec::new();
        for b in chain {
            layers.push(Layer { set: h.pass(b.file, &super::cmdline::fdset_opaque(&id)), format: b.format });
        }
        h.chains.insert(id, layers);
    }
    if let Some((uid, gid)) = launch.run_as {
        // A file any user may read is read where it is; another (root's alone) is copied.
        let own_copy = |src: &str, name: &str| -> Result<Option<PathBuf>, HvError> {
            if readable_by_anyone(Path::new(src)) {
                return Ok(None);
            }
            copy_for(Path::new(src), &paths.dir().join(name), uid, gid).map(Some)
        };
        if let Some(k) = &spec.kernel {
            h.kernel = own_copy(&k.kernel, "kernel")?;
            if let Some(initrd) = &k.initrd {
                h.initrd = own_copy(initrd, "initrd")?;
            }
        }
    }
    Ok(h)
}

/// Removes the copies made for a QEMU once it has read them (it reads the kernel and the initrd
/// while it initialises, before QMP greets, credentials when they are added, and keeps them in
/// memory: a reset boots from that): no key stays on disk, no kernel per VM.
pub fn remove_copies(paths: &RuntimePaths) {
    for f in ["kernel", "initrd"] {
        let _ = std::fs::remove_file(paths.dir().join(f));
    }
    let _ = std::fs::remove_dir_all(paths.dir().join("tls"));
}

/// A Unix socket bound at `path` (root's, 0600: only oxvirtd connects) and listening.
fn listen(h: &mut Handoff, path: &Path) -> Result<RawFd, HvError> {
    let _ = std::fs::remove_file(path);
    let l =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| HvError::io(format!("bind {}", path.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| HvError::io(format!("chmod {}", path.display()), e))?;
    Ok(h.hold(l))
}

/// A layer below an image: opened here, read-only; where it is; its format, as the image above
/// records it.
#[derive(Debug)]
pub struct Backing {
    pub file: File,
    pub path: PathBuf,
    pub format: DiskFormat,
}

/// The backing chain image `top` names, the top's backing first: each layer's path (relative
/// names are the naming image's directory's) is put to `allow` (a refusal is the rule it
/// breaks), then opened read-only — a regular file, no link followed at its last step — with
/// the format the image above records for it. A layer whose format is not recorded is refused
/// (probing would let a guest's raw data pass for a qcow2 header naming any file); at most
/// [`MAX_CHAIN`] deep. The one walk both the create-time policy check and the start use.
pub fn walk_chain(top: &Path, mut allow: impl FnMut(&Path) -> Result<(), String>) -> io::Result<Vec<Backing>> {
    let top_file = open_layer(top)?;
    let mut out: Vec<Backing> = Vec::new();
    loop {
        let (image, image_path) = match out.last() {
            None => (&top_file, top),
            Some(b) if b.format != DiskFormat::Qcow2 => return Ok(out),
            Some(b) => (&b.file, b.path.as_path()),
        };
        let Some(name) = confine::qcow2_backing(image)? else { return Ok(out) };
        if out.len() >= MAX_CHAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("has a backing chain deeper than {MAX_CHAIN}"),
            ));
        }
        let format = match confine::qcow2_backing_format(image)?.as_deref() {
            Some("qcow2") => DiskFormat::Qcow2,
            Some("raw") => DiskFormat::Raw,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} names backing file {name} with format {other:?}: only qcow2 or raw, recorded",
                        image_path.display()
                    ),
                ))
            }
        };
        let path = image_path.parent().unwrap_or(Path::new("/")).join(&name);
        allow(&path).map_err(|rule| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("backing file {name} of {}: {rule}", image_path.display()),
            )
        })?;
        let file = open_layer(&path)?;
        out.push(Backing { file, path, format });
    }
}

/// [`walk_chain`] for the start: every layer the image names is opened.
pub fn open_chain(top: &Path) -> io::Result<Vec<Backing>> {
    walk_chain(top, |_| Ok(()))
}

/// A layer of a chain, read-only.
fn open_layer(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    Ok(f)
}

/// Whether any user may open `path` for reading: the file is readable by others, and every
/// directory on the way to it — to its name and to what that resolves to — passable by others.
fn readable_by_anyone(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    let passable = |p: &Path| p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).all(|a| mode(a) & 0o001 != 0);
    let Ok(real) = std::fs::canonicalize(path) else { return false };
    mode(&real) & 0o004 != 0 && passable(path) && passable(&real)
}

/// A copy of `src` at `dst` (new, never through a link), the VM user's, read-only.
fn copy_for(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<PathBuf, HvError> {
    let io = |e: io::Error| HvError::io(format!("copy {} for the VM", src.display()), e);
    let _ = std::fs::remove_file(dst);
    let mut from = File::open(src).map_err(io)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dst)
        .map_err(io)?;
    io::copy(&mut from, &mut to).map_err(io)?;
    std::os::unix::fs::fchown(&to, Some(uid), Some(gid)).map_err(io)?;
    Ok(dst.to_path_buf())
}

/// The credentials QEMU's `tls-creds-x509` reads, copied into `dst` (root's directory, passable
/// by the QEMU group; files the VM user's).
pub fn copy_tls(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<PathBuf, HvError> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::remove_dir_all(dst);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .and_then(|_| oxvirt_qemu::identity::own(dst, 0, gid, 0o710))
        .map_err(|e| HvError::io(format!("make {}", dst.display()), e))?;
    for name in
        ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem", "dh-params.pem"]
    {
        let from = src.join(name);
        if from.exists() {
            copy_for(&from, &dst.join(name), uid, gid)?;
        }
    }
    Ok(dst.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img(args: &[&str]) {
        let st = std::process::Command::new("qemu-img").args(args).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }

    #[test]
    fn opens_a_chain_with_recorded_formats_and_refuses_unrecorded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "raw", &p("base.raw"), "1M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", &p("mid.qcow2")]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", &p("mid.qcow2"), "-F", "qcow2", &p("top.qcow2")]);
        let chain = open_chain(Path::new(&p("top.qcow2"))).unwrap();
        let formats: Vec<DiskFormat> = chain.iter().map(|b| b.format).collect();
        assert_eq!(formats, [DiskFormat::Qcow2, DiskFormat::Raw]);
        assert!(open_chain(Path::new(&p("base.raw"))).is_err(), "not a qcow2 image");
        // No recorded format: refused, naming the file.
        // (qemu-img records it always now: the record is made unknown by hand.)
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", &p("mid.qcow2"), "-F", "qcow2", &p("plain.qcow2")]);
        let mut bytes = std::fs::read(p("plain.qcow2")).unwrap();
        let at = bytes.windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).unwrap();
        bytes[at..at + 4].copy_from_slice(&[0, 0, 0, 1]);
        std::fs::write(p("plain.qcow2"), bytes).unwrap();
        let err = open_chain(Path::new(&p("plain.qcow2"))).unwrap_err().to_string();
        assert!(err.contains("plain.qcow2") && err.contains("format None"), "{err}");
        // A link as a layer is not followed.
        std::os::unix::fs::symlink(p("mid.qcow2"), p("link.qcow2")).unwrap();
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", &p("link.qcow2"), "-F", "qcow2", "-u", &p("via.qcow2"), "1M"]);
        assert!(open_chain(Path::new(&p("via.qcow2"))).is_err());
    }

    #[test]
    fn only_files_anyone_may_read_are_read_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        let sub = dir.path().join("boot");
        std::fs::create_dir(&sub).unwrap();
        let f = sub.join("vmlinuz");
        std::fs::write(&f, b"k").unwrap();
        set(dir.path(), 0o755);
        set(&sub, 0o755);
        set(&f, 0o644);
        assert!(readable_by_anyone(&f));
        set(&f, 0o600);
        assert!(!readable_by_anyone(&f), "root's alone");
        set(&f, 0o644);
        set(&sub, 0o700);
        assert!(!readable_by_anyone(&f), "behind a closed directory");
        // A link is judged by what it leads to, and by the way to both.
        set(&sub, 0o755);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(readable_by_anyone(&link));
        set(&sub, 0o711);
        assert!(readable_by_anyone(&link), "passable is enough");
        set(&sub, 0o700);
        assert!(!readable_by_anyone(&link));
    }

    #[test]
    fn a_chain_too_deep_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |i: usize| dir.path().join(format!("l{i}.qcow2")).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", &p(0), "1M"]);
        for i in 1..=MAX_CHAIN + 1 {
            qemu_img(&["create", "-q", "-f", "qcow2", "-b", &p(i - 1), "-F", "qcow2", "-u", &p(i), "1M"]);
        }
        assert_eq!(open_chain(Path::new(&p(MAX_CHAIN))).unwrap().len(), MAX_CHAIN);
        let err = open_chain(Path::new(&p(MAX_CHAIN + 1))).unwrap_err().to_string();
        assert!(err.contains("deeper than 16"), "{err}");
    }
}
