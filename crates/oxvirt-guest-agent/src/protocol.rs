//! One request per line from the host, one reply per line from the guest, plain text:
//!
//! ```text
//! host:  identity hostname=web-1 machine-id=<32 hex> seed=<64..512 hex> time=<secs>.<nanos>
//! guest: ok identity
//! host:  ping
//! guest: ok pong
//! guest: error <field>: <rule>
//! ```
//! Both ends check every field; a request the agent cannot take changes nothing in the guest.

use std::fmt;

/// Seeds shorter than this are refused (256 bits: what the kernel's generator keeps).
pub const MIN_SEED_BYTES: usize = 32;
/// Seeds longer than this are refused.
pub const MAX_SEED_BYTES: usize = 256;
/// A line longer than this is refused unread.
pub const MAX_LINE: usize = 2048;

/// Who a restored guest is: what the agent sets before anything else runs in the clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// A host name: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    pub hostname: String,
    /// `/etc/machine-id`: 32 lowercase hexadecimal digits, not all zero.
    pub machine_id: String,
    /// Bytes mixed into the guest's random number generator, which is then reseeded.
    pub seed: Vec<u8>,
    /// The wall clock: seconds and nanoseconds since the Unix epoch.
    pub time: (u64, u32),
}

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Identity(Identity),
    Ping,
}

/// A request or reply that breaks the protocol: which field, which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub field: &'static str,
    pub rule: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for ProtocolError {}

fn bad(field: &'static str, rule: impl Into<String>) -> ProtocolError {
    ProtocolError { field, rule: rule.into() }
}

/// A host name made from any name (a VM's): lowercase, other characters turned into `-`,
/// trimmed of `-` at either end, cut to 63; `vm` when nothing is left.
pub fn hostname_from(name: &str) -> String {
    let mapped: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(63).collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "vm".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A machine id made from a VM's id (a UUID): its hex digits, lowercase.
pub fn machine_id_from(id: &str) -> Option<String> {
    let hex: String = id.chars().filter(|c| *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    check_machine_id(&hex).ok().map(|_| hex)
}

fn check_hostname(h: &str) -> Result<(), ProtocolError> {
    let ok_chars = h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if h.is_empty() || h.len() > 63 || !ok_chars || h.starts_with('-') || h.ends_with('-') {
        return Err(bad("hostname", "1-63 of a-z, 0-9 and '-', not starting or ending with '-'"));
    }
    Ok(())
}

fn check_machine_id(m: &str) -> Result<(), ProtocolError> {
    let hex = m.len() == 32 && m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex || m.bytes().all(|b| b == b'0') {
        return Err(bad("machine-id", "32 lowercase hexadecimal digits, not all zero"));
    }
    Ok(())
}

fn check_seed(s: &[u8]) -> Result<(), ProtocolError> {
    if !(MIN_SEED_BYTES..=MAX_SEED_BYTES).contains(&s.len()) {
        return Err(bad("seed", format!("{MIN_SEED_BYTES} to {MAX_SEED_BYTES} bytes")));
    }
    Ok(())
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

fn parse_time(s: &str) -> Option<(u64, u32)> {
    let (secs, nanos) = s.split_once('.')?;
    if nanos.len() != 9 || !nanos.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((secs.parse().ok()?, nanos.parse().ok()?))
}

impl Identity {
    /// Checks every field.
    pub fn check(&self) -> Result<(), ProtocolError> {
        check_hostname(&self.hostname)?;
        check_machine_id(&self.machine_id)?;
        check_seed(&self.seed)
    }
}

impl Request {
    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        match self {
            Request::Ping => "ping\n".to_string(),
            Request::Identity(i) => format!(
                "identity hostname={} machine-id={} seed={} time={}.{:09}\n",
                i.hostname,
                i.machine_id,
                to_hex(&i.seed),
                i.time.0,
                i.time.1
            ),
        }
    }

    /// Reads one line (without its newline).
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        if line.len() > MAX_LINE {
            return Err(bad("request", format!("at most {MAX_LINE} bytes")));
        }
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("ping") if words.next().is_none() => Ok(Request::Ping),
            Some("identity") => {
                let (mut hostname, mut machine_id, mut seed, mut time) = (None, None, None, None);
                for w in words {
                    let (k, v) = w.split_once('=').ok_or_else(|| bad("identity", format!("'{w}' is not key=value")))?;
                    let slot = match k {
                        "hostname" => &mut hostname,
                        "machine-id" => &mut machine_id,
                        "seed" => &mut seed,
                        "time" => &mut time,
                        _ => return Err(bad("identity", format!("unknown key '{k}'"))),
                    };
                    if slot.replace(v).is_some() {
                        return Err(bad("identity", format!("'{k}' given twice")));
                    }
                }
                let seed = from_hex(seed.ok_or_else(|| bad("seed", "missing"))?)
                    .ok_or_else(|| bad("seed", "hexadecimal digits, two per byte"))?;
                let time = parse_time(time.ok_or_else(|| bad("time", "missing"))?)
                    .ok_or_else(|| bad("time", "seconds, '.', nine digits of nanoseconds"))?;
                let id = Identity {
                    hostname: hostname.ok_or_else(|| bad("hostname", "missing"))?.to_string(),
                    machine_id: machine_id.ok_or_else(|| bad("machine-id", "missing"))?.to_string(),
                    seed,
                    time,
                };
                id.check()?;
                Ok(Request::Identity(id))
            }
            _ => Err(bad("request", "'identity ...' or 'ping'")),
        }
    }

    /// The word a successful reply to this request carries.
    pub fn done_word(&self) -> &'static str {
        match self {
            Request::Ping => "pong",
            Request::Identity(_) => "identity",
        }
    }
}

