//! A flow rule of a `vlan` network (issue #20): ovs-ofctl's words for a match and actions
//! (`tcp,nw_src=10.0.0.0/24,tp_dst=80` → `drop`), which oxvirt's controller installs on every
//! port of the network, each NIC's traffic only from its own MAC.

use crate::{Millis, ValidationError};

/// Longest match or actions text.
pub const MAX_FLOW_TEXT: usize = 1024;
/// Highest priority of a rule (oxvirt's own flows sit below every rule).
pub const MAX_FLOW_PRIORITY: u16 = 50_000;

/// What an administrator writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRuleSpec {
    /// 1..50000; a higher one is tried first.
    #[schemars(range(min = 1, max = 50_000))]
    pub priority: u16,
    /// ovs-ofctl's words: `any`, or fields such as `tcp,nw_src=10.0.0.0/24,tp_dst=80`.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 1024))]
    pub r#match: String,
    /// ovs-ofctl's words: `drop`, or `normal`, `output:VM/NIC` (a NIC of this network; with
    /// `normal`, a mirror), `mod_vlan_vid:N`, `strip_vlan`, comma-separated.
    #[schemars(length(min = 1, max = 1024))]
    pub actions: String,
}

impl FlowRuleSpec {
    /// What a rule must be on its own (its words are read by the controller, which knows the
    /// network's NICs).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=MAX_FLOW_PRIORITY).contains(&self.priority) {
            return Err(ValidationError::new("priority", format!("must be 1..{MAX_FLOW_PRIORITY}")));
        }
        for (field, text) in [("match", &self.r#match), ("actions", &self.actions)] {
            if text.trim().is_empty() || text.len() > MAX_FLOW_TEXT {
                return Err(ValidationError::new(field, format!("1 to {MAX_FLOW_TEXT} characters")));
            }
        }
        Ok(())
    }
}

/// A rule as stored (`flowrules/<network>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct FlowRule {
    /// 8 hex digits.
    pub id: String,
    pub network: String,
    /// The rule's number on its host's switch (part of its flows' cookies).
    pub seq: u32,
    pub spec: FlowRuleSpec,
    pub created_at: Millis,
}

/// A rule with what the switch counted for it now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct FlowRuleView {
    #[serde(flatten)]
    pub rule: FlowRule,
    /// Flows installed for it (one per port of the network it applies to).
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_names_what_is_wrong() {
        let ok = FlowRuleSpec { priority: 200, r#match: "icmp".into(), actions: "drop".into() };
        assert!(ok.validate().is_ok());
        assert_eq!(FlowRuleSpec { priority: 0, ..ok.clone() }.validate().unwrap_err().field, "priority");
        assert_eq!(FlowRuleSpec { priority: 50_001, ..ok.clone() }.validate().unwrap_err().field, "priority");
        assert_eq!(FlowRuleSpec { r#match: " ".into(), ..ok.clone() }.validate().unwrap_err().field, "match");
        assert_eq!(FlowRuleSpec { actions: "x".repeat(1025), ..ok.clone() }.validate().unwrap_err().field, "actions");
        let parsed: FlowRuleSpec = serde_json::from_str(r#"{"priority":5,"match":"ip","actions":"normal"}"#).unwrap();
        assert_eq!(parsed.r#match, "ip");
    }
}
