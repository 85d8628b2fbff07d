//! What pgfront knows of each node from Patroni, and who leads: the arbitration that
//! keeps at most one write target at any instant.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{NodeStatus, ProbeResult};

/// The latest answer of one node's Patroni agent.
#[derive(Debug)]
pub struct NodeState {
    pub index: usize,
    pub name: String,
    /// Patroni's REST address.
    pub target: String,
    report: Mutex<NodeReport>,
    /// Re-probe requests: a counter bumped by each kick, so a checker can tell whether a
    /// kick arrived since its last probe began; kicks before a probe coalesce into it.
    kicks: AtomicU64,
    kicked: Notify,
}

#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    pub last: Option<ProbeResult>,
    /// The parsed status of the last answer that carried one.
    pub status: Option<NodeStatus>,
    /// The last answer said this node holds the leader lock and runs as primary.
    pub claims_leader: bool,
}

impl NodeState {
    pub fn new(index: usize, name: String, target: String) -> NodeState {
        NodeState {
            index,
            name,
            target,
            report: Mutex::new(NodeReport::default()),
            kicks: AtomicU64::new(0),
            kicked: Notify::new(),
        }
    }

    /// Asks this node's checkers to probe now (a failed connect, a reset session, a lost leader).
    pub fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::AcqRel);
        self.kicked.notify_waiters();
    }

    /// The kick count, read as a probe starts.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Acquire)
    }

    /// Completes once a kick newer than `seen` exists.
    pub async fn kicked_since(&self, seen: u64) {
        loop {
            let notified = self.kicked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.kicks() != seen {
                return;
            }
            notified.await;
        }
    }

    pub fn report(&self) -> NodeReport {
        self.lock().clone()
    }

    pub fn set(&self, report: NodeReport) {
        *self.lock() = report;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who leads, decided from every node's latest claim.
#[derive(Debug)]
pub struct Leadership {
    /// Index of the leader node, or `usize::MAX` for none; read lock-free by balance.
    leader: AtomicU64,
    /// Two nodes claim leadership on the same timeline: neither gets writes.
    conflict: AtomicBool,
    /// Leader changes seen (for metrics).
    pub changes: AtomicU64,
    /// The highest timeline a leader was decided on: a claim on an older one is a stale
    /// answer from a demoted node, whatever happens to the current leader's probes.
    max_timeline: AtomicU64,
    /// Serialises arbitration across every checker (and across the old and new checkers
    /// of a reload, since the leadership carries over).
    pub(crate) serial: tokio::sync::Mutex<()>,
    /// A leader has been admitted since start: from then on, losing it means a failover is
    /// under way (at start-up, nothing is known yet and `rise` applies).
    had_leader: AtomicBool,
    since: Mutex<Instant>,
    /// Cancelled and replaced at every leader change: sessions sent to the leader by a
    /// listener whose own check does not follow leadership hold a child of it.
    term: Mutex<CancellationToken>,
}

/// The result of one arbitration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub leader: Option<usize>,
    pub previous: Option<usize>,
    pub conflict: bool,
}

impl Decision {
    pub fn changed(&self) -> bool {
        self.leader != self.previous
    }
}

const NONE: u64 = u64::MAX;

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            leader: AtomicU64::new(NONE),
            conflict: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            had_leader: AtomicBool::new(false),
            max_timeline: AtomicU64::new(0),
            serial: tokio::sync::Mutex::new(()),
            since: Mutex::new(Instant::now()),
            term: Mutex::new(CancellationToken::new()),
        }
    }
}

impl Leadership {
    pub fn leader(&self) -> Option<usize> {
        match self.leader.load(Ordering::Acquire) {
            NONE => None,
            i => Some(i as usize),
        }
    }

    /// Whether a leader has been admitted (taken writes) since start: from then on, a
    /// write listener without one means a failover is under way.
    pub fn had_leader(&self) -> bool {
        self.had_leader.load(Ordering::Acquire)
    }

    /// A fresh leadership for a rebuilt node list (a reload that changed the nodes) that
    /// keeps what must not be forgotten: that a leader was seen, and on which timeline.
    pub fn succeeding(old: &Leadership) -> Leadership {
        let l = Leadership::default();
        l.had_leader.store(old.had_leader(), Ordering::Release);
        l.max_timeline.store(old.max_timeline.load(Ordering::Acquire), Ordering::Release);
        l
    }

