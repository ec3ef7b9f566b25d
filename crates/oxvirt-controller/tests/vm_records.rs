//! VM records as stored and as listed: a list may send the stored bytes only once every record
//! is in this oxvirtd's form, and then sends exactly what decoding and encoding would.

mod common;

use oxvirt_model::{Vm, VmSpec, ROOT};
use oxvirt_store::{Expect, Record, Store};

#[tokio::test]
async fn records_of_an_older_oxvirtd_are_rewritten_before_lists_send_records_as_stored() {
    let host = common::FakeHost::new();
    let (c, store, kernel) = (&host.controller, host.store.clone(), host.kernel.clone());
    for name in ["a", "b", "c"] {
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "name": name, "cpus": 1, "memory": "64MiB", "kernel": { "kernel": kernel },
        }))
        .unwrap();
        c.vms().create_vm(ROOT, spec).unwrap();
    }
    // "b" as an older oxvirtd wrote it: without a field this one added (read as its default).
    let key = Vm::key_of("b");
    let entry = store.get(&key).unwrap().unwrap();
    let mut old: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    assert!(old["spec"].as_object_mut().unwrap().remove("rng").is_some());
    let old = serde_json::to_vec(&old).unwrap();
    store.put(&key, old.clone(), Expect::Revision(entry.revision)).unwrap();

    assert!(c.vms().list_vms_json().unwrap().is_none(), "not before the records were looked at");
    c.vms().canonicalize_records();
    let stored = store.get(&key).unwrap().unwrap().value;
    assert_ne!(stored, old, "the older record was rewritten");
    let typed = serde_json::to_vec(&c.vms().list_vms().unwrap()).unwrap();
    let raw = c.vms().list_vms_json().unwrap().expect("records are known to be in this form");
    assert_eq!(String::from_utf8(raw).unwrap(), String::from_utf8(typed).unwrap());
    let listed: Vec<Vm> = serde_json::from_slice(&c.vms().list_vms_json().unwrap().unwrap()).unwrap();
    assert_eq!(listed.iter().map(|v| v.spec.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
}
