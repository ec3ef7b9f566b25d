//! `/api/v1/projects`: tenants and their quotas.

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
use oxvirt_model::{ProjectSpec, ProjectView};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/projects", get(list).post(create))
        .route("/api/v1/projects/{project}", get(show).put(replace).delete(delete))
}

async fn list(State(c): State<Controller>) -> ApiResult<Json<Vec<ProjectView>>> {
    Ok(Json(c.projects().list_projects()?))
}

async fn create(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: ProjectSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.projects().create_project(spec)?)))
}

async fn show(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<ProjectView>> {
    Ok(Json(c.projects().get_project(&name)?))
}

async fn replace(State(c): State<Controller>, Names(name): Names<String>, body: Bytes) -> ApiResult<Json<ProjectView>> {
    let spec: ProjectSpec = parse(&body)?;
    Ok(Json(c.projects().set_project(&name, spec)?))
}

async fn delete(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.projects().delete_project(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
