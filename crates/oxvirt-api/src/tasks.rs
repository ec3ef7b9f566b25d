//! `/api/v1/tasks`: long operations.

use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::Task;
use serde::Deserialize;
use std::time::Duration;

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/tasks", get(list))
        .route("/api/v1/tasks/{id}", get(show).delete(cancel))
        .route("/api/v1/tasks/{id}/wait", get(wait))
}

fn check_id(id: &str) -> ApiResult<()> {
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ApiError::not_found(format!("task {id:?} not found")));
    }
    Ok(())
}

async fn list(State(c): State<Controller>) -> ApiResult<Json<Vec<Task>>> {
    Ok(Json(c.tasks().list()?))
}

async fn show(State(c): State<Controller>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    check_id(&id)?;
    Ok(Json(c.tasks().get(&id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait at most (default 30, at most 600).
    timeout: Option<u64>,
}

async fn wait(
    State(c): State<Controller>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Task>> {
    check_id(&id)?;
    let Query(q) = q.map_err(|e| ApiError::invalid("timeout", e.body_text()))?;
    let secs = q.timeout.unwrap_or(30);
    if secs > 600 {
        return Err(ApiError::invalid("timeout", "must be at most 600 seconds"));
    }
    Ok(Json(c.tasks().wait(&id, Duration::from_secs(secs)).await?))
}

async fn cancel(State(c): State<Controller>, Path(id): Path<String>) -> ApiResult<Json<Task>> {
    check_id(&id)?;
    Ok(Json(c.tasks().cancel(&id)?))
}
