//! `/api/v1/templates`: templates of quiet microvms (taking one is a task). A VM is made from
//! one with `POST /api/v1/vms` and `template` in its spec.

use crate::auth::{user_of, Caller};
use crate::body::parse;
use crate::error::ApiResult;
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{TemplatePool, TemplateRequest, TemplateView};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/templates", get(list).post(create))
        .route("/api/v1/templates/{template}", get(show).delete(remove))
        .route("/api/v1/templates/{template}/pool", put(set_pool))
}

async fn list(State(c): State<Controller>) -> ApiResult<Json<Vec<TemplateView>>> {
    let t = c.templates();
    Ok(Json(t.list()?.into_iter().map(|x| t.view(x)).collect()))
}

async fn create(State(c): State<Controller>, p: Caller, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: TemplateRequest = parse(&body)?;
    let task = c.templates().create(&user_of(&p), req).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

async fn show(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<TemplateView>> {
    let t = c.templates();
    Ok(Json(t.view(t.get(&name)?)))
}

async fn remove(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.templates().remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Administrators only (see `auth.rs`): a pool's QEMUs use the host, in no project's quota.
async fn set_pool(
    State(c): State<Controller>,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<TemplateView>> {
    let req: TemplatePool = parse(&body)?;
    Ok(Json(c.templates().set_pool(&name, req)?))
}