/// Reads a reply line: Ok(word) for `ok <word>`, Err(message) for `error <message>` or
/// anything else.
pub fn parse_reply(line: &str) -> Result<&str, String> {
    let line = line.trim_end();
    if let Some(word) = line.strip_prefix("ok ") {
        return Ok(word);
    }
    Err(line.strip_prefix("error ").unwrap_or(line).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            hostname: "web-1".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            seed: (0..32).collect(),
            time: (1_765_000_000, 5),
        }
    }

    #[test]
    fn a_request_survives_its_line() {
        for r in [Request::Ping, Request::Identity(identity())] {
            let line = r.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(Request::parse(line.trim_end()).unwrap(), r);
        }
        assert!(Request::Identity(identity()).to_line().contains(" time=1765000000.000000005\n"));
    }

    #[test]
    fn every_field_is_checked_by_name() {
        let field = |f: &dyn Fn(&mut Identity)| {
            let mut i = identity();
            f(&mut i);
            Request::parse(Request::Identity(i).to_line().trim_end()).unwrap_err().field
        };
        assert_eq!(field(&|i| i.hostname = "-a".into()), "hostname");
        assert_eq!(field(&|i| i.hostname = "Web".into()), "hostname");
        assert_eq!(field(&|i| i.hostname = "a".repeat(64)), "hostname");
        assert_eq!(field(&|i| i.machine_id = "0".repeat(32)), "machine-id");
        assert_eq!(field(&|i| i.machine_id = "abc".into()), "machine-id");
        assert_eq!(field(&|i| i.seed = vec![1; 31]), "seed");
        assert_eq!(field(&|i| i.seed = vec![1; 257]), "seed");
        let err = |l: &str| Request::parse(l).unwrap_err().field;
        assert_eq!(err("identity hostname=a"), "seed");
        assert_eq!(err("identity hostname=a hostname=b"), "identity");
        assert_eq!(err("identity foo=1"), "identity");
        assert_eq!(err("identity bare"), "identity");
        let good = Request::Identity(identity()).to_line();
        assert_eq!(err(&good.replace("seed=00", "seed=0")), "seed");
        assert_eq!(err(&good.replace("seed=00", "seed=zz")), "seed");
        assert_eq!(err(&good.replace(".000000005", ".5")), "time");
        assert_eq!(err("ping now"), "request");
        assert_eq!(err("reboot"), "request");
        assert_eq!(err(&"x".repeat(MAX_LINE + 1)), "request");
    }

    #[test]
    fn names_and_ids_become_valid_fields() {
        assert_eq!(hostname_from("Web_01.prod"), "web-01-prod");
        assert_eq!(hostname_from("__"), "vm");
        assert_eq!(hostname_from(&"a".repeat(80)).len(), 63);
        assert!(check_hostname(&hostname_from("-x-")).is_ok());
        assert_eq!(
            machine_id_from("0A1B2C3D-0000-4000-8000-00000000000F").as_deref(),
            Some("0a1b2c3d00004000800000000000000f")
        );
        assert_eq!(machine_id_from("not-a-uuid"), None);
    }

    #[test]
    fn replies_say_ok_or_why_not() {
        assert_eq!(parse_reply("ok identity\n"), Ok("identity"));
        assert_eq!(parse_reply("error seed: 32 to 256 bytes"), Err("seed: 32 to 256 bytes".into()));
        assert_eq!(parse_reply("garbage"), Err("garbage".into()));
    }
}
