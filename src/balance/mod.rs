//! Choosing a server for a new session, and holding the session in the listener's queue
//! while no server can take it (none admitted by the check, all at maxconn, or all at
//! their bound of connects in flight).

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
    /// The client asked for the primary (`pgfront.target=primary`, or a route) and no
    /// leader is admitted: it is never sent elsewhere instead.
    #[error("no leader is known for a session that asked for the primary")]
    NoLeader,
}

impl NoServer {
    pub fn as_label(self) -> &'static str {
        match self {
            NoServer::NoneUp => "no_server",
            NoServer::Full => "maxconn",
            NoServer::NoLeader => "no_leader",
        }
    }
}

/// Picks a server now. Servers in `avoid` (those a retry just failed on) are used only
/// when nothing else is eligible.
pub fn pick(l: &ListenerState, avoid: &[usize], target: Target) -> Result<Slot, NoServer> {
    // Sessions asking for the leader go to it only while its latest answer claimed the
    // lock as a running primary: the admission rule of a leader listener.
    let leader = l.leadership.ready_leader();
    let fallback = match target {
        Target::Listener => l.config.fallback_to_leader,
        Target::PreferReplica => true,
        _ => false,
    };
    let first = match target {
        Target::Primary => match leader_slot(l, leader) {
            Err(NoServer::NoneUp) => Err(NoServer::NoLeader),
            other => other,
        },
        Target::Any => {
            let usable = |s: &Server| s.is_up() || (leader == Some(s.node) && s.accepts());
            let slot = pick_among(l, |s| !avoid.contains(&s.node) && usable(s)).or_else(|_| pick_among(l, usable));
            // The leader taken without the check admitting it is a fallback: it stays
            // eligible while it leads, and its session ends when leadership moves on.
            slot.map(|s| if s.server().is_up() { s } else { s.into_fallback(&l.leadership) })
        }
        _ => match pick_among(l, |s| s.is_up() && !avoid.contains(&s.node)) {
            Err(NoServer::NoneUp) if !avoid.is_empty() => pick_among(l, |s| s.is_up()),
            other => other,
        },
    };
    match first {
        Err(NoServer::NoneUp) if fallback => leader_slot(l, leader),
        other => other,
    }
}

fn acquire_on(l: &ListenerState, s: &Arc<Server>) -> Option<Slot> {
    try_acquire(s, &l.queue, l.config.max_connecting)
}

/// The leader's server on this listener, as a slot that stays valid while it leads.
fn leader_slot(l: &ListenerState, leader: Option<usize>) -> Result<Slot, NoServer> {
    let node = leader.ok_or(NoServer::NoneUp)?;
    let server = l.servers.iter().find(|s| s.node == node && s.accepts()).ok_or(NoServer::NoneUp)?;
    acquire_on(l, server).map(|slot| slot.into_fallback(&l.leadership)).ok_or(NoServer::Full)
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
    slot.ok_or(NoServer::Full)
}

/// Picks a server, waiting in the listener's queue until `deadline` if none can take the
/// session now or others are already waiting (they are served first). Waiting sessions
/// are served from the listener's current generation, so a reload applies to them too.
/// Returns the last reason when the deadline passes.
pub async fn acquire(
    l: &Arc<ListenerState>,
    avoid: &[usize],
    target: Target,
    deadline: Instant,
) -> Result<Slot, NoServer> {
    let queue = &l.queue;
    let current = queue.current().unwrap_or_else(|| Arc::clone(l));
    if queue.is_empty() {
        if let Ok(slot) = pick(&current, avoid, target) {
            return Ok(slot);
        }
    }
    let (id, mut rx) = queue.push(target, avoid);
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
    pick(&current, avoid, target)
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
