//! A create's cost must not grow with the number of VMs already defined: no full scan on the
//! write path. Measured as a ratio within one run (creates with 500 VMs defined against creates
//! with 5,000), never against a clock, so a slow or busy machine does not make it fail.

mod common;

use oxvirt_controller::Controller;
use oxvirt_model::{VmSpec, ROOT};
use std::time::{Duration, Instant};

fn spec(kernel: &std::path::Path, name: &str, nic: bool) -> VmSpec {
    let mut v = serde_json::json!({
        "name": name, "cpus": 1, "memory": "64MiB", "kernel": { "kernel": kernel },
    });
    if nic {
        // A NIC with no TAP: it still gets a MAC that no other VM's NIC has.
        v["nics"] = serde_json::json!([{ "mode": "user" }]);
    }
    serde_json::from_value(v).unwrap()
}

/// The median time of `n` creates, in rounds of `round`.
fn creates(c: &Controller, kernel: &std::path::Path, from: usize, n: usize, nic: bool) -> Duration {
    let mut times: Vec<Duration> = (from..from + n)
        .map(|i| {
            let s = spec(kernel, &format!("vm{i}"), nic);
            let t = Instant::now();
            c.vms().create_vm(ROOT, s).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_costs_the_same_with_5000_vms_as_with_500() {
    let host = common::FakeHost::new();
    let (c, kernel) = (&host.controller, host.kernel.clone());
    for nic in [false, true] {
        let base = if nic { 10_000 } else { 0 };
        for i in 0..450 {
            c.vms().create_vm(ROOT, spec(&kernel, &format!("vm{}", base + i), nic)).unwrap();
        }
        let at_500 = creates(c, &kernel, base + 450, 100, nic);
        for i in 550..4_900 {
            c.vms().create_vm(ROOT, spec(&kernel, &format!("vm{}", base + i), nic)).unwrap();
        }
        let at_5000 = creates(c, &kernel, base + 4_900, 100, nic);
        let ratio = at_5000.as_secs_f64() / at_500.as_secs_f64();
        eprintln!("with NICs {nic}: a create takes {at_500:?} with 500 VMs, {at_5000:?} with 5,000: {ratio:.2}");
        assert!(ratio < 2.0, "with NICs {nic}: a create costs {ratio:.2} times more with 5,000 VMs than with 500");
    }
}
