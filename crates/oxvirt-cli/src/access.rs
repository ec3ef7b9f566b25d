//! `oxvirt user`, `token`, `acl`, `login`, `audit`, `project` and `cluster`.

use crate::args::{size, word};
use crate::output::{print_json, table, Output};
use clap::Subcommand;
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{AclEntry, ApiToken, ClusterPolicy, LoginRequest, NewTokenRequest, ProjectSpec, Quotas, UserSpec};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a local user; the password is read from standard input (one line).
    Create {
        name: String,
    },
    List,
    /// Delete a user, their grants and tokens.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// A new token acting as you; its secret is printed once.
    Create {
        name: String,
        #[arg(long)]
        expires_in: Option<u64>,
        /// (Administrators) for another user.
        #[arg(long)]
        user: Option<String>,
    },
    List,
    /// Revoke a token: refused from the next request on.
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Create a project; quotas left out are unlimited.
    Create {
        name: String,
        #[arg(long)]
        vms: Option<u32>,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory: Option<String>,
        #[arg(long)]
        storage: Option<String>,
    },
    List,
    Delete {
        name: String,
    },
}

pub async fn project(client: &Client, out: Output, cmd: ProjectCmd) -> Result<(), ClientError> {
    match cmd {
        ProjectCmd::Create { name, vms, vcpus, memory, storage } => {
            let quotas = Quotas {
                vms,
                vcpus,
                memory: memory.map(|m| size("--memory", &m)).transpose()?,
                storage: storage.map(|s| size("--storage", &s)).transpose()?,
            };
            print_json(&client.projects().create_project(&ProjectSpec { name, quotas }).await?);
        }
        ProjectCmd::List => {
            let ps = client.projects().list_projects().await?;
            if out == Output::Json {
                print_json(&ps);
            } else {
                let rows = ps
                    .iter()
                    .map(|p| {
                        let (q, u) = (&p.project.spec.quotas, &p.usage);
                        let of = |used: u64, quota: Option<u64>| {
                            format!("{used}/{}", quota.map_or_else(|| "-".to_string(), |q| q.to_string()))
                        };
                        vec![
                            p.project.spec.name.clone(),
                            of(u.vms.into(), q.vms.map(u64::from)),
                            of(u.vcpus.into(), q.vcpus.map(u64::from)),
                            of(u.memory, q.memory.map(|m| m.0)),
                            of(u.storage, q.storage.map(|m| m.0)),
                        ]
                    })
                    .collect();
                table(&["NAME", "VMS", "VCPUS", "MEMORY", "STORAGE"], rows);
            }
        }
        ProjectCmd::Delete { name } => {
            client.projects().delete_project(&name).await?;
            println!("project {name} deleted");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The cluster's hosts: online or not, the leader, their VMs.
    Hosts,
    /// Take a host out of the cluster (refused while it has VMs).
    Leave { host: String },
    /// Maintenance: no new VMs on HOST, its running VMs migrated away (ask HOST's own API).
    Drain { host: String },
    /// End maintenance.
    Undrain { host: String },
    /// HA: HOST kills its HA VMs and runs none until unfenced; they are recovered elsewhere.
    Fence { host: String },
    /// End HOST's fence.
    Unfence { host: String },
    /// Show or change the placement and rebalancing policy.
    Policy(ClusterPolicyArgs),
    /// The rebalancing plan; with --apply its first migrations start (at most the policy's
    /// max-migrations at once).
    Rebalance {
        #[arg(long)]
        apply: bool,
    },
}

#[derive(clap::Args)]
pub struct ClusterPolicyArgs {
    /// Placement: spread (even out) or pack (consolidate).
    #[arg(long)]
    strategy: Option<String>,
    /// off, or auto (the leader rebalances every --interval seconds).
    #[arg(long)]
    rebalance: Option<String>,
    /// Most migrations at once.
    #[arg(long)]
    max_migrations: Option<u32>,
    /// Spread: rebalance when hosts' loads differ by more than this many percent.
    #[arg(long)]
    threshold: Option<u32>,
    #[arg(long)]
    interval: Option<u64>,
}

pub async fn cluster(client: &Client, out: Output, cmd: ClusterCmd) -> Result<(), ClientError> {
    match cmd {
        ClusterCmd::Hosts => {
            let hosts = client.cluster().cluster_hosts().await?;
            if out == Output::Json {
                print_json(&hosts);
            } else {
                let rows = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.host.name.clone(),
                            h.host.address.clone(),
                            match (h.online, h.fenced, h.host.maintenance) {
                                (false, _, _) => "offline",
                                (true, true, _) => "fenced",
                                (true, false, true) => "maintenance",
                                (true, false, false) => "online",
                            }
                            .to_string(),
                            if h.leader { "leader" } else { "" }.to_string(),
                            h.host.cpus.to_string(),
                            format!("{} GiB", h.host.memory >> 30),
                            format!("{:.0}%", h.host.cpu_pressure * 100.0),
                            h.vms.to_string(),
                        ]
                    })
                    .collect();
                table(&["HOST", "ADDRESS", "STATE", "ROLE", "CPUS", "MEMORY", "CPU PRESSURE", "VMS"], rows);
            }
        }
        ClusterCmd::Drain { host } => {
            // One task drains the host (older daemons answer a task per VM).
            let tasks = client.cluster().set_maintenance(&host, true).await?;
            let mut said = Vec::new();
            for t in &tasks {
                said.push(crate::follow_task(client, t, std::time::Duration::from_secs(3600), out).await?.message);
            }
            println!("host {host} is in maintenance; {}", said.join("; "));
        }
        ClusterCmd::Fence { host } => println!("{}", client.cluster().fence_host(&host).await?.message),
        ClusterCmd::Unfence { host } => {
            client.cluster().unfence_host(&host).await?;
            println!("host {host} may run HA VMs again");
        }
        ClusterCmd::Undrain { host } => {
            client.cluster().set_maintenance(&host, false).await?;
            println!("host {host} takes VMs again");
        }
        ClusterCmd::Policy(a) => {
            let strategy = a.strategy.as_deref().map(|v| word("--strategy", v)).transpose()?;
            let rebalance = a.rebalance.as_deref().map(|v| word("--rebalance", v)).transpose()?;
            let changed = strategy.is_some()
                || rebalance.is_some()
                || a.max_migrations.is_some()
                || a.threshold.is_some()
                || a.interval.is_some();
            let mut p = client.cluster().cluster_policy().await?;
            if changed {
                let new = ClusterPolicy {
                    strategy: strategy.unwrap_or(p.strategy),
                    rebalance: rebalance.unwrap_or(p.rebalance),
                    max_migrations: a.max_migrations.unwrap_or(p.max_migrations),
                    threshold_percent: a.threshold.unwrap_or(p.threshold_percent),
                    interval_secs: a.interval.unwrap_or(p.interval_secs),
                };
                p = client.cluster().set_cluster_policy(&new).await?;
            }
            print_cluster_policy(&p, out)?;
        }
        ClusterCmd::Rebalance { apply } => {
            let v = if apply { client.cluster().rebalance().await? } else { client.cluster().rebalance_plan().await? };
            if out == Output::Json {
                print_json(&v);
            } else {
                let rows = v
                    .moves
                    .iter()
                    .map(|m| {
                        vec![
                            m.vm.clone(),
                            m.from.clone(),
                            m.to.clone(),
                            if v.started.contains(&m.vm) { "started" } else { "planned" }.to_string(),
                            m.reason.clone(),
                        ]
                    })
                    .collect::<Vec<_>>();
                if rows.is_empty() {
                    println!("balanced: nothing to move ({} strategy)", strategy_word(v.policy.strategy));
                } else {
                    table(&["VM", "FROM", "TO", "STATE", "WHY"], rows);
                }
            }
        }
        ClusterCmd::Leave { host } => {
            client.cluster().leave_cluster(&host).await?;
            println!("host {host} left the cluster");
        }
    }
    Ok(())
}

