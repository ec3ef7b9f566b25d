//! API errors: every refusal is a 4xx with `{"error": {...}}` naming the field and the rule.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oxvirt_controller::ControlError;
use oxvirt_model::{ApiErrorBody, ErrorReply, ERROR_CODES};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable word for programs: `invalid`, `not-found`, `exists`, `conflict`, `internal`.
    pub code: &'static str,
    pub field: Option<String>,
    pub rule: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        let (field, rule) = (field.into(), rule.into());
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: format!("{field}: {rule}"),
            field: Some(field),
            rule: Some(rule),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not-found", field: None, rule: None, message: message.into() }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::Invalid(v) => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid",
                field: Some(v.field),
                rule: Some(v.rule),
                message,
            },
            ControlError::Exists(v) => ApiError {
                status: StatusCode::CONFLICT,
                code: "exists",
                field: Some(v.field),
                rule: Some(v.rule),
                message,
            },
            ControlError::NotFound { .. } => ApiError::not_found(message),
            ControlError::Unauthorized(_) => {
                ApiError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", field: None, rule: None, message }
            }
            ControlError::TooManyRequests { .. } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate-limited",
                field: None,
                rule: None,
                message,
            },
            ControlError::Forbidden(_) => {
                ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", field: None, rule: None, message }
            }
            ControlError::Conflict(_) => {
                ApiError { status: StatusCode::CONFLICT, code: "conflict", field: None, rule: None, message }
            }
            ControlError::Busy(_) => {
                ApiError { status: StatusCode::CONFLICT, code: "busy", field: None, rule: None, message }
            }
            ControlError::InUse(_) => {
                ApiError { status: StatusCode::CONFLICT, code: "in-use", field: None, rule: None, message }
            }
            ControlError::Exhausted(_) => {
                ApiError { status: StatusCode::CONFLICT, code: "exhausted", field: None, rule: None, message }
            }
            ControlError::Failed(_) => {
                tracing::warn!("failed: {message}");
                ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "failed", field: None, rule: None, message }
            }
            // Another writer won: the same request may succeed now.
            e if e.is_lost_race() => ApiError {
                status: StatusCode::CONFLICT,
                code: "busy",
                field: None,
                rule: None,
                message: format!("{message}; try again"),
            },
            e if e.is_unsafe_request() => {
                ApiError { status: StatusCode::BAD_REQUEST, code: "invalid", field: None, rule: None, message }
            }
            ControlError::Store(_) | ControlError::Hypervisor(_) | ControlError::Storage(_) | ControlError::Host(_) => {
                tracing::error!("internal error: {message}");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    field: None,
                    rule: None,
                    message,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        debug_assert!(ERROR_CODES.contains(&self.code), "{} is not in ERROR_CODES", self.code);
        let error = ApiErrorBody {
            status: self.status.as_u16(),
            code: self.code.to_string(),
            message: self.message,
            field: self.field,
            rule: self.rule,
        };
        (self.status, Json(ErrorReply { error })).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such API path: {}", uri.path()))
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_refusal_has_its_status_and_code() {
        let cases = [
            (ControlError::Conflict("VM web is running".into()), 409, "conflict"),
            (ControlError::Busy("another operation is in progress".into()), 409, "busy"),
            (ControlError::InUse("pool p still has 2 volume(s)".into()), 409, "in-use"),
            (ControlError::Exhausted("network lan has no free address".into()), 409, "exhausted"),
            (ControlError::Failed("migration failed: connection reset".into()), 500, "failed"),
            (ControlError::Forbidden("no".into()), 403, "forbidden"),
            (ControlError::invalid("cpus", "must be 1..=64"), 400, "invalid"),
            (ControlError::vm_not_found("x"), 404, "not-found"),
            (ControlError::Host("ip failed".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let text = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status.as_u16(), a.code), (status, code), "{text}");
            assert!(a.message.contains(&text), "{}", a.message);
        }
        // Another writer won: the caller may simply try again.
        let lost = ControlError::Store(oxvirt_store::StoreError::Conflict {
            key: "vms/web".into(),
            expected: oxvirt_store::Expect::Absent,
        });
        assert_eq!(ApiError::from(lost).code, "busy");
    }
}
