//! The HTTPS API: a self-signed certificate made at first start, an admin token file (0600),
//! token auth on every route, fingerprint pinning in the client and the CLI.

use oxvirt_client::{Client, ClientError, Transport};
use oxvirt_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_a_token_and_a_pinned_certificate() {
    let d = Daemon::start();
    let (url, token, fp) = d.https();
    let mode = |p: &str| std::fs::metadata(d.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("admin.token"), 0o600);
    assert_eq!(mode("oxvirtd.sock"), 0o600);
    assert_eq!(mode("tls/server.key"), 0o600);

    let good = Client::with_transport(Transport::https(&url, &token, &fp).unwrap());
    assert!(good.list_vms().await.unwrap().is_empty());
    good.create_vm(&kernel_spec("over-tls", ""), false).await.unwrap();
    assert_eq!(d.client.get_vm("over-tls").await.unwrap().spec.name, "over-tls");

    // Every documented route refuses a missing or wrong token (401), before anything else.
    let doc: serde_json::Value = d.client.call(hyper::Method::GET, "/api/v1/openapi.json", None).await.unwrap();
    let wrong = Client::with_transport(Transport::https(&url, "oxv_not-the-token", &fp).unwrap());
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["security"] == serde_json::json!([]) {
                assert_eq!(path, "/api/v1/auth/login", "only login is public");
                continue;
            }
            let m = hyper::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = concrete_path(path, "over-tls");
            // Past a burst of 100 refusals from one address, the next wait for the bucket (2 a
            // second): each route's own answer is still asked for.
            let (status, body) = loop {
                let (status, body) = wrong.raw(m.clone(), &concrete, Some(b"{}".to_vec())).await.unwrap();
                if status != 429 {
                    break (status, body);
                }
                tokio::time::sleep(std::time::Duration::from_millis(550)).await;
            };
            assert_eq!(status, 401, "{method} {path}: {}", String::from_utf8_lossy(&body));
        }
    }
    // Nothing those requests asked for happened.
    assert_eq!(d.client.get_vm("over-tls").await.unwrap().status.state.as_str(), "stopped");

    // Without any token header at all (once the refusals' bucket has a token again).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let https = hyper_no_token(&url, &fp).await;
    assert_eq!(https, 401);

    // A pinned fingerprint that is not the daemon's: the client refuses to talk.
    let other = "AA".repeat(32);
    let bad = Client::with_transport(Transport::https(&url, &token, &other).unwrap());
    match bad.list_vms().await {
        Err(ClientError::Http(e)) => assert!(e.contains("fingerprint"), "{e}"),
        other => panic!("{other:?}"),
    }

    // A restart keeps the same certificate and token.
    let mut d = d;
    d.restart();
    let (url2, token2, fp2) = d.https();
    assert_eq!((token2.as_str(), fp2.as_str()), (token.as_str(), fp.as_str()));
    let again = Client::with_transport(Transport::https(&url2, &token2, &fp2).unwrap());
    assert_eq!(again.list_vms().await.unwrap().len(), 1);
}

async fn hyper_no_token(url: &str, fp: &str) -> u16 {
    // A transport with a token, but the request sent raw without the header.
    let t = Transport::https(url, "x", fp).unwrap();
    let io = t.connect().await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/api/v1/vms").header("host", "x").body(http_body_util::Empty::new()).unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_over_https_boots_a_vm() {
    let d = Daemon::start();
    let (url, token, fp) = d.https();
    let g = guest();
    let cli = |args: &[&str]| {
        Command::new(bin("oxvirt"))
            .env_remove("OXVIRT_SOCKET")
            .env("OXVIRT_URL", &url)
            .env("OXVIRT_TOKEN", &token)
            .env("OXVIRT_FINGERPRINT", &fp)
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "vm",
        "create",
        "remote",
        "--memory",
        "256MiB",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
        "--start",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_console(&d.client, "remote", READY, 1, BOOT_TIMEOUT).await;
    let out = cli(&["vm", "console-log", "remote"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(READY));
    // The interactive console works over HTTPS too (a WebSocket through TLS).
    let c = Client::with_transport(Transport::https(&url, &token, &fp).unwrap());
    let ws = c.console("remote").await;
    assert!(ws.is_ok(), "{:?}", ws.err().map(|e| e.to_string()));
    drop(ws);
    let out = cli(&["vm", "kill", "remote"]);
    assert!(out.status.success());
    // A wrong token: one clear line and a failure.
    let out = Command::new(bin("oxvirt"))
        .args(["--url", &url, "--token", "wrong", "--fingerprint", &fp, "vm", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: the API token is not valid"), "{err}");
    let _ = Duration::from_secs(0);
}
