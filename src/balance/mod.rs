//! Choosing a server for a new session, and holding the session in the listener's queue
//! while no server can take it (none admitted by the check, all at maxconn, all at their
//! bound of connects in flight, or, for `pgfront.min_lsn`, none has replayed the position).

mod queue;
mod slot;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::{timeout_at, Instant};

pub use self::queue::Queue;
pub use self::slot::{try_acquire, Connecting, Slot};
use crate::cluster::{ListenerState, Server};
use crate::config::Balance;
pub use crate::config::Target;

/// Why no server could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoServer {
    #[error("no server is available")]
    NoneUp,
    #[error("every available server is at its maxconn")]
    Full,
    /// Every eligible server below its maxconn already has `max_connecting` logins in
    /// progress (a login holds its place while the server works on it; see `copy::CLIENT_TURN`).
    #[error("every available server has max_connecting logins in progress")]
    Connecting,
    /// The client asked for the primary (`pgfront.target=primary`, or a route) and no
    /// leader is admitted: it is never sent elsewhere instead.
    #[error("no leader is known for a session that asked for the primary")]
    NoLeader,
    /// The session asked for `pgfront.min_lsn` and every server it may use is up but has
    /// not been seen to replay that position yet.
    #[error("no server has replayed the position the session asked for")]
    Behind,
}

impl NoServer {
    pub fn as_label(self) -> &'static str {
        match self {
            NoServer::NoneUp => "no_server",
            NoServer::Full => "maxconn",
            NoServer::Connecting => "max_connecting",
            NoServer::NoLeader => "no_leader",
            NoServer::Behind => "min_lsn_behind",
        }
    }
}

/// What a session asks of its server: a target, and for read-your-writes a WAL position
/// the server must have replayed (`pgfront.min_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Ask {
    pub target: Target,
    /// Only servers whose replay has reached this position (the leader always has it);
    /// never set with [`Target::Primary`], which already has every commit.
    pub min_lsn: Option<u64>,
}

impl From<Target> for Ask {
    fn from(target: Target) -> Ask {
        Ask { target, min_lsn: None }
    }
}

impl Ask {
    /// `target` with `min_lsn`, which the primary ignores (it has every commit it acknowledged).
    pub fn new(target: Target, min_lsn: Option<u64>) -> Ask {
        Ask { target, min_lsn: min_lsn.filter(|_| target != Target::Primary) }
    }

    /// Whether a session whose position no replica reached within `min_lsn_wait` goes to
    /// the leader: yes, unless the client asked for replicas only (`pgfront.target=replica`),
    /// which is then refused rather than served a read that may miss its own write.
    /// (`min_lsn` is read only on `client_target` listeners, where a client may ask for the
    /// leader anyway, so the fallback grants nothing the listener does not.)
    pub fn falls_back_to_leader(&self) -> bool {
        self.target != Target::Replica
    }
}

/// Whether a server may take a session that needs `lsn` replayed: the leader has every
/// commit; a replica once its latest answer shows its replay at or past `lsn` on the
/// leader's timeline (`replayed`: `None` when its answer said another timeline, or none,
/// or the leader's is unknown: a diverged former leader replays an older timeline past
/// positions whose commits it never had). A replica whose replay is paused keeps its
/// position, so it never qualifies for a later one.
pub fn caught_up(replayed: Option<u64>, is_leader: bool, lsn: Option<u64>) -> bool {
    lsn.is_none_or(|lsn| is_leader || replayed.is_some_and(|r| r >= lsn))
}

/// What `s` has replayed on the leader's `timeline`, as [`caught_up`] takes it.
fn replayed_on(s: &Server, timeline: Option<u64>) -> Option<u64> {
    s.check.node_state.replayed_on(timeline?)
}

