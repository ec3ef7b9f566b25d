//! Flow rules of `vlan` networks (issue #20): records `flowrules/<network>/<id>`, checked when
//! written (their words read, the NICs they name found on the network), compiled into one flow
//! per port of the network — that port's traffic from its own MAC only, so a rule never lets a
//! spoofed source through — and installed by the switch's flow keeper (`ovs.rs`).

use crate::{now_millis, ControlError};
use oxvirt_model::{FlowRule, FlowRuleSpec, FlowRuleView, NetworkKind, NicMode};
use oxvirt_openflow::{parse_actions, parse_match, FlowMod, Oxm, OxmField};
use oxvirt_store::{Expect, StoreExt};

/// Cookies of rules' flows: this base, the rule's number shifted by 24 bits, the port's number.
pub(super) const RULE_COOKIE: u64 = 2 << 56;
/// Rules sit above oxvirt's own flows (the per-port allow at 100).
const RULE_PRIORITY_BASE: u16 = 200;

/// The cookie of a rule's flow on one port, and the rule a cookie belongs to.
pub(super) fn rule_cookie(seq: u32, ofport: u32) -> u64 {
    RULE_COOKIE | ((seq as u64) << 24) | (ofport as u64 & 0xff_ffff)
}

fn seq_of_cookie(cookie: u64) -> Option<u32> {
    (cookie & (0xff << 56) == RULE_COOKIE).then_some(((cookie >> 24) & 0xffff_ffff) as u32)
}

/// A port of a vlan network as the switch has it.
pub(super) struct NetPort {
    pub ofport: u32,
    pub mac: String,
}

/// Words the rules' actions may use (ports and tables are the switch's and oxvirt's).
fn check_action_words(actions: &str) -> Result<(), ControlError> {
    for t in actions.split(',').map(str::trim) {
        let word = t.split(':').next().unwrap_or_default();
        let ok =
            matches!(word, "drop" | "normal" | "mod_vlan_vid" | "strip_vlan" | "pop_vlan" | "push_vlan" | "set_field")
                || (word == "output" && t.contains('/'));
        if !ok {
            return Err(ControlError::invalid(
                "actions",
                format!("`{t}`: a rule may drop, normal, output:VM/NIC (a NIC of its network), mod_vlan_vid, strip_vlan, push_vlan, set_field"),
            ));
        }
    }
    Ok(())
}

/// The actions with each `output:VM/NIC` given its port number by `port_of` (None: that NIC has
/// no port now).
fn resolve_outputs(actions: &str, port_of: &dyn Fn(&str, &str) -> Option<u32>) -> Option<String> {
    let mut out = Vec::new();
    for t in actions.split(',').map(str::trim) {
        match t.strip_prefix("output:").and_then(|a| a.split_once('/')) {
            Some((vm, nic)) => match port_of(vm, nic) {
                Some(p) => out.push(format!("output:{p}")),
                None => return None,
            },
            None => out.push(t.to_string()),
        }
    }
    Some(out.join(","))
}

