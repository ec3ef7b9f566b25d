use oxvirt_model::ValidationError;

/// Why the controller refused or failed a request. The API maps each kind to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request breaks a rule (400).
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// No such resource (404).
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The resource exists already (409).
    #[error("{0}")]
    Exists(ValidationError),
    /// The resource is not in a state that allows this (409).
    #[error("{0}")]
    Conflict(String),
    /// Another operation holds the resource, or it changed meanwhile: try again (409, `busy`).
    #[error("{0}")]
    Busy(String),
    /// Something else uses the resource: that goes first (409, `in-use`).
    #[error("{0}")]
    InUse(String),
    /// Nothing left to give (addresses of a network, MAC addresses) (409, `exhausted`).
    #[error("{0}")]
    Exhausted(String),
    /// An operation was tried and failed (a migration, a disk copy, a helper that did not
    /// start): not the request's fault (500, `failed`).
    #[error("{0}")]
    Failed(String),
    #[error("store: {0}")]
    Store(#[from] oxvirt_store::StoreError),
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] oxvirt_hypervisor::HvError),
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts: try again after `retry_after_secs` (429).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    /// A host command oxvirt needs failed (500).
    #[error("host: {0}")]
    Host(String),
    #[error("storage: {0}")]
    Storage(#[from] oxvirt_storage::StorageError),
}

/// A host path refused by the policy is a request that breaks a rule (400), naming its field.
impl From<oxvirt_storage::host_paths::HostPathError> for ControlError {
    fn from(e: oxvirt_storage::host_paths::HostPathError) -> Self {
        ControlError::invalid(e.field, e.rule)
    }
}

impl ControlError {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ControlError::Invalid(ValidationError::new(field, rule))
    }
    pub fn vm_not_found(name: &str) -> Self {
        ControlError::NotFound { kind: "VM", name: name.to_string() }
    }

    /// Another writer changed what the request read: the same request may succeed now.
    pub fn is_lost_race(&self) -> bool {
        matches!(self, ControlError::Store(oxvirt_store::StoreError::Conflict { .. }))
    }

    /// The storage layer refused what the request named as unsafe (a path, an image): the
    /// request's fault, not the host's.
    pub fn is_unsafe_request(&self) -> bool {
        matches!(self, ControlError::Storage(oxvirt_storage::StorageError::Unsafe(_)))
    }
}
