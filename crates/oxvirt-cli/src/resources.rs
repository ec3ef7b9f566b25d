//! `oxvirt vm resources`, `oxvirt vm balloon`, `oxvirt host policy`, `oxvirt host resources`.

use crate::args::{size, size_or_none, word};
use crate::output::{print_json, Output};
use clap::Args;
use oxvirt_client::{Client, ClientError};
use oxvirt_model::{ByteSize, Vm};
use serde_json::Value;

/// Changes only what is given; the rest stays as it is.
#[derive(Args)]
pub struct ResourcesArgs {
    pub name: String,
    /// CPU priority, 1..10000 (100 normal).
    #[arg(long)]
    pub cpu_weight: Option<u32>,
    /// Most host CPU time, in CPUs (e.g. 0.5); 0 removes the cap.
    #[arg(long)]
    pub cpu_limit: Option<f64>,
    /// Most memory QEMU may use in all; 0 removes the limit.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Host CPU of each vCPU, comma-separated; empty unpins.
    #[arg(long)]
    pub pin: Option<String>,
    /// Host CPUs of QEMU's other threads (a CPU list).
    #[arg(long)]
    pub emulator_cpus: Option<String>,
    /// Floor for automatic ballooning; 0 turns it off for this VM.
    #[arg(long)]
    pub balloon_min: Option<String>,
    #[arg(long)]
    pub hugepages: Option<bool>,
    /// auto or off.
    #[arg(long)]
    pub numa: Option<String>,
    #[arg(long)]
    pub ksm: Option<bool>,
}

#[derive(Args)]
pub struct PolicyArgs {
    #[arg(long)]
    pub cpu_overcommit: Option<f64>,
    #[arg(long)]
    pub memory_overcommit: Option<f64>,
    #[arg(long)]
    pub auto_balloon: Option<bool>,
    /// Share of host memory in use above which auto-ballooning reclaims (e.g. 0.8).
    #[arg(long)]
    pub memory_target_use: Option<f64>,
    /// auto, on or off.
    #[arg(long)]
    pub ksm: Option<String>,
    /// Let KSM merge memory of VMs of different projects (off by default: a side channel).
    #[arg(long)]
    pub ksm_across_projects: Option<bool>,
}

/// `--pin`: the host CPU of each vCPU, comma-separated; empty unpins.
fn vcpu_pins(p: &str) -> Result<Vec<u32>, ClientError> {
    p.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| ClientError::Usage(format!("--pin {p:?}: not a list of host CPU numbers")))
}

/// Changes what the flags name and keeps the rest; every flag is parsed before anything is sent.
pub async fn resources(client: &Client, a: ResourcesArgs) -> Result<Vm, ClientError> {
    let memory_limit = a.memory_limit.as_deref().map(|m| size_or_none("--memory-limit", m)).transpose()?;
    let balloon_min = a.balloon_min.as_deref().map(|b| size_or_none("--balloon-min", b)).transpose()?;
    let vcpu_pins = a.pin.as_deref().map(vcpu_pins).transpose()?;
    let numa = a.numa.as_deref().map(|n| word("--numa", n)).transpose()?;
    let mut r = client.get_vm(&a.name).await?.spec.resources;
    if let Some(w) = a.cpu_weight {
        r.cpu_weight = w;
    }
    if let Some(l) = a.cpu_limit {
        r.cpu_limit = (l != 0.0).then_some(l);
    }
    if let Some(m) = memory_limit {
        r.memory_limit = m;
    }
    if let Some(b) = balloon_min {
        r.balloon_min = b;
    }
    if let Some(e) = a.emulator_cpus {
        r.emulator_cpus = (!e.is_empty()).then_some(e);
    }
    if let Some(p) = vcpu_pins {
        r.vcpu_pins = p;
    }
    if let Some(h) = a.hugepages {
        r.hugepages = h;
    }
    if let Some(n) = numa {
        r.numa = n;
    }
    if let Some(k) = a.ksm {
        r.ksm = k;
    }
    client.resources().set_vm_resources(&a.name, &r).await
}

pub async fn balloon(client: &Client, out: Output, name: &str, target: Option<String>) -> Result<(), ClientError> {
    let b = match target {
        Some(t) => client.resources().set_vm_balloon(name, size("target", &t)?).await?,
        None => client.resources().vm_balloon(name).await?,
    };
    if out == Output::Json {
        print_json(&b);
        return Ok(());
    }
    let size = |v: Option<u64>| v.map(|v| ByteSize(v).to_string()).unwrap_or_else(|| "-".into());
    println!("memory:      {}", size(Some(b.memory)));
    println!("actual:      {}{}", size(Some(b.actual)), if b.auto { " (auto-ballooned)" } else { "" });
    println!("guest free:  {}", size(b.guest_free));
    Ok(())
}

/// Shows the host policy, or changes what the flags name (parsed before anything is sent) and
/// shows the result.
pub async fn policy(client: &Client, a: PolicyArgs) -> Result<(), ClientError> {
    let ksm = a.ksm.as_deref().map(|k| word("--ksm", k)).transpose()?;
    let changed = a.cpu_overcommit.is_some()
        || a.memory_overcommit.is_some()
        || a.auto_balloon.is_some()
        || a.memory_target_use.is_some()
        || ksm.is_some()
        || a.ksm_across_projects.is_some();
    let mut p = client.resources().host_policy().await?;
    if let Some(x) = a.cpu_overcommit {
        p.cpu_overcommit = x;
    }
    if let Some(x) = a.memory_overcommit {
        p.memory_overcommit = x;
    }
    if let Some(x) = a.auto_balloon {
        p.auto_balloon = x;
    }
    if let Some(x) = a.memory_target_use {
        p.memory_target_use = x;
    }
    if let Some(x) = ksm {
        p.ksm = x;
    }
    if let Some(x) = a.ksm_across_projects {
        p.ksm_across_projects = x;
    }
    if changed {
        p = client.resources().set_host_policy(&p).await?;
    }
    print_json(&p);
    Ok(())
}

pub async fn host_resources(client: &Client, out: Output) -> Result<(), ClientError> {
    let r = client.resources().host_resources().await?;
    if out == Output::Json {
        print_json(&r);
        return Ok(());
    }
    let size = |b: u64| ByteSize(b).to_string();
    println!(
        "vCPUs:       {} committed on {} CPUs (over-commit {})",
        r.committed_vcpus,
        r.cpus,
        // As JSON writes it (4.0, not 4).
        Value::from(r.policy.cpu_overcommit)
    );
    println!(
        "memory:      {} committed of {} ({} available)",
        size(r.committed_memory),
        size(r.memory_bytes),
        size(r.memory_available_bytes)
    );
    for n in &r.numa_nodes {
        println!("numa node {}: CPUs {}, {} free of {}", n.id, n.cpus, size(n.memory_free), size(n.memory_total));
    }
    println!(
        "KSM:         {} ({} pages sharing, {} saved)",
        if r.ksm.run { "on" } else { "off" },
        r.ksm.pages_sharing,
        size(r.ksm.saved_bytes)
    );
    println!("huge pages:  {} free of {}", r.hugepages_free, r.hugepages_total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_host_cpu_numbers_and_empty_unpins() {
        assert_eq!(vcpu_pins("2, 3,").ok(), Some(vec![2, 3]));
        assert_eq!(vcpu_pins("").ok(), Some(vec![]));
        match vcpu_pins("0-3") {
            Err(ClientError::Usage(m)) => assert_eq!(m, "--pin \"0-3\": not a list of host CPU numbers"),
            other => panic!("{other:?}"),
        }
    }
}
