//! What pgfront knows of each node from Patroni, and who leads: the arbitration that
//! keeps at most one write target at any instant.
//!
//! The rules are pure functions over plain values ([`NodeReport::after`],
//! [`Leadership::decide`]), each tested with a table of cases; the checker tasks only feed
//! them answers and hand the resulting [`Decision`] on as events.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{NodeStatus, ProbeResult};

/// The latest answer of one node's Patroni agent.
#[derive(Debug)]
pub struct NodeState {
    pub name: String,
    /// Patroni's REST address.
    pub target: String,
    report: Mutex<NodeReport>,
    /// Re-probe requests: a counter bumped by each kick, so a checker can tell whether a
    /// kick arrived since its last probe began; kicks before a probe coalesce into it.
    kicks: AtomicU64,
    kicked: Notify,
    /// The `notAfter` of the REST API's certificate as the last HTTPS answer showed it
    /// (seconds since the epoch; 0 while unknown or plain HTTP).
    cert_not_after: AtomicI64,
    /// The replica's replayed WAL position (`xlog.replayed_location`) in its latest
    /// readable answer, 0 while unknown: read lock-free by every session choosing a server
    /// for `pgfront.min_lsn`. Replay only moves forward, so a position read from an older
    /// answer is at most an underestimate: it can delay a session, never mislead one.
    replayed: AtomicU64,
    /// The same position with the timeline the same answer said the node replays, when it
    /// said one: only a replay on the leader's timeline counts for `pgfront.min_lsn` (a
    /// former leader that diverged replays an older one, however far). Read only by
    /// sessions that ask for a position.
    replayed_on: Mutex<Option<(u64, u64)>>,
    /// Sessions waiting for this node to replay a position (`pgfront.min_lsn`): the highest
    /// such position and until when it is wanted. While one is wanted and not yet seen,
    /// the checker re-probes every `MIN_KICK_GAP` instead of every interval: however many
    /// sessions wait, Patroni sees at most one probe per gap.
    demand: Mutex<Option<(u64, Instant)>>,
    /// Where the REST API was last reached: a checker started anew (by a reload or a
    /// discovery change) lends its spare socket there while a name cannot be looked up
    /// (see `fds::Lent`).
    peer: Mutex<Option<std::net::SocketAddr>>,
}

/// A node's claim to lead, as its last authoritative answer made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub timeline: Option<u64>,
    /// Patroni's `database_system_identifier`: which database this is. A different one
    /// means the cluster was rebuilt (re-bootstrapped or restored), and its timelines start over.
    pub system_id: Option<String>,
    /// The latest answer itself made the claim, as a running primary: only then does the
    /// node take new write sessions (a claim kept through a failed probe takes none).
    pub ready: bool,
    /// The node's latest readable answer said it does not lead (a 503 on `/primary`). Such
    /// a claim never leads: new sessions and every check that asks for the leader follow
    /// Patroni's word at once. It is kept through up to `fall - 1` such answers only for
    /// the term: sessions sent to the leader on read listeners end when another node leads
    /// or when `fall` answers in a row did not confirm the claim, as the write listener's
    /// end at its check's mark-down, not at one answer.
    pub denied: bool,
}

#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    pub last: Option<ProbeResult>,
    /// The parsed status of the last answer that carried one.
    pub status: Option<NodeStatus>,
    /// The node's claim to lead: made by a 200 on `/primary` with a readable status, and
    /// kept through up to `fall - 1` probes in a row that did not confirm it (a timeout, a
    /// reset, a restarting agent, a readable 503), so a REST blip is not a leader change and
    /// one 503 does not end the term (a denied claim leads nowhere, see [`Claim::denied`]).
    pub claim: Option<Claim>,
    /// Probes in a row that did not confirm the claim: no readable answer, or one that
    /// says the node does not lead.
    pub failures: u32,
    /// When the last probe counted in `failures` began (see [`NodeState::record_probe`]).
    pub counted: Option<Instant>,
}

/// One probe's outcome, as far as leadership is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A readable answer: whether it claims the leader lock (200 on `/primary`), and the status.
    Says { leads: bool, timeline: Option<u64>, system_id: Option<String>, running_primary: bool },
    /// No readable answer (refused, timed out, reset, garbage).
    Failed,
}

impl NodeReport {
    /// The report after `answer`, with `fall` answers in a row that did not confirm the
    /// claim (failed, or a readable "not the leader") ending it. Pure.
    pub fn after(&self, answer: &Answer, fall: u32) -> (Option<Claim>, u32) {
        self.after_counting(answer, fall, true)
    }

    /// As [`NodeReport::after`]; a failure that does not `count` (an early probe) changes
    /// the claim's readiness but not the count towards `fall`.
    pub fn after_counting(&self, answer: &Answer, fall: u32, count: bool) -> (Option<Claim>, u32) {
        match answer {
            Answer::Says { leads: true, timeline, system_id, running_primary } => {
                let claim =
                    Claim { timeline: *timeline, system_id: system_id.clone(), ready: *running_primary, denied: false };
                (Some(claim), 0)
            }
            Answer::Says { leads: false, .. } | Answer::Failed => {
                let failures = if count { self.failures.saturating_add(1) } else { self.failures };
                let denied = matches!(answer, Answer::Says { .. });
                let claim = self.claim.clone().filter(|_| failures < fall.max(1)).map(|c| Claim {
                    ready: false,
                    denied: c.denied || denied,
                    ..c
                });
                (claim, failures)
            }
        }
    }
}

