//! QEMU processes: started in their own session (a VM's QEMU as our child until the daemon
//! exits, then init's; helpers daemonized), found again by pidfile and `/proc/PID/cmdline`,
//! watched and signalled through a pidfd (no PID-reuse races).

use crate::ProcessError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long QEMU may take to initialise before `-daemonize` hands back.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `program` in a session of its own, with standard output and error in `log`
/// (truncated), and returns its pid at once. Unlike [`spawn_daemonized`] it does not fork again,
/// so QEMU's seccomp filter may deny `spawn`; it stays our child while the daemon lives (reaped
/// by [`Pidfd::exited`]) and is left to init, still running, when the daemon exits.
///
/// `cgroup_procs` are open `cgroup.procs` files: the process joins those cgroups before it
/// runs. `keep_fds` stay open across exec (descriptors passed on with `-add-fd`). With `user`
/// it runs as that user from its first instruction (after joining its cgroups), unable to gain
/// privileges again (no-new-privileges).
pub fn spawn_detached(
    program: &str,
    args: &[String],
    log: &Path,
    cgroup_procs: &[std::fs::File],
    keep_fds: &[RawFd],
    user: Option<&Identity>,
) -> Result<u32, ProcessError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    // New at each start, appended to (so that it can be cut short while the process writes),
    // never through a link.
    let _ = std::fs::remove_file(log);
    let out = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
        .map_err(|e| ProcessError::io(format!("open {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| ProcessError::io("dup log", e))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null()).stdout(out).stderr(err);
    let fds: Vec<i32> = cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
    let keep: Vec<RawFd> = keep_fds.to_vec();
    let user = user.cloned();
    // SAFETY: only setsid(2), fcntl(2), write(2), setgroups(2), setgid(2), setuid(2) and
    // prctl(2) on memory and descriptors that stay valid until spawn returns (nothing is
    // allocated here); all are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            // A session of its own: no terminal's signals, and it outlives the daemon.
            check(libc::setsid() as libc::c_int)?;
            for fd in &keep {
                check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
            }
            oxvirt_cgroup::join_in_child(&fds)?;
            if let Some(u) = &user {
                // Groups first (root may still set them), the uid last.
                check(libc::setgroups(u.groups.len(), u.groups.as_ptr()))?;
                check(libc::setgid(u.gid))?;
                check(libc::setuid(u.uid))?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            Ok(())
        })
    };
    let child = cmd.spawn().map_err(|e| ProcessError::io(format!("run {program}"), e))?;
    // Not waited on here: its exit is seen (and reaped) through a pidfd.
    Ok(child.id())
}

/// Who a process runs as: its uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The end of a process's log, for an error message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let from = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[from..]).trim().to_string()
}

/// Starts a QEMU tool with `--daemonize` in the args (qemu-storage-daemon), as `run_as` if
/// given: returns once it has initialised (its sockets exist) or failed (with its error
/// message). It is not our child: it lives in its own session and outlives the daemon.
pub async fn spawn_daemonized(
    program: &str,
    args: &[String],
    pidfile: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<u32, ProcessError> {
    let _ = std::fs::remove_file(pidfile);
    let mut cmd = tokio::process::Command::new(program);
    if let Some((uid, gid)) = run_as {
        // Not root from its first instruction (supplementary groups are dropped too).
        cmd.uid(uid).gid(gid);
    }
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    // Its own process group from the start: a Ctrl-C meant for the daemon's terminal never
    // reaches QEMU, even before QEMU's own setsid().
    cmd.process_group(0);
    let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ProcessError::Timeout(START_TIMEOUT, format!("{program} to initialise")))?
        .map_err(|e| ProcessError::io(format!("run {program}"), e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ProcessError::StartFailed(
            program.to_string(),
            if msg.is_empty() { format!("exit status {}", out.status) } else { msg },
        ));
    }
    read_pidfile(pidfile)?
        .ok_or_else(|| ProcessError::StartFailed(program.to_string(), format!("no pidfile at {}", pidfile.display())))
}

pub fn read_pidfile(path: &Path) -> Result<Option<u32>, ProcessError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ProcessError::io(format!("read {}", path.display()), e)),
    }
}

/// Whether `pid` is a live (not zombie) QEMU started for VM `id`.
pub fn is_our_qemu(pid: u32, id: &str) -> bool {
    has_args(pid, b"-uuid", id.as_bytes())
}

/// Whether live (not zombie) process `pid` has `flag` followed by `value` among its arguments.
pub fn has_args(pid: u32, flag: &[u8], value: &[u8]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.windows(2).any(|w| w[0] == flag && w[1] == value);
    ours && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// A handle on a process that stays valid even if the PID is reused.
pub struct Pidfd {
    fd: AsyncFd<OwnedFd>,
    pid: u32,
}

impl Pidfd {
    pub fn open(pid: u32) -> Result<Self, ProcessError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(ProcessError::io(format!("pidfd_open({pid})"), std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the pidfd is owned by the AsyncFd and closed only when it is dropped.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| ProcessError::io("register pidfd", e.into()))?;
        Ok(Pidfd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has exited. Reaps it when it is our child.
    pub async fn exited(&self) {
        loop {
            match self.fd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        // Reaped when it is our child (a QEMU we started, while we live), through the pidfd: never
        // another process that reused the pid.
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill; WNOHANG never blocks, and a
        // process that is not our child (or was reaped already) just gives ECHILD.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
    }

    pub fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        // SAFETY: pidfd_send_signal(pidfd, sig, NULL, 0).
        let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.fd.get_ref().as_raw_fd(), sig, 0usize, 0u32) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(ProcessError::io(format!("signal {sig} to QEMU {}", self.pid), e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pidfd_sees_exit_and_signals() {
        #[allow(clippy::zombie_processes)] // reaped by Pidfd::exited, which the test checks
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pfd = Pidfd::open(child.id()).unwrap();
        assert!(!is_zombie(child.id()));
        pfd.signal(libc::SIGKILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), pfd.exited()).await.unwrap();
        // Reaped by exited(): the pid is gone.
        assert!(!Path::new(&format!("/proc/{}", child.id())).exists());
    }

    #[test]
    fn foreign_processes_are_not_ours() {
        assert!(!is_our_qemu(std::process::id(), "some-id"));
        assert!(!is_our_qemu(u32::MAX - 1, "some-id"));
    }

    #[tokio::test]
    async fn start_failure_carries_qemu_message() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            spawn_daemonized("sh", &["-c".into(), "echo 'bad option' >&2; exit 1".into()], &dir.path().join("p"), None)
                .await
                .unwrap_err();
        assert!(err.to_string().contains("bad option"), "{err}");
    }
}
