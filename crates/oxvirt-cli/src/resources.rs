//! `oxvirt vm resources`, `oxvirt vm balloon`, `oxvirt host policy`, `oxvirt host resources`.

use crate::output::{print_json, Output};
use clap::Args;
use oxvirt_client::{encode, Client, ClientError};
use oxvirt_model::{ByteSize, HostPolicy, Vm};
use serde_json::{json, Value};

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

fn set(v: &mut Value, key: &str, new: Option<Value>) {
    if let Some(n) = new {
        if n.is_null() {
            if let Some(o) = v.as_object_mut() {
                o.remove(key);
            }
        } else {
            v[key] = n;
        }
    }
}

fn zero_is_none(s: Option<String>) -> Option<Value> {
    s.map(|s| if s.trim() == "0" { Value::Null } else { json!(s) })
}

pub async fn resources(client: &Client, a: ResourcesArgs) -> Result<Vm, ClientError> {
    let vm = client.get_vm(&a.name).await?;
    let mut r = serde_json::to_value(&vm.spec.resources).map_err(|e| ClientError::Decode(e.to_string()))?;
    set(&mut r, "cpu_weight", a.cpu_weight.map(|w| json!(w)));
    set(&mut r, "cpu_limit", a.cpu_limit.map(|l| if l == 0.0 { Value::Null } else { json!(l) }));
    set(&mut r, "memory_limit", zero_is_none(a.memory_limit));
    set(&mut r, "balloon_min", zero_is_none(a.balloon_min));
    set(&mut r, "emulator_cpus", a.emulator_cpus.map(|e| if e.is_empty() { Value::Null } else { json!(e) }));
    if let Some(p) = a.pin {
        let pins: Result<Vec<u32>, _> =
            p.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse::<u32>()).collect();
        let pins = pins.map_err(|_| ClientError::Decode(format!("pin: {p:?} is not a list of host CPU numbers")))?;
        r["vcpu_pins"] = json!(pins);
    }
    set(&mut r, "hugepages", a.hugepages.map(|h| json!(h)));
    set(&mut r, "numa", a.numa.map(|n| json!(n)));
    set(&mut r, "ksm", a.ksm.map(|k| json!(k)));
    client.put(&format!("/api/v1/vms/{}/resources", encode(&a.name)), &r).await
}

pub async fn balloon(client: &Client, out: Output, name: &str, target: Option<String>) -> Result<(), ClientError> {
    let path = format!("/api/v1/vms/{}/balloon", encode(name));
    let b: Value = match target {
        Some(t) => client.put(&path, &json!({ "target": t })).await?,
        None => client.get(&path).await?,
    };
    if out == Output::Json {
        print_json(&b);
        return Ok(());
    }
    let size = |k: &str| b[k].as_u64().map(|v| ByteSize(v).to_string()).unwrap_or_else(|| "-".into());
    println!("memory:      {}", size("memory"));
    println!(
        "actual:      {}{}",
        size("actual"),
        if b["auto"].as_bool() == Some(true) { " (auto-ballooned)" } else { "" }
    );
    println!("guest free:  {}", size("guest_free"));
    Ok(())
}

pub async fn policy(client: &Client, out: Output, a: PolicyArgs) -> Result<(), ClientError> {
    let mut p: HostPolicy = client.get("/api/v1/host/policy").await?;
    let changed = a.cpu_overcommit.is_some()
        || a.memory_overcommit.is_some()
        || a.auto_balloon.is_some()
        || a.memory_target_use.is_some()
        || a.ksm.is_some()
        || a.ksm_across_projects.is_some();
    if changed {
        let mut v = serde_json::to_value(&p).map_err(|e| ClientError::Decode(e.to_string()))?;
        set(&mut v, "cpu_overcommit", a.cpu_overcommit.map(|x| json!(x)));
        set(&mut v, "memory_overcommit", a.memory_overcommit.map(|x| json!(x)));
        set(&mut v, "auto_balloon", a.auto_balloon.map(|x| json!(x)));
        set(&mut v, "memory_target_use", a.memory_target_use.map(|x| json!(x)));
        set(&mut v, "ksm", a.ksm.map(|x| json!(x)));
        set(&mut v, "ksm_across_projects", a.ksm_across_projects.map(|x| json!(x)));
        p = client.put("/api/v1/host/policy", &v).await?;
    }
    print_json(&p);
    let _ = out;
    Ok(())
}

pub async fn host_resources(client: &Client, out: Output) -> Result<(), ClientError> {
    let r: Value = client.get("/api/v1/host/resources").await?;
    if out == Output::Json {
        print_json(&r);
        return Ok(());
    }
    let size = |v: &Value| v.as_u64().map(|b| ByteSize(b).to_string()).unwrap_or_default();
    println!(
        "vCPUs:       {} committed on {} CPUs (over-commit {})",
        r["committed_vcpus"], r["cpus"], r["policy"]["cpu_overcommit"]
    );
    println!(
        "memory:      {} committed of {} ({} available)",
        size(&r["committed_memory"]),
        size(&r["memory_bytes"]),
        size(&r["memory_available_bytes"])
    );
    for n in r["numa_nodes"].as_array().into_iter().flatten() {
        println!(
            "numa node {}: CPUs {}, {} free of {}",
            n["id"],
            n["cpus"].as_str().unwrap_or(""),
            size(&n["memory_free"]),
            size(&n["memory_total"])
        );
    }
    println!(
        "KSM:         {} ({} pages sharing, {} saved)",
        if r["ksm"]["run"] == true { "on" } else { "off" },
        r["ksm"]["pages_sharing"],
        size(&r["ksm"]["saved_bytes"])
    );
    println!("huge pages:  {} free of {}", r["hugepages_free"], r["hugepages_total"]);
    Ok(())
}
