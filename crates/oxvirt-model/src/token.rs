use crate::Millis;

/// An API token as the store keeps it: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the token string.
    pub sha256: String,
    pub role: String,
    pub created_at: Millis,
}
