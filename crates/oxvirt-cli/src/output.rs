//! Human tables and `--output json`.

use oxvirt_model::{ByteSize, HostInfo, Task, Vm};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn print_vms(vms: &[Vm], out: Output) {
    if out == Output::Json {
        return print_json(&vms);
    }
    let rows = vms
        .iter()
        .map(|v| {
            vec![
                v.spec.name.clone(),
                v.status.state.as_str().to_string(),
                v.spec.cpus.to_string(),
                v.spec.memory.to_string(),
                v.spec.machine.as_str().to_string(),
                v.status.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "CPUS", "MEMORY", "MACHINE", "PID"], rows);
}

pub fn print_vm(v: &Vm, out: Output) {
    if out == Output::Json {
        return print_json(v);
    }
    let s = &v.spec;
    println!("name:        {}", s.name);
    println!("id:          {}", v.id);
    println!("state:       {} ({})", v.status.state.as_str(), v.status.reason);
    println!("desired:     {:?}", v.desired);
    println!("cpus:        {}", s.cpus);
    println!("memory:      {}", s.memory);
    println!("machine:     {}", s.machine.as_str());
    if let Some(a) = &v.status.accel {
        println!("accelerator: {a}");
    }
    if let Some(p) = v.status.pid {
        println!("pid:         {p}");
    }
    if let Some(k) = &s.kernel {
        println!("kernel:      {} {}", k.kernel, k.initrd.as_deref().unwrap_or(""));
        println!("cmdline:     {}", k.cmdline);
    }
    for d in &s.disks {
        let what = d.volume.clone().unwrap_or_else(|| format!("{} ({})", d.path, d.format.as_str()));
        println!("{:<13}{what}", format!("{}:", d.id));
    }
    for (i, n) in s.nics.iter().enumerate() {
        let id = if n.id.is_empty() { format!("nic{i}") } else { n.id.clone() };
        let on = match (&n.network, &n.bridge) {
            (Some(net), _) => format!("network {net}"),
            (None, Some(b)) => format!("bridge {b}"),
            _ => "user-mode".into(),
        };
        let mut line = format!("{on} {}", n.mac.as_deref().unwrap_or(""));
        if let Some(ip) = n.ip {
            line.push_str(&format!(" {ip}"));
        }
        if !n.security_groups.is_empty() {
            line.push_str(&format!(" groups={}", n.security_groups.join(",")));
        }
        if !n.qos.is_unlimited() {
            let r = oxvirt_model::rate::format;
            line.push_str(&format!(" in≤{} out≤{}", r(n.qos.ingress), r(n.qos.egress)));
        }
        println!("{:<13}{line}", format!("{id}:"));
    }
    println!("restart:     {:?}", s.restart_policy);
    let r = &s.resources;
    let mut res = vec![format!("cpu weight {}", r.cpu_weight)];
    if let Some(l) = r.cpu_limit {
        res.push(format!("cap {l} CPUs"));
    }
    if let Some(m) = r.memory_limit {
        res.push(format!("memory limit {m}"));
    }
    if !r.vcpu_pins.is_empty() {
        res.push(format!("pinned {:?}", r.vcpu_pins));
    }
    if r.hugepages {
        res.push("huge pages".into());
    }
    if let Some(b) = r.balloon_min {
        res.push(format!("balloon floor {b}"));
    }
    println!("resources:   {}", res.join(", "));
    if let Some(h) = &v.host {
        println!("host:        {h} ({})", v.host_reason.as_deref().unwrap_or(""));
    }
    if let Some(p) = &v.status.placement {
        println!("placement:   {}", p.reason);
    }
}

pub fn print_task(t: &Task, out: Output) {
    if out == Output::Json {
        return print_json(t);
    }
    println!("id:       {}", t.id);
    println!("kind:     {}", t.kind);
    println!("target:   {}", t.target);
    println!("state:    {:?}", t.state);
    println!("progress: {}% {}", t.progress, t.message);
    if let Some(e) = &t.error {
        println!("error:    {e}");
    }
}

pub fn print_tasks(tasks: &[Task], out: Output) {
    if out == Output::Json {
        return print_json(&tasks);
    }
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                t.target.clone(),
                format!("{:?}", t.state).to_lowercase(),
                format!("{}%", t.progress),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["ID", "KIND", "TARGET", "STATE", "PROGRESS", "ERROR"], rows);
}

pub fn print_host(h: &HostInfo, out: Output) {
    if out == Output::Json {
        return print_json(h);
    }
    println!("hostname:    {}", h.hostname);
    println!("cpus:        {}", h.cpus);
    println!("memory:      {} ({} available)", ByteSize(h.memory_bytes), ByteSize(h.memory_available_bytes));
    println!("kernel:      {}", h.kernel);
    println!("hypervisor:  {} {}", h.hypervisor, h.hypervisor_version);
    println!("accelerator: {}: {}", h.accelerator, h.accelerator_reason);
    println!("vms:         {} ({} running)", h.vms_total, h.vms_running);
    println!("oxvirt:      {}", h.oxvirt_version);
}

/// `oxvirt vm top` / `oxvirt host top`: the latest figures, refreshed every 2 s on a terminal.
pub async fn top(
    client: &oxvirt_client::Client,
    out: Output,
    with_host: bool,
    once: bool,
) -> Result<(), oxvirt_client::ClientError> {
    use std::io::IsTerminal;
    let live = !once && out == Output::Table && std::io::stdout().is_terminal();
    loop {
        let t = client.top().await?;
        if out == Output::Json {
            print_json(&t);
            return Ok(());
        }
        if live {
            print!("\x1b[2J\x1b[H");
        }
        if with_host {
            let h = &t["host"];
            if h.is_null() {
                println!("host: no sample yet (the first comes within 5 s)");
            } else {
                println!(
                    "host: CPU {:.0}%  memory {} of {}  VMs running {}",
                    h["cpu"].as_f64().unwrap_or(0.0) * 100.0,
                    ByteSize(h["memory_used_bytes"].as_u64().unwrap_or(0)),
                    ByteSize(h["memory_total_bytes"].as_u64().unwrap_or(0)),
                    h["vms_running"]
                );
            }
        }
        let rows = t["vms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| {
                        let s = &v["sample"];
                        let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
                        vec![
                            v["vm"].as_str().unwrap_or("").to_string(),
                            s["state"].as_str().unwrap_or("").to_string(),
                            format!("{:.0}%", f("cpu") * 100.0),
                            ByteSize(s["rss_bytes"].as_u64().unwrap_or(0)).to_string(),
                            format!("{}/s", ByteSize(f("disk_read_bps") as u64)),
                            format!("{}/s", ByteSize(f("disk_write_bps") as u64)),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(&["VM", "STATE", "CPU", "MEMORY", "DISK READ", "DISK WRITE"], rows);
        if !live {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
