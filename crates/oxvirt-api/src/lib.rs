//! oxvirt's REST API, version 1 (`/api/v1/...`).
//!
//! One module per resource (as Firecracker's API server has): each parses and validates its
//! requests and hands them to the [`Controller`]; the API never talks to a hypervisor itself.
//! [`error`] maps every refusal to a status and a JSON body that names the field and the rule;
//! [`openapi`] is the OpenAPI 3 document; a test checks that it and the router list the same routes.

pub mod auth;
mod backups;
mod body;
mod cluster;
mod console;
pub mod error;
mod events;
mod ha;
mod host;
pub mod metrics;
pub mod names;
mod networks;
pub mod openapi;
mod projects;
mod resources;
mod storage;
mod tasks;
mod templates;
mod users;
mod vms;

use axum::Router;
use oxvirt_controller::Controller;

pub use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// The whole API.
pub fn router(ctrl: Controller) -> Router {
    router_with_metrics(ctrl, std::sync::Arc::default())
}

/// The whole API, counting its requests into `api` (one per daemon, shared by its listeners).
pub fn router_with_metrics(ctrl: Controller, api: std::sync::Arc<metrics::ApiMetrics>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics::serve))
        .route("/api/v1", axum::routing::get(host::root))
        .route("/api/v1/openapi.json", axum::routing::get(openapi::serve))
        .merge(host::routes())
        .merge(vms::routes())
        .merge(storage::routes())
        .merge(networks::routes())
        .merge(resources::routes())
        .merge(tasks::routes())
        .merge(events::routes())
        .merge(users::routes())
        .merge(projects::routes())
        .merge(ha::routes())
        .merge(backups::routes())
        .merge(templates::routes())
        .merge(cluster::routes())
        .route_layer(axum::middleware::from_fn_with_state(ctrl.clone(), auth::authorize))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(api.clone(), metrics::track))
        .layer(axum::Extension(api))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctrl)
}
