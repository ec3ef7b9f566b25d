//! The `Open_vSwitch` database's bridges and ports that oxvirt manages, made to match what is
//! asked: each call reads what is there first and changes only what differs, in one
//! transaction, then waits until ovs-vswitchd has applied it.

use crate::rpc::{Client, OvsdbError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DB: &str = "Open_vSwitch";

/// A bridge as oxvirt runs them: the userspace datapath (no kernel module), OpenFlow 1.3 only,
/// secure fail mode (no flow but the controller's, even while it is away), one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// The controller's OVS target (`unix:PATH`, `tcp:IP:PORT`).
    pub controller: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A port the switch makes itself (a TAP device in the userspace datapath).
    Internal,
    /// An existing network device of the switch's namespace, such as a VM's TAP.
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub kind: PortKind,
    /// The OpenFlow port number asked for (the switch picks one when it is taken or absent).
    pub ofport: Option<u32>,
    /// An access port's VLAN (1–4094); none for a trunk or an untagged port.
    pub tag: Option<u16>,
}

/// A port as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRow {
    pub name: String,
    pub tag: Option<u16>,
    /// The OpenFlow port number ovs-vswitchd gave it (none until it has, or when it failed).
    pub ofport: Option<u32>,
}

pub struct Switch {
    client: Client,
    /// How long ovs-vswitchd may take to apply a change.
    apply_timeout: Duration,
}

fn invalid(field: &str, rule: &str) -> OvsdbError {
    OvsdbError::Invalid { field: field.to_string(), rule: rule.to_string() }
}

/// A device name: 1 to 15 bytes (the kernel's limit) of letters, digits, `-`, `_`, `.`.
fn check_name(field: &str, name: &str) -> Result<(), OvsdbError> {
    let ok =
        !name.is_empty() && name.len() <= 15 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "1 to 15 letters, digits, '-', '_' or '.'"))
    }
}

/// An optional column's value (`["set", []]` when absent).
fn optional(v: Option<Value>) -> Value {
    v.unwrap_or_else(|| json!(["set", []]))
}

/// An optional integer column read back.
fn read_optional_int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::Array(a)) if a.len() == 2 && a[0] == "set" => {
            a[1].as_array().and_then(|s| s.first()).and_then(Value::as_i64)
        }
        _ => None,
    }
}

/// The uuids of a set-of-references column.
fn read_uuids(v: Option<&Value>) -> Vec<String> {
    let uuid = |x: &Value| {
        x.as_array().filter(|a| a.len() == 2 && a[0] == "uuid").and_then(|a| a[1].as_str().map(str::to_string))
    };
    match v {
        Some(Value::Array(a)) if a.len() == 2 && a[0] == "set" => {
            a[1].as_array().map(|s| s.iter().filter_map(uuid).collect()).unwrap_or_default()
        }
        Some(x) => uuid(x).into_iter().collect(),
        None => vec![],
    }
}

