//! Tasks: long operations, followed until they end.

use crate::{encode, Client, ClientError};
use oxvirt_model::Task;
use std::time::Duration;

fn task_path(id: &str) -> String {
    format!("/api/v1/tasks/{}", encode(id))
}

impl Client {
    pub async fn list_tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.get("/api/v1/tasks").await
    }

    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        self.get(&task_path(id)).await
    }

    /// Asks a running task to stop.
    pub async fn cancel_task(&self, id: &str) -> Result<Task, ClientError> {
        self.delete_json(&task_path(id)).await
    }

    /// Waits for a task to end, `timeout` at most (longer waits are made of several requests).
    pub async fn wait_task(&self, id: &str, timeout: Duration) -> Result<Task, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Whole seconds, rounded up: a wait shorter than a second is not an immediate answer.
            let secs = left.as_millis().div_ceil(1000).min(60);
            let t: Task = self.get(&format!("{}/wait?timeout={secs}", task_path(id))).await?;
            if t.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(t);
            }
        }
    }
}
