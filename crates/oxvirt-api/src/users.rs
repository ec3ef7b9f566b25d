//! `/api/v1/auth/login`, `/api/v1/tokens`, `/api/v1/users`, `/api/v1/acl`, `/api/v1/audit`.

use crate::body::parse;
use crate::error::{ApiError, ApiResult};
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use oxvirt_controller::{ControlError, Controller};
use oxvirt_model::{
    AclEntry, ApiToken, AuditRecord, LoginRequest, NewToken, NewTokenRequest, Principal, Privilege, UserSpec, UserView,
    ROOT,
};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route(crate::auth::LOGIN, post(login))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{user}", axum::routing::delete(delete_user))
        .route("/api/v1/acl", get(acl).put(set_acl))
        .route("/api/v1/audit", get(audit))
}

fn who(p: Option<Extension<Principal>>) -> Principal {
    crate::auth::principal(&p)
}

/// How long the one route open to anyone waits for its body.
const LOGIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn login(
    State(c): State<Controller>,
    peer: Option<Extension<crate::auth::Peer>>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    // Read here, under a deadline: a client that trickles its body holds no slot for long.
    let body = tokio::time::timeout(LOGIN_BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), 64 * 1024))
        .await
        .map_err(|_| ApiError::invalid("body", "not received in time"))?
        .map_err(|e| ApiError::invalid("body", format!("unreadable: {e}")))?;
    let l: LoginRequest = parse(&body)?;
    let from = peer.map(|Extension(p)| p.address()).unwrap_or_else(|| "socket".into());
    let c2 = c.clone();
    // Password hashing is slow on purpose: off the async threads.
    let r = tokio::task::spawn_blocking(move || c2.access().login(&l.user, &l.password, &from))
        .await
        .map_err(|e| ApiError::from(ControlError::Host(e.to_string())))?;
    match r {
        Ok(t) => Ok((StatusCode::CREATED, Json(t)).into_response()),
        Err(e @ ControlError::TooManyRequests { retry_after_secs, .. }) => {
            let mut resp = ApiError::from(e).into_response();
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

async fn create_token(
    State(c): State<Controller>,
    p: Option<Extension<Principal>>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let me = who(p);
    let r: NewTokenRequest = parse(&body)?;
    let user = r.user.unwrap_or_else(|| me.user.clone());
    if user != me.user {
        c.access().authorize(&me.user, Privilege::Admin, "/")?;
        if user != ROOT && !c.access().list_users()?.iter().any(|u| u.name == user) {
            return Err(ControlError::invalid("user", format!("there is no user named {user}")).into());
        }
    }
    let t: NewToken = c.access().create_token(&user, &r.name, r.expires_in_secs.map(|s| s.saturating_mul(1000)))?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// A user's own tokens; an administrator's view has everyone's.
async fn list_tokens(State(c): State<Controller>, p: Option<Extension<Principal>>) -> ApiResult<Json<Vec<ApiToken>>> {
    let me = who(p);
    let all = c.access().authorize(&me.user, Privilege::Admin, "/").is_ok();
    Ok(Json(c.access().list_tokens(if all { None } else { Some(&me.user) })?))
}

async fn revoke_token(
    State(c): State<Controller>,
    p: Option<Extension<Principal>>,
    Names(id): Names<String>,
) -> ApiResult<StatusCode> {
    let me = who(p);
    if id.len() > 64 || !id.chars().all(|ch| ch.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found(format!("token {id:?} not found")));
    }
    let t = c.access().get_token(&id)?;
    if t.user != me.user {
        c.access().authorize(&me.user, Privilege::Admin, "/")?;
    }
    c.access().revoke_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(c): State<Controller>) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(c.access().list_users()?))
}

async fn create_user(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: UserSpec = parse(&body)?;
    let c2 = c.clone();
    let u = tokio::task::spawn_blocking(move || c2.access().create_user(spec))
        .await
        .map_err(|e| ApiError::from(ControlError::Host(e.to_string())))??;
    Ok((StatusCode::CREATED, Json(u)))
}

async fn delete_user(State(c): State<Controller>, Names(user): Names<String>) -> ApiResult<StatusCode> {
    c.access().delete_user(&user)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn acl(State(c): State<Controller>) -> ApiResult<Json<Vec<AclEntry>>> {
    Ok(Json(c.access().acl()?))
}

async fn set_acl(State(c): State<Controller>, body: Bytes) -> ApiResult<Json<Vec<AclEntry>>> {
    let acl: Vec<AclEntry> = parse(&body)?;
    Ok(Json(c.access().set_acl(acl)?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default = "hundred")]
    limit: usize,
}

fn hundred() -> usize {
    100
}

async fn audit(State(c): State<Controller>, Query(q): Query<AuditQuery>) -> ApiResult<Json<Vec<AuditRecord>>> {
    Ok(Json(c.access().audit_tail(q.limit.min(10_000))?))
}