    /// A token for a session sent to the current leader; cancelled when it stops leading.
    pub fn term_token(&self) -> CancellationToken {
        self.term.lock().unwrap_or_else(|p| p.into_inner()).child_token()
    }

    /// Records that a leader check admitted its node.
    pub fn admitted(&self) {
        self.had_leader.store(true, Ordering::Release);
    }

    pub fn conflict(&self) -> bool {
        self.conflict.load(Ordering::Acquire)
    }

    /// When the current leader (or the absence of one) began.
    pub fn since(&self) -> Instant {
        *self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides from `(node, timeline)` of every node whose latest answer claims leadership:
    /// one claimant leads; of several, the unique highest timeline leads (a stale answer
    /// from a demoted leader carries an older timeline); a tie means nobody leads.
    /// The caller serialises calls (the checkers hold the runtime's arbitration lock).
    pub fn decide(&self, claims: &[(usize, Option<u64>)]) -> Decision {
        let previous = self.leader();
        let floor = self.max_timeline.load(Ordering::Acquire);
        let current: Vec<(usize, Option<u64>)> =
            claims.iter().copied().filter(|c| c.1.is_none_or(|t| t >= floor)).collect();
        let claims = current.as_slice();
        let (leader, conflict) = match claims {
            [] => (None, false),
            [(i, _)] => (Some(*i), false),
            many => {
                let best = many.iter().map(|c| c.1.unwrap_or(0)).max().unwrap_or(0);
                let top: Vec<usize> = many.iter().filter(|c| c.1.unwrap_or(0) == best).map(|c| c.0).collect();
                if top.len() == 1 {
                    (Some(top[0]), false)
                } else {
                    (None, true)
                }
            }
        };
        self.conflict.store(conflict, Ordering::Release);
        if let Some(t) = leader.and_then(|l| claims.iter().find(|c| c.0 == l)).and_then(|c| c.1) {
            self.max_timeline.fetch_max(t, Ordering::AcqRel);
        }
        if leader != previous {
            self.leader.store(leader.map_or(NONE, |i| i as u64), Ordering::Release);
            self.changes.fetch_add(1, Ordering::Relaxed);
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            std::mem::replace(&mut *self.term.lock().unwrap_or_else(|p| p.into_inner()), CancellationToken::new())
                .cancel();
        }
        Decision { leader, previous, conflict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claimant_leads() {
        let l = Leadership::default();
        let d = l.decide(&[(1, Some(3))]);
        assert_eq!((d.leader, d.previous, d.conflict), (Some(1), None, false));
        assert!(d.changed());
        assert!(!l.decide(&[(1, Some(3))]).changed());
    }

    #[test]
    fn the_higher_timeline_wins_a_double_claim() {
        let l = Leadership::default();
        l.decide(&[(0, Some(3))]);
        let d = l.decide(&[(0, Some(3)), (2, Some(4))]);
        assert_eq!((d.leader, d.previous, d.conflict), (Some(2), Some(0), false));
    }

    #[test]
    fn a_tie_means_no_leader_and_a_conflict() {
        let l = Leadership::default();
        l.decide(&[(0, Some(3))]);
        let d = l.decide(&[(0, Some(3)), (1, Some(3))]);
        assert_eq!((d.leader, d.conflict), (None, true));
        assert!(l.conflict());
        let d = l.decide(&[(1, Some(3))]);
        assert_eq!((d.leader, d.conflict), (Some(1), false));
    }

    #[test]
    fn a_stale_claim_cannot_come_back_when_the_leader_misses_a_probe() {
        let l = Leadership::default();
        l.decide(&[(0, Some(3))]);
        assert_eq!(l.decide(&[(0, Some(3)), (1, Some(4))]).leader, Some(1));
        // node1's probe failed once; node0 still answers 200 on timeline 3.
        assert_eq!(l.decide(&[(0, Some(3))]).leader, None, "a claim on an older timeline never leads again");
        assert_eq!(l.decide(&[(0, Some(3)), (1, Some(4))]).leader, Some(1));
        let next = Leadership::succeeding(&l);
        assert_eq!(next.decide(&[(0, Some(3))]).leader, None, "remembered across a reload");
    }

    #[test]
    fn no_claim_no_leader() {
        let l = Leadership::default();
        l.decide(&[(0, Some(3))]);
        assert_eq!(l.decide(&[]).leader, None);
        assert_eq!(l.leader(), None);
        assert_eq!(l.changes.load(Ordering::Relaxed), 2);
    }
}
