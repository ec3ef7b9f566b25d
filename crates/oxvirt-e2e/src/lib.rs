//! Test and benchmark harness: a real oxvirtd on a temporary data dir, the reference guest, and
//! helpers to wait for what a guest prints. Nothing is mocked.

pub mod ovs;
pub mod pki;
pub mod proxy;

use oxvirt_client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The marker the reference guest prints on its serial console when it is up.
pub const READY: &str = "OXVIRT-GUEST-READY";

/// How long a guest may take to boot to the marker under TCG (it takes about 4 s alone; tests
/// run in parallel on two cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// A binary of this workspace (built by `make test` / `make bench` before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let profile = std::env::var("OXVIRT_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = workspace_root().join("target").join(profile).join(name);
    assert!(p.exists(), "{} is missing: run `make test` (it builds the binaries first)", p.display());
    p
}

/// The reference guest built by `make guest`.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
}

pub fn guest() -> Guest {
    let dir = workspace_root().join("build/guest");
    let g = Guest { kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img"), disk: dir.join("disk.qcow2") };
    for p in [&g.kernel, &g.initrd, &g.disk] {
        assert!(p.exists(), "{} is missing: run `make guest`", p.display());
    }
    g
}

/// A VM spec that boots the reference guest's kernel directly.
pub fn kernel_spec(name: &str, extra_cmdline: &str) -> Value {
    let g = guest();
    json!({
        "name": name, "cpus": 1, "memory": "256MiB",
        "kernel": { "kernel": g.kernel, "initrd": g.initrd, "cmdline": format!("console=ttyS0 {extra_cmdline}").trim() },
    })
}

/// A local pool `local` made through `d`, its directory `dir/a` on host-a, `dir/b` and `dir/c`
/// on host-b and host-c, with a 16 MiB volume `local/data`.
pub fn local_pool_on_three_hosts(d: &Daemon, dir: &Path) {
    let at = |h: &str| dir.join(h).to_string_lossy().into_owned();
    let (b, c) = (format!("host-b={}", at("b")), format!("host-c={}", at("c")));
    let (code, out, err) =
        d.cli(&["pool", "create", "local", "--path", &at("a"), "--host-path", &b, "--host-path", &c]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = d.cli(&["volume", "create", "local/data", "--size", "16MiB"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Creates and starts a VM of `spec` and, once it has booted, a counter in the guest: every
/// 0.2 s it writes its count to /tmp/c and to the first sector of /dev/vda. Returns QEMU's pid.
pub async fn start_counting_guest(client: &Client, spec: &Value) -> u32 {
    let name = spec["name"].as_str().expect("name").to_string();
    let created = client.create_vm(spec, true).await.expect("create");
    client.wait_task(&created.task.expect("start task").id, Duration::from_secs(60)).await.expect("start");
    wait_console(client, &name, READY, 1, BOOT_TIMEOUT).await;
    let pid = client.get_vm(&name).await.expect("vm").status.pid.expect("pid");
    run_in_guest(
        client,
        &name,
        "(i=0; while :; do i=$((i+1)); echo $i > /tmp/c; echo $i | dd of=/dev/vda bs=512 count=1 conv=notrunc 2>/dev/null; sleep 0.2; done) & echo L$((2+2))OOP",
        "L4OOP",
    )
    .await;
    pid
}

/// A client of `d`'s HTTPS API with `token` (the certificate pinned).
pub fn https_client(d: &Daemon, token: &str) -> Client {
    let (url, _, fp) = d.https();
    Client::with_transport(oxvirt_client::Transport::https(&url, token, &fp).expect("https transport"))
}

/// Logs `user` in over HTTPS: the new token's secret, or the refusal's status.
pub async fn login(d: &Daemon, user: &str, password: &str) -> Result<String, u16> {
    let anon = https_client(d, "none");
    let body = serde_json::to_vec(&json!({ "user": user, "password": password })).expect("json");
    let (status, body) = anon.raw(hyper::Method::POST, "/api/v1/auth/login", Some(body)).await.expect("login");
    if status != 201 {
        return Err(status);
    }
    let v: Value = serde_json::from_slice(&body).expect("token json");
    Ok(v["secret"].as_str().expect("secret").to_string())
}

/// A user named `name` whose password is `<name>-long-password`.
pub async fn make_user(c: &Client, name: &str) {
    let _: Value = c
        .post("/api/v1/users", &json!({ "name": name, "password": format!("{name}-long-password") }))
        .await
        .expect("user");
}

/// A running oxvirtd on its own data dir. Dropping it kills the daemon and every QEMU it started.
pub struct Daemon {
    pub data_dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub client: Client,
    config: String,
    /// The network namespace the daemon runs in (a "host" of a network test), if any.
    netns: Option<String>,
    /// Arguments after `--data-dir DIR`.
    args: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with_config("stop_timeout_secs = 30\n")
    }

    /// HTTPS on a port the kernel picks (tests run in parallel), host paths under the reference
    /// guest's directory and /tmp (where tests make their files), and `extra` settings.
    /// Each daemon's nftables tables are its own (`nft_table`): a daemon that starts or changes
    /// its rules then never removes another's (they all share the host's rules).
    fn full_config(extra: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static DAEMONS: AtomicU32 = AtomicU32::new(0);
        let guest = workspace_root().join("build");
        let table = if extra.contains("nft_table") {
            String::new()
        } else {
            let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
            format!("nft_table = \"oxv{}_{n}\"\n", std::process::id())
        };
        format!("https_listen = \"127.0.0.1:0\"\nhost_path_roots = [{guest:?}, \"/tmp\"]\n{table}{extra}")
    }

    /// The name of this daemon's nftables tables (`inet` and `bridge`).
    pub fn nft_table(&self) -> String {
        self.config
            .lines()
            .find_map(|l| l.strip_prefix("nft_table = \""))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or("oxvirt")
            .to_string()
    }

    pub fn start_with_config(config: &str) -> Daemon {
        // Short path: Unix socket paths are limited to 107 bytes.
        let data_dir = operator_dir("oxv");
        let config = Self::full_config(config);
        std::fs::write(data_dir.path().join("oxvirtd.toml"), &config).expect("config");
        let client = Client::new(data_dir.path().join("oxvirtd.sock"));
        let mut d = Daemon { data_dir, child: None, client, config, netns: None, args: vec![] };
        d.spawn();
        d
    }

    /// A daemon started with these arguments too (e.g. `--join`).
    pub fn start_with_args(config: &str, args: &[&str]) -> Daemon {
        let data_dir = operator_dir("oxv");
        let config = Self::full_config(config);
        std::fs::write(data_dir.path().join("oxvirtd.toml"), &config).expect("config");
        let client = Client::new(data_dir.path().join("oxvirtd.sock"));
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut d = Daemon { data_dir, child: None, client, config, netns: None, args };
        d.spawn();
        d
    }

    /// A daemon inside a network namespace of the test's: its devices, firewall and DHCP stay
    /// there. Its socket and files are on the shared file system as usual.
    pub fn start_in_netns(ns: &Netns, config: &str) -> Daemon {
        let data_dir = operator_dir("oxv");
        let config = Self::full_config(config);
        std::fs::write(data_dir.path().join("oxvirtd.toml"), &config).expect("config");
        let client = Client::new(data_dir.path().join("oxvirtd.sock"));
        let mut d = Daemon { data_dir, child: None, client, config, netns: Some(ns.name.clone()), args: vec![] };
        d.spawn();
        d
    }

    pub fn path(&self) -> &Path {
        self.data_dir.path()
    }

    fn spawn(&mut self) {
        let sock = self.path().join("oxvirtd.sock");
        let _ = std::fs::remove_file(&sock);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path().join("oxvirtd.log")).expect("log");
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the daemon: the child's pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("oxvirtd"));
                c
            }
            None => Command::new(bin("oxvirtd")),
        };
        let child = cmd
            .arg("--data-dir")
            .arg(self.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn oxvirtd");
        self.child = Some(child);
        let start = Instant::now();
        // Ready once it accepts a connection: the socket's file exists a moment before it listens.
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                panic!("oxvirtd did not start:\n{}", self.log());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("oxvirtd exited with {st}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("oxvirtd.log")).unwrap_or_default()
    }

    /// kill -9: the daemon dies without any clean-up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the daemon's clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    pub fn respawn_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    /// The HTTPS address, the admin token and the certificate fingerprint.
    pub fn https(&self) -> (String, String, String) {
        let read = |f: &str| std::fs::read_to_string(self.path().join(f)).expect(f).trim().to_string();
        (format!("https://{}", read("https.addr")), read("admin.token"), read("tls/fingerprint"))
    }

    /// PIDs of the QEMU processes this daemon's VMs run in.
    /// Runs the `oxvirt` CLI against this daemon's socket: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("oxvirt"))
            .env("OXVIRT_SOCKET", self.path().join("oxvirtd.sock"))
            .args(args)
            .output()
            .expect("run oxvirt");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn qemu_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("run")) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("qemu.pid")) {
                    if let Ok(pid) = s.trim().parse::<u32>() {
                        if Path::new(&format!("/proc/{pid}")).exists() {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
        pids
    }
}

/// A real etcd cluster on loopback for tests: `n` members, each with its own data dir and ports;
/// killed (and its files removed) when dropped.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<EtcdMember>,
    /// With TLS: `etcdctl`'s certificate options.
    etcdctl_tls: Vec<String>,
}

pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub child: Option<Child>,
    args: Vec<String>,
}

/// A TCP port on loopback that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl EtcdCluster {
    /// The `oxvirtd.toml` of host `host` of a cluster on these members, its keys under
    /// `prefix`, with a lease TTL of 2 s.
    pub fn host_config(&self, prefix: &str, host: &str) -> String {
        let eps: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "stop_timeout_secs = 5\n[store]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"{prefix}\"\nhost_name = \"{host}\"\nmember_ttl_secs = 2\n",
            eps.join(", ")
        )
    }

    /// `n` members, plaintext (`http://`), no authentication.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with(n, None)
    }

    /// `n` members on TLS with `pki`'s certificate (`https://` for clients and peers), every
    /// client required to show a certificate of `pki`'s CA (`--client-cert-auth`).
    pub fn start_tls(n: usize, pki: &pki::TestPki) -> EtcdCluster {
        Self::start_with(n, Some(pki))
    }

    fn start_with(n: usize, pki: Option<&pki::TestPki>) -> EtcdCluster {
        let dir = tempfile::Builder::new().prefix("oxv-etcd").tempdir_in("/tmp").expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let token = format!("oxv-{}", std::process::id());
        let scheme = if pki.is_some() { "https" } else { "http" };
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}={scheme}://127.0.0.1:{peer}")).collect();
        let tls_args: Vec<String> = pki
            .map(|p| {
                let (ca, cert, key) = (p.ca(), p.cert(), p.key());
                let (ca, cert, key) = (ca.display(), cert.display(), key.display());
                vec![
                    format!("--cert-file={cert}"),
                    format!("--key-file={key}"),
                    format!("--trusted-ca-file={ca}"),
                    "--client-cert-auth".into(),
                    format!("--peer-cert-file={cert}"),
                    format!("--peer-key-file={key}"),
                    format!("--peer-trusted-ca-file={ca}"),
                    "--peer-client-cert-auth".into(),
                ]
            })
            .unwrap_or_default();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let mut args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                format!("--listen-client-urls={scheme}://127.0.0.1:{client}"),
                format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
                format!("--listen-peer-urls={scheme}://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls={scheme}://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                format!("--initial-cluster-token={token}"),
                "--initial-cluster-state=new".into(),
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
            ];
            args.extend(tls_args.iter().cloned());
            let mut m = EtcdMember {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{client}"),
                child: None,
                args,
            };
            m.spawn(dir.path());
            members.push(m);
        }
        let c = EtcdCluster { dir, members, etcdctl_tls: pki.map(|p| p.etcdctl_args()).unwrap_or_default() };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Waits until `etcdctl endpoint health` passes for the members that run.
    pub fn wait_healthy(&self, timeout: Duration) {
        let start = Instant::now();
        let eps: Vec<String> =
            self.members.iter().filter(|m| m.child.is_some()).map(|m| m.client_url.clone()).collect();
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(&self.etcdctl_tls)
                .args(["--endpoints", &eps.join(","), "endpoint", "health"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(start.elapsed() < timeout, "etcd did not become healthy: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops one member (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let dir = self.dir.path().to_path_buf();
        self.members[i].spawn(&dir);
    }
}

impl EtcdMember {
    fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.name)))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run etcd (Debian package etcd-server)");
        self.child = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A documented path (`/api/v1/vms/{name}/disks/{disk}`) with its parameters filled in: `vm` for