/// Picks a server now. Servers in `avoid` (those a retry just failed on) are used only
/// when nothing else is eligible.
pub fn pick(l: &ListenerState, avoid: &[usize], ask: impl Into<Ask>) -> Result<Slot, NoServer> {
    let Ask { target, min_lsn } = ask.into();
    // Sessions asking for the leader go to it only while its latest answer claimed the
    // lock as a running primary: the admission rule of a leader listener.
    let leader = l.leadership.ready_leader();
    let fallback = match target {
        // With min_lsn, when no replica is up at all (none that lags: that waits).
        Target::Listener => l.config.fallback_to_leader || min_lsn.is_some(),
        Target::PreferReplica => true,
        _ => false,
    };
    let timeline = min_lsn.and_then(|_| l.leadership.timeline());
    let has = |s: &Server| min_lsn.is_none() || caught_up(replayed_on(s, timeline), leader == Some(s.node), min_lsn);
    let first = match target {
        Target::Primary => match leader_slot(l, leader) {
            Err(NoServer::NoneUp) => Err(NoServer::NoLeader),
            other => other,
        },
        Target::Any => {
            let usable = |s: &Server| s.is_up() || (leader == Some(s.node) && s.accepts());
            let usable = |s: &Server| usable(s) && has(s);
            let slot = pick_among(l, |s| !avoid.contains(&s.node) && usable(s)).or_else(|_| pick_among(l, usable));
            // The leader taken without the check admitting it is a fallback: it stays
            // eligible while it leads, and its session ends when leadership moves on.
            slot.map(|s| if s.server().is_up() { s } else { s.into_fallback(&l.leadership) })
        }
        _ => match pick_among(l, |s| s.is_up() && has(s) && !avoid.contains(&s.node)) {
            Err(NoServer::NoneUp) if !avoid.is_empty() => pick_among(l, |s| s.is_up() && has(s)),
            other => other,
        },
    };
    match first {
        // Up, but behind: the session waits for a position (min_lsn_wait), then decides.
        Err(NoServer::NoneUp) if min_lsn.is_some() && l.servers.iter().any(|s| s.is_up()) => Err(NoServer::Behind),
        Err(NoServer::NoneUp) if fallback => leader_slot(l, leader),
        other => other,
    }
}

/// Asks the checkers of this listener's servers that are up but have not been seen to
/// replay `lsn` to refresh their positions until `until` (bounded per node by the
/// checker's least gap between probes, however many sessions ask).
pub fn refresh_positions(l: &ListenerState, lsn: u64, until: Instant) {
    let timeline = l.leadership.timeline();
    for s in l.servers.iter().filter(|s| s.is_up()) {
        if !caught_up(replayed_on(s, timeline), false, Some(lsn)) {
            s.check.node_state.want_replayed(lsn, until);
        }
    }
}

fn acquire_on(l: &ListenerState, s: &Arc<Server>) -> Option<Slot> {
    try_acquire(s, &l.queue, l.config.max_connecting)
}

/// The leader's server on this listener, as a slot that stays valid while it leads.
fn leader_slot(l: &ListenerState, leader: Option<usize>) -> Result<Slot, NoServer> {
    let node = leader.ok_or(NoServer::NoneUp)?;
    let server = l.servers.iter().find(|s| s.node == node && s.accepts()).ok_or(NoServer::NoneUp)?;
    acquire_on(l, server).map(|slot| slot.into_fallback(&l.leadership)).ok_or_else(|| full(std::iter::once(server)))
}

/// Why servers that could not take a session could not: all at their maxconn, or one at
/// least below it, so its `max_connecting` was the limit.
fn full<'a>(mut tried: impl Iterator<Item = &'a Arc<Server>>) -> NoServer {
    if tried.any(|s| s.stats.cur.load(Ordering::Relaxed) < s.maxconn) {
        NoServer::Connecting
    } else {
        NoServer::Full
    }
}

