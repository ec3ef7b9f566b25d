//! `/api/v1/tasks`: long operations.

use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{Principal, Privilege, Task};
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

/// A task is about its target (`vms/web` → `/vms/web`): who may see or cancel it follows.
fn resource_of(t: &Task) -> String {
    format!("/{}", t.target.trim_start_matches('/'))
}

/// The task, if the caller may do `privilege` on what it is about.
fn task_for(c: &Controller, p: &Option<Extension<Principal>>, id: &str, privilege: Privilege) -> ApiResult<Task> {
    check_id(id)?;
    let t = c.tasks().get(id)?;
    c.access().authorize(&crate::auth::user_of(p), privilege, &resource_of(&t))?;
    Ok(t)
}

/// The tasks the caller may see.
async fn list(State(c): State<Controller>, p: Option<Extension<Principal>>) -> ApiResult<Json<Vec<Task>>> {
    let user = crate::auth::user_of(&p);
    Ok(Json(
        c.tasks()
            .list()?
            .into_iter()
            .filter(|t| c.access().authorize(&user, Privilege::Read, &resource_of(t)).is_ok())
            .collect(),
    ))
}

async fn show(
    State(c): State<Controller>,
    p: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(task_for(&c, &p, &id, Privilege::Read)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait at most (default 30, at most 600).
    timeout: Option<u64>,
}

async fn wait(
    State(c): State<Controller>,
    p: Option<Extension<Principal>>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Task>> {
    task_for(&c, &p, &id, Privilege::Read)?;
    let Query(q) = q.map_err(|e| ApiError::invalid("timeout", e.body_text()))?;
    let secs = q.timeout.unwrap_or(30);
    if secs > 600 {
        return Err(ApiError::invalid("timeout", "must be at most 600 seconds"));
    }
    Ok(Json(c.tasks().wait(&id, Duration::from_secs(secs)).await?))
}

async fn cancel(
    State(c): State<Controller>,
    p: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    task_for(&c, &p, &id, Privilege::Operate)?;
    Ok(Json(c.tasks().cancel(&id)?))
}
