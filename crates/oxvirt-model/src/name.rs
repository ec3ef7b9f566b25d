use crate::ValidationError;

/// Longest resource name: one DNS label, so a VM name can also be its guest host name.
pub const MAX_NAME_LEN: usize = 63;

/// The rule of [`validate_name`] as a regular expression, for the API's document.
pub const NAME_PATTERN: &str = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// Checks a resource name: 1 to 63 characters, ASCII letters, digits and `-`, starting with a
/// letter and not ending with `-` (a DNS label, as Incus requires). Such a name is safe in a path,
/// a QEMU option, a nftables rule or a shell word without any quoting.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let rule = |r: &str| Err(ValidationError::new(field, r));
    if name.is_empty() {
        return rule("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return rule("must be at most 63 characters");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(ValidationError::new(field, format!("may hold only ASCII letters, digits and '-', not {c:?}")));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return rule("must start with a letter");
    }
    if name.ends_with('-') {
        return rule("must not end with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web-1", "DB2", &"x".repeat(63)] {
            assert_eq!(validate_name("name", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_that_could_escape() {
        for bad in [
            "",
            "a,b",
            "a=b",
            "a b",
            "a\"b",
            "a'b",
            "../a",
            "a/b",
            "1abc",
            "-a",
            "a-",
            "a.b",
            "a\nb",
            "a;b",
            "é",
            &"x".repeat(64),
        ] {
            let err = validate_name("name", bad).unwrap_err();
            assert_eq!(err.field, "name");
            assert!(!err.rule.is_empty());
        }
    }
}
