//! JSON request bodies: parsed with the path of the offending field, so that an error can say
//! which field broke which rule.

use crate::error::ApiError;
use axum::body::Bytes;
use serde::de::DeserializeOwned;

/// Parses a JSON body into `T`, refusing unknown fields and naming the field in every error.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("body", "a JSON object is required"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        let join = |f: &str| if path == "." || path.is_empty() { f.to_string() } else { format!("{path}.{f}") };
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            // The path already ends with the unknown field's name.
            let name = rest.split('`').next().unwrap_or("");
            let field = if path.ends_with(name) { path.clone() } else { join(name) };
            return ApiError::invalid(field, "unknown field");
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or("");
            return ApiError::invalid(join(name), "is required");
        }
        if e.inner().is_syntax() || e.inner().is_eof() {
            return ApiError::invalid("body", format!("not valid JSON: {msg}"));
        }
        let field = if path == "." || path.is_empty() { "body".to_string() } else { path };
        ApiError::invalid(field, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxvirt_model::VmSpec;

    fn err(json: &str) -> (String, String) {
        let e = parse::<VmSpec>(&Bytes::from(json.to_string())).unwrap_err();
        (e.field.unwrap(), e.rule.unwrap())
    }

    #[test]
    fn names_the_field_and_rule() {
        assert_eq!(
            err(r#"{"name":"a","cpus":1,"memory":"1GiB","colour":1}"#),
            ("colour".into(), "unknown field".into())
        );
        assert_eq!(err(r#"{"name":"a","memory":"1GiB"}"#), ("cpus".into(), "is required".into()));
        let (f, r) = err(r#"{"name":"a","cpus":1,"memory":"512XB"}"#);
        assert_eq!(f, "memory");
        assert!(r.contains("unknown unit \"XB\""), "{r}");
        let (f, _) = err(r#"{"name":"a","cpus":-1,"memory":"1GiB"}"#);
        assert_eq!(f, "cpus");
        let (f, _) = err(r#"{"name":"a","cpus":1,"memory":"1GiB","disks":[{"path":"/a","bus":"ide"}]}"#);
        assert_eq!(f, "disks[0].bus");
        let (f, r) = err(r#"{"name":"a","cpus":1,"memory":"1GiB","kernel":{"kernel":"/k","x":1}}"#);
        assert_eq!((f.as_str(), r.as_str()), ("kernel.x", "unknown field"));
        assert_eq!(err("{").0, "body");
        assert_eq!(err("").0, "body");
    }
}
