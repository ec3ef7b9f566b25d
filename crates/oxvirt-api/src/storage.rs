//! `/api/v1/pools`: storage pools and their volumes.

use crate::auth::{user_of, Caller};
use crate::body::parse;
use crate::error::{ApiError, ApiResult};
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{
    CloneRequest, ExportRequest, ImportRequest, NewSnapshot, PoolSpec, PoolView, Volume, VolumeResize, VolumeSpec,
};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{pool}", get(show_pool).delete(delete_pool))
        .route("/api/v1/pools/{pool}/import", post(import))
        .route("/api/v1/pools/{pool}/volumes", get(list_volumes).post(create_volume))
        .route("/api/v1/pools/{pool}/volumes/{name}", get(show_volume).patch(resize_volume).delete(delete_volume))
        .route("/api/v1/pools/{pool}/volumes/{name}/clone", post(clone_volume))
        .route("/api/v1/pools/{pool}/volumes/{name}/export", post(export_volume))
        .route("/api/v1/pools/{pool}/volumes/{name}/snapshots", post(snapshot_volume))
        .route("/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}", axum::routing::delete(delete_volume_snapshot))
        .route("/api/v1/pools/{pool}/volumes/{name}/snapshots/{snap}/revert", post(revert_volume))
        .route("/api/v1/vms/{name}/snapshots", post(snapshot_vm))
        .route("/api/v1/vms/{name}/snapshots/{snap}", axum::routing::delete(delete_vm_snapshot))
        .route("/api/v1/vms/{name}/snapshots/{snap}/revert", post(revert_vm))
}

async fn snapshot_volume(
    State(c): State<Controller>,
    Names((pool, name)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let s: NewSnapshot = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.snapshots().snapshot_volume(&pool, &name, &s.name).await?)))
}

async fn revert_volume(
    State(c): State<Controller>,
    Names((pool, name, snap)): Names<(String, String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(c.snapshots().revert_volume(&pool, &name, &snap).await?))
}

async fn delete_volume_snapshot(
    State(c): State<Controller>,
    Names((pool, name, snap)): Names<(String, String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(c.snapshots().delete_volume_snapshot(&pool, &name, &snap).await?))
}

async fn snapshot_vm(
    State(c): State<Controller>,
    Names(vm): Names<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let s: NewSnapshot = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.snapshots().snapshot_vm(&vm, &s.name).await?)))
}

async fn revert_vm(
    State(c): State<Controller>,
    Names((vm, snap)): Names<(String, String)>,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(c.snapshots().revert_vm(&vm, &snap).await?))
}

async fn delete_vm_snapshot(
    State(c): State<Controller>,
    Names((vm, snap)): Names<(String, String)>,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(c.snapshots().delete_vm_snapshot(&vm, &snap).await?))
}

async fn list_pools(State(c): State<Controller>) -> ApiResult<Json<Vec<PoolView>>> {
    Ok(Json(c.storage().list_pools()?))
}

async fn create_pool(State(c): State<Controller>, p: Caller, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: PoolSpec = parse(&body)?;
    let pool = c.storage().create_pool(&user_of(&p), spec).await?;
    Ok((StatusCode::CREATED, Json(c.storage().get_pool(&pool.spec.name)?)))
}

async fn show_pool(State(c): State<Controller>, Names(pool): Names<String>) -> ApiResult<Json<PoolView>> {
    Ok(Json(c.storage().get_pool(&pool)?))
}

async fn delete_pool(State(c): State<Controller>, Names(pool): Names<String>) -> ApiResult<StatusCode> {
    c.storage().delete_pool(&pool).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_volumes(State(c): State<Controller>, Names(pool): Names<String>) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(c.storage().list_volumes(&pool)?))
}

async fn create_volume(
    State(c): State<Controller>,
    Names(pool): Names<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let spec: VolumeSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.storage().create_volume(&pool, spec).await?)))
}

async fn show_volume(
    State(c): State<Controller>,
    Names((pool, name)): Names<(String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(c.storage().get_volume(&pool, &name)?))
}

async fn resize_volume(
    State(c): State<Controller>,
    Names((pool, name)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Volume>> {
    let r: VolumeResize = parse(&body)?;
    Ok(Json(c.storage().resize_volume(&pool, &name, r.size).await?))
}

async fn delete_volume(
    State(c): State<Controller>,
    Names((pool, name)): Names<(String, String)>,
) -> ApiResult<StatusCode> {
    c.storage().delete_volume(&pool, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clone_volume(
    State(c): State<Controller>,
    p: Caller,
    Names((pool, name)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CloneRequest = parse(&body)?;
    match c.storage().clone_volume(&user_of(&p), &pool, &name, req).await? {
        (Some(v), _) => Ok((StatusCode::CREATED, Json(v)).into_response()),
        (None, Some(t)) => Ok((StatusCode::ACCEPTED, Json(t)).into_response()),
        (None, None) => Err(ApiError::not_found("nothing was cloned")),
    }
}

async fn export_volume(
    State(c): State<Controller>,
    p: Caller,
    Names((pool, name)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: ExportRequest = parse(&body)?;
    Ok((StatusCode::ACCEPTED, Json(c.storage().export_volume(&user_of(&p), &pool, &name, req).await?)))
}

async fn import(
    State(c): State<Controller>,
    p: Caller,
    Names(pool): Names<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: ImportRequest = parse(&body)?;
    Ok((StatusCode::ACCEPTED, Json(c.storage().import_volume(&user_of(&p), &pool, req).await?)))
}
