//! `/api/v1/backup-repos`: backup repositories (made and forgotten by administrators: each is
//! a host directory), the backups in them, restoring one as a new VM; and
//! `POST /api/v1/vms/{name}/backup`, which takes one. Taking and restoring are tasks.

use crate::auth::{user_of, Caller};
use crate::body::parse;
use crate::error::{ApiError, ApiResult};
use crate::names::Names;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::{
    Backup, BackupJob, BackupJobSpec, BackupRepo, BackupRepoKey, BackupRepoSpec, BackupRepoView, BackupRequest,
    Privilege, PruneRequest, PruneResult, RestoreRequest,
};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/backup-repos", get(list_repos).post(create_repo))
        .route("/api/v1/backup-repos/{repo}", get(show_repo).delete(remove_repo))
        .route("/api/v1/backup-repos/{repo}/key", get(repo_key))
        .route("/api/v1/backup-repos/{repo}/backups", get(list_backups))
        .route("/api/v1/backup-repos/{repo}/prune", post(prune))
        .route("/api/v1/backup-repos/{repo}/gc", post(gc))
        .route("/api/v1/backup-repos/{repo}/verify", post(verify))
        .route("/api/v1/backup-repos/{repo}/backups/{id}", get(show_backup).delete(remove_backup))
        .route("/api/v1/backup-repos/{repo}/backups/{id}/restore", post(restore))
        .route("/api/v1/backup-repos/{repo}/backups/{id}/export", post(export))
        .route("/api/v1/vms/{name}/backup", post(backup_vm))
        .route("/api/v1/backup-jobs", get(list_jobs).post(create_job))
        .route("/api/v1/backup-jobs/{job}", get(show_job).put(set_job).delete(remove_job))
        .route("/api/v1/backup-jobs/{job}/run", post(run_job))
}

async fn list_repos(State(c): State<Controller>) -> ApiResult<Json<Vec<BackupRepoView>>> {
    Ok(Json(c.backups().list_repos().await?))
}

async fn create_repo(State(c): State<Controller>, p: Caller, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: BackupRepoSpec = parse(&body)?;
    let repo: BackupRepo = c.backups().create_repo(&user_of(&p), spec).await?;
    Ok((StatusCode::CREATED, Json(repo)))
}

async fn show_repo(State(c): State<Controller>, Names(repo): Names<String>) -> ApiResult<Json<BackupRepoView>> {
    Ok(Json(c.backups().get_repo(&repo).await?))
}

async fn repo_key(State(c): State<Controller>, Names(repo): Names<String>) -> ApiResult<Json<BackupRepoKey>> {
    Ok(Json(c.backups().repo_key(&repo)?))
}

async fn remove_repo(State(c): State<Controller>, Names(repo): Names<String>) -> ApiResult<StatusCode> {
    c.backups().remove_repo(&repo)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupsQuery {
    vm: Option<String>,
}

async fn list_backups(
    State(c): State<Controller>,
    Names(repo): Names<String>,
    q: Result<Query<BackupsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Backup>>> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if let Some(vm) = &q.vm {
        oxvirt_model::validate_name("vm", vm).map_err(|e| ApiError::invalid("vm", e.rule))?;
    }
    Ok(Json(c.backups().list_backups(&repo, q.vm).await?))
}

async fn show_backup(
    State(c): State<Controller>,
    Names((repo, id)): Names<(String, String)>,
) -> ApiResult<Json<Backup>> {
    Ok(Json(c.backups().get_backup(&repo, &id).await?))
}

async fn remove_backup(
    State(c): State<Controller>,
    Names((repo, id)): Names<(String, String)>,
) -> ApiResult<StatusCode> {
    c.backups().remove_backup(&repo, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(c): State<Controller>,
    p: Caller,
    Names((repo, id)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: RestoreRequest = parse(&body)?;
    Ok((StatusCode::ACCEPTED, Json(c.backups().restore(&user_of(&p), &repo, &id, req).await?)))
}

async fn backup_vm(
    State(c): State<Controller>,
    p: Caller,
    Names(name): Names<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: BackupRequest = parse(&body)?;
    // The route's check covers the VM; the repository it writes into is checked here.
    if oxvirt_model::validate_name("repo", &req.repo).is_ok() {
        c.access().authorize(&user_of(&p), Privilege::Modify, &format!("/backup-repos/{}", req.repo))?;
    }
    Ok((StatusCode::ACCEPTED, Json(c.backups().backup_vm(&name, req).await?)))
}

async fn prune(State(c): State<Controller>, Names(repo): Names<String>, body: Bytes) -> ApiResult<Json<PruneResult>> {
    let req: PruneRequest = parse(&body)?;
    Ok(Json(c.backups().prune(&repo, req).await?))
}

async fn gc(State(c): State<Controller>, Names(repo): Names<String>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(c.backups().collect_garbage(&repo)?)))
}

async fn verify(State(c): State<Controller>, Names(repo): Names<String>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(c.backups().verify(&repo)?)))
}

async fn list_jobs(State(c): State<Controller>) -> ApiResult<Json<Vec<BackupJob>>> {
    Ok(Json(c.backups().list_jobs()?))
}

async fn create_job(State(c): State<Controller>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: BackupJobSpec = parse(&body)?;
    Ok((StatusCode::CREATED, Json(c.backups().create_job(spec)?)))
}

async fn show_job(State(c): State<Controller>, Names(job): Names<String>) -> ApiResult<Json<BackupJob>> {
    Ok(Json(c.backups().get_job(&job)?))
}

async fn set_job(State(c): State<Controller>, Names(job): Names<String>, body: Bytes) -> ApiResult<Json<BackupJob>> {
    let spec: BackupJobSpec = parse(&body)?;
    Ok(Json(c.backups().set_job(&job, spec)?))
}

async fn remove_job(State(c): State<Controller>, Names(job): Names<String>) -> ApiResult<StatusCode> {
    c.backups().remove_job(&job)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_job(State(c): State<Controller>, Names(job): Names<String>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, Json(c.backups().run_job_now(&job)?)))
}

async fn export(
    State(c): State<Controller>,
    p: Caller,
    Names((repo, id)): Names<(String, String)>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: oxvirt_model::BackupExportRequest = parse(&body)?;
    Ok((StatusCode::ACCEPTED, Json(c.backups().export(&user_of(&p), &repo, &id, req).await?)))
}
