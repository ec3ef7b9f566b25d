//! `oxvirt`: the command-line client of oxvirtd.

mod access;
mod args;
mod backup;
mod console;
mod ha;
mod network;
mod output;
mod resources;
mod run;
mod storage;
mod templates;
mod vm_requests;

use clap::{Args, Parser, Subcommand};
use output::{print_host, print_task, print_tasks, print_vm, print_vms, Output};
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{MigrateRequest, Task, TaskState};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "oxvirt", version, about = "Drive oxvirt: VMs, tasks and the host")]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "OXVIRT_SOCKET", default_value = "/var/lib/oxvirt/oxvirtd.sock")]
    socket: PathBuf,
    /// The daemon's HTTPS API, e.g. https://host:8443 (instead of the socket).
    #[arg(long, global = true, env = "OXVIRT_URL")]
    url: Option<String>,
    /// API token for --url (the first one is in <data-dir>/admin.token).
    #[arg(long, global = true, env = "OXVIRT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 fingerprint of the daemon's certificate, to pin it (in <data-dir>/tls/fingerprint).
    #[arg(long, global = true, env = "OXVIRT_FINGERPRINT")]
    fingerprint: Option<String>,
    /// How to print results.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Long operations.
    #[command(subcommand)]
    Task(TaskCmd),
    /// This host.
    #[command(subcommand)]
    Host(HostCmd),
    /// Storage pools.
    #[command(subcommand)]
    Pool(storage::PoolCmd),
    /// Volumes in storage pools.
    #[command(subcommand)]
    Volume(storage::VolumeCmd),
    /// Virtual networks (nat, isolated, vxlan, bridged).
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Security groups: allow rules for NICs.
    #[command(subcommand, name = "security-group", alias = "sg")]
    SecurityGroup(network::SecurityGroupCmd),
    /// Local users (the password is read from standard input).
    #[command(subcommand)]
    User(access::UserCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// The cluster (when the store is etcd): hosts, leaving.
    #[command(subcommand)]
    Cluster(access::ClusterCmd),
    /// High availability: VMs kept started (restarted, moved) or stopped, and host groups.
    #[command(subcommand)]
    Ha(ha::HaCmd),
    /// Backup repositories: directories of deduplicated chunks every host may share.
    #[command(subcommand, name = "backup-repo")]
    BackupRepo(backup::RepoCmd),
    /// Backups: list, show, remove, restore as a new VM.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Backup jobs: VMs backed up on a schedule, pruned after.
    #[command(subcommand, name = "backup-job")]
    BackupJob(backup::JobCmd),
    /// Templates: quiet microvms saved once, restored instead of booted (`vm create --template`).
    #[command(subcommand)]
    Template(templates::TemplateCmd),
    /// Run a command in a fresh VM made from a template (from its warm pool when one waits):
    /// its output (stdout and stderr, from the serial console) streamed, its exit code this
    /// command's; the VM is discarded after.
    Run {
        #[arg(long)]
        template: String,
        /// Seconds until the command must have ended.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Projects (tenants) and their quotas.
    #[command(subcommand)]
    Project(access::ProjectCmd),
    /// Who may do what where: roles granted to users on paths.
    #[command(subcommand)]
    Acl(access::AclCmd),
    /// Log in over HTTPS with a password (read from standard input): prints a token for 8 hours.
    Login { user: String },
    /// The audit log's latest records.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Live-migrate a running VM to another host of the cluster (a task with progress).
    Migrate {
        name: String,
        #[arg(long)]
        to: String,
        /// Longest pause at the switch-over, ms.
        #[arg(long, default_value_t = 100)]
        downtime_ms: u64,
        /// MiB/s at most (0: no limit).
        #[arg(long, default_value_t = 0)]
        bandwidth_mibs: u64,
        /// Slow the guest's vCPUs down while its memory changes faster than it is sent.
        #[arg(long)]
        auto_converge: bool,
        /// Switch to post-copy after 5 s of pre-copy (the guest runs on the target, which fetches
        /// the rest). A failure after the switch loses the running state (the VM must be started
        /// again). The target's QEMU must be able to use userfaultfd (unconfined, or
        /// vm.unprivileged_userfaultfd = 1).
        #[arg(long)]
        postcopy: bool,
    },
    /// Back a VM up into a repository, running or stopped (a task): all its disks at one
    /// instant, only the chunks changed since its last backup there when that is known.
    Backup {
        name: String,
        #[arg(long)]
        repo: String,
    },
    /// Change a VM's CPU weight, cap, pinning, memory limit... (live where it can be).
    Resources(resources::ResourcesArgs),
    /// Show a running VM's balloon, or set its target (e.g. 512MiB).
    Balloon { name: String, target: Option<String> },
    /// A VM's NICs: add, set (security groups, limits), del.
    #[command(subcommand)]
    Nic(network::NicCmd),
    /// Define a VM (and start it with --start).
    Create(Box<CreateArgs>),
    /// List VMs.
    List,
    /// Show one VM.
    Show { name: String },
    /// Start a VM.
    Start(ActionArgs),
    /// Shut a VM down gracefully (ACPI power button; forced off after the daemon's stop timeout).
    Stop(ActionArgs),
    /// Shut down and start again.
    Reboot(ActionArgs),
    /// Hard reset (like the reset button).
    Reset(ActionArgs),
    /// Pause the vCPUs.
    Pause(ActionArgs),
    /// Resume a paused VM.
    Resume(ActionArgs),
    /// Force a VM off at once.
    Kill(ActionArgs),
    /// Delete a stopped VM (its disk images stay).
    Delete { name: String },
    /// Live figures of every VM (CPU, memory, disk I/O), refreshed until Ctrl-C.
    Top {
        /// Print once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Attach a disk (hot-plugged when the VM runs): --volume POOL/NAME or --path FILE.
    Attach {
        name: String,
        #[arg(long, conflicts_with = "path")]
        volume: Option<String>,
        #[arg(long)]
        path: Option<PathBuf>,
        /// virtio-blk or virtio-scsi.
        #[arg(long, default_value = "virtio-blk")]
        bus: String,
        #[arg(long)]
        readonly: bool,
    },
    /// Detach a disk by its id (see `vm show`).
    Detach { name: String, disk: String },
    /// Snapshot all of the VM's volumes at one instant (also while it runs).
    Snapshot { name: String, snapshot: String },
    /// Revert a stopped VM's volumes to a snapshot.
    Revert { name: String, snapshot: String },
    /// Set a disk's I/O limits, live: e.g. --bps-read 10MiB --iops-total 500.
    Qos(QosArgs),
    /// Attach to the VM's serial console (Ctrl-] leaves).
    Console { name: String },
    /// Print the VM's serial console output.
    ConsoleLog {
        name: String,
        /// Bytes from the end to print.
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
        /// Keep printing new output until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Args)]
struct QosArgs {
    name: String,
    disk: String,
    #[arg(long, default_value = "0")]
    bps_total: String,
    #[arg(long, default_value = "0")]
    bps_read: String,
    #[arg(long, default_value = "0")]
    bps_write: String,
    #[arg(long, default_value_t = 0)]
    iops_total: u64,
    #[arg(long, default_value_t = 0)]
    iops_read: u64,
    #[arg(long, default_value_t = 0)]
    iops_write: u64,
    /// Disks with the same group share the limits.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Args)]
struct ActionArgs {
    name: String,
    /// Return at once with the task instead of waiting for it.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait for the task.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args)]
struct CreateArgs {
    name: String,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory, e.g. 512MiB or 2GiB.
    #[arg(long, default_value = "512MiB")]
    memory: String,
    /// q35 or microvm.
    #[arg(long, default_value = "q35")]
    machine: String,
    /// Kernel image for direct kernel boot.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    #[arg(long, requires = "kernel", default_value = "")]
    cmdline: String,
    /// A disk image: PATH, or PATH:FORMAT (qcow2, raw); the first boots when there is no kernel.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// A volume of a pool, POOL/NAME (repeat for more; after the --disk ones).
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// Add a NIC on an isolated network (repeat for more).
    #[arg(long = "nic", action = clap::ArgAction::Count)]
    nics: u8,
    /// Add a NIC on this host bridge (a TAP device oxvirt makes; repeat for more).
    #[arg(long = "bridge")]
    bridges: Vec<String>,
    /// Add a NIC on this oxvirt network (repeat for more).
    #[arg(long = "network")]
    networks: Vec<String>,
    /// never, on-failure or always.
    #[arg(long, default_value = "never")]
    restart_policy: String,
    /// auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// In a cluster: the host to run on (default: the scheduler's pick).
    #[arg(long)]
    host: Option<String>,
    /// In a cluster: VMs of this affinity group run on one host.
    #[arg(long)]
    affinity: Option<String>,
    /// In a cluster: VMs of this anti-affinity group run on different hosts.
    #[arg(long)]
    anti_affinity: Option<String>,
    /// Restore this template's guest at each start instead of booting: the VM has the
    /// template's machine, CPUs, memory and kernel.
    #[arg(long, conflicts_with_all = ["kernel", "disks", "volumes", "nics", "bridges", "networks"])]
    template: Option<String>,
    /// Start it at once (and wait until QEMU runs).
    #[arg(long)]
    start: bool,
}

#[derive(Subcommand)]
enum TaskCmd {
    /// List tasks, newest first.
    List,
    /// Show one task.
    Show { id: String },
    /// Wait for a task to end, with a progress bar.
    Wait {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Ask a running task to stop.
    Cancel { id: String },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Show the host: CPUs, memory, accelerator and why.
    Show,
    /// Show or change the resource policy (over-commit, auto-ballooning, KSM).
    Policy(resources::PolicyArgs),
    /// Committed vCPUs and memory, NUMA nodes, KSM, huge pages.
    Resources,
    /// Live figures of the host and its VMs, refreshed until Ctrl-C.
    Top {
        #[arg(long)]
        once: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let client = match &cli.url {
        None => Client::new(&cli.socket),
        Some(url) => {
            // Logging in is how one gets a token: none is needed for it.
            let anonymous = if matches!(cli.command, Command::Login { .. }) { "-" } else { "" };
            let token = cli.token.as_deref().unwrap_or(anonymous);
            let fingerprint = cli.fingerprint.as_deref().unwrap_or("");
            match oxvirt_client::Transport::https(url, token, fingerprint) {
                Ok(t) => Client::with_transport(t),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
    };
    if let Err(e) = run(&client, cli.output, cli.command).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

pub(crate) fn absolute(p: &Path) -> Result<String, ClientError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| ClientError::Http(e.to_string()))?.join(p)
    };
    Ok(abs.to_string_lossy().into_owned())
}

async fn run(client: &Client, out: Output, cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Vm(VmCmd::Create(a)) => {
            let created = client.create_vm(&vm_requests::create_spec(&a)?, a.start).await?;
            if let Some(task) = created.task {
                follow_task(client, &task, Duration::from_secs(300), out).await?;
            }
            print_vm(&client.get_vm(&created.vm.spec.name).await?, out);
        }
        Command::Vm(VmCmd::Migrate { name, to, downtime_ms, bandwidth_mibs, auto_converge, postcopy }) => {
            let req = MigrateRequest { to, downtime_ms, bandwidth_mibs, auto_converge, postcopy };
            let t = client.migrate_vm_with(&name, &req).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            // How it went, phase by phase: where the time went is the user's to see.
            match out {
                Output::Json => print_task(&done, out),
                Output::Table => println!("VM {name} {}", done.message),
            }
        }
        Command::Vm(VmCmd::Backup { name, repo }) => backup::vm_backup(client, out, &name, &repo).await?,
        Command::Vm(VmCmd::Resources(a)) => print_vm(&resources::resources(client, a).await?, out),
        Command::Vm(VmCmd::Balloon { name, target }) => resources::balloon(client, out, &name, target).await?,
        Command::Vm(VmCmd::Nic(cmd)) => print_vm(&network::nic(client, cmd).await?, out),
        Command::Vm(VmCmd::List) => print_vms(&client.list_vms().await?, out),
        Command::Vm(VmCmd::Show { name }) => {
            print_vm(&client.get_vm(&name).await?, out);
            // (Not an HA resource, or HA not readable by this caller: no line.)
            if out == Output::Table {
                if let Ok(r) = client.ha().get_resource(&name).await {
                    println!("ha:          {}", ha::summary(&r));
                }
            }
        }
        Command::Vm(VmCmd::Delete { name }) => {
            client.delete_vm(&name).await?;
            if out == Output::Json {
                println!("{}", json!({ "deleted": name }));
            } else {
                println!("VM {name} deleted");
            }
        }
        Command::Vm(VmCmd::Console { name }) => console::run(client, &name).await?,
        Command::Vm(VmCmd::Top { once }) => output::top(client, out, false, once).await?,
        Command::Vm(VmCmd::Attach { name, volume, path, bus, readonly }) => {
            let disk = vm_requests::attached_disk(volume, path.as_deref(), &bus, readonly)?;
            print_vm(&client.attach_disk(&name, &disk).await?, out);
        }
        Command::Vm(VmCmd::Detach { name, disk }) => print_vm(&client.detach_disk(&name, &disk).await?, out),
        Command::Vm(VmCmd::Snapshot { name, snapshot }) => {
            storage::print_volumes(&client.snapshot_vm(&name, &snapshot).await?, out)
        }
        Command::Vm(VmCmd::Revert { name, snapshot }) => {
            storage::print_volumes(&client.revert_vm(&name, &snapshot).await?, out)
        }
        Command::Vm(VmCmd::Qos(a)) => {
            let qos = vm_requests::disk_qos(&a)?;
            print_vm(&client.set_disk_qos(&a.name, &a.disk, &qos).await?, out);
        }
        Command::Vm(VmCmd::ConsoleLog { name, bytes, follow }) => console_log(client, &name, bytes, follow).await?,
        Command::Vm(action) => {
            let (verb, a) = match action {
                VmCmd::Start(a) => ("start", a),
                VmCmd::Stop(a) => ("stop", a),
                VmCmd::Reboot(a) => ("reboot", a),
                VmCmd::Reset(a) => ("reset", a),
                VmCmd::Pause(a) => ("pause", a),
                VmCmd::Resume(a) => ("resume", a),
                VmCmd::Kill(a) => ("kill", a),
                _ => unreachable!("handled above"),
            };
            let task = client.vm_action(&a.name, verb).await?;
            if a.no_wait {
                print_task(&task, out);
            } else {
                follow_task(client, &task, Duration::from_secs(a.timeout), out).await?;
                print_vm(&client.get_vm(&a.name).await?, out);
            }
        }
        Command::Task(TaskCmd::List) => print_tasks(&client.list_tasks().await?, out),
        Command::Task(TaskCmd::Show { id }) => print_task(&client.get_task(&id).await?, out),
        Command::Task(TaskCmd::Cancel { id }) => print_task(&client.cancel_task(&id).await?, out),
        Command::Task(TaskCmd::Wait { id, timeout }) => {
            let t = client.get_task(&id).await?;
            let t = follow_task(client, &t, Duration::from_secs(timeout), out).await?;
            print_task(&t, out);
        }
        Command::Host(HostCmd::Policy(a)) => resources::policy(client, a).await?,
        Command::Host(HostCmd::Resources) => resources::host_resources(client, out).await?,
        Command::Host(HostCmd::Show) => print_host(&client.host().await?, out),
        Command::Host(HostCmd::Top { once }) => output::top(client, out, true, once).await?,
        Command::Pool(cmd) => storage::pool(client, out, cmd).await?,
        Command::User(cmd) => access::user(client, out, cmd).await?,
        Command::Token(cmd) => access::token(client, out, cmd).await?,
        Command::Acl(cmd) => access::acl(client, out, cmd).await?,
        Command::Ha(cmd) => ha::run(client, out, cmd).await?,
        Command::BackupRepo(cmd) => backup::repo(client, out, cmd).await?,
        Command::Backup(cmd) => backup::backup(client, out, cmd).await?,
        Command::BackupJob(cmd) => backup::job(client, out, cmd).await?,
        Command::Template(cmd) => templates::template(client, out, cmd).await?,
        Command::Run { template, timeout, command } => {
            let code = run::run(client, &template, &command, Duration::from_secs(timeout)).await?;
            std::process::exit(code);
        }
        Command::Project(cmd) => access::project(client, out, cmd).await?,
        Command::Cluster(cmd) => access::cluster(client, out, cmd).await?,
        Command::Login { user } => access::login(client, &user).await?,
        Command::Audit { limit } => access::audit(client, out, limit).await?,
        Command::Network(cmd) => network::network(client, out, cmd).await?,
        Command::SecurityGroup(cmd) => network::security_group(client, out, cmd).await?,
        Command::Volume(cmd) => storage::volume(client, out, cmd).await?,
    }
    Ok(())
}

/// Follows a task to its end with a progress bar (on a terminal); a failed task is an error.
pub(crate) async fn follow_task(
    client: &Client,
    task: &Task,
    timeout: Duration,
    out: Output,
) -> Result<Task, ClientError> {
    let bar = if out == Output::Table { indicatif::ProgressBar::new(100) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", task.kind, task.target));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut t = task.clone();
    while !t.state.is_final() && tokio::time::Instant::now() < deadline {
        bar.set_position(t.progress as u64);
        bar.set_message(t.message.clone());
        // The daemon answers as soon as the task ends, or after a second with how far it got
        // (the bar moves on each second): no poll between, so the end is seen at once.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = client.wait_task(&t.id, left.min(Duration::from_secs(1))).await;
        t = match wait {
            Ok(t) => t,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
    }
    bar.set_position(t.progress as u64);
    bar.finish_with_message(format!("{:?}", t.state).to_lowercase());
    match t.state {
        TaskState::Succeeded => Ok(t),
        TaskState::Running => Err(ClientError::Http(format!(
            "task {} still running after {timeout:?}; follow it with `oxvirt task wait {}`",
            t.id, t.id
        ))),
        _ => Err(ClientError::Http(format!(
            "{} {} {}: {}",
            t.kind,
            t.target,
            format!("{:?}", t.state).to_lowercase(),
            t.error.unwrap_or_default()
        ))),
    }
}

async fn console_log(client: &Client, name: &str, bytes: u64, follow: bool) -> Result<(), ClientError> {
    use std::io::Write;
    let log = client.console_log(name, bytes).await?;
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(&log);
    let _ = stdout.flush();
    if !follow {
        return Ok(());
    }
    // Follow by asking for the end again and printing what is new.
    let mut seen = log;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = client.console_log(name, 1 << 20).await?;
        let new = new_suffix(&seen, &now);
        if !new.is_empty() {
            let _ = stdout.write_all(new);
            let _ = stdout.flush();
        }
        seen = now;
    }
}

/// What `now` has after the end of `seen` (the log only grows, or is rotated).
fn new_suffix<'a>(seen: &[u8], now: &'a [u8]) -> &'a [u8] {
    let tail = &seen[seen.len().saturating_sub(256)..];
    if tail.is_empty() {
        return now;
    }
    match now.windows(tail.len()).rposition(|w| w == tail) {
        Some(pos) => &now[pos + tail.len()..],
        None => now,
    }
}