fn pick_among(l: &ListenerState, eligible: impl Fn(&Server) -> bool) -> Result<Slot, NoServer> {
    let eligible = |s: &&Arc<Server>| eligible(s);
    let up = l.servers.iter().filter(eligible).count();
    if up == 0 {
        return Err(NoServer::NoneUp);
    }
    let slot = match l.config.balance {
        Balance::First => l.servers.iter().filter(eligible).find_map(|s| acquire_on(l, s)),
        Balance::RoundRobin => {
            // Rotate over the eligible servers only, so a down server does not make its
            // successor take two turns.
            let start = l.rr.fetch_add(1, Ordering::Relaxed) % up;
            let ring = l.servers.iter().filter(eligible);
            ring.clone().skip(start).chain(ring.take(start)).find_map(|s| acquire_on(l, s))
        }
        Balance::LeastConn => {
            let start = l.rr.fetch_add(1, Ordering::Relaxed) % up;
            let ring = l.servers.iter().filter(eligible);
            // Fewest sessions first; ties go to the round-robin position.
            let mut order: Vec<&Arc<Server>> = ring.clone().skip(start).chain(ring.take(start)).collect();
            order.sort_by_key(|s| s.stats.cur.load(Ordering::Relaxed));
            order.into_iter().find_map(|s| acquire_on(l, s))
        }
    };
    slot.ok_or_else(|| full(l.servers.iter().filter(eligible)))
}

/// Picks a server, waiting in the listener's queue until `deadline` if none can take the
/// session now or others are already waiting (they are served first). Waiting sessions
/// are served from the listener's current generation, so a reload applies to them too.
/// Returns the last reason when the deadline passes.
pub async fn acquire(
    l: &Arc<ListenerState>,
    avoid: &[usize],
    ask: impl Into<Ask>,
    deadline: Instant,
) -> Result<Slot, NoServer> {
    let ask = ask.into();
    let queue = &l.queue;
    let current = queue.current().unwrap_or_else(|| Arc::clone(l));
    if queue.is_empty() {
        if let Ok(slot) = pick(&current, avoid, ask) {
            return Ok(slot);
        }
    }
    // Every probe answer of an admitted server serves the queue again, so a session
    // waiting for a position is served by the answer that shows it.
    if let Some(lsn) = ask.min_lsn {
        refresh_positions(&current, lsn, deadline);
    }
    let first_waiting = queue.is_empty();
    let (id, mut rx) = queue.push(ask, avoid);
    if first_waiting && waits_for_the_leader(&current, ask) {
        // Checks look at once: after a minute without a leader they no longer hunt, and
        // would otherwise find one at their interval (kicks coalesce, ten a second at most).
        for s in &current.servers {
            s.check.kick();
        }
    }
    let _queued = QueueGuard::enter(l, id);
    queue.dispatch();
    if let Ok(Ok(slot)) = timeout_at(deadline, &mut rx).await {
        return Ok(slot);
    }
    queue.remove(id);
    // Served in the instant between the deadline and leaving the queue: take it.
    if let Ok(slot) = rx.try_recv() {
        return Ok(slot);
    }
    let current = queue.current().unwrap_or_else(|| Arc::clone(l));
    pick(&current, avoid, ask)
}

/// Whether a session that has to wait waits for a leader: one asking for the primary, or
/// any on a leader listener that has no server taking new sessions.
fn waits_for_the_leader(l: &ListenerState, ask: Ask) -> bool {
    ask.target == Target::Primary || (l.config.check.is_leader() && !l.servers.iter().any(|s| s.check.is_up()))
}

/// Counts a session in the listener's queue for as long as it waits, and takes it out of
/// the queue whatever ends the wait (a client that gives up drops the future); the wait
/// feeds the failover accounting's longest hold.
struct QueueGuard<'a>(&'a ListenerState, u64, Instant);

impl<'a> QueueGuard<'a> {
    fn enter(l: &'a ListenerState, id: u64) -> Self {
        let n = l.stats.queue_cur.fetch_add(1, Ordering::Relaxed) + 1;
        l.stats.queue_max.fetch_max(n, Ordering::Relaxed);
        l.stats.queued.fetch_add(1, Ordering::Relaxed);
        QueueGuard(l, id, Instant::now())
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.queue.remove(self.1);
        self.0.stats.queue_cur.fetch_sub(1, Ordering::Relaxed);
        let waited = self.2.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.0.stats.longest_hold_us.fetch_max(waited, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
