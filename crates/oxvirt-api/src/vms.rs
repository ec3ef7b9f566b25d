//! `/api/v1/vms`: VM records and their actions.

use crate::auth::{user_of, Caller};
use crate::body::parse;
use crate::error::{ApiError, ApiResult};
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{Vm, VmAction, VmSpec, VmUpdate, VM_ACTIONS};
use serde::Deserialize;

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/vms", get(list).post(create))
        .route("/api/v1/vms/{name}", get(show).patch(update).delete(delete))
        .route("/api/v1/vms/{name}/actions/{action}", post(action))
        .route("/api/v1/vms/{name}/migrate", post(migrate))
        .route("/api/v1/vms/{name}/console-log", get(console_log))
        .route("/api/v1/vms/{name}/console", get(crate::console::console))
        .route("/api/v1/vms/{name}/history", get(history))
        .route("/api/v1/vms/{name}/disks", post(attach_disk))
        .route("/api/v1/vms/{name}/disks/{disk}", axum::routing::delete(detach_disk))
        .route("/api/v1/vms/{name}/disks/{disk}/qos", axum::routing::put(set_qos))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    #[serde(default)]
    start: bool,
}

/// The VMs the caller may see (all of them with a grant on `/vms` or `/`; else those granted
/// one by one or through their project).
async fn list(
    State(c): State<Controller>,
    p: Option<axum::Extension<oxvirt_model::Principal>>,
) -> ApiResult<axum::response::Response> {
    let user = crate::auth::user_of(&p);
    if c.access().authorize(&user, oxvirt_model::Privilege::Read, "/vms").is_ok() {
        // Sent as stored when the records are in this oxvirtd's form: the same bytes, unparsed.
        if let Some(body) = c.vms().list_vms_json()? {
            return Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        return Ok(Json(c.vms().list_vms()?).into_response());
    }
    let vms: Vec<Vm> = c
        .vms()
        .list_vms()?
        .into_iter()
        .filter(|v| {
            c.access().authorize(&user, oxvirt_model::Privilege::Read, &format!("/vms/{}", v.spec.name)).is_ok()
        })
        .collect();
    Ok(Json(vms).into_response())
}

async fn create(
    State(c): State<Controller>,
    p: Option<axum::Extension<oxvirt_model::Principal>>,
    q: Result<Query<CreateQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    // A VM of a project may be made by whoever may change that project's VMs. Checked before
    // the body is: a caller without the right learns nothing from its validation.
    #[derive(serde::Deserialize)]
    struct ProjectOnly {
        project: Option<String>,
    }
    let project = serde_json::from_slice::<ProjectOnly>(&body)
        .ok()
        .and_then(|v| v.project)
        .filter(|p| oxvirt_model::validate_name("project", p).is_ok());
    let resource = project.map(|p| format!("/projects/{p}")).unwrap_or_else(|| "/vms".into());
    let caller = user_of(&p);
    c.access().authorize(&caller, oxvirt_model::Privilege::Modify, &resource)?;
    let spec: VmSpec = parse(&body)?;
    // Everything else the spec names (volumes, networks, host paths...) is checked by the controller.
    // (One started at once may take a VM of its template's warm pool.)
    let vm = if q.start { c.vms().create_vm_to_start(&caller, spec)? } else { c.vms().create_vm(&caller, spec)? };
    // In a cluster the VM may belong to another host: that host starts it.
    let task = if q.start { c.hosts().start_where_it_belongs(&vm.spec.name)? } else { None };
    Ok((StatusCode::CREATED, Json(oxvirt_model::VmCreated { vm, task })))
}

async fn show(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(c.vms().get_vm(&name)?))
}

async fn update(
    State(c): State<Controller>,
    p: Caller,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<Vm>> {
    let update: VmUpdate = parse(&body)?;
    Ok(Json(c.vms().update_vm(&user_of(&p), &name, &update)?))
}

async fn delete(State(c): State<Controller>, Names(name): Names<String>) -> ApiResult<StatusCode> {
    c.vms().delete_vm(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    State(c): State<Controller>,
    Names((name, action)): Names<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let Some(action) = VmAction::parse(&action) else {
        return Err(ApiError::invalid("action", format!("must be one of {}", VM_ACTIONS.join(", "))));
    };
    Ok((StatusCode::ACCEPTED, Json(c.vms().vm_action_waiting(&name, action).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// How many bytes from the end (default 64 KiB, at most 16 MiB).
    bytes: Option<u64>,
}

async fn console_log(
    State(c): State<Controller>,
    Names(name): Names<String>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::invalid("bytes", e.body_text()))?;
    let max = q.bytes.unwrap_or(64 * 1024);
    if max > 16 * 1024 * 1024 {
        return Err(ApiError::invalid("bytes", "must be at most 16777216"));
    }
    let log = c.vms().console_log(&name, max)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log))
}

async fn set_qos(
    State(c): State<Controller>,
    Names((name, disk)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Vm>> {
    let qos: oxvirt_model::DiskQos = parse(&body)?;
    Ok(Json(c.snapshots().set_disk_qos(&name, &disk, qos).await?))
}

async fn attach_disk(
    State(c): State<Controller>,
    p: Caller,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<Json<Vm>> {
    let disk: oxvirt_model::DiskSpec = parse(&body)?;
    Ok(Json(c.vms().attach_disk(&user_of(&p), &name, disk).await?))
}

async fn detach_disk(State(c): State<Controller>, Names((name, disk)): Names<(String, String)>) -> ApiResult<Json<Vm>> {
    Ok(Json(c.vms().detach_disk(&name, &disk).await?))
}

async fn migrate(State(c): State<Controller>, Names(name): Names<String>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: oxvirt_model::MigrateRequest = parse(&body)?;
    Ok((StatusCode::ACCEPTED, Json(c.migrations().migrate_vm_waiting(&name, req).await?)))
}

async fn history(
    State(c): State<Controller>,
    Names(name): Names<String>,
) -> ApiResult<Json<Vec<oxvirt_model::VmSample>>> {
    Ok(Json(c.monitoring().vm_history(&name)?))
}
