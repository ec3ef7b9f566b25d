//! Who may do what. Requests over the network (HTTPS) carry a token (`Authorization: Bearer`),
//! which names a user; the Unix socket is reachable by local root only and acts as `root`. Every
//! routed request is then checked against the ACL: the privilege it needs and the resource it is
//! about are derived from its route (not from a hand-kept list), so a new route is checked too.
//! Requests that change something, and refused ones, go to the audit log. Tokens are rate
//! limited.

use crate::error::ApiError;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use oxvirt_controller::Controller;
use oxvirt_model::{AuditRecord, Principal, Privilege, ROOT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The peer of an HTTPS connection (set per connection by the listener).
#[derive(Debug, Clone)]
pub struct Peer(pub String);

impl Peer {
    /// The peer's address without its port; an IPv6 peer by its /64 (one site holds a whole
    /// /64, so limits per address are limits per /64).
    pub fn address(&self) -> String {
        match self.0.parse::<std::net::SocketAddr>() {
            Ok(std::net::SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_none() => {
                let s = a.ip().segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Ok(a) => a.ip().to_canonical().to_string(),
            Err(_) => self.0.clone(),
        }
    }
}

/// Who made a request, as a handler takes it (absent on the Unix socket: root).
pub type Caller = Option<axum::Extension<Principal>>;

/// Who made a request: its token's user, or root on the Unix socket (where no token is).
pub fn principal(p: &Option<axum::Extension<Principal>>) -> Principal {
    p.as_ref().map(|axum::Extension(p)| p.clone()).unwrap_or(Principal { user: ROOT.into(), token: None })
}

/// The name of who made a request (see [`principal`]).
pub fn user_of(p: &Option<axum::Extension<Principal>>) -> String {
    principal(p).user
}

/// The only route that takes no token.
pub const LOGIN: &str = "/api/v1/auth/login";

fn refusal(status: StatusCode, code: &'static str, message: &str) -> Response {
    let mut r = ApiError { status, code, field: None, rule: None, message: message.into() }.into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"oxvirt\""));
    }
    r
}

/// Buckets kept at most: past it, idle ones are dropped, and a new key waits.
const MAX_BUCKETS: usize = 100_000;

/// Refused requests without a valid token each address may have written to the audit log: two a
/// second, bursts of 100. Past that they are refused (429) and only counted.
pub const UNAUTHENTICATED_RATE: f64 = 2.0;
pub const UNAUTHENTICATED_BURST: f64 = 100.0;

/// Token buckets, one per token: `rate` requests per second, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter { rate, burst, buckets: Mutex::default() }
    }

    /// Takes one request's token; `false` when the bucket is empty.
    pub fn take(&self, key: &str) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if b.len() >= MAX_BUCKETS {
            // Buckets that refilled completely hold nothing worth keeping.
            let full = std::time::Duration::from_secs_f64(self.burst / self.rate);
            b.retain(|_, (_, at)| now.duration_since(*at) < full);
            if b.len() >= MAX_BUCKETS {
                return false;
            }
        }
        let (level, at) = b.entry(key.to_string()).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            true
        } else {
            false
        }
    }
}

fn peer_of(req: &Request) -> String {
    req.extensions().get::<Peer>().map(|p| p.0.clone()).unwrap_or_else(|| "socket".into())
}

/// A request path as the audit log and refusals quote it: cut short (it is the caller's text).
fn audit_path(p: &str) -> String {
    oxvirt_controller::access::audit::cut(p, oxvirt_controller::access::audit::AUDIT_PATH_MAX)
}