fn rows(result: &Value) -> Vec<Value> {
    result.get("rows").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn select(table: &str, column: &str, value: &str, columns: &[&str]) -> Value {
    json!({ "op": "select", "table": table, "where": [[column, "==", value]], "columns": columns })
}

impl Switch {
    /// The database's root row is made when missing (what `ovs-vsctl init` does).
    pub async fn new(mut client: Client, apply_timeout: Duration) -> Result<Switch, OvsdbError> {
        let root = client
            .transact(DB, vec![json!({ "op": "select", "table": "Open_vSwitch", "where": [], "columns": ["_uuid"] })])
            .await?;
        if rows(&root[0]).is_empty() {
            client.transact(DB, vec![json!({ "op": "insert", "table": "Open_vSwitch", "row": {} })]).await?;
        }
        Ok(Switch { client, apply_timeout })
    }

    /// The bridges' names.
    pub async fn bridges(&mut self) -> Result<Vec<String>, OvsdbError> {
        let r = self
            .client
            .transact(DB, vec![json!({ "op": "select", "table": "Bridge", "where": [], "columns": ["name"] })])
            .await?;
        let mut names: Vec<String> =
            rows(&r[0]).iter().filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    /// Makes the bridge exist as `spec` says (with its own internal port, as ovs-vsctl does).
    pub async fn ensure_bridge(&mut self, spec: &BridgeSpec) -> Result<(), OvsdbError> {
        check_name("bridge", &spec.name)?;
        let found =
            self.client.transact(DB, vec![select("Bridge", "name", &spec.name, &["_uuid", "controller"])]).await?;
        let settings = json!({
            "datapath_type": "netdev",
            "protocols": "OpenFlow13",
            "fail_mode": "secure",
        });
        let mut ops = vec![
            json!({ "op": "insert", "table": "Controller", "row": { "target": spec.controller, "max_backoff": 1000 }, "uuid-name": "ctl" }),
        ];
        match rows(&found[0]).first() {
            Some(row) => {
                // Same controller target: nothing to change but the settings.
                let ctls = read_uuids(row.get("controller"));
                let current = if ctls.len() == 1 {
                    let c = self.client.transact(DB, vec![json!({ "op": "select", "table": "Controller", "where": [["_uuid", "==", ["uuid", ctls[0]]]], "columns": ["target"] })]).await?;
                    rows(&c[0]).first().and_then(|r| r.get("target").and_then(Value::as_str).map(str::to_string))
                } else {
                    None
                };
                let mut row = settings;
                if current.as_deref() == Some(spec.controller.as_str()) {
                    ops.clear();
                } else {
                    row["controller"] = json!(["named-uuid", "ctl"]);
                }
                ops.push(
                    json!({ "op": "update", "table": "Bridge", "where": [["name", "==", spec.name]], "row": row }),
                );
            }
            None => {
                let mut row = settings;
                row["name"] = json!(spec.name);
                row["controller"] = json!(["named-uuid", "ctl"]);
                row["ports"] = json!(["named-uuid", "localport"]);
                ops.push(json!({ "op": "insert", "table": "Interface", "row": { "name": spec.name, "type": "internal" }, "uuid-name": "localif" }));
                ops.push(json!({ "op": "insert", "table": "Port", "row": { "name": spec.name, "interfaces": ["named-uuid", "localif"] }, "uuid-name": "localport" }));
                ops.push(json!({ "op": "insert", "table": "Bridge", "row": row, "uuid-name": "br" }));
                ops.push(json!({ "op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "insert", ["set", [["named-uuid", "br"]]]]] }));
            }
        }
        self.commit(ops).await
    }

    /// Removes a bridge and its ports (nothing when it is not there).
    pub async fn remove_bridge(&mut self, name: &str) -> Result<(), OvsdbError> {
        let found = self.client.transact(DB, vec![select("Bridge", "name", name, &["_uuid"])]).await?;
        let Some(uuid) = rows(&found[0]).first().and_then(|r| r.get("_uuid").cloned()) else {
            return Ok(());
        };
        self.commit(vec![json!({ "op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "delete", ["set", [uuid]]]] })]).await
    }

    /// The ports of a bridge (its own internal port included), by name.
    pub async fn ports(&mut self, bridge: &str) -> Result<Vec<PortRow>, OvsdbError> {
        let r = self.client.transact(DB, vec![
            select("Bridge", "name", bridge, &["ports"]),
            json!({ "op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "tag", "interfaces"] }),
            json!({ "op": "select", "table": "Interface", "where": [], "columns": ["_uuid", "ofport"] }),
        ]).await?;
        let Some(bridge_row) = rows(&r[0]).into_iter().next() else {
            return Err(invalid("bridge", &format!("no bridge named {bridge}")));
        };
        let ports = read_uuids(bridge_row.get("ports"));
        let ifaces = rows(&r[2]);
        let ofport_of = |uuid: &str| {
            ifaces
                .iter()
                .find(|i| read_uuids(i.get("_uuid")).first().map(String::as_str) == Some(uuid))
                .and_then(|i| read_optional_int(i.get("ofport")))
                .filter(|p| *p > 0)
                .map(|p| p as u32)
        };
        let mut out: Vec<PortRow> = rows(&r[1])
            .into_iter()
            .filter(|p| read_uuids(p.get("_uuid")).first().is_some_and(|u| ports.contains(u)))
            .map(|p| PortRow {
                name: p.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                tag: read_optional_int(p.get("tag")).map(|t| t as u16),
                ofport: read_uuids(p.get("interfaces")).first().and_then(|u| ofport_of(u)),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes the port exist on `bridge` as `spec` says; a port of that name on another bridge is
    /// refused.
    pub async fn ensure_port(&mut self, bridge: &str, spec: &PortSpec) -> Result<(), OvsdbError> {
        check_name("bridge", bridge)?;
        check_name("port", &spec.name)?;
        if let Some(t) = spec.tag {
            if !(1..=4094).contains(&t) {
                return Err(invalid("tag", "a VLAN from 1 to 4094"));
            }
        }
        if spec.ofport.is_some_and(|p| p == 0 || p > 0xfeff) {
            return Err(invalid("ofport", "from 1 to 65279"));
        }
        let found = self
            .client
            .transact(
                DB,
                vec![
                    select("Bridge", "name", bridge, &["_uuid", "ports"]),
                    select("Port", "name", &spec.name, &["_uuid", "tag"]),
                ],
            )
            .await?;
        let Some(bridge_row) = rows(&found[0]).into_iter().next() else {
            return Err(invalid("bridge", &format!("no bridge named {bridge}")));
        };
        let tag = optional(spec.tag.map(|t| json!(t)));
        let ops = match rows(&found[1]).first() {
            Some(port) => {
                let uuid = read_uuids(port.get("_uuid")).into_iter().next().unwrap_or_default();
                if !read_uuids(bridge_row.get("ports")).contains(&uuid) {
                    return Err(invalid("port", &format!("{} is a port of another bridge", spec.name)));
                }
                if read_optional_int(port.get("tag")) == spec.tag.map(i64::from) {
                    // As asked already: nothing to change, and ovs-vswitchd is not woken.
                    return Ok(());
                }
                vec![
                    json!({ "op": "update", "table": "Port", "where": [["name", "==", spec.name]], "row": { "tag": tag } }),
                ]
            }
            None => {
                let kind = match spec.kind {
                    PortKind::Internal => "internal",
                    PortKind::System => "",
                };
                vec![
                    json!({ "op": "insert", "table": "Interface", "row": { "name": spec.name, "type": kind, "ofport_request": optional(spec.ofport.map(|p| json!(p))) }, "uuid-name": "if" }),
                    json!({ "op": "insert", "table": "Port", "row": { "name": spec.name, "interfaces": ["named-uuid", "if"], "tag": tag }, "uuid-name": "port" }),
                    json!({ "op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]], "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]] }),
                ]
            }
        };
        self.commit(ops).await
    }

    /// Takes a port off a bridge (nothing when it is not there).
    pub async fn remove_port(&mut self, bridge: &str, name: &str) -> Result<(), OvsdbError> {
        let found = self.client.transact(DB, vec![select("Port", "name", name, &["_uuid"])]).await?;
        let Some(uuid) = rows(&found[0]).first().and_then(|r| r.get("_uuid").cloned()) else {
            return Ok(());
        };
        self.commit(vec![json!({ "op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]], "mutations": [["ports", "delete", ["set", [uuid]]]] })]).await
    }

    /// Runs `ops` with `next_cfg` raised, then waits until ovs-vswitchd reports it applied them
    /// (`cur_cfg`), as ovs-vsctl does.
    async fn commit(&mut self, mut ops: Vec<Value>) -> Result<(), OvsdbError> {
        ops.push(json!({ "op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]] }));
        ops.push(json!({ "op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"] }));
        let n = ops.len();
        let r = self.client.transact(DB, ops).await?;
        let next = rows(&r[n - 1]).first().and_then(|row| row.get("next_cfg").and_then(Value::as_i64)).unwrap_or(0);
        let t0 = Instant::now();
        loop {
            let c = self
                .client
                .transact(
                    DB,
                    vec![json!({ "op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"] })],
                )
                .await?;
            let cur = rows(&c[0]).first().and_then(|row| row.get("cur_cfg").and_then(Value::as_i64)).unwrap_or(0);
            if cur >= next {
                return Ok(());
            }
            if t0.elapsed() > self.apply_timeout {
                return Err(OvsdbError::Timeout(self.apply_timeout));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
