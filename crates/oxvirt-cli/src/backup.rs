//! `oxvirt backup-repo` (repositories), `oxvirt backup` (the backups in them: list, show,
//! remove, restore) and `oxvirt vm backup`.

use crate::follow_task;
use crate::output::{print_json, print_task, table, Output};
use clap::{Args, Subcommand};
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{Backup, BackupJobSpec, BackupRepoSpec, PruneRequest, Retention, Task};
use std::time::Duration;

/// How many of each period's newest backups to keep (each VM's apart).
#[derive(Args)]
pub struct RetentionArgs {
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
}

impl RetentionArgs {
    fn retention(&self) -> Retention {
        Retention {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }
}

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Make a repository in a host directory (made if absent; it must hold nothing else), or
    /// join the one another host made there (a shared directory). Administrators only.
    Create {
        name: String,
        #[arg(long)]
        path: String,
        /// Encrypt chunks and VM definitions on the hosts, with a key oxvirt makes (see `key`).
        #[arg(long)]
        encrypt: bool,
        /// Join a repository encrypted before, with its key (a file of 64 hex digits, read here).
        #[arg(long, requires = "encrypt")]
        key_file: Option<std::path::PathBuf>,
    },
    List,
    /// Print an encrypted repository's key, to keep apart: without it its backups are lost.
    Key {
        name: String,
    },
    Show {
        name: String,
    },
    /// Forget a repository: its directory and backups stay.
    Remove {
        name: String,
    },
    /// Forget the backups a retention does not keep (each VM's apart).
    Prune {
        name: String,
        #[arg(long)]
        vm: Option<String>,
        #[command(flatten)]
        keep: RetentionArgs,
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the chunks no backup needs (a task).
    Gc {
        name: String,
    },
    /// Read back every chunk a backup needs; fails naming the damaged backups (a task).
    Verify {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// The backups in a repository, oldest first.
    List {
        #[arg(long)]
        repo: String,
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
    },
    /// One backup: REPO/ID.
    Show { backup: String },
    /// Forget a backup (REPO/ID); its chunks stay while another backup needs them.
    Remove { backup: String },
    /// Write one disk of a backup (REPO/ID) to a new qcow2 file on the host (a task;
    /// administrators).
    Export {
        backup: String,
        /// The disk's id (disk0 when left out).
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        to: String,
    },
    /// Restore a backup (REPO/ID) as a new VM, its disks new volumes of a pool (a task).
    Restore {
        backup: String,
        /// The new VM's name.
        #[arg(long = "as")]
        name: String,
        #[arg(long)]
        pool: String,
    },
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Back VMs up into a repository on a cron schedule (UTC), pruning to a retention after
    /// each run. Administrators only.
    Create {
        name: String,
        /// The VMs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        vms: Vec<String>,
        #[arg(long)]
        repo: String,
        /// minute hour day-of-month month day-of-week, e.g. "*/15 * * * *" or "0 3 * * *".
        #[arg(long)]
        schedule: String,
        /// Pruned to this after each run (none: no prune).
        #[command(flatten)]
        keep: RetentionArgs,
        /// Made disabled: it runs only when asked.
        #[arg(long)]
        disabled: bool,
    },
    List,
    Show {
        name: String,
    },
    /// Run a job now (a task).
    Run {
        name: String,
    },
    Remove {
        name: String,
    },
}

/// `REPO/ID`.
fn split(backup: &str) -> Result<(&str, &str), ClientError> {
    backup
        .split_once('/')
        .filter(|(r, i)| !r.is_empty() && !i.is_empty())
        .ok_or_else(|| ClientError::Usage(format!("{backup:?}: a backup is named REPO/ID (see `oxvirt backup list`)")))
}

/// A finished task: its message, or the whole task as JSON.
fn finished(t: &Task, out: Output) {
    match out {
        Output::Json => print_task(t, out),
        Output::Table => println!("{}", t.message),
    }
}

pub async fn repo(client: &Client, out: Output, cmd: RepoCmd) -> Result<(), ClientError> {
    let b = client.backups();
    match cmd {
        RepoCmd::Create { name, path, encrypt, key_file } => {
            let key = match key_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map_err(|e| ClientError::Usage(format!("--key-file {}: {e}", f.display())))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let repo = b.create_repo(&BackupRepoSpec { name, path, encrypt, key }).await?;
            if repo.spec.encrypt && out != Output::Json {
                eprintln!(
                    "backup repository {0} is encrypted: keep its key apart (`oxvirt backup-repo key {0}`), without it its backups cannot be read",
                    repo.spec.name
                );
            }
            print_json(&repo)
        }
        RepoCmd::Key { name } => {
            let k = b.repo_key(&name).await?;
            if out == Output::Json {
                print_json(&k);
            } else {
                println!("{}", k.key);
                eprintln!("(fingerprint {})", k.fingerprint);
            }
        }
        RepoCmd::List => {
            let all = b.list_repos().await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            let rows = all
                .iter()
                .map(|r| {
                    vec![
                        r.repo.spec.name.clone(),
                        r.repo.spec.path.clone(),
                        r.backups.to_string(),
                        r.chunks.to_string(),
                        format!("{} MiB", r.stored_bytes >> 20),
                    ]
                })
                .collect();
            table(&["NAME", "PATH", "BACKUPS", "CHUNKS", "STORED"], rows);
        }
        RepoCmd::Show { name } => print_json(&b.get_repo(&name).await?),
        RepoCmd::Remove { name } => {
            b.remove_repo(&name).await?;
            println!("backup repository {name} forgotten (its directory stays)");
        }
        RepoCmd::Prune { name, vm, keep, dry_run } => {
            let r = b.prune(&name, &PruneRequest { keep: keep.retention(), vm, dry_run }).await?;
            if out == Output::Json {
                print_json(&r);
            } else {
                let verb = if r.dry_run { "would remove" } else { "removed" };
                println!("kept {}: {}", r.kept.len(), r.kept.join(", "));
                println!("{verb} {}: {}", r.removed.len(), r.removed.join(", "));
            }
        }
        RepoCmd::Gc { name } => {
            let t = b.collect_garbage(&name).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            finished(&done, out);
        }
        RepoCmd::Verify { name } => {
            let t = b.verify(&name).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            finished(&done, out);
        }
    }
    Ok(())
}

pub async fn job(client: &Client, out: Output, cmd: JobCmd) -> Result<(), ClientError> {
    let b = client.backups();
    match cmd {
        JobCmd::Create { name, vms, repo, schedule, keep, disabled } => {
            let keep = keep.retention();
            let retention = (keep != Retention::default()).then_some(keep);
            let spec = BackupJobSpec { name, vms, repo, schedule, retention, enabled: !disabled };
            print_json(&b.create_job(&spec).await?);
        }
        JobCmd::List => {
            let all = b.list_jobs().await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            let rows = all
                .iter()
                .map(|j| {
                    let last = match (j.status.runs, j.status.last_ok) {
                        (0, _) => "never ran".to_string(),
                        (_, true) => "ok".to_string(),
                        (_, false) => "failed".to_string(),
                    };
                    vec![
                        j.spec.name.clone(),
                        j.spec.schedule.clone(),
                        j.spec.repo.clone(),
                        j.spec.vms.join(","),
                        if j.spec.enabled { "yes".into() } else { "no".into() },
                        last,
                        j.status.runs.to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "SCHEDULE", "REPO", "VMS", "ENABLED", "LAST", "RUNS"], rows);
        }
        JobCmd::Show { name } => print_json(&b.get_job(&name).await?),
        JobCmd::Run { name } => {
            let t = b.run_job(&name).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            finished(&done, out);
        }
        JobCmd::Remove { name } => {
            b.remove_job(&name).await?;
            println!("backup job {name} deleted");
        }
    }
    Ok(())
}

pub async fn backup(client: &Client, out: Output, cmd: BackupCmd) -> Result<(), ClientError> {
    let b = client.backups();
    match cmd {
        BackupCmd::List { repo, vm } => {
            let all = b.list(&repo, vm.as_deref()).await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            table(&["ID", "VM", "KIND", "DISKS", "READ", "NEW", "TOOK"], all.iter().map(row).collect());
        }
        BackupCmd::Show { backup } => {
            let (repo, id) = split(&backup)?;
            print_json(&b.get(repo, id).await?);
        }
        BackupCmd::Remove { backup } => {
            let (repo, id) = split(&backup)?;
            b.remove(repo, id).await?;
            println!("backup {backup} forgotten");
        }
        BackupCmd::Export { backup, disk, to } => {
            let (repo, id) = split(&backup)?;
            let t = b.export(repo, id, disk.as_deref(), &to).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            finished(&done, out);
        }
        BackupCmd::Restore { backup, name, pool } => {
            let (repo, id) = split(&backup)?;
            let t = b.restore(repo, id, &name, &pool).await?;
            let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
            finished(&done, out);
        }
    }
    Ok(())
}

/// `oxvirt vm backup VM --repo R`.
pub async fn vm_backup(client: &Client, out: Output, vm: &str, repo: &str) -> Result<(), ClientError> {
    let t = client.backups().back_up(vm, repo).await?;
    let done = follow_task(client, &t, Duration::from_secs(24 * 3600), out).await?;
    match out {
        Output::Json => print_task(&done, out),
        Output::Table => println!("VM {vm}: {}", done.message),
    }
    Ok(())
}

fn row(b: &Backup) -> Vec<String> {
    let kind = if b.full { "full".to_string() } else { format!("since {}", b.parent.clone().unwrap_or_default()) };
    vec![
        b.id.clone(),
        b.vm.clone(),
        kind,
        b.disks.len().to_string(),
        format!("{} MiB", b.read_bytes >> 20),
        format!("{} KiB", b.new_bytes >> 10),
        format!("{:.1} s", b.duration_ms as f64 / 1000.0),
    ]
}