/// A rule's flows, one per port of its network.
pub(super) fn compile(rule: &FlowRule, ports: &[NetPort], port_of: &dyn Fn(&str, &str) -> Option<u32>) -> Vec<FlowMod> {
    let Ok(m) = parse_match(&rule.spec.r#match) else { return vec![] };
    let Some(actions) = resolve_outputs(&rule.spec.actions, port_of) else { return vec![] };
    let mut flows = Vec::new();
    for p in ports {
        let Ok(mac) = parse_match(&format!("dl_src={}", p.mac)) else { continue };
        let mut fields = m.fields.clone();
        match m.get(OxmField::EthSrc) {
            // The rule names a source: it applies to the port whose MAC that is.
            Some(src) if mac.fields.first() != Some(src) => continue,
            Some(_) => {}
            None => fields.extend(mac.fields.clone()),
        }
        fields.push(Oxm::in_port(p.ofport));
        let r#match = oxvirt_openflow::Match { fields }.canonical();
        let Ok(instructions) = parse_actions(&actions, &r#match) else { continue };
        flows.push(FlowMod {
            cookie: rule_cookie(rule.seq, p.ofport),
            ..FlowMod::add(RULE_PRIORITY_BASE + rule.spec.priority, r#match, instructions)
        });
    }
    flows
}

impl crate::Networks {
    /// The NIC `vm`/`nic` of a VM on `network` (its VM's id and the NIC's slot), if there is one.
    fn nic_on(&self, network: &str, vm: &str, nic: &str) -> Result<Option<(String, usize)>, ControlError> {
        Ok(self.ctl.vms().list_vms()?.into_iter().find(|v| v.spec.name == vm).and_then(|v| {
            v.spec
                .nics
                .iter()
                .find(|n| n.id == nic && n.mode == NicMode::Network && n.network.as_deref() == Some(network))
                .map(|n| (v.id.clone(), n.slot()))
        }))
    }

    /// Adds a rule to a vlan network and installs it.
    pub async fn add_flow_rule(&self, network: &str, spec: FlowRuleSpec) -> Result<FlowRule, ControlError> {
        spec.validate()?;
        let net = self.get_network(network)?;
        if net.spec.kind != NetworkKind::Vlan {
            return Err(ControlError::invalid(
                "network",
                format!("{network} is a {} network: flow rules apply to vlan networks", net.spec.kind.as_str()),
            ));
        }
        let m = parse_match(&spec.r#match).map_err(|e| ControlError::invalid("match", e.to_string()))?;
        if m.get(OxmField::InPort).is_some() {
            return Err(ControlError::invalid(
                "match",
                "in_port is the switch's: a rule applies to every port of its network (or to one source MAC, dl_src)",
            ));
        }
        check_action_words(&spec.actions)?;
        for t in spec.actions.split(',').map(str::trim) {
            if let Some((vm, nic)) = t.strip_prefix("output:").and_then(|a| a.split_once('/')) {
                if self.nic_on(network, vm, nic)?.is_none() {
                    return Err(ControlError::invalid("actions", format!("{vm}/{nic} is no NIC of network {network}")));
                }
            }
        }
        // Port numbers are the switch's; any stands in for reading the words.
        let actions = resolve_outputs(&spec.actions, &|_, _| Some(1)).unwrap_or_default();
        parse_actions(&actions, &m).map_err(|e| ControlError::invalid("actions", e.to_string()))?;

        let _net = self.state().net_lock.lock().await;
        let existing = self.ctl.inner.store.list_records::<FlowRule>()?;
        let seq = existing.iter().map(|(r, _)| r.seq).max().unwrap_or(0) + 1;
        let id: String = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect();
        let rule = FlowRule { id: id.clone(), network: network.to_string(), seq, spec, created_at: now_millis() };
        self.ctl.inner.store.put_record(&format!("{network}/{id}"), &rule, Expect::Absent)?;
        drop(_net);
        let rt = self.ensure_ovs().await?;
        if let Err(e) = self.refresh_ovs_flows(&rt).await {
            // The switch refused it (its words passed every check here): the rule goes.
            let _ = self.ctl.inner.store.delete_record::<FlowRule>(&format!("{network}/{id}"), Expect::Any);
            let _ = self.refresh_ovs_flows(&rt).await;
            return Err(ControlError::invalid("actions", e.to_string()));
        }
        Ok(rule)
    }

    /// A network's rules with the switch's counters.
    pub async fn list_flow_rules(&self, network: &str) -> Result<Vec<FlowRuleView>, ControlError> {
        self.get_network(network)?;
        let rules = self.ctl.inner.store.list_records_under::<FlowRule>(&format!("{network}/"))?;
        Ok(self.with_counters(rules.into_iter().map(|(r, _)| r).collect()).await)
    }

    /// Every rule with its counters, for `/metrics` (none while no switch runs; the switch is
    /// asked only when there are rules).
    pub async fn all_flow_rules(&self) -> Vec<FlowRuleView> {
        // No switch runs: nothing counted, and the store is not read (a scrape stays cheap).
        if self.state().ovs.lock().await.is_none() {
            return vec![];
        }
        let rules: Vec<FlowRule> =
            self.ctl.inner.store.list_records::<FlowRule>().unwrap_or_default().into_iter().map(|(r, _)| r).collect();
        if rules.is_empty() {
            return vec![];
        }
        self.with_counters(rules).await
    }

    async fn with_counters(&self, rules: Vec<FlowRule>) -> Vec<FlowRuleView> {
        let stats = self.ovs_flow_stats().await;
        rules
            .into_iter()
            .map(|rule| {
                let mine = stats.iter().filter(|s| seq_of_cookie(s.cookie) == Some(rule.seq));
                let (flows, packets, bytes) =
                    mine.fold((0, 0, 0), |(f, p, b), s| (f + 1, p + s.packet_count, b + s.byte_count));
                FlowRuleView { rule, flows, packets, bytes }
            })
            .collect()
    }

    /// Removes a rule and its flows.
    pub async fn delete_flow_rule(&self, network: &str, id: &str) -> Result<(), ControlError> {
        self.get_network(network)?;
        let key = format!("{network}/{id}");
        let well_formed = id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed || self.ctl.inner.store.get_record::<FlowRule>(&key)?.is_none() {
            return Err(ControlError::NotFound { kind: "flow rule", name: id.into() });
        }
        self.ctl.inner.store.delete_record::<FlowRule>(&key, Expect::Any)?;
        let rt = self.ensure_ovs().await?;
        self.refresh_ovs_flows(&rt).await
    }

    /// Removes every rule of a network (the network goes).
    pub(super) fn forget_flow_rules(&self, network: &str) {
        for (r, _) in self.ctl.inner.store.list_records_under::<FlowRule>(&format!("{network}/")).unwrap_or_default() {
            let _ = self.ctl.inner.store.delete_record::<FlowRule>(&format!("{network}/{}", r.id), Expect::Any);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(m: &str, actions: &str) -> FlowRule {
        FlowRule {
            id: "r".into(),
            network: "v10".into(),
            seq: 3,
            spec: FlowRuleSpec { priority: 50, r#match: m.into(), actions: actions.into() },
            created_at: 0,
        }
    }

    fn ports() -> Vec<NetPort> {
        vec![
            NetPort { ofport: 1, mac: "52:54:00:00:00:01".into() },
            NetPort { ofport: 2, mac: "52:54:00:00:00:02".into() },
        ]
    }

    #[test]
    fn a_rule_becomes_a_flow_per_port_from_that_port_s_own_mac() {
        let flows = compile(&rule("icmp", "drop"), &ports(), &|_, _| None);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].priority, 250);
        assert_eq!(flows[0].cookie, rule_cookie(3, 1));
        assert_eq!(seq_of_cookie(flows[1].cookie), Some(3));
        assert_eq!(oxvirt_openflow::format_match(&flows[0].r#match), "icmp,in_port=1,dl_src=52:54:00:00:00:01");
        assert!(flows[0].instructions.is_empty(), "drop");
    }

    #[test]
    fn a_rule_naming_a_source_applies_to_that_port_and_outputs_name_nics() {
        let flows = compile(&rule("dl_src=52:54:00:00:00:02", "normal,output:m/nic0"), &ports(), &|vm, nic| {
            (vm == "m" && nic == "nic0").then_some(7)
        });
        assert_eq!(flows.len(), 1);
        assert_eq!(oxvirt_openflow::format_actions(&flows[0].instructions), "normal,output:7");
        assert!(compile(&rule("ip", "output:gone/nic0"), &ports(), &|_, _| None).is_empty());
    }

    #[test]
    fn rules_use_only_words_that_leave_ports_to_oxvirt() {
        assert!(check_action_words("normal,output:m/nic0").is_ok());
        assert!(check_action_words("mod_vlan_vid:20,normal").is_ok());
        for bad in ["output:3", "controller", "local", "goto_table:1", "group:1", "in_port", "flood"] {
            assert!(check_action_words(bad).unwrap_err().to_string().contains("a rule may"), "{bad}");
        }
        assert_eq!(seq_of_cookie(1), None);
    }
}
