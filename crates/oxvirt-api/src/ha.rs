//! `/api/v1/ha`: high availability — the VMs the cluster keeps at a state (resources) and the
//! host groups they prefer. Changes need the administrator role on `/`, as the cluster's do.

use crate::body::parse;
use crate::error::ApiResult;
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{HaGroup, HaGroupSpec, HaResource, HaResourceSpec};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/ha/resources", get(list_resources).post(add_resource))
        .route("/api/v1/ha/resources/{name}", get(show_resource).put(set_resource).delete(remove_resource))
        .route("/api/v1/ha/groups", get(list_groups).post(add_group))
        .route("/api/v1/ha/groups/{group}", get(show_group).delete(remove_group))
}

async fn list_resources(State(c): State<Controller>) -> ApiResult<Json<Vec<HaResource>>> {
    Ok(Json(c.ha().list_resources()?))
}

async fn add_resource(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: HaResourceSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.ha().add_resource(spec)?)))
}

async fn show_resource(State(c): State<Controller>, Names(vm): Names<String>) -> ApiResult<Json<HaResource>> {
    Ok(Json(c.ha().get_resource(&vm)?))
}

async fn set_resource(
    State(c): State<Controller>,
    Names(vm): Names<String>,
    body: Bytes,
) -> ApiResult<Json<HaResource>> {
    let spec: HaResourceSpec = parse(&body)?;
    Ok(Json(c.ha().set_resource(&vm, spec)?))
}

async fn remove_resource(State(c): State<Controller>, Names(vm): Names<String>) -> ApiResult<StatusCode> {
    c.ha().remove_resource(&vm)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(State(c): State<Controller>) -> ApiResult<Json<Vec<HaGroup>>> {
    Ok(Json(c.ha().list_groups()?))
}

async fn add_group(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: HaGroupSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.ha().add_group(spec)?)))
}

async fn show_group(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<HaGroup>> {
    Ok(Json(c.ha().get_group(&name)?))
}

async fn remove_group(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.ha().remove_group(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
