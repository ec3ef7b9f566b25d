//! Bodies of requests on a VM that are not resources themselves (a NIC's live changes, the
//! balloon's target): the wire types the API parses and the client sends.

use crate::{ByteSize, NicQos};

/// Body of `PATCH /vms/{name}/nics/{nic}`: what may change on a NIC while its VM runs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(regex(pattern = crate::name::NAME_PATTERN)))]
    pub security_groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<NicQos>,
}

/// Body of `PUT /vms/{name}/balloon`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BalloonTarget {
    pub target: ByteSize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_update_sends_only_what_changes() {
        assert_eq!(serde_json::to_string(&NicUpdate::default()).unwrap(), "{}");
        let u: NicUpdate = serde_json::from_str(r#"{"qos":{"egress":"1gbit"}}"#).unwrap();
        assert_eq!(u, NicUpdate { security_groups: None, qos: Some(NicQos { ingress: 0, egress: 1_000_000_000 }) });
        assert!(serde_json::from_str::<NicUpdate>(r#"{"mac":"52:54:00:00:00:01"}"#).is_err());
    }

    #[test]
    fn a_balloon_target_is_a_size() {
        let t: BalloonTarget = serde_json::from_str(r#"{"target":"512MiB"}"#).unwrap();
        assert_eq!(t.target, ByteSize::mib(512));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"target":536870912}"#);
    }
}
