//! The names in a request's path, checked once for every route: [`Names`] extracts the path's
//! parameters only when each name among them is one that could exist (a DNS label), so a
//! handler never sees, stores or builds a path from any other. A name that never could exist is
//! simply not found, said with the noun of its collection (`VM "a b" not found`).

use crate::error::ApiError;
use axum::extract::{FromRequestParts, MatchedPath, Path, RawPathParams};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Path parameters that are not names: checked by their handlers (an action, a task or token id).
const NOT_NAMES: [&str; 2] = ["action", "id"];

/// What a collection's members are called in messages.
fn noun_of(collection: &str) -> &str {
    match collection {
        "vms" => "VM",
        "pools" => "pool",
        "volumes" => "volume",
        "snapshots" => "snapshot",
        "networks" => "network",
        "security-groups" => "security group",
        "nics" => "NIC",
        "disks" => "disk",
        "projects" => "project",
        "users" => "user",
        "hosts" => "host",
        "resources" => "HA resource",
        "groups" => "HA group",
        "backup-repos" => "backup repository",
        "backup-jobs" => "backup job",
        "templates" => "template",
        other => other,
    }
}

/// The collection a parameter names a member of: the segment before `{param}` in the route.
fn collection_of<'a>(route: &'a str, param: &str) -> &'a str {
    let hole = format!("{{{param}}}");
    let segs: Vec<&str> = route.split('/').collect();
    segs.iter().position(|s| *s == hole).and_then(|i| i.checked_sub(1)).map(|i| segs[i]).unwrap_or("resource")
}

/// Checks every name among a route's parameters (`(parameter, value)`).
pub fn check_names<'a>(route: &str, params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), ApiError> {
    for (param, value) in params {
        if NOT_NAMES.contains(&param) {
            continue;
        }
        if oxvirt_model::validate_name("name", value).is_err() {
            let noun = noun_of(collection_of(route, param));
            return Err(ApiError::not_found(format!("{noun} {value:?} not found")));
        }
    }
    Ok(())
}

/// The path's parameters as `T` (a `String`, or a tuple in the route's order), every name
/// among them checked.
pub struct Names<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Names<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("no such resource (a path parameter is not UTF-8)"))?;
        check_names(&route, raw.iter())?;
        let Path(t) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::not_found(format!("no such resource: {}", e.body_text())))?;
        Ok(Names(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(route: &str, params: &[(&str, &str)]) -> Option<String> {
        check_names(route, params.iter().copied()).err().map(|e| e.message)
    }

    #[test]
    fn every_name_is_checked_and_named_by_its_collection() {
        let r = "/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}";
        assert_eq!(refused(r, &[("pool", "p"), ("name", "v"), ("snap", "s1")]), None);
        assert_eq!(refused(r, &[("pool", "p"), ("name", "a b"), ("snap", "s")]).unwrap(), r#"volume "a b" not found"#);
        assert_eq!(refused(r, &[("pool", "p"), ("name", "v"), ("snap", "..")]).unwrap(), r#"snapshot ".." not found"#);
        let r = "/api/v1/vms/{name}/nics/{nic}";
        assert_eq!(refused(r, &[("name", "9web"), ("nic", "n0")]).unwrap(), r#"VM "9web" not found"#);
        assert_eq!(refused(r, &[("name", "web"), ("nic", "n/0")]).unwrap(), r#"NIC "n/0" not found"#);
        assert_eq!(
            refused("/api/v1/security-groups/{group}", &[("group", "-x")]).unwrap(),
            r#"security group "-x" not found"#
        );
    }

    #[test]
    fn actions_and_ids_are_left_to_their_handlers() {
        assert_eq!(refused("/api/v1/vms/{name}/actions/{action}", &[("name", "a"), ("action", "Re Boot")]), None);
        assert_eq!(refused("/api/v1/tasks/{id}", &[("id", "0f0e-ABC")]), None);
    }
}
