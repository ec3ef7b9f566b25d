//! Which accelerator runs guests: KVM only where the host really runs them natively.
//!
//! `/dev/kvm` can exist where KVM only emulates (nested set-ups without hardware support run
//! guests at a few million instructions a second). So KVM is chosen only when the CPU has the
//! `vmx` or `svm` flag, `/dev/kvm` opens, and a short probe guest runs at native speed.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accelerator chosen and the one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// What the host shows about hardware virtualization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `vmx` or `svm` among the CPU flags.
    pub cpu_flag: Option<&'static str>,
    /// `Ok` when /dev/kvm opened and answered, else why not.
    pub dev_kvm: Result<(), String>,
}

/// The probe's finding: how long a fixed guest loop took, or why it could not run.
pub type ProbeResult = Result<Duration, String>;

/// A probe loop of this length runs in well under a millisecond natively.
pub const NATIVE_PROBE_LIMIT: Duration = Duration::from_millis(50);

/// Decides from the facts; `probe` is called only when the facts allow KVM.
pub fn decide(facts: &HostFacts, probe: impl FnOnce() -> ProbeResult) -> AccelDecision {
    let tcg = |reason: String| AccelDecision { accel: Accel::Tcg, reason };
    let Some(flag) = facts.cpu_flag else {
        return tcg(
            "using TCG (software emulation): the CPU has no vmx/svm flag, so there is no hardware virtualization"
                .into(),
        );
    };
    if let Err(why) = &facts.dev_kvm {
        return tcg(format!("using TCG (software emulation): the CPU has {flag} but /dev/kvm is not usable: {why}"));
    }
    match probe() {
        Ok(t) if t <= NATIVE_PROBE_LIMIT => AccelDecision {
            accel: Accel::Kvm,
            reason: format!("using KVM: the CPU has {flag}, /dev/kvm works and a probe guest ran natively ({t:?})"),
        },
        Ok(t) => tcg(format!(
            "using TCG (software emulation): /dev/kvm exists but a probe guest took {t:?} (native is under {NATIVE_PROBE_LIMIT:?}): KVM only emulates here"
        )),
        Err(why) => tcg(format!("using TCG (software emulation): the KVM probe failed: {why}")),
    }
}

/// Reads the facts of this host.
pub fn host_facts() -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    let cpu_flag = if has("vmx") {
        Some("vmx")
    } else if has("svm") {
        Some("svm")
    } else {
        None
    };
    let dev_kvm = kvm::api_version().map_err(|e| e.to_string()).and_then(|v| {
        if v == 12 {
            Ok(())
        } else {
            Err(format!("KVM API version {v}, expected 12"))
        }
    });
    HostFacts { cpu_flag, dev_kvm }
}

/// Decides for this host, probing when needed.
pub fn detect() -> AccelDecision {
    decide(&host_facts(), || kvm::probe(Duration::from_secs(2)))
}

/// Resolves a VM's accelerator setting against the host's decision.
pub fn resolve(choice: oxvirt_model::AccelChoice, host: &AccelDecision) -> Accel {
    match choice {
        oxvirt_model::AccelChoice::Auto => host.accel,
        oxvirt_model::AccelChoice::Kvm => Accel::Kvm,
        oxvirt_model::AccelChoice::Tcg => Accel::Tcg,
    }
}

/// The KVM probe: a real-mode guest that counts down a register and halts.
mod kvm {
    use std::fs::OpenOptions;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
    const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
    const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
    const KVM_RUN: libc::c_ulong = 0xAE80;
    const KVM_GET_REGS: libc::c_ulong = 0x8090_AE81;
    const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
    const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
    const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
    const KVM_EXIT_HLT: u32 = 5;

    /// mov ecx, 200000; l: dec ecx; jnz l; hlt — 400,000 instructions.
    const CODE: [u8; 11] = [0x66, 0xB9, 0x40, 0x0D, 0x03, 0x00, 0x66, 0x49, 0x75, 0xFC, 0xF4];

    fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: usize) -> io::Result<i32> {
        // SAFETY: each caller passes a request with the argument type KVM documents for it.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn open_kvm() -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(OpenOptions::new().read(true).write(true).open("/dev/kvm")?))
    }

    pub fn api_version() -> io::Result<i32> {
        ioctl(&open_kvm()?, KVM_GET_API_VERSION, 0)
    }

    #[repr(C)]
    struct MemoryRegion {
        slot: u32,
        flags: u32,
        guest_phys_addr: u64,
        memory_size: u64,
        userspace_addr: u64,
    }

    /// Runs the probe guest in a thread; gives up after `limit`.
    pub fn probe(limit: Duration) -> Result<Duration, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run_probe().map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            // Far slower than native: KVM emulates here (the probe thread ends on its own).
            Err(_) => Ok(limit),
        }
    }

    fn run_probe() -> io::Result<Duration> {
        let kvm = open_kvm()?;
        let to_fd = |r: i32| unsafe { OwnedFd::from_raw_fd(r) };
        let vm = to_fd(ioctl(&kvm, KVM_CREATE_VM, 0)?);
        const MEM: usize = 0x10000;
        // SAFETY: an anonymous private mapping, unmapped below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            // SAFETY: mem is MEM bytes long and 0x1000 + CODE fits.
            unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), (mem as *mut u8).add(0x1000), CODE.len()) };
            let region = MemoryRegion {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: MEM as u64,
                userspace_addr: mem as u64,
            };
            ioctl(&vm, KVM_SET_USER_MEMORY_REGION, &region as *const _ as usize)?;
            let vcpu = to_fd(ioctl(&vm, KVM_CREATE_VCPU, 0)?);
            let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0)? as usize;
            let mut sregs = [0u8; 312];
            ioctl(&vcpu, KVM_GET_SREGS, sregs.as_mut_ptr() as usize)?;
            sregs[0..8].copy_from_slice(&0u64.to_ne_bytes()); // cs.base
            sregs[12..14].copy_from_slice(&0u16.to_ne_bytes()); // cs.selector
            ioctl(&vcpu, KVM_SET_SREGS, sregs.as_ptr() as usize)?;
            let mut regs = [0u8; 144];
            ioctl(&vcpu, KVM_GET_REGS, regs.as_mut_ptr() as usize)?;
            regs[128..136].copy_from_slice(&0x1000u64.to_ne_bytes()); // rip
            regs[136..144].copy_from_slice(&2u64.to_ne_bytes()); // rflags
            ioctl(&vcpu, KVM_SET_REGS, regs.as_ptr() as usize)?;
            // SAFETY: the kvm_run area of this vCPU, as KVM documents.
            let run = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    run_size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    vcpu.as_raw_fd(),
                    0,
                )
            };
            if run == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let start = Instant::now();
            let r = ioctl(&vcpu, KVM_RUN, 0);
            let took = start.elapsed();
            // SAFETY: exit_reason is the u32 at offset 8 of kvm_run.
            let exit_reason = unsafe { std::ptr::read_volatile((run as *const u8).add(8) as *const u32) };
            unsafe { libc::munmap(run, run_size) };
            r?;
            if exit_reason != KVM_EXIT_HLT {
                return Err(io::Error::other(format!("probe guest exited with reason {exit_reason}, not HLT")));
            }
            Ok(took)
        })();
        unsafe { libc::munmap(mem, MEM) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(flag: Option<&'static str>, dev: Result<(), String>) -> HostFacts {
        HostFacts { cpu_flag: flag, dev_kvm: dev }
    }

    #[test]
    fn no_cpu_flag_means_tcg_without_probing() {
        let d = decide(&facts(None, Ok(())), || panic!("must not probe"));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("no vmx/svm"), "{}", d.reason);
    }

    #[test]
    fn unusable_dev_kvm_means_tcg() {
        let d = decide(&facts(Some("vmx"), Err("Permission denied".into())), || panic!("must not probe"));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("Permission denied"));
    }

    #[test]
    fn slow_probe_means_emulated_kvm_means_tcg() {
        let d = decide(&facts(Some("svm"), Ok(())), || Ok(Duration::from_millis(400)));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("only emulates"));
        let d = decide(&facts(Some("svm"), Ok(())), || Err("EPERM".into()));
        assert_eq!(d.accel, Accel::Tcg);
    }

    #[test]
    fn native_probe_means_kvm() {
        let d = decide(&facts(Some("vmx"), Ok(())), || Ok(Duration::from_micros(300)));
        assert_eq!(d.accel, Accel::Kvm);
    }

    #[test]
    fn this_host_gets_tcg() {
        // These machines have /dev/kvm but no hardware virtualization (DEVELOPERS.md).
        let facts = host_facts();
        if facts.cpu_flag.is_none() {
            assert_eq!(detect().accel, Accel::Tcg);
        }
    }

    #[test]
    fn explicit_choice_overrides() {
        let host = AccelDecision { accel: Accel::Tcg, reason: String::new() };
        assert_eq!(resolve(oxvirt_model::AccelChoice::Kvm, &host), Accel::Kvm);
        assert_eq!(resolve(oxvirt_model::AccelChoice::Auto, &host), Accel::Tcg);
    }
}
