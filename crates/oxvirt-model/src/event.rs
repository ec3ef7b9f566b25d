use crate::{Alert, Millis, Task, VmState};

/// Something that happened, as the event stream (`GET /api/v1/events`) reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A VM's observed state changed.
    VmState { vm: String, state: VmState, reason: String, time: Millis },
    /// A VM was created or deleted.
    VmLifecycle { vm: String, action: String, time: Millis },
    /// A guest reported something noteworthy (panic, I/O error, ...).
    VmGuest { vm: String, what: String, time: Millis },
    /// A task was created, made progress or ended.
    Task { task: Task, time: Millis },
    /// A built-in alert started firing or resolved.
    Alert { alert: Alert, time: Millis },
    /// High availability: a host lost or back, a VM recovered, fenced or not recoverable.
    Ha { what: String, host: String, vm: Option<String>, message: String, time: Millis },
}
