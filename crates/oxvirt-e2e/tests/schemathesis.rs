//! schemathesis (from PyPI, installed by `make test`) drives the API from its OpenAPI document
//! with generated requests, valid and not; no answer may be a server error (5xx). The daemon runs
//! in a network namespace of the test's, so networks it is asked to make stay there. Operations
//! that touch the host's files or global settings (pools, volumes, the host policy's KSM) or that
//! do not end (the event stream, the console, long waits) are left out; a bounded number of
//! examples keeps it to a minute or two.
//!
//! Every answer is also checked against the document's schema (`response_schema_conformance`),
//! and the host holds one object of each kind first (a project, a security group, a network, a
//! running VM with a NIC on both, its start task, a user, a token), so that the lists return real
//! records and not only empty arrays: the schemas derived from the types are checked against what
//! the daemon really sends.

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
    seed(&d.client).await;
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
        .args(["--checks", "not_a_server_error,response_schema_conformance", "--exclude-operation-id-regex", EXCLUDED])
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

/// One object of each kind the lists answer.
async fn seed(c: &oxvirt_client::Client) {
    let post = |path: &'static str, body: serde_json::Value| async move {
        let _: serde_json::Value = c.post(path, &body).await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    };
    post("/api/v1/projects", serde_json::json!({ "name": "seeded", "quotas": { "vms": 4 } })).await;
    post(
        "/api/v1/security-groups",
        serde_json::json!({ "name": "web", "rules": [{ "direction": "ingress", "protocol": "tcp", "ports": "80" }] }),
    )
    .await;
    post("/api/v1/networks", serde_json::json!({ "name": "iso", "kind": "isolated", "subnet": "10.31.0.0/24" })).await;
    post("/api/v1/users", serde_json::json!({ "name": "alice", "password": "a long enough password" })).await;
    post("/api/v1/tokens", serde_json::json!({ "name": "ci" })).await;
    let mut spec = kernel_spec("seeded", "");
    spec["project"] = "seeded".into();
    spec["nics"] = serde_json::json!([{ "network": "iso", "security_groups": ["web"] }]);
    c.create_vm(&spec, false).await.expect("create the seeded VM");
    let task = c.vm_action_wait("seeded", "start", std::time::Duration::from_secs(60)).await.expect("start it");
    assert_eq!(task.state, oxvirt_model::TaskState::Succeeded, "{task:?}");
}
