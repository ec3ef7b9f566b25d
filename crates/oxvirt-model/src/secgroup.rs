//! Security groups: named sets of allow rules applied to NICs (as OpenStack security groups and
//! Proxmox firewall groups). A NIC with groups accepts inbound traffic only as a rule allows, plus
//! replies to what the VM itself sent; it sends anything unless a group has egress rules.

use crate::network::Ipv4Net;
use crate::{validate_name, Millis, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the VM.
    #[default]
    Ingress,
    /// Traffic from the VM.
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityRule {
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub protocol: Protocol,
    /// A port or range (`22`, `8000-8080`) for tcp and udp; all ports when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9]{1,5}(-[0-9]{1,5})?$"))]
    pub ports: Option<String>,
    /// The peer's addresses (the source of ingress traffic, the destination of egress traffic);
    /// anywhere (0.0.0.0/0) when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Ipv4Net>,
}

impl SecurityRule {
    /// The ports as (first, last).
    pub fn port_range(&self) -> Option<(u16, u16)> {
        self.ports.as_deref().and_then(|p| parse_ports(p).ok())
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if let Some(p) = &self.ports {
            if !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(ValidationError::new(format!("{field}.ports"), "only tcp and udp rules have ports"));
            }
            parse_ports(p).map_err(|e| ValidationError::new(format!("{field}.ports"), e))?;
        }
        if let Some(c) = self.cidr {
            if c.addr != c.network() {
                return Err(ValidationError::new(
                    format!("{field}.cidr"),
                    format!("host bits set: did you mean {}/{}?", c.network(), c.prefix),
                ));
            }
        }
        Ok(())
    }
}

/// `22` or `8000-8080`, ports 1..65535.
pub fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let (a, b) = p.split_once('-').unwrap_or((p, p));
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|v| *v > 0);
    match (port(a), port(b)) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        (Some(_), Some(_)) => Err("the first port must not come after the last".into()),
        _ => Err("must be a port 1..65535 or a range like 8000-8080".into()),
    }
}

/// A security group as the user writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    #[schemars(regex(pattern = crate::name::NAME_PATTERN))]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub description: String,
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub rules: Vec<SecurityRule>,
}

impl SecurityGroupSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.description.len() > 1024 || self.description.contains(['\n', '\r', '\0']) {
            return Err(ValidationError::new("description", "must be one line of at most 1024 bytes"));
        }
        if self.rules.len() > 256 {
            return Err(ValidationError::new("rules", "at most 256 rules"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("rules[{i}]"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SecurityGroup {
    pub spec: SecurityGroupSpec,
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked() {
        let rule = |protocol, ports: Option<&str>, cidr: Option<&str>| SecurityRule {
            direction: Direction::Ingress,
            protocol,
            ports: ports.map(Into::into),
            cidr: cidr.map(|c| c.parse().unwrap()),
        };
        let g = |rules| SecurityGroupSpec { name: "web".into(), description: String::new(), rules };
        assert!(g(vec![rule(Protocol::Tcp, Some("22"), Some("10.0.0.0/8"))]).validate().is_ok());
        assert!(g(vec![rule(Protocol::Udp, Some("1000-2000"), None)]).validate().is_ok());
        let err = |rules| g(rules).validate().unwrap_err().field;
        assert_eq!(err(vec![rule(Protocol::Icmp, Some("22"), None)]), "rules[0].ports");
        assert_eq!(err(vec![rule(Protocol::Tcp, Some("0"), None)]), "rules[0].ports");
        assert_eq!(err(vec![rule(Protocol::Tcp, Some("90-80"), None)]), "rules[0].ports");
        assert_eq!(err(vec![rule(Protocol::Tcp, Some("22; drop"), None)]), "rules[0].ports");
        assert_eq!(err(vec![rule(Protocol::Tcp, None, Some("10.0.0.1/8"))]), "rules[0].cidr");
        assert_eq!(parse_ports("8000-8080"), Ok((8000, 8080)));
    }
}
