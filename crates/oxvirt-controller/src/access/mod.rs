//! Access control: who may do what. Users and their roles, the ACL and its checks (`users.rs`),
//! API tokens and the administrator's token (`tokens.rs`), login backoff (`login_guard.rs`), the
//! audit log (`audit.rs`), what a request names besides its target checked against the caller
//! (`references.rs`), and projects with their quotas (`projects.rs`, a service of its own).

pub mod audit;
pub mod login_guard;
pub mod projects;
pub(crate) mod references;
pub mod tokens;
pub mod users;

pub use projects::Projects;

crate::service! {
    /// Access control: users, tokens, the ACL, the audit log, what a request names besides its target.
    Access, access, state = access
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// The audit log's file while it is open; its lock serialises appends and rotations.
    pub audit_log: std::sync::Mutex<Option<audit::AuditFile>>,
    /// Failed logins per user and per address (`login_guard.rs`).
    pub login_guard: std::sync::Mutex<login_guard::LoginGuard>,
}
