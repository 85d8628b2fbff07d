//! Read-your-writes: a session that asks for `pgfront.min_lsn=X/Y` goes to a replica whose
//! replay has reached that WAL position, as the replicas' latest probe answers show it.
//! While none has, it waits up to the listener's `min_lsn_wait` (the replicas' positions
//! are refreshed meanwhile, at most one probe per node per `MIN_KICK_GAP`), then goes to
//! the leader, which has every commit, unless the client asked for replicas only
//! (`pgfront.target=replica`): that session is refused rather than served a read that may
//! miss its own write.
//!
//! Read where `pgfront.target` is read (listeners with `client_target`), from the same two
//! places. `pgfront.target=primary` ignores it; `replica`, `prefer-replica`, `any` and the
//! listener's own rule honour it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use crate::balance::{self, Ask, NoServer, Slot, Target};
use crate::cluster::ListenerState;
use crate::config::LogSessions;
use crate::pg::{format_lsn, parse_lsn, Startup};

/// The setting a client sends.
pub const SETTING: &str = "pgfront.min_lsn";

/// A `pgfront.min_lsn` that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for parameter \"{SETTING}\": {}", crate::pg::shown(.0))]
pub struct BadLsn(pub String);

/// The client's position, where this listener reads it (`client_target`); `None` when not
/// asked for (or not read here).
pub fn requested(listener: &ListenerState, startup: Option<&Startup>) -> Result<Option<u64>, BadLsn> {
    let Some(s) = startup.filter(|_| listener.config.client_target) else {
        return Ok(None);
    };
    match s.setting(SETTING) {
        // Empty, as an empty `pgfront.target` is: no position to wait for (a script's
        // `-c pgfront.min_lsn=$LSN` before its first write); it refused the login.
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => parse_lsn(&text).map(Some).ok_or(BadLsn(text)),
    }
}

/// Why no server could be had for a session.
pub enum Miss {
    /// The queue's own reasons (nothing up, maxconn, no leader).
    Queue(NoServer),
    /// `pgfront.target=replica` with a position no replica reached within `min_lsn_wait`.
    Behind { lsn: u64 },
}

/// A session's wait for its position: from its first pick until a server is chosen.
#[derive(Debug)]
pub struct Wait {
    lsn: u64,
    began: Instant,
    until: Instant,
    /// Counted in the listener's metrics (once, however many connects follow).
    counted: bool,
}

impl Wait {
    /// Starts the wait for `ask`'s position now, if it has one.
    pub fn begin(listener: &ListenerState, ask: &Ask) -> Option<Wait> {
        let lsn = ask.min_lsn?;
        let began = Instant::now();
        Some(Wait { lsn, began, until: began + listener.config.min_lsn_wait, counted: false })
    }
}

/// Acquires a server for `ask` within `hold_until`: with a position, first among servers
/// that have replayed it until the wait ends (which the caller's `hold_until` leaves room
/// for: the queue's own bound comes after it); then the leader, where `ask` allows it
/// (`ask` becomes a request for the primary, so retries stay there).
pub async fn acquire(
    listener: &Arc<ListenerState>,
    avoid: &[usize],
    ask: &mut Ask,
    wait: &mut Option<Wait>,
    hold_until: Instant,
    peer: SocketAddr,
) -> Result<Slot, Miss> {
    let now = Instant::now();
    let Some(w) = wait.as_mut().filter(|_| ask.min_lsn.is_some()) else {
        return balance::acquire(listener, avoid, *ask, hold_until.max(now)).await.map_err(Miss::Queue);
    };
    match balance::acquire(listener, avoid, *ask, w.until.max(now)).await {
        Ok(slot) => {
            count(listener, w, Some(&slot));
            Ok(slot)
        }
        Err(NoServer::Behind) if ask.falls_back_to_leader() => {
            fell_back(listener, w, peer);
            *ask = Ask::from(Target::Primary);
            let slot = balance::acquire(listener, avoid, *ask, hold_until.max(Instant::now())).await;
            count(listener, w, slot.as_ref().ok());
            slot.map_err(Miss::Queue)
        }
        Err(NoServer::Behind) => {
            count(listener, w, None);
            Err(Miss::Behind { lsn: w.lsn })
        }
        // Servers that have the position are at maxconn, or nothing is admitted at all (a
        // failover): wait for the listener's whole bound, as a session without a position
        // would, rather than be refused when the position wait ends.
        Err(NoServer::Full | NoServer::Connecting | NoServer::NoneUp | NoServer::NoLeader) => {
            let slot = balance::acquire(listener, avoid, *ask, hold_until.max(Instant::now())).await;
            count(listener, w, slot.as_ref().ok());
            slot.map_err(Miss::Queue)
        }
    }
}

/// Counts how the wait ended: on a replica, on the leader, or refused (`None`).
fn count(listener: &ListenerState, w: &mut Wait, slot: Option<&Slot>) {
    if std::mem::replace(&mut w.counted, true) {
        return;
    }
    let st = &listener.stats;
    let waited = w.began.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
    st.min_lsn_wait_us.fetch_add(waited, Ordering::Relaxed);
    let on_leader = slot.map(|s| listener.leadership.leader() == Some(s.server().node));
    let counter = match on_leader {
        Some(false) => &st.min_lsn_replica,
        Some(true) => &st.min_lsn_leader,
        None => &st.min_lsn_refused,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Says, where the listener logs sessions, that a session goes to the leader.
fn fell_back(listener: &ListenerState, w: &Wait, peer: SocketAddr) {
    if listener.config.log_sessions == LogSessions::All {
        tracing::info!(listener = %listener.config.name, client = %peer, min_lsn = %format_lsn(w.lsn),
            waited_ms = w.began.elapsed().as_millis() as u64,
            replayed = %replayed(listener),
            "no replica has replayed the session's pgfront.min_lsn in time: sent to the leader");
    }
}

/// The admitted servers' positions, for the log line (`node2=0/3000060 node3=0/3000028`).
fn replayed(listener: &ListenerState) -> String {
    let up = listener.servers.iter().filter(|s| s.is_up());
    up.map(|s| format!("{}={}", s.name, format_lsn(s.check.node_state.replayed()))).collect::<Vec<_>>().join(" ")
}