impl NodeState {
    /// A node's state; it carries over reloads that keep the node (same name and REST
    /// address) wherever it moves in the list, so its position is the runtime's business.
    pub fn new(name: String, target: String) -> NodeState {
        NodeState {
            name,
            target,
            report: Mutex::new(NodeReport::default()),
            kicks: AtomicU64::new(0),
            kicked: Notify::new(),
            cert_not_after: AtomicI64::new(0),
            replayed: AtomicU64::new(0),
            replayed_on: Mutex::new(None),
            demand: Mutex::new(None),
            peer: Mutex::new(None),
        }
    }

    /// The replayed WAL position of the latest readable answer (0 while unknown).
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Acquire)
    }

    /// The replayed WAL position of the latest answer that reported one, if that answer
    /// said the node replays `timeline`: `None` for another timeline or none said.
    pub fn replayed_on(&self, timeline: u64) -> Option<u64> {
        lock(&self.replayed_on).filter(|(t, _)| *t == timeline).map(|(_, p)| p)
    }

    /// A session waits until `until` for this node to replay `lsn`: probe now, and keep
    /// probing every `MIN_KICK_GAP` until it has or nobody wants it any more.
    pub fn want_replayed(&self, lsn: u64, until: Instant) {
        {
            let mut d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
            *d = Some(match *d {
                Some((l, u)) if u > Instant::now() => (l.max(lsn), u.max(until)),
                _ => (lsn, until),
            });
        }
        self.kick();
    }

    /// Whether a session still waits for a position this node has not been seen to replay
    /// (an expired demand is dropped here).
    pub fn wants_replay(&self) -> bool {
        let mut d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
        match *d {
            Some((lsn, until)) if until > Instant::now() && self.replayed() < lsn => true,
            Some(_) => {
                *d = None;
                false
            }
            None => false,
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

    /// The timeline of the latest readable answer, if it said one, with the database
    /// (system identifier) it said it belongs to.
    pub fn timeline(&self) -> Option<(u64, Option<String>)> {
        let r = self.lock();
        let s = r.status.as_ref()?;
        Some((s.timeline?, s.database_system_identifier.clone()))
    }

    /// The same node under a new name (a reload renamed its `[[node]]`, same REST API) or
    /// at a new REST address (same name): its latest answer, claim and positions go on, so
    /// leadership and its term do too.
    pub fn succeeding(old: &NodeState, name: String, target: String) -> NodeState {
        NodeState {
            name,
            target,
            report: Mutex::new(old.report()),
            kicks: AtomicU64::new(0),
            kicked: Notify::new(),
            cert_not_after: AtomicI64::new(old.cert_not_after.load(Ordering::Relaxed)),
            replayed: AtomicU64::new(old.replayed()),
            replayed_on: Mutex::new(*lock(&old.replayed_on)),
            demand: Mutex::new(*lock(&old.demand)),
            peer: Mutex::new(old.peer()),
        }
    }

    /// Notes where a check reached the REST API (see `peer`).
    pub fn note_peer(&self, peer: std::net::SocketAddr) {
        *self.peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(peer);
    }

    /// Where a check last reached the REST API, if one has.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        *self.peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn report(&self) -> NodeReport {
        self.lock().clone()
    }

    /// Records a probe's result and what it says about leadership.
    pub fn record(&self, result: ProbeResult, status: Option<NodeStatus>, answer: &Answer, fall: u32) {
        self.record_probe(result, status, answer, (fall, Duration::ZERO), Instant::now());
    }

    /// As [`NodeState::record`], for a probe that began at `started`, with `fall` and the
    /// shortest check interval: a failure counts towards `fall` only when no counted one
    /// began within that interval before it (probes made early on demand do not end a
    /// claim at their own pace, as in [`super::Check::record_probe`]).
    pub fn record_probe(
        &self,
        result: ProbeResult,
        status: Option<NodeStatus>,
        answer: &Answer,
        (fall, gap): (u32, Duration),
        started: Instant,
    ) {
        let mut r = self.lock();
        let confirms = matches!(answer, Answer::Says { leads: true, .. });
        let count = confirms || r.counted.is_none_or(|c| started >= c + gap);
        let (claim, failures) = r.after_counting(answer, fall, count);
        if count && !confirms {
            r.counted = Some(started);
        }
        r.claim = claim;
        r.failures = failures;
        if let Some(s) = status.as_ref().filter(|s| s.xlog.replayed_location.is_some()) {
            let p = s.xlog.replayed_location.unwrap_or_default();
            *lock(&self.replayed_on) = s.timeline.map(|t| (t, p));
            self.replayed.store(p, Ordering::Release);
        }
        if status.is_some() {
            r.status = status;
        }
        r.last = Some(result);
    }

    /// Notes the certificate a probe saw: kept through failed probes (an expired
    /// certificate fails the handshake before it can be read again), cleared by a plain
    /// HTTP answer.
    pub fn note_cert(&self, result: &ProbeResult) {
        match (result.cert_not_after, result.status) {
            (Some(t), _) => self.cert_not_after.store(t, Ordering::Relaxed),
            (None, Some(_)) => self.cert_not_after.store(0, Ordering::Relaxed),
            (None, None) => {}
        }
    }

    pub fn cert_not_after(&self) -> Option<i64> {
        Some(self.cert_not_after.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// The node's claim, denied ones included (they keep the term; arbitration leaves
    /// them out).
    pub fn claim(&self) -> Option<Claim> {
        self.lock().claim.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who leads, decided from every node's claim.
#[derive(Debug)]
pub struct Leadership {
    /// Index of the leader node, or `usize::MAX` for none; read lock-free by balance.
    leader: AtomicU64,
    /// The leader's latest answer claimed the lock as a running primary: new sessions that
    /// ask for the primary may go to it (the same rule as a leader listener's admission).
    ready: AtomicBool,
    /// Two nodes claim leadership on the same timeline (or one without a timeline, or of two
    /// different databases): neither gets writes.
    conflict: AtomicBool,
    /// The leader's timeline as its claim said it, 0 for none (no leader, or a claim without
    /// one): replays on it alone count for `pgfront.min_lsn`, and lag is measured on it.
    timeline: AtomicU64,
    /// Leader changes seen (for metrics); carried across reloads.
    pub changes: AtomicU64,
    /// Cluster identity changes seen (a rebuilt cluster), for metrics.
    pub identity_changes: AtomicU64,
    /// The floor and the database it belongs to: a claim on a timeline below the highest one
    /// a leader was decided on is a stale answer from a demoted node, whatever happens to
    /// the current leader's probes, but only within one database (system identifier).
    floor: Mutex<Floor>,
    /// Serialises arbitration across every checker (and across the old and new checkers
    /// of a reload, since the leadership carries over).
    pub(crate) serial: tokio::sync::Mutex<()>,
    /// A leader has been admitted since start: from then on, losing it means a failover is
    /// under way (at start-up, nothing is known yet and `rise` applies).
    had_leader: AtomicBool,
    since: Mutex<Instant>,
    /// Since when write listeners have had no leader (see `Runtime::hunting`); carried
    /// across reloads, so a reload does not start another hunt.
    lost: Mutex<Option<Instant>>,
    /// Sessions sent to the leader by a listener whose own check does not follow
    /// leadership hold a child of this term's token. Carried across reloads, so no such
    /// session outlives the term it was sent in.
    term: Mutex<Term>,
    /// The leader's WAL position as last reported, and when: replica lag bounds use it
    /// while no leader answers, for a bounded time (then they fail closed).
    position: Mutex<Option<(u64, Option<u64>, Instant)>>,
    /// The stale claims last reported, so each refusal is said once.
    pub(crate) last_stale: Mutex<Vec<usize>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Floor {
    timeline: u64,
    system_id: Option<String>,
    /// The node whose claim last raised `timeline`, and the floor before it did: the
    /// evidence, withdrawn if that node later reports an older timeline.
    source: Option<(usize, u64)>,
}

/// The result of one arbitration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub leader: Option<usize>,
    pub previous: Option<usize>,
    pub conflict: bool,
    /// The cluster's system identifier changed (from, to): a rebuilt cluster.
    pub identity_changed: Option<(Option<String>, String)>,
    /// The same leader answers as a running primary again after an answer that did not
    /// (a REST blip): sessions waiting for it may go now.
    pub ready_regained: bool,
    /// With no leader: the nodes whose claims the timeline floor refused as stale.
    pub stale: Vec<usize>,
    /// The timeline floor after this decision.
    pub floor: u64,
    /// The floor was lowered back: (the node whose claim had raised it, from, to), because
    /// that node now reports an older timeline.
    pub withdrawn: Option<(usize, u64, u64)>,
}

impl Decision {
    pub fn changed(&self) -> bool {
        self.leader != self.previous
    }
}

const NONE: u64 = u64::MAX;

/// A leadership term: from one node leading until another leads, the same node leads on
/// another timeline or database, its claim is over (`fall` answers in a row did not
/// confirm it), or several nodes claim at once. Sessions sent to the leader by listeners
/// whose own check does not follow leadership end with it.
#[derive(Debug, Default)]
struct Term {
    token: CancellationToken,
    holder: Option<usize>,
    /// The holder's database and timeline, as far as its claims said.
    system_id: Option<String>,
    timeline: Option<u64>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            leader: AtomicU64::new(NONE),
            ready: AtomicBool::new(false),
            conflict: AtomicBool::new(false),
            timeline: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            identity_changes: AtomicU64::new(0),
            had_leader: AtomicBool::new(false),
            floor: Mutex::new(Floor::default()),
            serial: tokio::sync::Mutex::new(()),
            since: Mutex::new(Instant::now()),
            lost: Mutex::new(None),
            term: Mutex::new(Term::default()),
            position: Mutex::new(None),
            last_stale: Mutex::new(Vec::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Leadership {
    pub fn leader(&self) -> Option<usize> {
        match self.leader.load(Ordering::Acquire) {
            NONE => None,
            i => Some(i as usize),
        }
    }

    /// The leader, if its latest answer claimed the lock as a running primary: the node
    /// new sessions asking for the primary may go to.
    pub fn ready_leader(&self) -> Option<usize> {
        self.leader().filter(|_| self.ready.load(Ordering::Acquire))
    }

    /// Whether a leader has been admitted (taken writes) since start: from then on, a
    /// write listener without one means a failover is under way.
    pub fn had_leader(&self) -> bool {
        self.had_leader.load(Ordering::Acquire)
    }

    /// Notes whether write listeners have a leader now; returns since when they have had
    /// none (`None` while they have one).
    pub fn lost_since(&self, lost: bool) -> Option<Instant> {
        let mut at = lock(&self.lost);
        match (lost, *at) {
            (false, _) => *at = None,
            (true, None) => *at = Some(Instant::now()),
            (true, Some(_)) => {}
        }
        *at
    }

    /// The leadership for a rebuilt node list (a reload that changed the nodes). It keeps
    /// what must not be forgotten: that a leader was seen, on which timeline of which
    /// database, the change counters, the leader position, and the current term, so
    /// sessions sent to the leader before the reload end when leadership moves on after
    /// it. `index` maps an old node index to the new one (None: the node was removed).
    pub fn succeeding(old: &Leadership, index: impl Fn(usize) -> Option<usize>) -> Leadership {
        let leader = old.leader().and_then(&index);
        Leadership {
            leader: AtomicU64::new(leader.map_or(NONE, |i| i as u64)),
            ready: AtomicBool::new(leader.is_some() && old.ready.load(Ordering::Acquire)),
            conflict: AtomicBool::new(old.conflict()),
            timeline: AtomicU64::new(if leader.is_some() { old.timeline.load(Ordering::Acquire) } else { 0 }),
            changes: AtomicU64::new(old.changes.load(Ordering::Relaxed)),
            identity_changes: AtomicU64::new(old.identity_changes.load(Ordering::Relaxed)),
            had_leader: AtomicBool::new(old.had_leader()),
            floor: Mutex::new({
                let mut floor = lock(&old.floor).clone();
                floor.source = floor.source.and_then(|(node, before)| Some((index(node)?, before)));
                floor
            }),
            serial: tokio::sync::Mutex::new(()),
            since: Mutex::new(old.since()),
            lost: Mutex::new(*lock(&old.lost)),
            term: Mutex::new({
                let term = lock(&old.term);
                Term {
                    token: term.token.clone(),
                    holder: term.holder.and_then(&index),
                    system_id: term.system_id.clone(),
                    timeline: term.timeline,
                }
            }),
            position: Mutex::new(*lock(&old.position)),
            last_stale: Mutex::new(Vec::new()),
        }
    }

    /// A token for a session sent to the current leader; cancelled when its term ends
    /// (see [`Term`]: another node leads, or its claim is over, not at one 503).
    pub fn term_token(&self) -> CancellationToken {
        lock(&self.term).token.child_token()
    }

    /// Records that a leader check admitted its node.
    pub fn admitted(&self) {
        self.had_leader.store(true, Ordering::Release);
    }

    pub fn conflict(&self) -> bool {
        self.conflict.load(Ordering::Acquire)
    }

    /// The system identifier of the database the floor belongs to.
    pub fn system_id(&self) -> Option<String> {
        lock(&self.floor).system_id.clone()
    }

    /// When the current leader (or the absence of one) began.
    pub fn since(&self) -> Instant {
        *lock(&self.since)
    }

    /// The leader's timeline, as its claim said it: `None` while no node leads or its claim
    /// said none.
    pub fn timeline(&self) -> Option<u64> {
        Some(self.timeline.load(Ordering::Acquire)).filter(|&t| t != 0 && self.leader().is_some())
    }

    /// Records the leader's WAL position from its latest answer, on the leader's timeline.
    pub fn note_position(&self, position: u64) {
        *lock(&self.position) = Some((position, self.timeline(), Instant::now()));
    }

    /// The leader's WAL position and its timeline if it was reported within `max_age`, as
    /// `P` (the health rules' `LeaderPosition`) from `(position, timeline)`: lag is measured
    /// against it while no leader answers; older than that, nothing is known.
    pub fn position<P: From<(u64, Option<u64>)>>(&self, max_age: Duration) -> Option<P> {
        lock(&self.position).filter(|(_, _, at)| at.elapsed() <= max_age).map(|(p, t, _)| P::from((p, t)))
    }

    /// Decides from every node's claim `(node, claim)`: one claimant leads; of several,
    /// the unique highest timeline leads (a stale answer from a demoted leader carries an
    /// older one); a tie, or a running primary's claim without a timeline among several,
    /// is a conflict and nobody leads. Denied claims (see [`Claim::denied`]) take no part;
    /// they only keep the term. Claims on a timeline below the floor are
    /// stale, unless they come from another database than the floor's: a cluster whose
    /// every claim names a new system identifier was rebuilt, and the floor starts over.
    /// Claims from two databases at once are a conflict. The caller serialises calls (the
    /// checkers hold the arbitration lock).
    pub fn decide(&self, claims: &[(usize, Claim)]) -> Decision {
        self.decide_then(claims, |_| None, |_| {})
    }

    /// [`Leadership::decide`], calling `before_publish` with the decision before anyone
    /// can see it: the caller takes admission away from every other node there, so no
    /// instant exists at which a new leader is visible while an old one still admits.
    /// `reported` gives a node's timeline (and database) as its latest readable answer
    /// says: a floor raised by a node that now reports an older timeline of the same
    /// database is lowered back once a running primary claims on that older timeline
    /// (Patroni never moves a node back a timeline; that answer was not Patroni's, or the
    /// history it carried was discarded), so one lying answer cannot leave the cluster
    /// leaderless.
    pub fn decide_then(
        &self,
        claims: &[(usize, Claim)],
        reported: impl Fn(usize) -> Option<(u64, Option<String>)>,
        before_publish: impl FnOnce(&Decision),
    ) -> Decision {
        let previous = self.leader();
        let was_ready = self.ready.load(Ordering::Acquire);
        let all = claims;
        let candidates: Vec<(usize, Claim)> = claims.iter().filter(|c| !c.1.denied).cloned().collect();
        let claims = candidates.as_slice();
        let mut floor = lock(&self.floor);
        let ids: Vec<&String> = {
            let mut ids: Vec<&String> = claims.iter().filter_map(|c| c.1.system_id.as_ref()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let mut identity_changed = None;
        let mut withdrawn = None;
        let (leader, conflict) = if ids.len() > 1 {
            (None, true)
        } else {
            if let Some(&id) = ids.first() {
                if floor.system_id.as_ref() != Some(id) {
                    let from = floor.system_id.replace(id.clone());
                    if from.is_some() {
                        // A rebuilt cluster: its timelines start over.
                        floor.timeline = 0;
                        floor.source = None;
                        self.identity_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    identity_changed = Some((from, id.clone()));
                }
            }
            if let Some((node, before)) = floor.source {
                // Only evidence about this database, and only once a running primary
                // holds the lock on the older timeline: a standby replaying an older
                // timeline for a while (rebuilt from a backup, cloned from a lagging
                // replica) withdraws nothing on its own.
                let same = |id: &Option<String>| id.as_ref() == floor.system_id.as_ref();
                if let Some(now) = reported(node).filter(|(t, id)| *t < floor.timeline && same(id)).map(|r| r.0) {
                    let back = before.max(now);
                    let leads_below = |c: &&(usize, Claim)| {
                        c.1.ready
                            && same(&c.1.system_id)
                            && c.1.timeline.is_some_and(|t| t >= back && t < floor.timeline)
                    };
                    if claims.iter().any(|c| leads_below(&c)) {
                        withdrawn = Some((node, floor.timeline, back));
                        floor.timeline = back;
                        floor.source = None;
                    }
                }
            }
            let current: Vec<&(usize, Claim)> =
                claims.iter().filter(|c| c.1.timeline.is_none_or(|t| t >= floor.timeline)).collect();
            match current.as_slice() {
                [] => (None, false),
                [(i, _)] => (Some(*i), false),
                // A running primary's claim without a timeline cannot be ordered against
                // the others (Patroni reports one with every running primary's answer):
                // nobody leads. A claim that is not a running primary's (PostgreSQL
                // stopping, whose status has no timeline) ranks lowest, as before.
                many if many.iter().any(|c| c.1.ready && c.1.timeline.is_none()) => (None, true),
                many => {
                    let best = many.iter().map(|c| c.1.timeline.unwrap_or(0)).max().unwrap_or(0);
                    let top: Vec<usize> =
                        many.iter().filter(|c| c.1.timeline.unwrap_or(0) == best).map(|c| c.0).collect();
                    if top.len() == 1 {
                        (Some(top[0]), false)
                    } else {
                        (None, true)
                    }
                }
            }
        };
        let won = leader.and_then(|l| claims.iter().find(|c| c.0 == l)).map(|c| &c.1);
        if let (Some(t), Some(l)) = (won.and_then(|c| c.timeline), leader) {
            if t > floor.timeline {
                floor.source = Some((l, floor.timeline));
                floor.timeline = t;
            }
        }
        let ready = won.is_some_and(|c| c.ready);
        // Claims the floor refused: said out loud while they leave the cluster leaderless.
        let stale: Vec<usize> = claims
            .iter()
            .filter(|c| c.1.timeline.is_some_and(|t| t < floor.timeline) && ids.len() <= 1)
            .map(|c| c.0)
            .collect();
        let floor_timeline = floor.timeline;
        drop(floor);
        let decision = Decision {
            leader,
            previous,
            conflict,
            identity_changed,
            ready_regained: leader == previous && leader.is_some() && ready && !was_ready,
            stale: if leader.is_none() { stale } else { Vec::new() },
            floor: floor_timeline,
            withdrawn,
        };
        if decision.changed() || conflict {
            before_publish(&decision);
        }
        self.conflict.store(conflict, Ordering::Release);
        self.ready.store(ready, Ordering::Release);
        self.timeline.store(won.and_then(|c| c.timeline).unwrap_or(0), Ordering::Release);
        if leader != previous {
            self.leader.store(leader.map_or(NONE, |i| i as u64), Ordering::Release);
            self.changes.fetch_add(1, Ordering::Relaxed);
            *lock(&self.since) = Instant::now();
        }
        let mut term = lock(&self.term);
        let (id, timeline) = won.map_or((None, None), |c| (c.system_id.clone(), c.timeline));
        let ends = match (leader, term.holder) {
            // The same node on another database or timeline (rebuilt, or promoted again
            // after a demotion) is a new term: its sessions were on another server life.
            (Some(l), Some(h)) if l == h => {
                let differs = |a: Option<&str>, b: Option<&str>| a.zip(b).is_some_and(|(a, b)| a != b);
                differs(term.system_id.as_deref(), id.as_deref())
                    || term.timeline.zip(timeline).is_some_and(|(a, b)| a != b)
            }
            (Some(_), _) => true,
            // Nobody leads: the term goes on while its leader's claim is kept (it said it
            // does not lead, fewer than `fall` times in a row), unless others claim too.
            (None, Some(h)) => conflict || !all.iter().any(|c| c.0 == h),
            (None, None) => false,
        };
        if ends {
            term.token.cancel();
            *term = Term { holder: leader, ..Term::default() };
        }
        if leader.is_some() {
            term.system_id = id.or(term.system_id.take());
            term.timeline = timeline.or(term.timeline);
        }
        drop(term);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(timeline: u64) -> Claim {
        Claim { timeline: Some(timeline), system_id: Some("7001".into()), ready: true, denied: false }
    }

    fn of(system_id: &str, timeline: u64) -> Claim {
        Claim { timeline: Some(timeline), system_id: Some(system_id.into()), ready: true, denied: false }
    }

    #[test]
    fn one_claimant_leads() {
        let l = Leadership::default();
        let d = l.decide(&[(1, on(3))]);
        assert_eq!((d.leader, d.previous, d.conflict), (Some(1), None, false));
        assert!(d.changed());
        assert!(!l.decide(&[(1, on(3))]).changed());
        assert_eq!(l.ready_leader(), Some(1));
    }

    #[test]
    fn the_higher_timeline_wins_a_double_claim() {
        let l = Leadership::default();
        l.decide(&[(0, on(3))]);
        let d = l.decide(&[(0, on(3)), (2, on(4))]);
        assert_eq!((d.leader, d.previous, d.conflict), (Some(2), Some(0), false));
    }

    #[test]
    fn a_tie_means_no_leader_and_a_conflict() {
        let l = Leadership::default();
        l.decide(&[(0, on(3))]);
        let d = l.decide(&[(0, on(3)), (1, on(3))]);
        assert_eq!((d.leader, d.conflict), (None, true));
        assert!(l.conflict());
        let d = l.decide(&[(1, on(3))]);
        assert_eq!((d.leader, d.conflict), (Some(1), false));
    }

    #[test]
    fn a_second_claim_without_a_timeline_is_a_conflict_not_outranked() {
        // Before: it counted as timeline 0 and lost to any other claim, silently.
        let l = Leadership::default();
        l.decide(&[(0, on(3))]);
        let bare = Claim { timeline: None, ..on(0) };
        let d = l.decide(&[(0, on(3)), (1, bare.clone())]);
        assert_eq!((d.leader, d.conflict), (None, true));
        assert_eq!(l.decide(&[(1, bare)]).leader, Some(1), "alone, it leads");
    }

    #[test]
    fn a_stale_claim_cannot_come_back_when_the_leader_misses_a_probe() {
        let l = Leadership::default();
        l.decide(&[(0, on(3))]);
        assert_eq!(l.decide(&[(0, on(3)), (1, on(4))]).leader, Some(1));
        // node1's claim ended; node0 still answers 200 on timeline 3.
        assert_eq!(l.decide(&[(0, on(3))]).leader, None, "a claim on an older timeline never leads again");
        assert_eq!(l.decide(&[(0, on(3)), (1, on(4))]).leader, Some(1));
        let next = Leadership::succeeding(&l, Some);
        assert_eq!(next.decide(&[(0, on(3))]).leader, None, "remembered across a reload");
    }

    #[test]
    fn a_floor_raised_by_one_answer_its_node_takes_back_is_lowered_again() {
        // Before: one 200 on /primary with a higher timeline from a node that then says
        // it is a replica on the old timeline (a REST endpoint that lies) left the real
        // leader's claim stale until pgfront was restarted.
        let l = Leadership::default();
        let reported = |tl: &[(usize, u64)]| {
            let tl = tl.to_vec();
            move |i: usize| tl.iter().find(|r| r.0 == i).map(|r| (r.1, Some("7001".to_owned())))
        };
        l.decide(&[(0, on(5))]);
        let d = l.decide_then(&[(0, on(5)), (1, on(7))], reported(&[(0, 5), (1, 7)]), |_| {});
        assert_eq!((d.leader, d.floor), (Some(1), 7));
        // While node1 still reports timeline 7 (crashed, its last answer kept), node0's claim stays stale.
        let d = l.decide_then(&[(0, on(5))], reported(&[(0, 5), (1, 7)]), |_| {});
        assert_eq!((d.leader, d.floor, d.withdrawn), (None, 7, None));
        // node1 reports timeline 5 while no running primary claims it (a standby replaying
        // an older timeline for a while): nothing is withdrawn yet.
        let waiting = Claim { ready: false, ..on(5) };
        let d = l.decide_then(&[(0, waiting)], reported(&[(0, 5), (1, 5)]), |_| {});
        assert_eq!((d.leader, d.withdrawn), (None, None));
        // Nor by a node that now answers for another database.
        let other = |_: usize| Some((5, Some("7999".to_owned())));
        assert_eq!(l.decide_then(&[(0, on(5))], other, |_| {}).withdrawn, None);
        // node1 answers as a replica on timeline 5, node0 as the running primary: withdrawn.
        let d = l.decide_then(&[(0, on(5))], reported(&[(0, 5), (1, 5)]), |_| {});
        assert_eq!((d.leader, d.floor, d.withdrawn), (Some(0), 5, Some((1, 7, 5))));
        // A real failover is not undone: the node that raised the floor keeps reporting it.
        let d = l.decide_then(&[(0, on(5)), (2, on(6))], reported(&[(0, 5), (2, 6)]), |_| {});
        assert_eq!((d.leader, d.floor), (Some(2), 6));
        let d = l.decide_then(&[(0, on(5))], reported(&[(0, 5), (2, 6)]), |_| {});
        assert_eq!((d.leader, d.withdrawn), (None, None), "the demoted leader's stale claim is still refused");
        // Across a reload, the source follows its node to its new index.
        let next = Leadership::succeeding(&l, |i| Some(i + 1));
        let d = next.decide_then(&[(1, on(5))], reported(&[(1, 5), (3, 5)]), |_| {});
        assert_eq!((d.leader, d.withdrawn), (Some(1), Some((3, 6, 5))));
    }

    #[test]
    fn a_rebuilt_cluster_starts_the_floor_over() {
        // Before: the floor (timeline 5) refused every claim of the rebuilt cluster forever.
        let l = Leadership::default();
        l.decide(&[(0, of("7001", 5))]);
        let d = l.decide(&[(1, of("7999", 1))]);
        assert_eq!(d.leader, Some(1), "a new system identifier is a new cluster");
        assert_eq!(d.identity_changed, Some((Some("7001".into()), "7999".into())));
        assert_eq!(l.system_id().as_deref(), Some("7999"));
        assert_eq!(l.identity_changes.load(Ordering::Relaxed), 1);
        // Its own stale claims are refused again from now on.
        assert_eq!(l.decide(&[(1, of("7999", 3))]).leader, Some(1));
        assert_eq!(l.decide(&[(0, of("7999", 2))]).leader, None);
        // The first identity seen is not a change.
        let fresh = Leadership::default();
        assert_eq!(fresh.decide(&[(0, of("7001", 1))]).identity_changed, Some((None, "7001".into())));
        assert_eq!(fresh.identity_changes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn claims_of_two_databases_at_once_are_a_conflict() {
        let l = Leadership::default();
        l.decide(&[(0, of("7001", 5))]);
        let d = l.decide(&[(0, of("7001", 5)), (1, of("7999", 1))]);
        assert_eq!((d.leader, d.conflict), (None, true));
        assert_eq!(l.system_id().as_deref(), Some("7001"), "nothing adopted while both claim");
    }

    #[test]
    fn no_claim_no_leader() {
        let l = Leadership::default();
        l.decide(&[(0, on(3))]);
        assert_eq!(l.decide(&[]).leader, None);
        assert_eq!(l.leader(), None);
        assert_eq!(l.changes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_claim_survives_failed_probes_until_fall() {
        let says =
            |leads| Answer::Says { leads, timeline: Some(2), system_id: Some("7001".into()), running_primary: leads };
        // (answers, fall) -> (claim kept?, ready?, denied?, failures)
        type Case<'a> = (&'a [Answer], u32, bool, bool, bool, u32);
        let cases: &[Case] = &[
            (&[says(true)], 3, true, true, false, 0),
            (&[says(true), Answer::Failed], 3, true, false, false, 1),
            (&[says(true), Answer::Failed, Answer::Failed], 3, true, false, false, 2),
            (&[says(true), Answer::Failed, Answer::Failed, Answer::Failed], 3, false, false, false, 3),
            (&[says(true), Answer::Failed, says(true)], 3, true, true, false, 0),
            (&[says(true), Answer::Failed], 1, false, false, false, 1),
            (&[Answer::Failed], 3, false, false, false, 1),
            // A readable "not the leader" counts towards fall like a failed probe, and the
            // kept claim is denied: it never leads, it only keeps the term.
            (&[says(true), says(false)], 3, true, false, true, 1),
            (&[says(true), says(false), Answer::Failed], 3, true, false, true, 2),
            (&[says(true), Answer::Failed, says(false)], 3, true, false, true, 2),
            (&[says(true), says(false), says(false), says(false)], 3, false, false, false, 3),
            (&[says(true), says(false), says(true)], 3, true, true, false, 0),
            (&[says(true), says(false)], 1, false, false, false, 1),
            (&[says(false)], 3, false, false, false, 1),
        ];
        for (answers, fall, kept, ready, denied, failures) in cases {
            let mut r = NodeReport::default();
            for a in *answers {
                (r.claim, r.failures) = r.after(a, *fall);
            }
            let c = r.claim.as_ref();
            assert_eq!(
                (c.is_some(), c.is_some_and(|c| c.ready), c.is_some_and(|c| c.denied), r.failures),
                (*kept, *ready, *denied, *failures),
                "{answers:?} with fall {fall}"
            );
        }
    }

    #[test]
    fn a_claim_kept_through_a_blip_keeps_the_term_but_takes_no_new_sessions() {
        let l = Leadership::default();
        l.decide(&[(0, on(2))]);
        let term = l.term_token();
        let d = l.decide(&[(0, Claim { ready: false, ..on(2) })]);
        assert!(!d.changed());
        assert!(!term.is_cancelled(), "a blip is not a new term");
        assert_eq!((l.leader(), l.ready_leader()), (Some(0), None));
        assert!(l.decide(&[(0, on(2))]).ready_regained, "queues are told the leader takes sessions again");
        assert_eq!(l.ready_leader(), Some(0));
        l.decide(&[]);
        assert!(term.is_cancelled());
    }

    #[test]
    fn a_denied_claim_leads_nowhere_but_ends_the_term_only_at_fall_or_another_leader() {
        // Before: one readable 503 from the leader ended the term at once, cutting the
        // sessions read listeners had sent to it, while the write listener kept its own
        // until its check's `fall`.
        let denied = Claim { ready: false, denied: true, ..on(2) };
        let l = Leadership::default();
        l.decide(&[(0, on(2))]);
        let term = l.term_token();
        let d = l.decide(&[(0, denied.clone())]);
        assert_eq!((d.leader, d.previous, l.ready_leader()), (None, Some(0), None), "Patroni said it does not lead");
        assert!(!term.is_cancelled(), "one refusal does not end the term");
        assert_eq!(l.decide(&[(0, on(2))]).leader, Some(0));
        assert!(!term.is_cancelled(), "leading again is the same term");
        // Refused until the claim is over (fall): the term ends there.
        l.decide(&[(0, denied.clone())]);
        assert!(!term.is_cancelled(), "kept through a failed probe after it");
        l.decide(&[]);
        assert!(term.is_cancelled());

        // Another node leading ends it at once, and a denied claim never ties with it.
        let l = Leadership::default();
        l.decide(&[(0, on(2))]);
        let term = l.term_token();
        let d = l.decide(&[(0, denied.clone()), (1, on(2))]);
        assert_eq!((d.leader, d.conflict), (Some(1), false), "not even on the same timeline");
        assert!(term.is_cancelled());
        let l = Leadership::default();
        l.decide(&[(0, Claim { system_id: None, timeline: None, ..on(0) })]);
        let d = l.decide(&[
            (0, Claim { system_id: None, timeline: None, ..denied.clone() }),
            (1, Claim { system_id: None, timeline: None, ..on(0) }),
        ]);
        assert_eq!((d.leader, d.conflict), (Some(1), false), "without timelines too");

        // A conflict while the leader is refused ends the term: others claim the lock.
        let l = Leadership::default();
        l.decide(&[(0, on(2))]);
        let term = l.term_token();
        l.decide(&[(0, denied), (1, on(2)), (2, on(2))]);
        assert!(term.is_cancelled());
    }

    #[test]
    fn a_stopping_leader_without_a_timeline_ranks_below_its_successor() {
        // Before: its claim (made while PostgreSQL stopped, so no timeline; not a running
        // primary's) was a conflict with the successor's.
        let l = Leadership::default();
        l.decide(&[(0, on(5))]);
        let stopping = Claim { timeline: None, ready: false, ..on(5) };
        assert_eq!(l.decide(&[(0, stopping.clone())]).leader, Some(0));
        let d = l.decide(&[(0, stopping.clone()), (1, Claim { ready: false, ..on(5) })]);
        assert_eq!((d.leader, d.conflict), (Some(1), false), "promoting successor");
        let d = l.decide(&[(0, stopping), (1, on(6))]);
        assert_eq!((d.leader, d.conflict), (Some(1), false), "promoted successor");
    }

    #[test]
    fn the_same_node_leading_another_database_or_timeline_is_a_new_term() {
        // Before: the term followed the node alone, so sessions sent to it before a 503
        // outlived a rebuild or a promotion on it that followed.
        for back in [of("7999", 1), of("7001", 6)] {
            let l = Leadership::default();
            l.decide(&[(0, of("7001", 5))]);
            let term = l.term_token();
            l.decide(&[(0, Claim { ready: false, denied: true, ..of("7001", 5) })]);
            assert_eq!(l.decide(&[(0, back.clone())]).leader, Some(0));
            assert!(term.is_cancelled(), "{back:?}");
        }
        // Its own claim again, or one that says less (kept through a failed probe), is not.
        let l = Leadership::default();
        l.decide(&[(0, of("7001", 5))]);
        let term = l.term_token();
        l.decide(&[(0, Claim { ready: false, ..of("7001", 5) })]);
        l.decide(&[(0, Claim { timeline: None, system_id: None, ..of("7001", 5) })]);
        l.decide(&[(0, of("7001", 5))]);
        assert!(!term.is_cancelled());
    }

    #[test]
    fn the_term_carries_across_a_reload_that_rebuilds_the_node_list() {
        // Before: the new leadership started a fresh term, and sessions sent to the old
        // leader kept a token nothing would ever cancel.
        let l = Leadership::default();
        l.decide(&[(2, on(2))]);
        let old_term = l.term_token();
        // Node 2 becomes node 1 (a node before it was removed).
        let next = Leadership::succeeding(&l, |i| i.checked_sub(1));
        assert_eq!(next.leader(), Some(1));
        assert!(!next.decide(&[(1, on(2))]).changed(), "the same leader under its new index");
        assert!(!old_term.is_cancelled());
        assert!(next.decide(&[(0, on(3))]).changed());
        assert!(old_term.is_cancelled(), "a failover after the reload ends the old term");
        assert_eq!(next.changes.load(Ordering::Relaxed), 2, "the counter carries over");
    }

    #[test]
    fn the_leader_position_is_used_only_while_fresh() {
        let l = Leadership::default();
        type At = (u64, Option<u64>);
        assert_eq!(l.position::<At>(Duration::from_secs(9)), None);
        l.note_position(1000);
        assert_eq!(l.position::<At>(Duration::from_secs(9)), Some((1000, None)), "no leader: no timeline");
        l.decide(&[(0, on(4))]);
        l.note_position(1200);
        assert_eq!(l.position::<At>(Duration::from_secs(9)), Some((1200, Some(4))), "on the leader's timeline");
        assert_eq!(l.position::<At>(Duration::ZERO), None);
    }
}
