//! Bit rates as `tc` writes them: `800kbit`, `20mbit`, `1gbit` (powers of 1000), or a plain number
//! of bits per second. Stored as a string with the largest exact unit; 0 means no limit.

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a rate into bits per second.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a rate like 800kbit, 20mbit or 1gbit"))?;
    let mul: u64 = match unit {
        "" | "bit" => 1,
        "kbit" | "k" => 1_000,
        "mbit" | "m" => 1_000_000,
        "gbit" | "g" => 1_000_000_000,
        _ => return Err(format!("{s:?}: the unit must be bit, kbit, mbit or gbit")),
    };
    let v = n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))?;
    if v > 100_000_000_000 {
        return Err(format!("{s:?} is above 100gbit"));
    }
    if v != 0 && v < 8_000 {
        return Err(format!("{s:?} is below 8kbit, the smallest limit"));
    }
    Ok(v)
}

/// Writes a rate with the largest unit that divides it.
pub fn format(bits: u64) -> String {
    for (mul, unit) in [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1_000, "kbit")] {
        if bits != 0 && bits.is_multiple_of(mul) {
            return format!("{}{unit}", bits / mul);
        }
    }
    format!("{bits}bit")
}

/// A rate as the API takes it (bits per second, or a string with a unit) and answers it (a string).
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "oneOf": [
        { "type": "integer", "minimum": 0 },
        { "type": "string", "pattern": "^[0-9]+ ?(bit|kbit|mbit|gbit|k|m|g)?$" } ] })
}

pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*v))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) => parse(&n.to_string()).map_err(serde::de::Error::custom),
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_trip() {
        assert_eq!(parse("20mbit"), Ok(20_000_000));
        assert_eq!(parse("800KBIT"), Ok(800_000));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(format(20_000_000), "20mbit");
        assert_eq!(format(1_500_000), "1500kbit");
        assert!(parse("20 mbps").is_err());
        assert!(parse("1bit").is_err());
        assert!(parse("99999999999999gbit").is_err());
    }
}
