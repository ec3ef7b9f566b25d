//! Bandwidth limits of a NIC with `tc`: traffic to the VM is shaped by a token bucket (tbf) on its
//! TAP device; traffic from the VM (which the TAP receives) is redirected to an IFB device of
//! oxvirt's and shaped there, since this kernel has no policer.

use super::links::{delete, ensure_ifb, run, HostCmdError};
use oxvirt_model::NicQos;

/// The IFB device that shapes what a TAP device receives: `oxq...` for `oxv...`.
pub fn ifb_name(tap: &str) -> String {
    format!("oxq{}", tap.strip_prefix("oxv").unwrap_or(tap))
}

async fn tc(args: &[&str]) -> Result<(), HostCmdError> {
    run("tc", args).await.map(|_| ())
}

/// Whether `dev` has a qdisc of `kind` at `parent` (`root`, `ingress`), from `tc -j`'s answer.
async fn has_qdisc(dev: &str, parent: &str, kind: &str) -> bool {
    run("tc", &["-j", "qdisc", "show", "dev", dev, parent])
        .await
        .ok()
        .and_then(|out| serde_json::from_str::<Vec<serde_json::Value>>(&out).ok())
        .is_some_and(|qdiscs| qdiscs.iter().any(|q| q["kind"] == kind))
}

/// A token bucket: `rate` bits/s, a burst of 20 ms of traffic (at least two full frames).
async fn tbf(dev: &str, rate: u64, mtu: u32) -> Result<(), HostCmdError> {
    let burst = (rate / 8 / 50).max(2 * (u64::from(mtu) + 14));
    tc(&[
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &format!("{rate}bit"),
        "burst",
        &burst.to_string(),
        "latency",
        "50ms",
    ])
    .await
}

/// Sets a TAP device's limits (none: removes them and the IFB device).
pub async fn apply(tap: &str, qos: &NicQos, mtu: u32) -> Result<(), HostCmdError> {
    if qos.ingress > 0 {
        tbf(tap, qos.ingress, mtu).await?;
    } else if has_qdisc(tap, "root", "tbf").await {
        tc(&["qdisc", "del", "dev", tap, "root"]).await?;
    }
    let ifb = ifb_name(tap);
    let has_ingress = has_qdisc(tap, "ingress", "ingress").await;
    if qos.egress > 0 {
        ensure_ifb(&ifb, mtu)?;
        tbf(&ifb, qos.egress, mtu).await?;
        if !has_ingress {
            tc(&["qdisc", "add", "dev", tap, "handle", "ffff:", "ingress"]).await?;
            tc(&[
                "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", &ifb,
            ])
            .await?;
        }
    } else {
        if has_ingress {
            tc(&["qdisc", "del", "dev", tap, "ingress"]).await?;
        }
        delete(&ifb)?;
    }
    Ok(())
}

/// Removes the IFB device of a TAP device that is gone or no longer limited.
pub fn release(tap: &str) {
    if let Err(e) = delete(&ifb_name(tap)) {
        tracing::warn!(tap, "{e}");
    }
}
