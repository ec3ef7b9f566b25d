use crate::error::ApiResult;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use oxvirt_controller::Controller;
use oxvirt_model::HostInfo;
use serde_json::{json, Value};

pub fn routes() -> Router<Controller> {
    Router::new().route("/api/v1/host", get(show)).route("/api/v1/alerts", get(alerts))
}

pub async fn root() -> Json<Value> {
    Json(json!({ "api": "v1", "version": env!("CARGO_PKG_VERSION"), "openapi": "/api/v1/openapi.json" }))
}

async fn show(State(c): State<Controller>) -> ApiResult<Json<HostInfo>> {
    Ok(Json(c.host_info()?))
}

async fn alerts(State(c): State<Controller>) -> Json<Vec<oxvirt_model::Alert>> {
    Json(c.alerts())
}
