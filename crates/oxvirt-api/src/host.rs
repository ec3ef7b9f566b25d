use crate::error::ApiResult;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::HostInfo;
use serde_json::{json, Value};

pub fn routes() -> Router<Controller> {
    Router::new()
        .route("/api/v1/host", get(show))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/host/history", get(host_history))
        .route("/api/v1/top", get(top))
}

pub async fn root() -> Json<Value> {
    Json(json!({ "api": "v1", "version": env!("CARGO_PKG_VERSION"), "openapi": "/api/v1/openapi.json" }))
}

async fn show(State(c): State<Controller>) -> ApiResult<Json<HostInfo>> {
    Ok(Json(c.resources().host_info()?))
}

async fn alerts(State(c): State<Controller>) -> Json<Vec<oxvirt_model::Alert>> {
    Json(c.monitoring().alerts())
}

async fn host_history(State(c): State<Controller>) -> Json<Vec<oxvirt_model::HostSample>> {
    Json(c.monitoring().host_history())
}

/// The latest figures of the host and of every VM, as `oxvirt host top` shows them.
async fn top(State(c): State<Controller>) -> Json<serde_json::Value> {
    let vms: Vec<serde_json::Value> =
        c.monitoring().vm_latest().into_iter().map(|(name, s)| json!({ "vm": name, "sample": s })).collect();
    Json(json!({ "host": c.monitoring().host_history().last(), "vms": vms }))
}
