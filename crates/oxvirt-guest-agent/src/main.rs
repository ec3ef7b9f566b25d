//! `oxvirt-guest-agent`: runs in the reference guest (started by its /init), waits on the
//! virtio-serial port named `org.oxvirt.agent` and answers oxvirtd's requests
//! ([`oxvirt_guest_agent::protocol`]).
//!
//! The port reads end-of-file while no host end is connected (a guest restored from a template
//! starts so). The agent then waits for SIGIO, which the kernel sends when the host connects
//! or data comes, and looks again at least once a second.

use oxvirt_guest_agent::protocol::{Identity, Request, MAX_LINE};
use oxvirt_guest_agent::PORT_NAME;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// `_IOW('R', 0x03, int[2])`: adds entropy, credited.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseeds the generator from its pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

fn log(msg: &str) {
    eprintln!("oxvirt-guest-agent: {msg}");
}

/// How long the port may take to show up. The guest's /init loads the virtio modules before it
/// starts the agent, so a port there is already probed; a VM without one (q35) has none at all.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// The character device of the port named `name`, once the kernel shows it; None when it has
/// not shown up within [`PORT_WAIT`].
fn find_port(name: &str) -> Option<PathBuf> {
    let start = std::time::Instant::now();
    while start.elapsed() < PORT_WAIT {
        if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in dir.flatten() {
                let named = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if named.trim_end() == name {
                    return Some(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// SIGIO is blocked (it would end the process) and sent to this process by the port.
fn ask_for_sigio(port: &File) -> io::Result<libc::sigset_t> {
    // SAFETY: plain system calls on a signal set this function owns and a descriptor it borrows.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        check(libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), "sigprocmask")?;
        let fd = port.as_raw_fd();
        check(libc::fcntl(fd, libc::F_SETOWN, libc::getpid()), "F_SETOWN")?;
        let flags = libc::fcntl(fd, libc::F_GETFL);
        check(flags, "F_GETFL")?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC), "F_SETFL O_ASYNC")?;
        Ok(set)
    }
}

fn wait_for_sigio(set: &libc::sigset_t) {
    let timeout = libc::timespec { tv_sec: 1, tv_nsec: 0 };
    // SAFETY: waits on a valid signal set; the signal's details are not wanted.
    unsafe {
        libc::sigtimedwait(set, std::ptr::null_mut(), &timeout);
    }
}

/// Mixes `seed` into the kernel's pool (credited) and reseeds the generator from it, so two
/// clones of one memory image draw different numbers from now on.
fn reseed(seed: &[u8]) -> io::Result<()> {
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: the buffer is laid out as the ioctl reads it and outlives the call.
    unsafe {
        check(libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()), "RNDADDENTROPY")?;
        check(libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG), "RNDRESEEDCRNG")?;
    }
    Ok(())
}

fn set_identity(i: &Identity) -> io::Result<()> {
    reseed(&i.seed)?;
    let ts = libc::timespec { tv_sec: i.time.0 as libc::time_t, tv_nsec: i.time.1 as libc::c_long };
    // SAFETY: valid pointers to locals for the duration of each call.
    unsafe {
        check(libc::clock_settime(libc::CLOCK_REALTIME, &ts), "clock_settime")?;
        let host = CString::new(i.hostname.as_str()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        check(libc::sethostname(host.as_ptr(), i.hostname.len()), "sethostname")?;
    }
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/machine-id", format!("{}\n", i.machine_id))?;
    Ok(())
}

fn answer(line: &str) -> String {
    match Request::parse(line) {
        Ok(r) => {
            let done = match &r {
                Request::Ping => Ok(()),
                Request::Identity(i) => set_identity(i),
            };
            match done {
                Ok(()) => format!("ok {}\n", r.done_word()),
                Err(e) => format!("error {}: {e}\n", r.done_word()),
            }
        }
        Err(e) => format!("error {e}\n"),
    }
}

fn serve(mut port: File, sigio: &libc::sigset_t) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                // No host end: what it had sent half is gone with it.
                pending.clear();
                wait_for_sigio(sigio);
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let reply = answer(String::from_utf8_lossy(&line[..end]).trim_end_matches('\r'));
            port.write_all(reply.as_bytes())?;
        }
        if pending.len() > MAX_LINE {
            pending.clear();
            port.write_all(format!("error request: at most {MAX_LINE} bytes\n").as_bytes())?;
        }
    }
}

fn main() {
    let Some(path) = find_port(PORT_NAME) else {
        log(&format!("no virtio-serial port {PORT_NAME} (this VM has no agent channel): exiting"));
        return;
    };
    loop {
        let served = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|port| ask_for_sigio(&port).map(|set| (port, set)))
            .and_then(|(port, set)| serve(port, &set));
        if let Err(e) = served {
            log(&format!("{}: {e}", path.display()));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
