//! Who may do what: logging in, tokens, local users, the ACL, and the audit log.

use crate::{encode, Client, ClientError};
use hyper::Method;
use oxvirt_model::{AclEntry, ApiToken, AuditRecord, LoginRequest, NewToken, NewTokenRequest, UserSpec, UserView};

/// Users, tokens, the ACL, logging in and the audit log: `client.access()`.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    client: &'a Client,
}

impl Client {
    /// Users, tokens, the ACL, logging in and the audit log.
    pub fn access(&self) -> Access<'_> {
        Access { client: self }
    }
}

impl Access<'_> {
    /// Logs in with a user's password (no token needed): a token valid for 8 hours.
    pub async fn login(&self, req: &LoginRequest) -> Result<NewToken, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/auth/login", req).await
    }

    /// A new token; its secret is in the answer, once.
    pub async fn create_token(&self, req: &NewTokenRequest) -> Result<NewToken, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/tokens", req).await
    }

    /// The caller's tokens (an administrator's: everyone's).
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, ClientError> {
        self.client.get("/api/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/tokens/{}", encode(id))).await
    }

    pub async fn create_user(&self, spec: &UserSpec) -> Result<UserView, ClientError> {
        self.client.call_with(Method::POST, "/api/v1/users", spec).await
    }

    pub async fn list_users(&self) -> Result<Vec<UserView>, ClientError> {
        self.client.get("/api/v1/users").await
    }

    /// Deletes a user, their grants and tokens.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.client.delete(&format!("/api/v1/users/{}", encode(name))).await
    }

    /// All grants.
    pub async fn acl(&self) -> Result<Vec<AclEntry>, ClientError> {
        self.client.get("/api/v1/acl").await
    }

    /// Replaces all grants.
    pub async fn set_acl(&self, acl: &[AclEntry]) -> Result<Vec<AclEntry>, ClientError> {
        self.client.call_with(Method::PUT, "/api/v1/acl", acl).await
    }

    /// The audit log's latest `limit` records.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, ClientError> {
        self.client.get(&format!("/api/v1/audit?limit={limit}")).await
    }
}
