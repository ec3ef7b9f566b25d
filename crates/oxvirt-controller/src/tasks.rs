//! Tasks: long operations with an id, progress and a final state (Incus operations, Proxmox
//! tasks). Each task is a record in the store, so it survives a daemon restart; a task that was
//! running when the daemon stopped is marked failed at the next start.

use crate::{lock, now_millis, ControlError};
use oxvirt_model::{Event, Task, TaskState};
use oxvirt_store::{Expect, Store, StoreExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Finished tasks kept in the store; older ones are pruned.
const KEEP_FINISHED: usize = 500;

struct Live {
    cancel: Arc<AtomicBool>,
    state: watch::Sender<Task>,
}

pub struct TaskRegistry {
    store: Arc<dyn Store>,
    events: broadcast::Sender<Event>,
    live: Mutex<HashMap<String, Live>>,
    /// In a cluster: this host's name, which its tasks carry.
    host: Mutex<Option<String>>,
}

/// The running side of a task: reports progress and ends it.
pub struct TaskHandle {
    id: String,
    registry: Arc<TaskRegistryRef>,
    cancel: Arc<AtomicBool>,
}

/// What a task handle needs of its registry (kept apart so the handle can outlive a borrow).
struct TaskRegistryRef {
    store: Arc<dyn Store>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<Task>,
}

impl TaskRegistry {
    pub fn new(store: Arc<dyn Store>, events: broadcast::Sender<Event>) -> Result<Self, ControlError> {
        Ok(TaskRegistry { store, events, live: Mutex::default(), host: Mutex::default() })
    }

    /// In a cluster: the host whose tasks these are.
    pub fn set_host(&self, host: &str) {
        *crate::lock(&self.host) = Some(host.to_string());
    }

    /// At start: this host's tasks that were running when the daemon stopped will never finish;
    /// they say so (another host's running tasks are its own).
    pub fn interrupt_leftovers(&self) -> Result<(), ControlError> {
        let me = crate::lock(&self.host).clone();
        for (t, rev) in self.store.list_records::<Task>()? {
            if t.state == TaskState::Running && t.host == me {
                let store = &self.store;
                let mut t = t;
                t.state = TaskState::Failed;
                t.error = Some("interrupted: oxvirtd stopped while the task ran".into());
                t.finished_at = Some(now_millis());
                let _ = store.put_record(&t.id, &t, Expect::Revision(rev));
            }
        }
        Ok(())
    }

    /// Creates and records a running task.
    pub fn create(&self, kind: &str, target: &str) -> Result<TaskHandle, ControlError> {
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            state: TaskState::Running,
            progress: 0,
            message: "queued".into(),
            error: None,
            created_at: now_millis(),
            finished_at: None,
            host: crate::lock(&self.host).clone(),
        };
        self.store.put_record(&task.id, &task, Expect::Absent)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (state, _) = watch::channel(task.clone());
        lock(&self.live).insert(task.id.clone(), Live { cancel: cancel.clone(), state: state.clone() });
        let _ = self.events.send(Event::Task { task: task.clone(), time: task.created_at });
        let registry = Arc::new(TaskRegistryRef { store: self.store.clone(), events: self.events.clone(), state });
        Ok(TaskHandle { id: task.id, registry, cancel })
    }

    pub fn get(&self, id: &str) -> Result<Task, ControlError> {
        if let Some(l) = lock(&self.live).get(id) {
            return Ok(l.state.borrow().clone());
        }
        self.store
            .get_record::<Task>(id)?
            .map(|(t, _)| t)
            .ok_or_else(|| ControlError::NotFound { kind: "task", name: id.to_string() })
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<Task>, ControlError> {
        let mut all: Vec<Task> = self.store.list_records::<Task>()?.into_iter().map(|(t, _)| t).collect();
        let live = lock(&self.live);
        for t in all.iter_mut() {
            if let Some(l) = live.get(&t.id) {
                *t = l.state.borrow().clone();
            }
        }
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        Ok(all)
    }

    /// Waits until the task ends or `timeout` passes; returns the task as it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Task, ControlError> {
        let rx = lock(&self.live).get(id).map(|l| l.state.subscribe());
        let Some(mut rx) = rx else { return self.get(id) };
        let _ = tokio::time::timeout(timeout, rx.wait_for(|t| t.state.is_final())).await;
        let t = rx.borrow().clone();
        Ok(t)
    }

    /// Asks a running task to stop at its next step.
    pub fn cancel(&self, id: &str) -> Result<Task, ControlError> {
        let task = self.get(id)?;
        if task.state.is_final() {
            return Err(ControlError::Conflict(format!("task {id} already ended ({:?})", task.state).to_lowercase()));
        }
        if let Some(l) = lock(&self.live).get(id) {
            l.cancel.store(true, Ordering::SeqCst);
        }
        Ok(task)
    }

    /// Drops finished tasks from memory and old ones from the store.
    pub fn prune(&self) {
        lock(&self.live).retain(|_, l| !l.state.borrow().state.is_final());
        if let Ok(mut all) = self.store.list_records::<Task>() {
            all.retain(|(t, _)| t.state.is_final());
            if all.len() > KEEP_FINISHED {
                all.sort_by_key(|(t, _)| t.created_at);
                for (t, rev) in &all[..all.len() - KEEP_FINISHED] {
                    let _ = self.store.delete_record::<Task>(&t.id, Expect::Revision(*rev));
                }
            }
        }
    }
}

