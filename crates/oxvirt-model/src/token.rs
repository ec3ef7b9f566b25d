use crate::Millis;

/// An API token as the store keeps it: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the token string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Kept for records of earlier versions; the token acts as its user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The user the token acts as (`root` for the administrator token).
    #[serde(default = "root")]
    pub user: String,
    /// After this instant the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    pub created_at: Millis,
}

fn root() -> String {
    crate::ROOT.to_string()
}

/// A new token as its creator sees it, once: with the secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: ApiToken,
    pub secret: String,
}
