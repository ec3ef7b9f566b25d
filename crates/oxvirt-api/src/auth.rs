//! Token authentication for requests that come over the network (HTTPS). The Unix socket is
//! reachable by local root only and needs no token.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use oxvirt_controller::Controller;

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        field: None,
        rule: None,
        message: message.into(),
    }
    .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"oxvirt\""));
    r
}

/// Lets a request through only with `Authorization: Bearer <valid token>`.
pub async fn require_token(State(c): State<Controller>, req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("an API token is required: send `Authorization: Bearer <token>`");
    };
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if token.is_empty() || c.check_token(token).is_none() {
        return unauthorized("the API token is not valid");
    }
    next.run(req).await
}

/// The API as served over HTTPS: every route needs a token.
pub fn https_router(ctrl: Controller, api: std::sync::Arc<crate::metrics::ApiMetrics>) -> axum::Router {
    crate::router_with_metrics(ctrl.clone(), api).layer(axum::middleware::from_fn_with_state(ctrl, require_token))
}
