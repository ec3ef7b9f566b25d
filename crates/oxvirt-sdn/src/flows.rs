//! A bridge's OpenFlow controller that keeps the switch's flows equal to the desired ones.
//!
//! Flows are named by their cookie (unique, not 0). A sync reads the switch's flows, deletes
//! those not desired or not as desired (strictly, by table, priority, match and cookie), adds
//! what is missing, and confirms with a barrier. Syncs run when the switch connects (a
//! restarted switch has no flows), when the desired flows change, and every `resync` period.

use oxvirt_openflow::message::FlowModCommand;
use oxvirt_openflow::{Connection, FlowMod, FlowStats, FlowStatsRequest};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// What the keeper last did, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeeperStatus {
    /// A switch is connected now.
    pub connected: bool,
    /// Connections accepted so far.
    pub connections: u64,
    /// Syncs finished, and flows they added and deleted in all.
    pub syncs: u64,
    pub added: u64,
    pub deleted: u64,
    /// The last sync's failure (a flow the switch refused, a lost connection).
    pub last_error: Option<String>,
}

struct Shared {
    /// None until the first [`FlowKeeper::set_flows`]: a keeper that does not know yet what
    /// it wants (a restarted oxvirtd) leaves the switch's flows alone.
    desired: Mutex<Option<BTreeMap<u64, FlowMod>>>,
    status: Mutex<KeeperStatus>,
}

/// The controller of one bridge. Dropping it stops it (the switch keeps its flows: secure fail
/// mode, until a controller connects again).
pub struct FlowKeeper {
    shared: Arc<Shared>,
    /// Raised by every change of the desired flows; the task answers with the generation it
    /// synced.
    wanted: watch::Sender<u64>,
    synced: watch::Receiver<u64>,
    stats_tx: mpsc::Sender<oneshot::Sender<Result<Vec<FlowStats>, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlowKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("flow cookie {0:#x}: every flow needs its own cookie, not 0")]
    Cookie(u64),
    #[error("the switch's flows are not as desired after {after:?}{}", .reason.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotSynced { after: Duration, reason: Option<String> },
    #[error("no switch is connected: {0}")]
    NoSwitch(String),
}

impl FlowKeeper {
    /// Serves switches connecting to `listener` (a bridge's controller target
    /// `unix:PATH`), syncing at least every `resync`.
    pub fn start(listener: UnixListener, resync: Duration) -> FlowKeeper {
        let shared = Arc::new(Shared { desired: Mutex::new(None), status: Mutex::new(KeeperStatus::default()) });
        let (wanted, wanted_rx) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(0u64);
        let (stats_tx, stats_rx) = mpsc::channel(8);
        let task = tokio::spawn(serve(listener, shared.clone(), wanted_rx, synced_tx, stats_rx, resync));
        FlowKeeper { shared, wanted, synced, stats_tx, task }
    }

    /// Replaces the desired flows (each with its own cookie, not 0) and wakes a sync.
    pub fn set_flows(&self, flows: Vec<FlowMod>) -> Result<(), KeeperError> {
        let mut map = BTreeMap::new();
        for f in flows {
            if f.cookie == 0 || map.contains_key(&f.cookie) {
                return Err(KeeperError::Cookie(f.cookie));
            }
            map.insert(f.cookie, FlowMod { command: FlowModCommand::Add, ..f });
        }
        *self.shared.desired.lock().unwrap_or_else(|e| e.into_inner()) = Some(map);
        self.wanted.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Wakes a sync without a change (a flow may have been added behind oxvirt's back).
    pub fn resync(&self) {
        self.wanted.send_modify(|g| *g += 1);
    }

    /// Waits until a sync begun after the last change has finished without error.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), KeeperError> {
        let want = *self.wanted.borrow();
        let mut rx = self.synced.clone();
        let done = tokio::time::timeout(timeout, rx.wait_for(|g| *g >= want)).await;
        match done {
            Ok(Ok(_)) => Ok(()),
            _ => Err(KeeperError::NotSynced { after: timeout, reason: self.status().last_error }),
        }
    }

    pub fn status(&self) -> KeeperStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The switch's flows now, with their counters.
    pub async fn flow_stats(&self) -> Result<Vec<FlowStats>, KeeperError> {
        let (tx, rx) = oneshot::channel();
        self.stats_tx.send(tx).await.map_err(|_| KeeperError::NoSwitch("the keeper stopped".into()))?;
        match rx.await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(KeeperError::NoSwitch(e)),
            Err(_) => Err(KeeperError::NoSwitch("the connection ended".into())),
        }
    }
}

type StatsRequest = oneshot::Sender<Result<Vec<FlowStats>, String>>;

