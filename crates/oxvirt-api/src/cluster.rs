//! `/api/v1/cluster/...`: the hosts of the cluster (etcd store), online or not, and the leader;
//! maintenance; the placement and rebalancing policy; rebalancing.

use crate::error::ApiResult;
use crate::names::Names;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{HostView, RebalanceView};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/cluster/hosts", get(hosts))
        .route("/api/v1/cluster/hosts/{host}", axum::routing::delete(leave))
        .route("/api/v1/cluster/hosts/{host}/maintenance", axum::routing::put(maintenance))
        .route("/api/v1/cluster/hosts/{host}/fence", axum::routing::post(fence).delete(unfence))
        .route("/api/v1/cluster/policy", get(policy).put(set_policy))
        .route("/api/v1/cluster/rebalance", get(plan).post(rebalance))
}

async fn policy(State(c): State<Controller>) -> ApiResult<Json<oxvirt_model::ClusterPolicy>> {
    Ok(Json(c.hosts().cluster_policy()?))
}

async fn set_policy(
    State(c): State<Controller>,
    body: axum::body::Bytes,
) -> ApiResult<Json<oxvirt_model::ClusterPolicy>> {
    let p: oxvirt_model::ClusterPolicy = crate::body::parse(&body)?;
    Ok(Json(c.hosts().set_cluster_policy(p)?))
}

async fn plan(State(c): State<Controller>) -> ApiResult<Json<RebalanceView>> {
    Ok(Json(c.hosts().rebalance(false)?))
}

async fn rebalance(State(c): State<Controller>) -> ApiResult<Json<RebalanceView>> {
    Ok(Json(c.hosts().rebalance(true)?))
}

async fn hosts(State(c): State<Controller>) -> ApiResult<Json<Vec<HostView>>> {
    Ok(Json(c.hosts().cluster_hosts().await?))
}

/// HA: the host kills its HA VMs and runs none until unfenced; they are recovered elsewhere.
async fn fence(
    State(c): State<Controller>,
    p: Option<axum::Extension<oxvirt_model::Principal>>,
    Names(host): Names<String>,
) -> ApiResult<Json<oxvirt_model::Fenced>> {
    let caller = p.map(|p| p.0.user).unwrap_or_else(|| oxvirt_model::ROOT.to_string());
    Ok(Json(oxvirt_model::Fenced { message: c.ha().fence_host(&caller, &host)? }))
}

async fn unfence(State(c): State<Controller>, Names(host): Names<String>) -> ApiResult<StatusCode> {
    c.ha().unfence_host(&host)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leave(State(c): State<Controller>, Names(host): Names<String>) -> ApiResult<StatusCode> {
    c.hosts().leave_cluster(&host)?;
    Ok(StatusCode::NO_CONTENT)
}

/// In maintenance: no new VMs; its running VMs are migrated away (the drain's task is returned).
async fn maintenance(
    State(c): State<Controller>,
    Names(host): Names<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Vec<oxvirt_model::Task>>> {
    let m: oxvirt_model::Maintenance = crate::body::parse(&body)?;
    Ok(Json(c.hosts().set_maintenance(&host, m.on)?))
}
