use crate::Millis;

/// A long operation: returned at once by the API, then followed until it ends.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Task {
    pub id: String,
    /// What it does, e.g. `vm.start`.
    pub kind: String,
    /// What it acts on, e.g. `vms/web-1`.
    pub target: String,
    pub state: TaskState,
    /// 0 to 100.
    pub progress: u8,
    /// What it is doing now, in a few words.
    pub message: String,
    pub error: Option<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    /// In a cluster: the host that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Running)
    }
}
