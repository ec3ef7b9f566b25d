//! `/api/v1/networks` (with a vlan network's flow rules), `/api/v1/security-groups` and a VM's NICs
//! (`/api/v1/vms/{name}/nics`).

use crate::auth::{user_of, Caller};
use crate::body::parse;
use crate::error::ApiResult;
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{
    FlowRuleSpec, FlowRuleView, LeaseView, NetworkSpec, NetworkView, NicSpec, NicUpdate, SecurityGroup,
    SecurityGroupSpec, Vm,
};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/networks", get(list_networks).post(create_network))
        .route("/api/v1/networks/{network}", get(show_network).delete(delete_network))
        .route("/api/v1/networks/{network}/leases", get(leases))
        .route("/api/v1/networks/{network}/flows", get(list_flows).post(add_flow))
        .route("/api/v1/networks/{network}/flows/{id}", axum::routing::delete(delete_flow))
        .route("/api/v1/security-groups", get(list_groups).post(create_group))
        .route("/api/v1/security-groups/{group}", get(show_group).put(replace_group).delete(delete_group))
        .route("/api/v1/vms/{name}/nics", post(attach_nic))
        .route("/api/v1/vms/{name}/nics/{nic}", axum::routing::patch(update_nic).delete(detach_nic))
}

async fn list_networks(State(c): State<Controller>) -> ApiResult<Json<Vec<NetworkView>>> {
    Ok(Json(c.networks().list_networks()?))
}

async fn create_network(State(c): State<Controller>, p: Caller, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: NetworkSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.networks().create_network(&user_of(&p), spec).await?)))
}

async fn show_network(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<NetworkView>> {
    Ok(Json(c.networks().show_network(&name)?))
}

async fn delete_network(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.networks().delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leases(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<Vec<LeaseView>>> {
    Ok(Json(c.networks().network_leases(&name)?))
}

async fn list_flows(State(c): State<Controller>, Names(net): Names<String>) -> ApiResult<Json<Vec<FlowRuleView>>> {
    Ok(Json(c.networks().list_flow_rules(&net).await?))
}

async fn add_flow(State(c): State<Controller>, Names(net): Names<String>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: FlowRuleSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.networks().add_flow_rule(&net, spec).await?)))
}

async fn delete_flow(State(c): State<Controller>, Names((net, id)): Names<(String, String)>) -> ApiResult<StatusCode> {
    c.networks().delete_flow_rule(&net, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(State(c): State<Controller>) -> ApiResult<Json<Vec<SecurityGroup>>> {
    Ok(Json(c.security_groups().list_security_groups()?))
}

async fn create_group(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: SecurityGroupSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.security_groups().create_security_group(spec)?)))
}

async fn show_group(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(c.security_groups().get_security_group(&name)?))
}

async fn replace_group(
    State(c): State<Controller>,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<SecurityGroup>> {
    let spec: SecurityGroupSpec = parse(&body)?;
    Ok(Json(c.security_groups().replace_security_group(&name, spec).await?))
}

async fn delete_group(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.security_groups().delete_security_group(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach_nic(
    State(c): State<Controller>,
    p: Caller,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<Vm>> {
    let nic: NicSpec = parse(&body)?;
    Ok(Json(c.networks().attach_nic(&user_of(&p), &name, nic).await?))
}

async fn update_nic(
    State(c): State<Controller>,
    p: Caller,
    Names((name, nic)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Vm>> {
    let u: NicUpdate = parse(&body)?;
    Ok(Json(c.networks().update_nic(&user_of(&p), &name, &nic, u).await?))
}

async fn detach_nic(State(c): State<Controller>, Names((name, nic)): Names<(String, String)>) -> ApiResult<Json<Vm>> {
    Ok(Json(c.networks().detach_nic(&name, &nic).await?))
}