async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut wanted: watch::Receiver<u64>,
    synced: watch::Sender<u64>,
    mut stats_rx: mpsc::Receiver<StatsRequest>,
    resync: Duration,
) {
    loop {
        // Between switches, statistics requests are answered with the reason.
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("flow keeper: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(req) = stats_rx.recv() => {
                let _ = req.send(Err("no switch is connected".into()));
                continue;
            }
        };
        let why = run_switch(stream, &shared, &mut wanted, &synced, &mut stats_rx, resync).await;
        let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        st.connected = false;
        st.last_error = Some(why);
    }
}

/// One switch's connection, until it ends (the reason).
async fn run_switch(
    stream: UnixStream,
    shared: &Shared,
    wanted: &mut watch::Receiver<u64>,
    synced: &watch::Sender<u64>,
    stats_rx: &mut mpsc::Receiver<StatsRequest>,
    resync: Duration,
) -> String {
    let mut conn = match Connection::handshake(stream, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => return format!("handshake: {e}"),
    };
    {
        let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
        st.connected = true;
        st.connections += 1;
    }
    let mut tick = tokio::time::interval(resync);
    loop {
        let generation = *wanted.borrow_and_update();
        let desired = shared.desired.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let synced_now = match &desired {
            Some(d) => sync(&mut conn, d).await,
            None => Err(SyncError::NotYet),
        };
        match synced_now {
            Ok((added, deleted)) => {
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.syncs += 1;
                st.added += added;
                st.deleted += deleted;
                st.last_error = None;
                drop(st);
                synced.send_if_modified(|g| {
                    let newer = generation > *g;
                    if newer {
                        *g = generation;
                    }
                    newer
                });
            }
            Err(SyncError::Refused(e)) => {
                // The switch is fine; the desired flows are not. Kept until they change.
                shared.status.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e);
            }
            Err(SyncError::Lost(e)) => return e,
            Err(SyncError::NotYet) => {}
        }
        tick.reset();
        loop {
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return "the keeper stopped".into();
                    }
                    break;
                }
                _ = tick.tick() => break,
                Some(req) = stats_rx.recv() => {
                    let r = conn.flow_stats(FlowStatsRequest::all()).await;
                    let lost = r.as_ref().err().map(|e| e.to_string());
                    let _ = req.send(r.map_err(|e| e.to_string()));
                    if let Some(e) = lost {
                        return e;
                    }
                }
                msg = conn.recv() => {
                    if let Err(e) = msg {
                        return e.to_string();
                    }
                    // Packet-ins and port changes: nothing to do for flows.
                }
            }
        }
    }
}

enum SyncError {
    /// No desired flows given yet.
    NotYet,
    Refused(String),
    Lost(String),
}

/// Makes the switch's flows the desired ones; returns how many it added and deleted.
async fn sync(conn: &mut Connection<UnixStream>, desired: &BTreeMap<u64, FlowMod>) -> Result<(u64, u64), SyncError> {
    let actual = conn.flow_stats(FlowStatsRequest::all()).await.map_err(|e| SyncError::Lost(e.to_string()))?;
    let mut kept = std::collections::BTreeSet::new();
    let mut mods = Vec::new();
    for s in &actual {
        let same = desired.get(&s.cookie).is_some_and(|d| {
            d.table_id == s.table_id
                && d.priority == s.priority
                && d.idle_timeout == s.idle_timeout
                && d.hard_timeout == s.hard_timeout
                && d.r#match.canonical() == s.r#match.canonical()
                && d.instructions == s.instructions
        });
        if same && kept.insert(s.cookie) {
            continue;
        }
        mods.push(FlowMod {
            command: FlowModCommand::DeleteStrict,
            table_id: s.table_id,
            cookie: s.cookie,
            cookie_mask: u64::MAX,
            ..FlowMod::add(s.priority, s.r#match.clone(), vec![])
        });
    }
    let deleted = mods.len() as u64;
    mods.extend(desired.values().filter(|d| !kept.contains(&d.cookie)).cloned());
    let added = mods.len() as u64 - deleted;
    if mods.is_empty() {
        return Ok((0, 0));
    }
    match conn.flow_mods(&mods).await {
        Ok(()) => Ok((added, deleted)),
        Err((i, oxvirt_openflow::ConnError::Refused { error, .. })) => {
            let cookie = mods.get(i).map(|m| m.cookie).unwrap_or_default();
            Err(SyncError::Refused(format!("flow {cookie:#x} refused by the switch: {}", error.describe())))
        }
        Err((_, e)) => Err(SyncError::Lost(e.to_string())),
    }
}
