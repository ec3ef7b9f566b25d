//! `oxvirt ha`: the VMs the cluster keeps at a state, and the host groups they prefer.

use crate::args::word;
use crate::output::{print_json, table, Output};
use clap::{Args, Subcommand};
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{HaGroupHost, HaGroupSpec, HaResource, HaResourceSpec};

#[derive(Subcommand)]
pub enum HaCmd {
    /// Put a VM under HA (kept started by default: restarted when it fails, moved when it
    /// keeps failing or its host is lost).
    Add(ResourceArgs),
    /// Change an HA resource: only the options given.
    Set(ResourceArgs),
    List,
    Show {
        vm: String,
    },
    /// Take a VM out of HA (the VM stays as it is).
    Remove {
        vm: String,
    },
    /// HA groups: the hosts HA VMs prefer, by priority.
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Args)]
pub struct ResourceArgs {
    vm: String,
    /// The HA group whose hosts it prefers.
    #[arg(long)]
    group: Option<String>,
    /// Recovered before VMs of lower priority (0..1000).
    #[arg(long)]
    priority: Option<u32>,
    /// Restarts on its host after a failure, before it is moved (0..10; default 1).
    #[arg(long)]
    max_restarts: Option<u32>,
    /// Moves to another host when the restarts did not keep it running (0..10; default 1).
    #[arg(long)]
    max_relocations: Option<u32>,
    /// started, stopped or disabled (default started).
    #[arg(long)]
    state: Option<String>,
}

impl ResourceArgs {
    /// The spec these options make of `base` (the defaults for a new resource).
    fn apply(self, mut base: HaResourceSpec) -> Result<HaResourceSpec, ClientError> {
        if let Some(g) = self.group {
            base.group = (!g.is_empty()).then_some(g);
        }
        base.priority = self.priority.unwrap_or(base.priority);
        base.max_restarts = self.max_restarts.unwrap_or(base.max_restarts);
        base.max_relocations = self.max_relocations.unwrap_or(base.max_relocations);
        if let Some(s) = self.state {
            base.state = word("--state", &s)?;
        }
        Ok(base)
    }
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create an HA group: `--host NAME[:PRIORITY]` for each of its hosts.
    Create {
        name: String,
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Its VMs run only on its hosts.
        #[arg(long)]
        restricted: bool,
        /// A recovered VM stays where it is when a host it prefers more comes back.
        #[arg(long)]
        nofailback: bool,
    },
    List,
    Show {
        name: String,
    },
    Remove {
        name: String,
    },
}

pub async fn run(client: &Client, out: Output, cmd: HaCmd) -> Result<(), ClientError> {
    let ha = client.ha();
    match cmd {
        HaCmd::Add(a) => {
            let base: HaResourceSpec = serde_json::from_value(serde_json::json!({ "vm": a.vm }))
                .map_err(|e| ClientError::Usage(format!("VM name: {e}")))?;
            let r = ha.add_resource(&a.apply(base)?).await?;
            show(&r, out);
        }
        HaCmd::Set(a) => {
            let base = ha.get_resource(&a.vm).await?.spec;
            let r = ha.set_resource(&a.apply(base)?).await?;
            show(&r, out);
        }
        HaCmd::List => {
            let all = ha.list_resources().await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            let rows = all
                .iter()
                .map(|r| {
                    vec![
                        r.spec.vm.clone(),
                        r.spec.state.as_str().to_string(),
                        r.spec.group.clone().unwrap_or_else(|| "-".into()),
                        r.spec.priority.to_string(),
                        format!("{}/{}", r.status.restarts, r.spec.max_restarts),
                        format!("{}/{}", r.status.relocations, r.spec.max_relocations),
                        if r.status.problem.is_empty() { "-".into() } else { r.status.problem.clone() },
                    ]
                })
                .collect();
            table(&["VM", "STATE", "GROUP", "PRIORITY", "RESTARTS", "RELOCATIONS", "PROBLEM"], rows);
        }
        HaCmd::Show { vm } => show(&ha.get_resource(&vm).await?, out),
        HaCmd::Remove { vm } => {
            ha.remove_resource(&vm).await?;
            println!("VM {vm} is no longer an HA resource");
        }
        HaCmd::Group(GroupCmd::Create { name, hosts, restricted, nofailback }) => {
            let hosts = hosts.iter().map(|h| group_host(h)).collect::<Result<Vec<_>, _>>()?;
            let g = ha.add_group(&HaGroupSpec { name, hosts, restricted, nofailback }).await?;
            print_json(&g);
        }
        HaCmd::Group(GroupCmd::List) => {
            let all = ha.list_groups().await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            let rows = all
                .iter()
                .map(|g| {
                    let hosts: Vec<String> =
                        g.spec.hosts.iter().map(|h| format!("{}:{}", h.host, h.priority)).collect();
                    vec![
                        g.spec.name.clone(),
                        hosts.join(","),
                        g.spec.restricted.to_string(),
                        g.spec.nofailback.to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "HOSTS", "RESTRICTED", "NOFAILBACK"], rows);
        }
        HaCmd::Group(GroupCmd::Show { name }) => print_json(&ha.get_group(&name).await?),
        HaCmd::Group(GroupCmd::Remove { name }) => {
            ha.remove_group(&name).await?;
            println!("HA group {name} deleted");
        }
    }
    Ok(())
}

/// `host` or `host:priority`.
fn group_host(s: &str) -> Result<HaGroupHost, ClientError> {
    let (host, priority) = match s.split_once(':') {
        Some((h, p)) => {
            (h, p.parse().map_err(|_| ClientError::Usage(format!("--host {s}: the priority after ':' is a number")))?)
        }
        None => (s, 0),
    };
    Ok(HaGroupHost { host: host.to_string(), priority })
}

fn show(r: &HaResource, out: Output) {
    if out == Output::Json {
        return print_json(r);
    }
    println!("vm:          {}", r.spec.vm);
    println!("ha:          {}", summary(r));
}

/// One line on an HA resource (also `vm show`'s).
pub fn summary(r: &HaResource) -> String {
    let mut s = format!(
        "{}, priority {}, restarts {}/{}, relocations {}/{}",
        r.spec.state.as_str(),
        r.spec.priority,
        r.status.restarts,
        r.spec.max_restarts,
        r.status.relocations,
        r.spec.max_relocations
    );
    if let Some(g) = &r.spec.group {
        s += &format!(", group {g}");
    }
    if let Some(h) = &r.status.run_lease {
        s += &format!(", run lease held by {h}");
    }
    match &r.status.last_recovery {
        Some(rec) => s += &format!("; last recovery: {} -> {} ({})", rec.from, rec.to, rec.reason),
        None => s += "; never recovered",
    }
    if !r.status.problem.is_empty() {
        s += &format!("; problem: {}", r.status.problem);
    }
    s
}