/// The policy as the API sent it, printed as it always was: JSON with its keys sorted (through
/// `serde_json::Value`), or a line a field.
fn print_cluster_policy(p: &ClusterPolicy, out: Output) -> Result<(), ClientError> {
    let p = serde_json::to_value(p).map_err(|e| ClientError::Decode(e.to_string()))?;
    if out == Output::Json {
        print_json(&p);
    } else {
        for k in ["strategy", "rebalance", "max_migrations", "threshold_percent", "interval_secs"] {
            println!("{k:<18} {}", p[k].as_str().map(str::to_string).unwrap_or_else(|| p[k].to_string()));
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AclCmd {
    Show,
    /// Grant ROLE (administrator, operator, auditor, none) to USER on PATH (/, /vms/NAME...).
    Grant {
        path: String,
        user: String,
        role: String,
    },
    /// Take back USER's grant on PATH.
    Revoke {
        path: String,
        user: String,
    },
}

fn read_password() -> Result<String, ClientError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| ClientError::Decode(format!("password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn print_tokens(t: &[ApiToken], out: Output) {
    if out == Output::Json {
        return print_json(&t);
    }
    let rows = t
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.user.clone(),
                t.name.clone(),
                t.expires_at.map(|e| e.to_string()).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    table(&["ID", "USER", "NAME", "EXPIRES (ms)"], rows);
}

pub async fn user(client: &Client, out: Output, cmd: UserCmd) -> Result<(), ClientError> {
    match cmd {
        UserCmd::Create { name } => {
            let password = read_password()?;
            let u = client.access().create_user(&UserSpec { name, password }).await?;
            println!("user {} created", u.name);
        }
        UserCmd::List => {
            let users = client.access().list_users().await?;
            if out == Output::Json {
                print_json(&users);
            } else {
                table(
                    &["NAME", "CREATED (ms)"],
                    users.iter().map(|u| vec![u.name.clone(), u.created_at.to_string()]).collect(),
                );
            }
        }
        UserCmd::Delete { name } => {
            client.access().delete_user(&name).await?;
            println!("user {name} deleted");
        }
    }
    Ok(())
}

pub async fn token(client: &Client, out: Output, cmd: TokenCmd) -> Result<(), ClientError> {
    match cmd {
        TokenCmd::Create { name, expires_in, user } => {
            let t = client.access().create_token(&NewTokenRequest { name, expires_in_secs: expires_in, user }).await?;
            if out == Output::Json {
                print_json(&t);
            } else {
                println!("token {} for {}: {}", t.token.id, t.token.user, t.secret);
            }
        }
        TokenCmd::List => print_tokens(&client.access().list_tokens().await?, out),
        TokenCmd::Revoke { id } => {
            client.access().revoke_token(&id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

pub async fn acl(client: &Client, out: Output, cmd: AclCmd) -> Result<(), ClientError> {
    let acl = match cmd {
        AclCmd::Show => client.access().acl().await?,
        AclCmd::Grant { path, user, role } => {
            let grant = AclEntry { path, user, role: word("role", &role)? };
            let mut acl = client.access().acl().await?;
            acl.retain(|e| !(e.path == grant.path && e.user == grant.user));
            acl.push(grant);
            client.access().set_acl(&acl).await?
        }
        AclCmd::Revoke { path, user } => {
            let mut acl = client.access().acl().await?;
            acl.retain(|e| !(e.path == path && e.user == user));
            client.access().set_acl(&acl).await?
        }
    };
    if out == Output::Json {
        print_json(&acl);
    } else {
        let rows =
            acl.iter().map(|e| vec![e.path.clone(), e.user.clone(), format!("{:?}", e.role).to_lowercase()]).collect();
        table(&["PATH", "USER", "ROLE"], rows);
    }
    Ok(())
}

/// Logs in over HTTPS (no token needed) and prints a token valid for 8 hours.
pub async fn login(client: &Client, user: &str) -> Result<(), ClientError> {
    let password = read_password()?;
    let t = client.access().login(&LoginRequest { user: user.to_string(), password }).await?;
    println!("{}", t.secret);
    Ok(())
}

pub async fn audit(client: &Client, out: Output, limit: usize) -> Result<(), ClientError> {
    let recs = client.access().audit(limit).await?;
    if out == Output::Json {
        print_json(&recs);
        return Ok(());
    }
    let rows = recs
        .iter()
        .map(|r| {
            vec![
                r.time.to_string(),
                r.user.clone(),
                r.from.clone(),
                r.method.clone(),
                r.path.clone(),
                r.status.to_string(),
            ]
        })
        .collect();
    table(&["TIME (ms)", "USER", "FROM", "METHOD", "PATH", "STATUS"], rows);
    Ok(())
}

/// A placement strategy as the API spells it.
fn strategy_word(s: oxvirt_model::PlacementStrategy) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}
