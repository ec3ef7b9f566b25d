//! Bodies of the access requests that are not resources themselves (logging in, a new token):
//! the wire types the API parses and the client sends.

/// Body of `POST /auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

/// Body of `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    #[serde(default)]
    #[schemars(range(min = 1, max = 31_622_400))]
    pub expires_in_secs: Option<u64>,
    /// Only an administrator makes tokens for another user.
    #[serde(default)]
    pub user: Option<String>,
}