fn audit_refusal(c: &Controller, req: &Request, status: StatusCode, user: &str) {
    c.access().audit(&AuditRecord {
        time: now_ms(),
        user: user.into(),
        token: None,
        from: peer_of(req),
        method: req.method().to_string(),
        path: audit_path(req.uri().path()),
        resource: String::new(),
        status: status.as_u16(),
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// HTTPS: lets a request through only with a valid token (the login route excepted), within its
/// rate; the principal goes along with the request.
pub async fn require_token(
    State((c, limiter, unauthenticated)): State<(Controller, Arc<RateLimiter>, Arc<RateLimiter>)>,
    mut req: Request,
    next: Next,
) -> Response {
    // A refusal before authentication costs a counter; only a few per address reach the audit log.
    let refuse_unauthenticated = |req: &Request, message: &str| {
        let address = req.extensions().get::<Peer>().map(Peer::address).unwrap_or_default();
        if !unauthenticated.take(&address) {
            UNAUTHENTICATED_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "too many requests without a valid token from this address: wait a moment",
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
        audit_refusal(&c, req, StatusCode::UNAUTHORIZED, "-");
        refusal(StatusCode::UNAUTHORIZED, "unauthorized", message)
    };
    if req.uri().path() == LOGIN {
        let key = format!("login:{}", peer_of(&req).rsplit_once(':').map(|p| p.0.to_string()).unwrap_or_default());
        if !limiter.take(&key) {
            return refusal(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "too many login attempts: wait a moment");
        }
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return refuse_unauthenticated(&req, "an API token is required: send `Authorization: Bearer <token>`");
    };
    let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let Some(token) =
        (!presented.is_empty() && presented.len() <= 256).then(|| c.access().check_token(presented)).flatten()
    else {
        return refuse_unauthenticated(&req, "the API token is not valid (unknown, revoked or expired)");
    };
    if !limiter.take(&token.id) {
        let mut r =
            refusal(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "this token's rate limit is reached: slow down");
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    req.extensions_mut().insert(Principal { user: token.user, token: Some(token.id) });
    next.run(req).await
}

/// What a route needs: a privilege on a resource (`/vms/web`, `/pools`, `/`), or `None` for
/// routes any authenticated user may call (their own tokens; the handler checks the rest).
/// `params` are the route's path parameters as the handler gets them (percent-decoded), so the
/// check is made on the very object the handler acts on, never on the raw URI.
pub fn requirement(method: &Method, matched: &str, params: &[(&str, &str)]) -> Option<(Privilege, String)> {
    let m: Vec<&str> = matched.trim_start_matches("/api/v1").split('/').filter(|s| !s.is_empty()).collect();
    let param = |template: &str| {
        let key = template.strip_prefix('{')?.strip_suffix('}')?;
        params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    };
    // Login is public; own tokens are anyone's; a task is checked against what it is about; the
    // VM list is filtered and a new VM checked against its project, by their handlers.
    if matched == LOGIN || matches!(m.first(), Some(&"tokens") | Some(&"tasks")) || matched == "/api/v1/vms" {
        return None;
    }
    let resource = match (m.first(), m.get(1).and_then(|t| param(t))) {
        (Some(c), Some(name)) if oxvirt_model::ACL_COLLECTIONS.contains(c) => format!("/{c}/{name}"),
        (Some(c), _) if oxvirt_model::ACL_COLLECTIONS.contains(c) => format!("/{c}"),
        _ => "/".to_string(),
    };
    // A repository is a host directory: only administrators make or forget one.
    // So is a backup job: it backs up VMs it names, whoever asks.
    // An encrypted repository's key reads every backup in it.
    let repo_itself = (m.first() == Some(&"backup-repos") && m.len() <= 2 && method != Method::GET)
        || (m.first() == Some(&"backup-repos") && m.get(2) == Some(&"key"))
        || (m.first() == Some(&"backup-jobs") && method != Method::GET);
    // A network's flow rules steer every tenant's traffic on it: administrators write them.
    let flows = m.first() == Some(&"networks") && m.get(2) == Some(&"flows") && method != Method::GET;
    // A template's warm pool is QEMUs on the host, in no project's quota.
    let host_capacity = m.first() == Some(&"templates") && m.get(2) == Some(&"pool") && method != Method::GET;
    let resource = if host_capacity { "/".to_string() } else { resource };
    let admin = repo_itself
        || host_capacity
        || flows
        || matches!(m.first(), Some(&"users") | Some(&"acl") | Some(&"audit"))
        || ((matched == "/api/v1/host/policy"
            || matches!(m.first(), Some(&"projects") | Some(&"cluster") | Some(&"ha")))
            && method != Method::GET);
    let operate = (m.first() == Some(&"vms")
        && matches!(m.get(2), Some(&"actions") | Some(&"console") | Some(&"balloon") | Some(&"migrate")))
        && !(m.get(2) == Some(&"balloon") && method == Method::GET);
    let privilege = if admin {
        Privilege::Admin
    } else if operate {
        Privilege::Operate
    } else if method == Method::GET {
        Privilege::Read
    } else {
        Privilege::Modify
    };
    Some((privilege, resource))
}

/// Every routed request: checked against the ACL, and (when it changes something or is refused)
/// written to the audit log.
pub async fn authorize(
    State(c): State<Controller>,
    matched: MatchedPath,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let principal =
        req.extensions().get::<Principal>().cloned().unwrap_or(Principal { user: ROOT.into(), token: None });
    let method = req.method().clone();
    let path = audit_path(req.uri().path());
    let from = peer_of(&req);
    let params: Vec<(&str, &str)> = match &params {
        Ok(p) => p.iter().collect(),
        Err(RawPathParamsRejection::MissingPathParams(_)) => Vec::new(),
        Err(_) => {
            return refusal(StatusCode::NOT_FOUND, "not-found", "no such resource (a path parameter is not UTF-8)")
        }
    };
    // A resource name that can never exist is not found, before any check names it (the same
    // check and words as the handlers' `Names`: `VM "a b" not found`).
    if let Err(e) = crate::names::check_names(matched.as_str(), params.iter().copied()) {
        return refusal(StatusCode::NOT_FOUND, "not-found", &e.message);
    }
    let need = requirement(&method, matched.as_str(), &params);
    let resource = need.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
    let response = match &need {
        Some((privilege, res)) => match c.access().authorize(&principal.user, *privilege, res) {
            Ok(()) => next.run(req).await,
            Err(e) => refusal(StatusCode::FORBIDDEN, "forbidden", &e.to_string()),
        },
        None => next.run(req).await,
    };
    let status = response.status();
    if method != Method::GET || status == StatusCode::FORBIDDEN {
        c.access().audit(&AuditRecord {
            time: now_ms(),
            user: principal.user,
            token: principal.token,
            from,
            method: method.to_string(),
            path,
            resource,
            status: status.as_u16(),
        });
    }
    response
}

/// Requests refused before authentication that were only counted (past their address's limit).
pub static UNAUTHENTICATED_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The API as served over HTTPS: every route but login needs a token.
pub fn https_router(ctrl: Controller, api: Arc<crate::metrics::ApiMetrics>, limiter: Arc<RateLimiter>) -> axum::Router {
    let unauthenticated = Arc::new(RateLimiter::new(UNAUTHENTICATED_RATE, UNAUTHENTICATED_BURST));
    crate::router_with_metrics(ctrl.clone(), api)
        .layer(axum::middleware::from_fn_with_state((ctrl, limiter, unauthenticated), require_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_come_from_the_route() {
        // The route's parameters as axum hands them over (decoded already).
        let r = |m: Method, matched: &str, path: &str| {
            let params: Vec<(&str, &str)> = matched
                .split('/')
                .zip(path.split('/'))
                .filter_map(|(t, v)| Some((t.strip_prefix('{')?.strip_suffix('}')?, v)))
                .collect();
            requirement(&m, matched, &params)
        };
        assert_eq!(r(Method::GET, "/api/v1/vms", "/api/v1/vms"), None, "filtered by the handler");
        assert_eq!(r(Method::POST, "/api/v1/vms", "/api/v1/vms"), None, "checked against its project");
        assert_eq!(r(Method::GET, "/api/v1/pools", "/api/v1/pools"), Some((Privilege::Read, "/pools".into())));
        assert_eq!(
            r(Method::POST, "/api/v1/vms/{name}/actions/{action}", "/api/v1/vms/web/actions/start"),
            Some((Privilege::Operate, "/vms/web".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/v1/vms/{name}/console", "/api/v1/vms/web/console"),
            Some((Privilege::Operate, "/vms/web".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/v1/vms/{name}/balloon", "/api/v1/vms/web/balloon"),
            Some((Privilege::Read, "/vms/web".into()))
        );
        assert_eq!(
            r(Method::DELETE, "/api/v1/pools/{pool}/volumes/{name}", "/api/v1/pools/p/volumes/v"),
            Some((Privilege::Modify, "/pools/p".into()))
        );
        assert_eq!(r(Method::PUT, "/api/v1/host/policy", "/api/v1/host/policy"), Some((Privilege::Admin, "/".into())));
        assert_eq!(
            r(Method::PUT, "/api/v1/templates/{template}/pool", "/api/v1/templates/t/pool"),
            Some((Privilege::Admin, "/".into())),
            "a warm pool is the host's capacity"
        );
        assert_eq!(r(Method::GET, "/api/v1/host/policy", "/api/v1/host/policy"), Some((Privilege::Read, "/".into())));
        assert_eq!(r(Method::GET, "/api/v1/users", "/api/v1/users"), Some((Privilege::Admin, "/".into())));
        // Flow rules: read with the network, written by administrators.
        assert_eq!(
            r(Method::POST, "/api/v1/networks/{network}/flows", "/api/v1/networks/v10/flows"),
            Some((Privilege::Admin, "/networks/v10".into()))
        );
        assert_eq!(
            r(Method::GET, "/api/v1/networks/{network}/flows", "/api/v1/networks/v10/flows"),
            Some((Privilege::Read, "/networks/v10".into()))
        );
        // HA is the cluster's: changed by administrators only, whichever VM it names.
        assert_eq!(
            r(Method::POST, "/api/v1/ha/resources", "/api/v1/ha/resources"),
            Some((Privilege::Admin, "/".into()))
        );
        assert_eq!(
            r(Method::DELETE, "/api/v1/ha/resources/{name}", "/api/v1/ha/resources/web"),
            Some((Privilege::Admin, "/".into()))
        );
        assert_eq!(r(Method::GET, "/api/v1/ha/groups", "/api/v1/ha/groups"), Some((Privilege::Read, "/".into())));
        assert_eq!(r(Method::GET, "/api/v1/tasks", "/api/v1/tasks"), None);
        assert_eq!(r(Method::POST, "/api/v1/tokens", "/api/v1/tokens"), None);
    }

    #[test]
    fn peers_are_keyed_by_address_and_ipv6_by_its_64() {
        assert_eq!(Peer("127.0.0.1:4000".into()).address(), "127.0.0.1");
        assert_eq!(Peer("[2001:db8:1:2:3:4:5:6]:443".into()).address(), "2001:db8:1:2::/64");
        assert_eq!(Peer("[2001:db8:1:2:ffff::1]:443".into()).address(), "2001:db8:1:2::/64");
        assert_eq!(Peer("[::ffff:10.0.0.1]:443".into()).address(), "10.0.0.1");
    }

    #[test]
    fn buckets_refill() {
        let l = RateLimiter::new(1000.0, 3.0);
        assert!(l.take("a") && l.take("a") && l.take("a"));
        assert!(!l.take("a"));
        assert!(l.take("b"), "one bucket per token");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.take("a"));
    }
}
