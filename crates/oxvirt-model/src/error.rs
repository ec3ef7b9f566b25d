use std::fmt;

/// A request that breaks a rule: names the field (a JSON path such as `disks[0].path`) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ValidationError {
    pub field: String,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ValidationError { field: field.into(), rule: rule.into() }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for ValidationError {}

/// Every `code` an API error may carry: stable words for programs.
pub const ERROR_CODES: &[&str] = &[
    "invalid",
    "not-found",
    "exists",
    "conflict",
    "busy",
    "in-use",
    "exhausted",
    "unauthorized",
    "forbidden",
    "rate-limited",
    "failed",
    "internal",
];

/// The body of every refusal of the API: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorReply {
    pub error: ApiErrorBody,
}

/// What the API refused and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "ErrorDetail")]
pub struct ApiErrorBody {
    /// The HTTP status again.
    pub status: u16,
    /// One of [`ERROR_CODES`].
    #[schemars(schema_with = "code_schema")]
    pub code: String,
    pub message: String,
    /// The field of the request that was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule it broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

fn code_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ERROR_CODES })
}
