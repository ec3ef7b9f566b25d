//! `oxvirt template`: templates of quiet microvms (`vm create NAME --template T` restores one).

use crate::follow_task;
use crate::output::{print_json, print_task, table, Output};
use clap::Subcommand;
use oxvirt_client::{Client, ClientError};
use oxvirt_model::TemplateView;
use std::time::Duration;

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Take a template of a running, quiet microvm without disks or NICs (a task; the guest is
    /// paused while its state is saved, then runs on).
    Create {
        name: String,
        #[arg(long)]
        from: String,
    },
    List,
    Show {
        name: String,
    },
    /// Keep N VMs restored from the template and paused on its host, so that `vm create
    /// --template T --start` only resumes one (administrators; 0 ends the pool).
    Pool {
        name: String,
        #[arg(long)]
        size: u32,
    },
    /// Forget a template no VM is made from, its saved state and its warm pool.
    Remove {
        name: String,
    },
}

pub async fn template(client: &Client, out: Output, cmd: TemplateCmd) -> Result<(), ClientError> {
    let t = client.templates();
    match cmd {
        TemplateCmd::Create { name, from } => {
            let task = t.create(&name, &from).await?;
            let done = follow_task(client, &task, Duration::from_secs(600), out).await?;
            match out {
                Output::Json => print_task(&done, out),
                Output::Table => println!("{}", done.message),
            }
        }
        TemplateCmd::List => {
            let all = t.list().await?;
            if out == Output::Json {
                print_json(&all);
                return Ok(());
            }
            table(
                &["NAME", "FROM", "MACHINE", "CPUS", "MEMORY", "STATE", "POOL", "AGENT", "HOST"],
                all.iter().map(row).collect(),
            );
        }
        TemplateCmd::Show { name } => print_json(&t.get(&name).await?),
        TemplateCmd::Pool { name, size } => {
            let v = t.set_pool(&name, size).await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => println!(
                    "template {name}: warm pool of {} ({} ready now; it fills in the background)",
                    v.template.pool_size, v.pool_ready
                ),
            }
        }
        TemplateCmd::Remove { name } => {
            t.remove(&name).await?;
            if out == Output::Table {
                println!("template {name} removed");
            }
        }
    }
    Ok(())
}

fn row(v: &TemplateView) -> Vec<String> {
    let t = &v.template;
    vec![
        t.name.clone(),
        t.from.clone(),
        t.spec.machine.as_str().to_string(),
        t.spec.cpus.to_string(),
        t.spec.memory.to_string(),
        format!("{} KiB", t.state_bytes.div_ceil(1024)),
        format!("{}/{}", v.pool_ready, t.pool_size),
        if t.agent { "yes" } else { "no" }.to_string(),
        t.host.clone().unwrap_or_else(|| "-".into()),
    ]
}
