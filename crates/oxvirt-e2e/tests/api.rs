//! Every bad input gets a 4xx naming the field and the rule, and changes nothing; the OpenAPI
//! document lists what the router serves.

use oxvirt_client::ClientError;
use oxvirt_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn refused(d: &Daemon, spec: Value) -> (u16, Option<String>, Option<String>) {
    match d.client.create_vm(&spec, false).await {
        Err(ClientError::Api(e)) => (e.status, e.field, e.rule),
        other => panic!("expected a refusal for {spec}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_names_field_and_rule_and_changes_nothing() {
    let d = Daemon::start();
    d.client.create_vm(&kernel_spec("exists", ""), false).await.unwrap();
    let before = d.client.list_vms().await.unwrap();
    let revision_file = std::fs::metadata(d.path().join("store.db")).ok();
    let _ = revision_file;

    let with = |k: &str, v: Value| {
        let mut s = kernel_spec("fresh", "");
        s[k] = v;
        s
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (with("colour", json!("red")), 400, "colour", "unknown field"),
        (with("memory", json!("512XB")), 400, "memory", "unknown unit"),
        (with("cpus", json!(0)), 400, "cpus", "at least 1"),
        (with("memory", json!("64TiB")), 400, "memory", "host's memory"),
        (with("cpus", json!(100000)), 400, "cpus", "at most"),
        (with("name", json!("bad,name")), 400, "name", "ASCII letters"),
        (with("name", json!("../etc")), 400, "name", "ASCII letters"),
        (with("name", json!("")), 400, "name", "empty"),
        (kernel_spec("exists", ""), 409, "name", "already exists"),
        (with("kernel", json!({ "kernel": "/nonexistent/vmlinuz" })), 400, "kernel.kernel", "does not exist"),
        (with("kernel", json!({ "kernel": "relative" })), 400, "kernel.kernel", "absolute"),
        (with("disks", json!([{ "path": "/x", "bus": "ide" }])), 400, "disks[0].bus", "unknown variant"),
        (with("machine", json!("pc-i440fx")), 400, "machine", "unknown variant"),
        (with("nics", json!([{ "mac": "ff:ff:ff:ff:ff:ff" }])), 400, "nics[0].mac", "unicast"),
        (json!({ "name": "x", "memory": "1GiB" }), 400, "cpus", "is required"),
    ];
    for (spec, status, field, rule) in cases {
        let (s, f, r) = refused(&d, spec.clone()).await;
        assert_eq!(s, status, "{spec}");
        assert_eq!(f.as_deref(), Some(field), "{spec}");
        let r = r.unwrap_or_default();
        assert!(r.contains(rule), "{spec}: rule {r:?} should mention {rule:?}");
    }
    assert_eq!(d.client.list_vms().await.unwrap(), before, "refused requests changed nothing");

    // Unknown VM, unknown action, bad JSON.
    match d.client.get_vm("nobody").await {
        Err(ClientError::Api(e)) => assert_eq!((e.status, e.code.as_str()), (404, "not-found")),
        other => panic!("{other:?}"),
    }
    match d.client.vm_action("exists", "explode").await {
        Err(ClientError::Api(e)) => assert_eq!((e.status, e.field.as_deref()), (400, Some("action"))),
        other => panic!("{other:?}"),
    }
    let (status, body) = d.client.raw(hyper::Method::POST, "/api/v1/vms", Some(b"{not json".to_vec())).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = d.client.raw(hyper::Method::GET, "/api/v1/nothing-here", None).await.unwrap();
    assert_eq!(status, 404);
    // PATCH: same rules.
    match d.client.update_vm("exists", &json!({ "cpus": 0 })).await {
        Err(ClientError::Api(e)) => assert_eq!(e.field.as_deref(), Some("cpus")),
        other => panic!("{other:?}"),
    }
    let vm = d.client.update_vm("exists", &json!({ "cpus": 2, "memory": "300MiB" })).await.unwrap();
    assert_eq!((vm.spec.cpus, vm.spec.memory.0), (2, 300 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_operations_get_409() {
    let d = Daemon::start();
    let c = &d.client;
    c.create_vm(&kernel_spec("busy", ""), false).await.unwrap();
    let t = c.vm_action("busy", "start").await.unwrap();
    // While the start runs, a second operation on the same VM is refused, not mixed in.
    match c.vm_action("busy", "stop").await {
        Err(ClientError::Api(e)) => assert_eq!(e.status, 409),
        Ok(t2) => {
            // The start may already have finished; then stop is legal. Either way no mix.
            c.wait_task(&t2.id, Duration::from_secs(60)).await.unwrap();
        }
        Err(e) => panic!("{e}"),
    }
    c.wait_task(&t.id, Duration::from_secs(60)).await.unwrap();
    match c.delete_vm("busy").await {
        Err(ClientError::Api(e)) if e.status == 409 => {}
        Ok(()) => assert!(c.get_vm("busy").await.is_err()),
        other => panic!("{other:?}"),
    }
    // A running VM is never deleted or changed.
    c.create_vm(&kernel_spec("runner", ""), true).await.unwrap();
    wait_state(c, "runner", "running", Duration::from_secs(60)).await;
    match c.delete_vm("runner").await {
        Err(ClientError::Api(e)) => assert_eq!(e.status, 409),
        other => panic!("{other:?}"),
    }
    match c.update_vm("runner", &json!({ "cpus": 2 })).await {
        Err(ClientError::Api(e)) => assert_eq!(e.status, 409),
        other => panic!("{other:?}"),
    }
    c.vm_action_wait("runner", "kill", Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_the_router_serves() {
    let d = Daemon::start();
    let doc: Value = d.client.call(hyper::Method::GET, "/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = concrete_path(path, "nobody");
            let m = hyper::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if concrete.ends_with("/events") {
                continue; // a stream that does not end
            }
            let (status, body) = d.client.raw(m, &concrete, Some(b"{}".to_vec())).await.unwrap();
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("no such API path"), "{method} {path} is documented but not routed");
            assert!(status < 500, "{method} {path}: {status} {body}");
        }
    }
    let host: Value = d.client.call(hyper::Method::GET, "/api/v1/host", None).await.unwrap();
    assert_eq!(host["accelerator"], "tcg");
    assert!(host["accelerator_reason"].as_str().unwrap().contains("TCG"));
}
