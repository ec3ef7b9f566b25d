//! Arguments parsed into the model's typed values before anything is sent: a value that does not
//! parse is refused with its flag and the rule ([`ClientError::Usage`]).

use oxvirt_client::ClientError;
use oxvirt_model::ByteSize;
use serde_json::Value;
use std::fmt::Display;
use std::str::FromStr;

/// A value of the model's own spelling (`dir`, `qcow2`, `spread`...).
pub fn word<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> Result<T, ClientError> {
    serde_json::from_value(Value::String(v.to_string())).map_err(|e| {
        ClientError::Usage(format!("{flag} {v:?}: {}", e.to_string().split(" at line").next().unwrap_or("")))
    })
}

/// A size: `512MiB`, `2GiB`, `4096`.
pub fn size(flag: &str, v: &str) -> Result<ByteSize, ClientError> {
    parsed(flag, v)
}

/// A size where `0` means none.
pub fn size_or_none(flag: &str, v: &str) -> Result<Option<ByteSize>, ClientError> {
    if v.trim() == "0" {
        return Ok(None);
    }
    size(flag, v).map(Some)
}

/// A bit rate as `tc` writes it: `800kbit`, `20mbit`, `0` (no limit); bits per second.
pub fn rate(flag: &str, v: &str) -> Result<u64, ClientError> {
    oxvirt_model::rate::parse(v).map_err(|e| ClientError::Usage(format!("{flag} {v:?}: {e}")))
}

/// Anything with a `FromStr` of its own: addresses, subnets, sizes.
pub fn parsed<T: FromStr>(flag: &str, v: &str) -> Result<T, ClientError>
where
    T::Err: Display,
{
    v.parse().map_err(|e| ClientError::Usage(format!("{flag} {v:?}: {e}")))
}

/// In tests: the message of a refusal before sending ([`ClientError::Usage`]); anything else fails.
#[cfg(test)]
pub fn usage<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Usage(m)) => m,
        other => panic!("not a usage error: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxvirt_model::{Ipv4Net, PlacementStrategy};
    use std::net::Ipv4Addr;

    #[test]
    fn words_are_the_models_spelling() {
        assert_eq!(word::<PlacementStrategy>("--strategy", "pack").ok(), Some(PlacementStrategy::Pack));
        let m = usage(word::<PlacementStrategy>("--strategy", "random"));
        assert!(m.starts_with("--strategy \"random\": unknown variant `random`"), "{m}");
        assert!(m.contains("spread") && !m.contains("at line"), "{m}");
    }

    #[test]
    fn sizes_rates_and_addresses_name_their_flag() {
        assert_eq!(size("--memory", "512MiB").ok(), Some(ByteSize::mib(512)));
        assert!(usage(size("--memory", "512XB")).starts_with("--memory \"512XB\": unknown unit \"XB\""));
        assert_eq!(size_or_none("--memory-limit", " 0 ").ok(), Some(None));
        assert_eq!(size_or_none("--memory-limit", "1GiB").ok(), Some(Some(ByteSize(1 << 30))));
        assert!(usage(size_or_none("--balloon-min", "lots")).starts_with("--balloon-min \"lots\": "));
        assert_eq!(rate("--ingress", "20mbit").ok(), Some(20_000_000));
        assert!(usage(rate("--egress", "fast")).starts_with("--egress \"fast\": "));
        assert_eq!(parsed::<Ipv4Addr>("--ip", "10.0.0.5").ok(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert!(usage(parsed::<Ipv4Addr>("--ip", "10.0.0")).starts_with("--ip \"10.0.0\": "));
        assert!(usage(parsed::<Ipv4Net>("--subnet", "10.0.0.0/40")).contains("prefix length"));
    }
}
