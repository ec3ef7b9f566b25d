//! Built-in alerting: rules evaluated on the monitoring figures every few seconds; an alert fires
//! once its condition held for the rule's `for_secs`, and resolves when it no longer holds. Both
//! go to the event stream and, when configured, to a webhook (an HTTP POST of the alert as JSON).

use crate::monitoring::stats::Stats;
use crate::{lock, now_millis};
use oxvirt_model::{Alert, AlertKind, AlertRule, AlertState, Event, VmState};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub interval: Duration,
    pub rules: Vec<AlertRule>,
    /// `http://host:port/path`, POSTed each firing and resolved alert.
    pub webhook: Option<String>,
}

#[derive(Default)]
/// What the alerting remembers between rounds.
pub(crate) struct AlertBook {
    /// (rule, target) → since when the condition holds.
    pending: HashMap<(String, String), u64>,
    firing: HashMap<(String, String), Alert>,
    /// Counters seen last time, to turn them into rates: key → (when, value).
    last: HashMap<String, (Instant, f64)>,
}

/// One value per target for a rule kind, from two samples of the figures.
fn values(kind: AlertKind, s: &Stats, st: &mut AlertBook, now: Instant) -> Vec<(String, f64)> {
    let mut rate = |key: String, value: f64| -> Option<f64> {
        let prev = st.last.insert(key, (now, value));
        let (t0, v0) = prev?;
        let dt = now.duration_since(t0).as_secs_f64();
        (dt > 0.0 && value >= v0).then(|| (value - v0) / dt)
    };
    let mut out = Vec::new();
    match kind {
        AlertKind::VmCrashed => {
            for v in &s.vms {
                out.push((format!("vms/{}", v.vm.name), (v.vm.state == VmState::Crashed) as u8 as f64));
            }
        }
        AlertKind::VmCpuHigh | AlertKind::VmCpuReadyHigh => {
            for v in &s.vms {
                let (tag, figure) =
                    if kind == AlertKind::VmCpuHigh { ("cpu", v.cpu_seconds) } else { ("ready", v.cpu_ready_seconds) };
                let Some(figure) = figure else { continue };
                let target = format!("vms/{}", v.vm.name);
                if let Some(r) = rate(format!("{tag}:{target}"), figure) {
                    out.push((target, r / v.vm.cpus.max(1) as f64));
                }
            }
        }
        AlertKind::DiskLatencyHigh => {
            for v in &s.vms {
                for d in &v.disks {
                    let target = format!("vms/{}/disks/{}", v.vm.name, d.id);
                    let time = (d.read_time_ns + d.write_time_ns) as f64 / 1e9;
                    let ops = (d.read_ops + d.write_ops) as f64;
                    if let (Some(t), Some(o)) =
                        (rate(format!("time:{target}"), time), rate(format!("ops:{target}"), ops))
                    {
                        out.push((target, if o > 0.0 { t / o } else { 0.0 }));
                    }
                }
            }
        }
        AlertKind::PoolNearlyFull => {
            for (p, u) in &s.pools {
                if u.size > 0 {
                    out.push((format!("pools/{}", p.spec.name), 1.0 - u.free as f64 / u.size as f64));
                }
            }
        }
        AlertKind::HostMemoryHigh => {
            if s.host_memory_total > 0 {
                out.push(("host".into(), 1.0 - s.host_memory_available as f64 / s.host_memory_total as f64));
            }
        }
    }
    out
}

impl crate::Monitoring {
    /// The alerts firing now.
    pub fn alerts(&self) -> Vec<Alert> {
        let st = lock(&self.state().alerts);
        let mut v: Vec<Alert> = st.firing.values().cloned().collect();
        v.sort_by(|a, b| (&a.rule, &a.target).cmp(&(&b.rule, &b.target)));
        v
    }

    /// Evaluates the rules every `interval`, for the daemon's life (the `alerts` job).
    pub fn start_alerting(&self, cfg: AlertConfig) {
        let me = self.clone();
        let cfg = std::sync::Arc::new(cfg);
        let every = cfg.interval;
        self.ctl.spawn_job(crate::Job::Alerts, every, every, move || {
            let (me, cfg) = (me.clone(), cfg.clone());
            async move { me.alert_round(&cfg).await }
        });
    }

    async fn alert_round(&self, cfg: &AlertConfig) {
        let stats = self.stats_max_age(cfg.interval).await;
        for alert in self.evaluate(&cfg.rules, &stats) {
            self.ctl.inner.emit(Event::Alert { alert: alert.clone(), time: now_millis() });
            if let Some(url) = &cfg.webhook {
                let url = url.clone();
                tokio::spawn(async move {
                    if let Err(e) = post_json(&url, &serde_json::json!({ "alert": alert })).await {
                        tracing::warn!(webhook = %url, "alert webhook: {e}");
                    }
                });
            }
        }
    }

    /// One round: the alerts that changed state.
    fn evaluate(&self, rules: &[AlertRule], stats: &Stats) -> Vec<Alert> {
        let mut st = lock(&self.state().alerts);
        let now = Instant::now();
        let now_ms = now_millis();
        let mut changed = Vec::new();
        for rule in rules {
            let vals = values(rule.kind, stats, &mut st, now);
            let mut seen = std::collections::HashSet::new();
            for (target, value) in vals {
                let key = (rule.name.clone(), target.clone());
                seen.insert(key.clone());
                if value > rule.threshold {
                    let since = *st.pending.entry(key.clone()).or_insert(now_ms);
                    if !st.firing.contains_key(&key) && now_ms.saturating_sub(since) >= rule.for_secs * 1000 {
                        let a = Alert {
                            rule: rule.name.clone(),
                            kind: rule.kind,
                            target,
                            state: AlertState::Firing,
                            value,
                            threshold: rule.threshold,
                            since,
                        };
                        st.firing.insert(key, a.clone());
                        changed.push(a);
                    } else if let Some(a) = st.firing.get_mut(&key) {
                        a.value = value;
                    }
                } else {
                    st.pending.remove(&key);
                    if let Some(mut a) = st.firing.remove(&key) {
                        a.state = AlertState::Resolved;
                        a.value = value;
                        a.since = now_ms;
                        changed.push(a);
                    }
                }
            }
            // A target that is gone (VM deleted) resolves too.
            let gone: Vec<(String, String)> = st
                .firing
                .keys()
                .filter(|k| k.0 == rule.name && !seen.contains(*k) && rule.kind == AlertKind::VmCrashed)
                .cloned()
                .collect();
            for k in gone {
                if let Some(mut a) = st.firing.remove(&k) {
                    a.state = AlertState::Resolved;
                    a.since = now_ms;
                    changed.push(a);
                }
            }
        }
        changed
    }
}

/// POSTs JSON to an `http://host:port/path` URL (5 s at most).
async fn post_json(url: &str, body: &serde_json::Value) -> std::io::Result<()> {
    let rest = url.strip_prefix("http://").ok_or_else(|| std::io::Error::other("webhook must be an http:// URL"))?;
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let io = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        let status = String::from_utf8_lossy(&resp).split_whitespace().nth(1).unwrap_or("").to_string();
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("webhook answered {status:?}")))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), io).await.map_err(|_| std::io::Error::other("webhook timed out"))?
}
