//! Monitoring: the host's and each VM's figures, gathered at most once per 5 s (`stats.rs`), an
//! hour of them kept in memory (`history.rs`), and built-in alert rules with a webhook
//! (`alerts.rs`). `/metrics` (the API crate) exposes the same figures.

pub mod alerts;
pub mod history;
pub mod stats;

crate::service! {
    /// Monitoring: figures with a short cache, an hour of history, alerts.
    Monitoring, monitoring, state = monitoring
}

/// What this service keeps between requests (held by the controller, reached through `state()`).
#[derive(Default)]
pub(crate) struct State {
    /// Alert rules' state: what fired, and when it was sent.
    pub alerts: std::sync::Mutex<alerts::AlertBook>,
    /// An hour of figures per VM and for the host.
    pub history: std::sync::Mutex<history::History>,
    /// The last figures gathered for monitoring, and when.
    pub stats_cache: std::sync::Mutex<Option<(std::time::Instant, stats::Stats)>>,
}
