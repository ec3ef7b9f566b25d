//! Monitoring: the shipped alert rules pass promtool, and a real Prometheus scrapes the daemon's
//! metrics over HTTPS (token and pinned certificate) and answers queries with per-VM series.

use oxvirt_e2e::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn alert_rules_pass_promtool() {
    let rules = workspace_root().join("monitoring/oxvirt-alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (make test installs prometheus)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 14 rules found"));
}

/// GET on a local HTTP server; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

struct Prometheus(std::process::Child);

impl Prometheus {
    /// Starts Prometheus with `config` in `dir`, on a free loopback port; returns it and the port.
    fn start(dir: &std::path::Path, config: &str) -> (Prometheus, u16) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (make test installs it)");
        (Prometheus(child), port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_per_vm_series() {
    let d = Daemon::start();
    let c = &d.client;
    let pool_dir = d.path().join("pool");
    let _: Value = c.post("/api/v1/pools", &json!({ "name": "p", "path": pool_dir })).await.unwrap();
    let _: Value = c.post("/api/v1/pools/p/volumes", &json!({ "name": "d", "size": "32MiB" })).await.unwrap();
    let mut spec = kernel_spec("watched", "");
    spec["disks"] = json!([{ "volume": "p/d" }]);
    c.create_vm(&spec, true).await.unwrap();
    wait_console(c, "watched", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(
        c,
        "watched",
        "dd if=/dev/vda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null; echo RD-$((1+1))",
        "RD-2",
    )
    .await;

    // The exposition itself (figures are cached for up to 5 s: wait for the read to show).
    let start = Instant::now();
    let text = loop {
        let (status, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        // (The boot's own partition probe reads a little first: wait for the 1 MiB the guest read.)
        let read = text.lines().any(|l| {
            l.starts_with("oxvirt_vm_disk_read_bytes_total{")
                && l.contains("watched")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 1048576.0)
        });
        if read || start.elapsed() > Duration::from_secs(15) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(text.contains("oxvirt_vm_up{vm=\"watched\"} 1"), "{text}");
    let read_line = text
        .lines()
        .find(|l| l.starts_with("oxvirt_vm_disk_read_bytes_total{") && l.contains("watched"))
        .expect("disk series");
    let read: f64 = read_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(read >= 1048576.0, "{read_line}");
    assert!(text.contains("oxvirt_api_requests_total{"), "API requests are counted");
    // The daemon's background jobs are counted: the reconcile round's (the first ran at start,
    // the guest booted over several more) and those of their own loops.
    let runs = |job: &str| -> f64 {
        let key = format!("oxvirt_job_runs_total{{job=\"{job}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(key.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    assert!(runs("vms") >= 2.0 && runs("migrations") >= 2.0 && runs("history") >= 1.0, "{text}");
    assert!(text.contains("oxvirt_job_last_run_timestamp_seconds{job=\"admin_token\"}"), "{text}");
    assert!(text.contains("oxvirt_vm_cpu_ready_seconds_total{vm=\"watched\"}"), "{text}");
    let balloon =
        text.lines().find(|l| l.starts_with("oxvirt_vm_balloon_bytes{vm=\"watched\"}")).expect("balloon series");
    assert_eq!(balloon.rsplit(' ').next().unwrap().parse::<f64>().unwrap(), 268435456.0, "{balloon}");
    let free =
        text.lines().find(|l| l.starts_with("oxvirt_vm_guest_free_bytes{vm=\"watched\"}")).expect("guest free memory");
    let free: f64 = free.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(free > 50e6 && free < 268435456.0, "{free}");
    assert!(
        text.contains("\noxvirt_host_cpus 2") || text.contains("\noxvirt_host_cpus "),
        "label-less gauges have no braces"
    );
    assert!(text.trim_end().ends_with("# EOF"));

    // A real Prometheus, scraping over HTTPS with the admin token and the daemon's certificate.
    let (url, _, _) = d.https();
    let target = url.trim_start_matches("https://");
    let dir = d.path().join("prom");
    let config = format!(
        "global:\n  scrape_interval: 1s\nrule_files: ['{rules}']\nscrape_configs:\n  - job_name: oxvirt\n    scheme: https\n    authorization:\n      credentials_file: {token}\n    tls_config:\n      ca_file: {ca}\n      server_name: localhost\n    static_configs:\n      - targets: ['{target}']\n",
        rules = workspace_root().join("monitoring/oxvirt-alerts.yml").display(),
        token = d.path().join("admin.token").display(),
        ca = d.path().join("tls/server.crt").display(),
    );
    let (_prom, port) = Prometheus::start(&dir, &config);
    let start = Instant::now();
    let series = loop {
        let q = http_get(port, "/api/v1/query?query=oxvirt_vm_disk_read_bytes_total%7Bvm%3D%22watched%22%7D");
        if let Some(v) = q.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
            if v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
                break v;
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            let targets = http_get(port, "/api/v1/targets").unwrap_or_default();
            panic!(
                "no series from Prometheus; targets: {targets}\nlog: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let r = &series["data"]["result"][0];
    assert_eq!(r["metric"]["disk"], "disk0");
    let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v >= 1048576.0, "{series}");
    // The rules loaded: Prometheus knows them.
    let rules: Value = serde_json::from_str(&http_get(port, "/api/v1/rules").unwrap()).unwrap();
    assert_eq!(rules["data"]["groups"][0]["rules"].as_array().unwrap().len(), 14);
    c.vm_action_wait("watched", "kill", Duration::from_secs(30)).await.unwrap();
}

/// Collects the bodies POSTed to a local webhook.
async fn webhook() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read until the body announced by Content-Length is in.
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        if let Ok(v) = serde_json::from_str::<Value>(body) {
                            g.lock().unwrap().push(v);
                        }
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        }
    });
    (port, got)
}

/// The next alert event in `want` state from an event stream.
async fn next_alert(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("alert in time").unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            if v["type"] == "alert" && v["alert"]["state"] == want {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_alert_fires_on_a_busy_guest_and_resolves() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let (hook_port, hook) = webhook().await;
    let d = Daemon::start_with_config(&format!(
        "[alerts]\ninterval_secs = 1\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n[[alerts.rules]]\nname = \"busy\"\nkind = \"vm-cpu-high\"\nthreshold = 0.4\nfor_secs = 2\n"
    ));
    let c = &d.client;
    let mut s = tokio::net::UnixStream::connect(d.path().join("oxvirtd.sock")).await.unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    c.create_vm(&kernel_spec("spinner", ""), true).await.unwrap();
    wait_console(c, "spinner", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(c, "spinner", "(while :; do :; done) & echo SPIN-$((4+4))", "SPIN-8").await;

    let fired = next_alert(&mut lines, "firing").await;
    assert_eq!(fired["alert"]["rule"], "busy");
    assert_eq!(fired["alert"]["target"], "vms/spinner");
    assert!(fired["alert"]["value"].as_f64().unwrap() > 0.4);
    let listed: Vec<oxvirt_model::Alert> = c.get("/api/v1/alerts").await.unwrap();
    assert_eq!(listed.len(), 1);
    // The guest calms down: the alert resolves.
    run_in_guest(c, "spinner", "kill %1; echo CALM-$((5+5))", "CALM-10").await;
    let resolved = next_alert(&mut lines, "resolved").await;
    assert_eq!(resolved["alert"]["target"], "vms/spinner");
    assert!(c.get::<Vec<oxvirt_model::Alert>>("/api/v1/alerts").await.unwrap().is_empty());
    // The webhook got both.
    let start = Instant::now();
    loop {
        let states: Vec<String> =
            hook.lock().unwrap().iter().map(|v| v["alert"]["state"].as_str().unwrap_or("").to_string()).collect();
        if states == ["firing", "resolved"] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "webhook got {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.vm_action_wait("spinner", "kill", Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_top_show_a_busy_guest() {
    let d = Daemon::start();
    let c = &d.client;
    c.create_vm(&kernel_spec("histo", ""), true).await.unwrap();
    wait_console(c, "histo", READY, 1, BOOT_TIMEOUT).await;
    run_in_guest(c, "histo", "(while :; do :; done) & echo SPIN-$((4+4))", "SPIN-8").await;
    // Samples come every 5 s; a busy guest shows its CPU use.
    let start = Instant::now();
    let busy = loop {
        let h: Vec<Value> = c.get("/api/v1/vms/histo/history").await.unwrap();
        if let Some(s) = h.iter().rev().find(|s| s["cpu"].as_f64().unwrap_or(0.0) > 0.3) {
            break s.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(40), "no busy sample: {h:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(busy["state"], "running");
    assert!(busy["rss_bytes"].as_u64().unwrap() > 10 << 20);
    let host: Vec<Value> = c.get("/api/v1/host/history").await.unwrap();
    assert!(!host.is_empty() && host.last().unwrap()["vms_running"] == 1);
    let (code, text, _) = d.cli(&["host", "top", "--once"]);
    assert!(code == 0 && text.starts_with("host: CPU") && text.contains("histo"), "{text}");
    c.vm_action_wait("histo", "kill", Duration::from_secs(30)).await.unwrap();
}

/// Every metric the Grafana dashboard and the alert rules use is one the daemon exposes, and
/// every dashboard query is valid PromQL (Prometheus answers it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_use_exposed_metrics() {
    let d = Daemon::start();
    let (_, body) = d.client.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut exposed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap().to_string(), it.next().unwrap());
            match kind {
                "counter" => {
                    exposed.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        exposed.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    exposed.insert(name);
                }
            }
        }
    }
    let root = workspace_root().join("monitoring");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("oxvirt-dashboard.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs.push(dash["templating"]["list"][1]["definition"].as_str().unwrap().to_string());
    exprs.extend(
        std::fs::read_to_string(root.join("oxvirt-alerts.yml"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("oxvirt_"))
            .map(String::from),
    );
    assert!(exprs.len() > 20);
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("oxvirt_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(exposed.contains(&name), "{name} (in {e}) is not exposed; exposed: {exposed:?}");
            rest = &rest[i + name.len()..];
        }
    }
    // Prometheus parses every dashboard query.
    let (_prom, port) = Prometheus::start(&d.path().join("prom"), "global:\n  scrape_interval: 15s\n");
    let start = Instant::now();
    // (While it starts, /-/ready answers 503 "Service Unavailable".)
    while !http_get(port, "/-/ready").is_some_and(|b| b.contains("Ready")) {
        assert!(start.elapsed() < Duration::from_secs(30), "prometheus did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap().replace("$vm", ".*");
            let enc: String = e
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let answer = http_get(port, &format!("/api/v1/query?query={enc}")).unwrap();
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["status"], "success", "{e}: {answer}");
        }
    }
}
