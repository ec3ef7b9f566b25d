//! Every request body the API parses: JSON into the spec types, then their validation. Nothing
//! may panic, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oxvirt_model::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<VmSpec>(data) {
        let mut s = s;
        s.normalize();
        let _ = s.validate();
    }
    if let Ok(u) = serde_json::from_slice::<VmUpdate>(data) {
        let _ = u.resources.map(|r| r.validate(2, 1 << 30, true));
    }
    if let Ok(n) = serde_json::from_slice::<NetworkSpec>(data) {
        let _ = n.validate();
        let _ = n.dhcp_range();
        let _ = n.gateway();
    }
    if let Ok(g) = serde_json::from_slice::<SecurityGroupSpec>(data) {
        let _ = g.validate();
        for r in &g.rules {
            let _ = r.port_range();
        }
    }
    if let Ok(p) = serde_json::from_slice::<PoolSpec>(data) {
        let _ = p.validate();
    }
    if let Ok(v) = serde_json::from_slice::<VolumeSpec>(data) {
        let _ = v.validate();
    }
    if let Ok(p) = serde_json::from_slice::<HostPolicy>(data) {
        let _ = p.validate();
    }
    if let Ok(acl) = serde_json::from_slice::<Vec<AclEntry>>(data) {
        for (i, e) in acl.iter().enumerate() {
            let _ = e.validate(&format!("[{i}]"));
        }
    }
    if let Ok(u) = serde_json::from_slice::<UserSpec>(data) {
        let _ = u.validate();
    }
    let _ = serde_json::from_slice::<NicSpec>(data).map(|n| n.validate("nics[0]"));
    let _ = serde_json::from_slice::<DiskQos>(data).map(|q| q.validate("qos"));
});
