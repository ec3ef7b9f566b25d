//! [`StateOps`] for QEMU: the migration stream written to a file handed over (`getfd`, then
//! `migrate fd:`) and read back from one (`migrate-incoming fd:`).

use super::QemuInstance;
use crate::ops::StateOps;
use crate::HvError;
use oxvirt_qemu::commands::migration::{self, Capability, Parameters, Status};
use oxvirt_qemu::commands::{devices, run};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The name a state file is handed to QEMU under.
const STATE_FD: &str = "oxv-state";
/// Saving or loading a guest's state ends within this (it is a copy of its memory on this host).
const STATE_TIMEOUT: Duration = Duration::from_secs(300);

impl QemuInstance {
    /// Polls the migration (the state saved or loaded) until it ends.
    async fn migration_ended(&self, what: &str) -> Result<(), HvError> {
        let start = Instant::now();
        loop {
            match migration::query_migrate(&self.qmp).await?.status {
                Status::Completed => return Ok(()),
                Status::Failed(why) => return Err(HvError::Refused(format!("{what}: {why}"))),
                Status::PreSwitchover => migration::migrate_continue(&self.qmp).await?,
                Status::None | Status::Active(_) => {}
            }
            if start.elapsed() > STATE_TIMEOUT {
                let _ = migration::migrate_cancel(&self.qmp).await;
                return Err(HvError::Timeout(STATE_TIMEOUT, what.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait::async_trait]
impl StateOps for QemuInstance {
    async fn save_state(&self, file: std::fs::File, memory_apart: bool) -> Result<u64, HvError> {
        run::stop(&self.qmp).await?;
        // As a plain stream to a file: what an earlier live migration set goes.
        migration::migrate_set_capabilities(
            &self.qmp,
            &[
                (Capability::PostcopyRam, false),
                (Capability::PauseBeforeSwitchover, false),
                (Capability::AutoConverge, false),
                (Capability::IgnoreShared, memory_apart),
            ],
        )
        .await?;
        let p = Parameters {
            max_bandwidth: Some(u64::from(u32::MAX)),
            tls_creds: Some(String::new()),
            ..Default::default()
        };
        migration::migrate_set_parameters(&self.qmp, &p).await?;
        devices::getfd(&self.qmp, STATE_FD, file.as_raw_fd()).await?;
        migration::migrate(&self.qmp, &format!("fd:{STATE_FD}")).await?;
        self.migration_ended("saving the guest's state").await?;
        let bytes = file.metadata().map_err(|e| HvError::io("the state file", e))?.len();
        Ok(bytes)
    }

    async fn load_state(&self, file: std::fs::File, memory_apart: bool) -> Result<(), HvError> {
        migration::migrate_set_capabilities(&self.qmp, &[(Capability::IgnoreShared, memory_apart)]).await?;
        devices::getfd(&self.qmp, STATE_FD, file.as_raw_fd()).await?;
        self.hold_console().await?;
        migration::migrate_incoming(&self.qmp, &format!("fd:{STATE_FD}")).await?;
        self.migration_ended("loading the guest's state").await
    }
}