impl TaskHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn snapshot(&self) -> Task {
        self.registry.state.borrow().clone()
    }

    /// The flag a cancel request sets, for work that polls it (e.g. a running qemu-img).
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub fn progress(&self, progress: u8, message: &str) {
        self.update(|t| {
            t.progress = progress.min(100);
            t.message = message.to_string();
        });
    }

    /// Ends the task: succeeded, failed with the error, or cancelled if it was asked to be.
    pub fn finish(self, result: Result<(), String>) -> Task {
        self.finish_with(result.map(|()| "done".to_string()))
    }

    /// [`TaskHandle::finish`], a success saying what was done (its final message).
    pub fn finish_with(self, result: Result<String, String>) -> Task {
        let cancelled = self.is_cancelled();
        self.update(|t| {
            t.finished_at = Some(now_millis());
            match &result {
                Ok(done) => {
                    t.state = TaskState::Succeeded;
                    t.progress = 100;
                    t.message = done.clone();
                }
                Err(e) if cancelled => {
                    t.state = TaskState::Cancelled;
                    t.error = Some(e.clone());
                }
                Err(e) => {
                    t.state = TaskState::Failed;
                    t.error = Some(e.clone());
                }
            }
        })
    }

    fn update(&self, f: impl FnOnce(&mut Task)) -> Task {
        let r = &self.registry;
        let mut task = r.state.borrow().clone();
        f(&mut task);
        if let Err(e) = r.store.put_record(&task.id, &task, Expect::Any) {
            tracing::warn!(task = %task.id, "could not record task: {e}");
        }
        r.state.send_replace(task.clone());
        let _ = r.events.send(Event::Task { task: task.clone(), time: now_millis() });
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxvirt_store::SqliteStore;

    fn registry() -> (TaskRegistry, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let (tx, _) = broadcast::channel(16);
        (TaskRegistry::new(store.clone(), tx).unwrap(), store)
    }

    #[tokio::test]
    async fn progress_wait_and_finish() {
        let (reg, _) = registry();
        let h = reg.create("vm.start", "vms/a").unwrap();
        let id = h.id().to_string();
        h.progress(40, "starting QEMU");
        assert_eq!(reg.get(&id).unwrap().progress, 40);
        let waiter = {
            let id = id.clone();
            let reg = &reg;
            async move { reg.wait(&id, Duration::from_secs(5)).await.unwrap() }
        };
        let (t, _) = tokio::join!(waiter, async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            h.finish(Ok(()));
        });
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.progress, 100);
        assert_eq!(reg.list().unwrap()[0].id, id);
    }

    #[tokio::test]
    async fn cancel_and_errors() {
        let (reg, _) = registry();
        let h = reg.create("vm.start", "vms/a").unwrap();
        reg.cancel(h.id()).unwrap();
        assert!(h.is_cancelled());
        let id = h.id().to_string();
        let t = h.finish(Err("cancelled before QEMU started".into()));
        assert_eq!(t.state, TaskState::Cancelled);
        assert!(matches!(reg.cancel(&id), Err(ControlError::Conflict(_))));
        assert!(matches!(reg.get("nope"), Err(ControlError::NotFound { .. })));
    }

    #[test]
    fn running_tasks_of_a_dead_daemon_are_failed_on_restart() {
        let (reg, store) = registry();
        let h = reg.create("vm.start", "vms/a").unwrap();
        let id = h.id().to_string();
        std::mem::forget(h);
        // Another host of a cluster sharing the store leaves it alone.
        let (tx, _) = broadcast::channel(16);
        let other = TaskRegistry::new(store.clone(), tx).unwrap();
        other.set_host("host-b");
        other.interrupt_leftovers().unwrap();
        assert_eq!(other.get(&id).unwrap().state, TaskState::Running);
        let (tx, _) = broadcast::channel(16);
        let reg2 = TaskRegistry::new(store, tx).unwrap();
        reg2.interrupt_leftovers().unwrap();
        let t = reg2.get(&id).unwrap();
        assert_eq!(t.state, TaskState::Failed);
        assert!(t.error.unwrap().contains("interrupted"));
    }
}
