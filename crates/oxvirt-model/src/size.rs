use std::fmt;
use std::str::FromStr;

/// A size in bytes, written by people as `512MiB`, `2GiB`, `1.5G`, `4096` or `100MB`.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`, and QEMU's `K`, `M`, `G`, `T`) are powers of 1024;
/// decimal units (`kB`, `MB`, `GB`, `TB`) are powers of 1000. In JSON a size is either such a
/// string or a whole number of bytes; it is written back as a whole number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * MIB)
    }
}

/// Why a size did not parse; the text is the rule a user broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SizeError(String);

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("B", 1),
    ("K", KIB),
    ("KiB", KIB),
    ("M", MIB),
    ("MiB", MIB),
    ("G", GIB),
    ("GiB", GIB),
    ("T", TIB),
    ("TiB", TIB),
    ("kB", 1000),
    ("KB", 1000),
    ("MB", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("TB", 1000 * 1000 * 1000 * 1000),
];

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = (&s[..split], s[split..].trim());
        if num.is_empty() {
            return Err(SizeError(format!("{s:?} is not a size: write a number and a unit, e.g. 512MiB or 2GiB")));
        }
        let Some(&(_, mult)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(SizeError(format!(
                "unknown unit {unit:?} in {s:?}: use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)"
            )));
        };
        let bytes = if let Some((whole, frac)) = num.split_once('.') {
            if frac.contains('.') || frac.is_empty() || frac.len() > 9 {
                return Err(SizeError(format!("{num:?} is not a number")));
            }
            let whole: u64 = if whole.is_empty() { 0 } else { parse_u64(whole)? };
            let scale = 10u64.pow(frac.len() as u32);
            let frac: u64 = parse_u64(frac)?;
            let w = whole.checked_mul(mult);
            let f = (frac as u128 * mult as u128 / scale as u128) as u64;
            w.and_then(|w| w.checked_add(f))
        } else {
            parse_u64(num)?.checked_mul(mult)
        };
        bytes.map(ByteSize).ok_or_else(|| SizeError(format!("{s:?} is too large")))
    }
}

fn parse_u64(s: &str) -> Result<u64, SizeError> {
    s.parse().map_err(|_| SizeError(format!("{s:?} is not a whole number or is too large")))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, mult) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b >= mult && b.is_multiple_of(mult) {
                return write!(f, "{}{unit}", b / mult);
            }
        }
        for (unit, mult) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b >= mult {
                return write!(f, "{:.1}{unit}", b as f64 / mult as f64);
            }
        }
        write!(f, "{b}B")
    }
}

/// Bytes as a whole number, or a string with a unit (`"512MiB"`, `"10G"`); answered as bytes.
impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "oneOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "pattern": "^[0-9.]+ ?(B|K|KiB|M|MiB|G|GiB|T|TiB|kB|KB|MB|GB|TB)?$" } ] })
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: bytes as a whole number, or a string such as \"512MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_people_write() {
        let cases = [
            ("512MiB", 512 * MIB),
            ("2GiB", 2 * GIB),
            ("2G", 2 * GIB),
            ("1.5GiB", 3 * GIB / 2),
            ("4096", 4096),
            ("10B", 10),
            ("100MB", 100_000_000),
            ("1 TiB", TIB),
            (" 64K ", 64 * KIB),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(want)), "{s}");
        }
    }

    #[test]
    fn refuses_bad_sizes_with_the_rule() {
        let err = "512XB".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("unknown unit \"XB\""), "{err}");
        for bad in ["", "MiB", "1.2.3G", "-5M", "99999999999999999999", "20000000TiB", "1.G"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_exact_binary_units() {
        assert_eq!(ByteSize(512 * MIB).to_string(), "512MiB");
        assert_eq!(ByteSize(2 * GIB).to_string(), "2GiB");
        assert_eq!(ByteSize(1536 * MIB).to_string(), "1536MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(1500).to_string(), "1.5KiB");
    }

    #[test]
    fn json_takes_strings_and_numbers() {
        let a: ByteSize = serde_json::from_str("\"1GiB\"").unwrap();
        let b: ByteSize = serde_json::from_str("1073741824").unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<ByteSize>("\"512XB\"").is_err());
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert_eq!(serde_json::to_string(&a).unwrap(), "1073741824");
    }
}
