//! schemathesis (from PyPI, installed by `make test`) drives the API from its OpenAPI document
//! with generated requests, valid and not; no answer may be a server error (5xx). The daemon runs
//! in a network namespace of the test's, so networks it is asked to make stay there. Operations
//! that touch the host's files or global settings (pools, volumes, the host policy's KSM) or that
//! do not end (the event stream, the console, long waits) are left out; a bounded number of
//! examples keeps it to a minute or two.

use oxvirt_e2e::*;
use std::process::Command;

const EXCLUDED: &str =
    "^(pool|volume|vmSnapshot|vmRevert|vmAction|vmConsole$|hostPolicySet|events|taskWait|diskAttach|vmDiskQos)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let st = workspace_root().join("build/schemathesis/bin/st");
    assert!(st.exists(), "{} is missing: run `make test` (it installs schemathesis)", st.display());
    let ns = Netns::new("st");
    let d = Daemon::start_in_netns(&ns, "api_rate_per_token = 0\nstop_timeout_secs = 2\n");
    let (url, token, _) = d.https();
    let doc: serde_json::Value = d.client.call(hyper::Method::GET, "/api/v1/openapi.json", None).await.unwrap();
    let schema = d.path().join("openapi.json");
    std::fs::write(&schema, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&st)
        .arg("run")
        .arg(&schema)
        .args(["--base-url", &url, "--request-tls-verify", "false"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error", "--exclude-operation-id-regex", EXCLUDED])
        .args(["--hypothesis-max-examples", "40", "--hypothesis-seed", "1", "--hypothesis-phases", "explicit,generate"])
        .args(["--hypothesis-derandomize", "--workers", "2", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(d.path())
        .output()
        .expect("run schemathesis");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{text}\n--- daemon log ---\n{}", d.log());
    assert!(text.contains("passed"), "{text}");
    eprintln!("{text}");
}
