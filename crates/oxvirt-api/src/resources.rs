//! A VM's resources and balloon (`/api/v1/vms/{name}/resources`, `/balloon`), the host's policy
//! and resources (`/api/v1/host/policy`, `/api/v1/host/resources`).

use crate::body::parse;
use crate::error::ApiResult;
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{BalloonTarget, BalloonView, HostPolicy, HostResources, Resources, Vm};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/vms/{name}/resources", axum::routing::put(set_resources))
        .route("/api/v1/vms/{name}/balloon", get(balloon).put(set_balloon))
        .route("/api/v1/host/policy", get(policy).put(set_policy))
        .route("/api/v1/host/resources", get(host_resources))
}

async fn set_resources(State(c): State<Controller>, Names(name): Names<String>, body: Bytes) -> ApiResult<Json<Vm>> {
    let r: Resources = parse(&body)?;
    Ok(Json(c.resources().set_resources(&name, r).await?))
}

async fn balloon(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<BalloonView>> {
    Ok(Json(c.resources().balloon(&name).await?))
}

async fn set_balloon(
    State(c): State<Controller>,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<BalloonView>> {
    let t: BalloonTarget = parse(&body)?;
    Ok(Json(c.resources().set_balloon(&name, t.target).await?))
}

async fn policy(State(c): State<Controller>) -> ApiResult<Json<HostPolicy>> {
    Ok(Json(c.resources().host_policy()?))
}

async fn set_policy(State(c): State<Controller>, body: Bytes) -> ApiResult<Json<HostPolicy>> {
    let p: HostPolicy = parse(&body)?;
    Ok(Json(c.resources().set_host_policy(p)?))
}

async fn host_resources(State(c): State<Controller>) -> ApiResult<Json<HostResources>> {
    Ok(Json(c.resources().host_resources()?))
}