/// `{name}`, and names that exist nowhere for the rest (`nopool`, `nodisk`...; `{action}` is
/// `start`, `{user}` is `otto`, `{nic}` is `nic0`, `{id}` is `0`).
pub fn concrete_path(path: &str, vm: &str) -> String {
    path.replace("{name}", vm)
        .replace("{pool}", "nopool")
        .replace("{network}", "nonet")
        .replace("{group}", "nogroup")
        .replace("{project}", "noproject")
        .replace("{user}", "otto")
        .replace("{host}", "nohost")
        .replace("{snap}", "nosnap")
        .replace("{disk}", "nodisk")
        .replace("{nic}", "nic0")
        .replace("{repo}", "norepo")
        .replace("{job}", "nojob")
        .replace("{template}", "notemplate")
        .replace("{action}", "start")
        .replace("{id}", "0")
}

/// A network namespace made by a test (a "host", an "internet"), with loopback up; deleted, with
/// every device in it, when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("oxvt-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace; panics if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        match out {
            Ok(o) => o,
            Err(e) => panic!("in {}: {}: {e}", self.name, args.join(" ")),
        }
    }

    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out =
            Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Links two namespaces with a veth pair, each end given an address (`a.b.c.d/len`) and up.
    pub fn link(&self, dev: &str, addr: &str, peer: &Netns, peer_dev: &str, peer_addr: &str) {
        sh(&[
            "ip", "link", "add", dev, "netns", &self.name, "type", "veth", "peer", "name", peer_dev, "netns",
            &peer.name,
        ]);
        for (ns, d, a) in [(self, dev, addr), (peer, peer_dev, peer_addr)] {
            ns.run(&["ip", "addr", "add", a, "dev", d]);
            ns.run(&["ip", "link", "set", d, "up"]);
        }
    }

    /// The interface names in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.run(&["ls", "/sys/class/net"]).split_whitespace().map(str::to_string).collect()
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs a host command; panics, naming it, when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect(args[0]);
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Every helper this daemon left (export daemons, multipath proxies) names the data dir on
        // its command line; its QEMUs (handed their sockets and files, naming none of it) are
        // the ones its VMs' pidfiles name.
        let dir = self.path().to_string_lossy().into_owned();
        let mut pids = processes_mentioning(&dir);
        for e in std::fs::read_dir(self.path().join("run")).into_iter().flatten().flatten() {
            let pid =
                std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok());
            let qemu = |p: u32| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(6).any(|w| w == b"-uuid\0"))
            };
            if let Some(p) = pid.filter(|p| qemu(*p) && !pids.contains(p)) {
                pids.push(p);
            }
        }
        for pid in &pids {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        // The VMs' cgroups (named vm-<id>; the run dirs are named by the id's first 13 chars),
        // once their processes are gone.
        let start = Instant::now();
        while pids.iter().any(|p| process_alive(*p)) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let runs: Vec<String> = std::fs::read_dir(self.path().join("run"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for h in oxvirt_cgroup::Cgroups::detect().hierarchies {
            for e in std::fs::read_dir(&h.dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if runs.iter().any(|r| name.starts_with(&format!("vm-{r}"))) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

/// PIDs of live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == std::process::id() {
                continue;
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(needle) && process_alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits until the VM's console log holds `marker` `count` times; returns the log.
pub async fn wait_console(client: &Client, vm: &str, marker: &str, count: usize, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let log = String::from_utf8_lossy(&client.console_log(vm, 4 << 20).await.unwrap_or_default()).into_owned();
        if log.matches(marker).count() >= count {
            return log;
        }
        if start.elapsed() > timeout {
            panic!("VM {vm}: {marker:?} x{count} not seen within {timeout:?}; console:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the VM's observed state is `state`; returns the VM.
pub async fn wait_state(client: &Client, vm: &str, state: &str, timeout: Duration) -> oxvirt_model::Vm {
    try_wait_state(client, vm, state, timeout).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_state`], saying why not instead of panicking (callers add what they know: logs).
pub async fn try_wait_state(
    client: &Client,
    vm: &str,
    state: &str,
    timeout: Duration,
) -> Result<oxvirt_model::Vm, String> {
    let start = Instant::now();
    loop {
        let v = client.get_vm(vm).await.expect("get vm");
        // A running VM has its process recorded (a migrated one once its new host took it over).
        let settled = !v.status.state.has_process() || v.status.pid.is_some();
        if v.status.state.as_str() == state && settled {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            // The guest's last words say why it is not where it should be (a panic's trace).
            let log = client.console_log(vm, 8 << 10).await.unwrap_or_default();
            return Err(format!(
                "VM {vm} is {} ({}) after {timeout:?}, wanted {state}; the console's end:\n{}",
                v.status.state.as_str(),
                v.status.reason,
                String::from_utf8_lossy(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A host-side log of the QEMUs that hold a disk image open (its writers), kept by a thread that
/// looks at every QEMU's open files every few milliseconds: each QEMU with the span it was seen
/// holding the file. Sampled, so two writers overlapping for less than a period could be missed.
pub struct DiskWriters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Writer>>>,
}

/// One QEMU seen holding the disk: its pid, first and last seen.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    pub pid: u32,
    pub first: Instant,
    pub last: Instant,
}

impl DiskWriters {
    pub const PERIOD: Duration = Duration::from_millis(10);

    pub fn watch(image: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (image, halt) = (image.canonicalize().unwrap_or_else(|_| image.to_path_buf()), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<Writer> = Vec::new();
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                let pids: Vec<u32> = std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect();
                for pid in pids {
                    // (Asked every time: a process forked to become QEMU has another name first.)
                    let is_qemu = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.starts_with("qemu-system"));
                    if !is_qemu {
                        continue;
                    }
                    let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == image));
                    if holds {
                        match seen.iter_mut().rev().find(|w| w.pid == pid) {
                            Some(w) => w.last = now,
                            None => seen.push(Writer { pid, first: now, last: now }),
                        }
                    }
                }
                std::thread::sleep(Self::PERIOD);
            }
            seen
        });
        DiskWriters { stop, thread: Some(thread) }
    }

    /// Stops looking: every writer seen, in the order first seen.
    pub fn stop(mut self) -> Vec<Writer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        all.sort_by_key(|w| w.first);
        all
    }
}

/// Panics when two of `writers` were seen holding the disk at once.
pub fn assert_one_writer_at_a_time(writers: &[Writer]) {
    for pair in writers.windows(2) {
        assert!(
            pair[1].first > pair[0].last,
            "QEMU {} began holding the disk while QEMU {} still did: {writers:?}",
            pair[1].pid,
            pair[0].pid
        );
    }
}

#[test]
fn writers_one_after_another_pass_and_overlapping_ones_do_not() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let one_then_other =
        [Writer { pid: 1, first: at(0), last: at(100) }, Writer { pid: 2, first: at(110), last: at(200) }];
    assert_one_writer_at_a_time(&one_then_other);
    let both = [Writer { pid: 1, first: at(0), last: at(100) }, Writer { pid: 2, first: at(100), last: at(200) }];
    assert!(std::panic::catch_unwind(|| assert_one_writer_at_a_time(&both)).is_err());
}

/// The run state QEMU itself reports, asked over a second QMP connection is impossible while the
/// daemon holds the socket, so this reads `/proc/PID/stat` instead: whether the process lives.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

use tokio_tungstenite::tungstenite::Message;

/// Who holds the VM's console socket (the Unix sockets naming its run directory, with their
/// processes), and the VM's status: for a console that says nothing.
async fn console_peers(client: &oxvirt_client::Client, vm: &str) -> String {
    let status = match client.get_vm(vm).await {
        Ok(v) => format!("{:?} on {:?}, id {}", v.status, v.host, v.id),
        Err(e) => format!("get {vm}: {e}"),
    };
    let id = client.get_vm(vm).await.map(|v| v.id[..13].to_string()).unwrap_or_default();
    let ss = Command::new("ss").args(["-xap"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let lines: Vec<String> =
        ss.unwrap_or_default().lines().filter(|l| !id.is_empty() && l.contains(&id)).map(str::to_string).collect();
    // The QEMU behind it: its threads' states, what it logged, whether the guest still prints.
    let mut qemu = String::new();
    let from_ss = lines.iter().find_map(|l| {
        let p = l.split_whitespace().find(|w| w.ends_with("/console.sock"))?;
        Some(std::path::Path::new(p).parent()?.to_path_buf())
    });
    // (A daemon in a network namespace: its sockets are not in this one's `ss`; its QEMU's open
    // console log is in /proc all the same.)
    if let Some(dir) = from_ss.or_else(|| qemu_run_dir(&id)) {
        let tail = |f: &str, n: usize| {
            let t = std::fs::read(dir.join(f)).unwrap_or_default();
            String::from_utf8_lossy(&t[t.len().saturating_sub(n)..]).into_owned()
        };
        let log_before = std::fs::metadata(dir.join("console.log")).map(|m| m.len()).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log_after = std::fs::metadata(dir.join("console.log")).map(|m| m.len()).unwrap_or(0);
        qemu +=
            &format!("console.log: {log_before} -> {log_after} bytes in 2 s, ends {:?}\n", tail("console.log", 200));
        qemu += &format!("qemu.log ends: {}\n", tail("qemu.log", 600));
        let pid = std::fs::read_to_string(dir.join("qemu.pid")).unwrap_or_default().trim().to_string();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let tp = t.path();
            let comm = std::fs::read_to_string(tp.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(tp.join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim().chars().next().unwrap_or('?')).unwrap_or('?');
            let wchan = std::fs::read_to_string(tp.join("wchan")).unwrap_or_default();
            qemu += &format!("thread {} {} {state} {wchan}\n", t.file_name().to_string_lossy(), comm.trim());
        }
    }
    format!("VM: {status}\nits sockets:\n{}\n{qemu}", lines.join("\n"))
}

/// The runtime directory of the QEMU whose open console log is in a directory named `id`.
fn qemu_run_dir(id: &str) -> Option<std::path::PathBuf> {
    if id.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
        if !comm.starts_with("qemu") {
            return None;
        }
        std::fs::read_dir(p.path().join("fd")).ok()?.flatten().find_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let dir = target.parent()?;
            let named = dir.file_name()? == std::ffi::OsStr::new(id);
            (named && target.file_name()? == "console.log").then(|| dir.to_path_buf())
        })
    })
}

/// Terminal output without its escape sequences (`ESC [ ... letter`): the guest's line editor
/// asks where the cursor is (`ESC[6n`) after a prompt, which would hide the prompt at the end.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for f in chars.by_ref() {
                if ('@'..='~').contains(&f) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn escapes_are_stripped_and_the_prompt_shows() {
    assert_eq!(strip_escapes("echo x\r\n> \x1b[6n"), "echo x\r\n> ");
    assert_eq!(strip_escapes("\x1b[1;32mok\x1b[0m done"), "ok done");
    assert_eq!(strip_escapes("plain"), "plain");
}

/// The line typed to run `command` at most once however often the line is typed: it first makes
/// a directory named by `token` in the guest's /tmp, and runs `command` only if that was new. A
/// line typed again because its echo was late (a busy host) is then a no-op in the guest.
fn guarded_line(command: &str, token: &str) -> String {
    let command = command.trim_end().trim_end_matches(';');
    let end = if command.ends_with('&') { " }" } else { "; }" };
    format!("mkdir /tmp/.g{token} 2>/dev/null && {{ {command}{end}")
}

#[test]
fn a_guarded_line_runs_its_command_once() {
    let run = |line: &str| {
        let out = Command::new("sh").args(["-c", line]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = format!("test{}", std::process::id());
    let dir = format!("/tmp/.g{token}");
    let _ = std::fs::remove_dir(&dir);
    let twice = format!("{}\n{}", guarded_line("echo ran;", &token), guarded_line("echo ran;", &token));
    assert_eq!(run(&twice), "ran\n");
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(run(&guarded_line("sleep 0 &", &token)), "");
    assert!(Path::new(&dir).is_dir());
    std::fs::remove_dir(&dir).unwrap();
}

/// Whether the console output `since` shows the shell taking the line that begins `echo` (its
/// prompt, then the line: the terminal's own echo of a line typed while the shell was starting
/// or busy comes before any prompt and does not count) and then a prompt again (it finished).
fn ran_and_finished(since: &str, echo: &str) -> bool {
    since.find(&format!("# {echo}")).is_some_and(|i| since[i + 2 + echo.len()..].contains("oxvirt-guest:"))
}

#[test]
fn a_line_finished_only_once_the_shell_took_it_and_prompted_again() {
    let echo = "mkdir /tmp/.g1x0";
    // Typed while the shell started: the terminal echoes it, the shell prompts, then takes it.
    let starting = "mkdir /tmp/.g1x0 2>/dev/null && { long; }\r\n\r\nBusyBox v1.35.0\r\noxvirt-guest:/# mkdir /tmp/.g1x0 2>/dev/null && { lo\r\r\nng; }\r\n";
    assert!(!ran_and_finished(starting, echo), "still running");
    assert!(ran_and_finished(&format!("{starting}T1-0\r\nW-17\r\noxvirt-guest:/# "), echo));
    assert!(!ran_and_finished("oxvirt-guest:/# ", echo), "not taken yet");
    // Joined at an idle prompt (not shown again): the empty line typed first prompts again.
    let idle = "\r\noxvirt-guest:/# mkdir /tmp/.g1x0 2>/dev/null && { echo HP $(cat /sys/block/vd\r\r\na/size 2>/dev/null); }\r\nHP\r\noxvirt-guest:/# ";
    assert!(ran_and_finished(idle, echo), "finished without the output wanted: typed again");
}

/// Types a command into the guest's console until `want` shows up in what comes back.
pub async fn run_in_guest(client: &oxvirt_client::Client, vm: &str, command: &str, want: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TYPED: AtomicU32 = AtomicU32::new(0);
    let mut ws = client.console(vm).await.unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    // Typed again when the shell has not echoed it (it may be starting, or a character was lost:
    // the same guard, so a late echo's command does not run twice), or when it has finished
    // without printing `want` (a condition not met yet, e.g. a hot-plugged disk still coming: a
    // new guard, so it runs again).
    let new_token = || format!("{:x}x{:x}", std::process::id(), TYPED.fetch_add(1, Ordering::Relaxed));
    let mut token = new_token();
    let mut echo = format!("mkdir /tmp/.g{token}");
    let mut typed: Option<(Instant, usize)> = None;
    while !String::from_utf8_lossy(&seen).contains(want) {
        if start.elapsed() > Duration::from_secs(120) {
            let peers = console_peers(client, vm).await;
            panic!("{want:?} not seen: {}\n{peers}", String::from_utf8_lossy(&seen));
        }
        let retype = match typed {
            None => true,
            Some((at, mark)) => {
                let since = strip_escapes(&String::from_utf8_lossy(&seen[mark..]));
                let finished = ran_and_finished(&since, &echo);
                // A character lost on the way (a busy host) can leave the shell waiting for the
                // rest of a quote (its `> ` prompt): cancel that line, then type it again.
                let stuck = since.trim_end_matches(' ').ends_with("\n>") || since.ends_with("\r\n> ");
                if stuck && at.elapsed() > Duration::from_secs(3) {
                    let _ = futures_util::SinkExt::send(&mut ws, Message::Binary(b"\x03\n".to_vec().into())).await;
                }
                let again = at.elapsed() > Duration::from_secs(3) && (finished || stuck || !since.contains(&echo));
                if again && finished {
                    token = new_token();
                    echo = format!("mkdir /tmp/.g{token}");
                }
                again
            }
        };
        if retype {
            // An empty line first: the shell then prompts right before taking the line, so its
            // echo follows "# " even when the console was joined at an idle prompt (which it
            // does not show again), and `ran_and_finished` can tell the shell took it.
            let line = guarded_line(command, &token);
            futures_util::SinkExt::send(&mut ws, Message::Binary(format!("\n{line}\n").into_bytes().into()))
                .await
                .unwrap();
            typed = Some((Instant::now(), seen.len()));
        }
        if let Ok(Some(Ok(Message::Binary(b)))) =
            tokio::time::timeout(Duration::from_millis(300), futures_util::StreamExt::next(&mut ws)).await
        {
            seen.extend_from_slice(&b);
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A guest command that prints `GUEST_OK` when `cmd` succeeds and `GUEST_NO` when it fails (the
/// markers are computed by the shell, so the typed command's echo never matches them).
pub fn guest_check(cmd: &str) -> String {
    format!("{cmd} >/dev/null 2>&1 && echo R-$((6*7))-OK || echo R-$((6*7))-NO")
}
pub const GUEST_OK: &str = "R-42-OK";
pub const GUEST_NO: &str = "R-42-NO";

/// What a shell command in the guest prints (one word, e.g. `hostname`), trimmed.
pub async fn guest_text(client: &oxvirt_client::Client, vm: &str, source: &str) -> String {
    let out = run_in_guest(client, vm, &format!("echo CTR-$({source})-E$((1+1))"), "-E2").await;
    let tail = out.rsplit("CTR-").next().unwrap_or_default();
    tail.split("-E2").next().unwrap_or_default().trim().to_string()
}

/// The number a shell command in the guest prints (e.g. a counter it keeps), 0 if none.
pub async fn guest_number(client: &oxvirt_client::Client, vm: &str, source: &str) -> u64 {
    let text = guest_text(client, vm, source).await;
    text.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Waits until the guest's `eth0` has `ip` (its DHCP client is done).
pub async fn wait_guest_address(client: &oxvirt_client::Client, vm: &str, ip: &str) {
    run_in_guest(client, vm, &guest_check(&format!("ip -4 addr show dev eth0 | grep -q 'inet {ip}/'")), GUEST_OK).await;
}

/// A directory of the test's (in /tmp, short: socket paths are limited) as an operator would
/// make a data directory: others may pass through it (0711), as oxvirt's unprivileged
/// processes (QEMU, dnsmasq, export daemons) must, and oxvirt changes no mode of it.
pub fn operator_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}
