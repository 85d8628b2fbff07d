//! The checker tasks: the control plane. A task probes one target and turns the answer
//! into a verdict for each check that depends on it, feeds their state machines and the
//! leader arbitration, and hands every resulting decision to the data plane as a
//! [`Change`]; it never touches a session itself.
//!
//! In `patroni` mode there is one task per node making one `GET /primary` per interval:
//! the status says whether the node holds the leader lock, the JSON body answers every
//! other check, and the claims of all nodes are arbitrated so that at most one node is the
//! write target at any instant. In `http` mode there is one task per distinct
//! (node, method, path), as in HAProxy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::node::{Answer, Claim};
use super::{Change, Check, NodeState, React, Runtime};
use crate::config::{CheckMode, CheckSpec, CheckTiming};
use crate::health::{verdict, CheckCode, NodeStatus, Probe, ProbeResult, Transition, View};

/// The least time between two probes of the same target when probes are requested early
/// (failed connects, resets, sessions waiting for a replica's position), so a burst of
/// such sessions cannot become a check storm on Patroni's five REST worker threads.
const MIN_KICK_GAP: Duration = Duration::from_millis(100);

/// What Patroni mode asks every node.
const PATRONI_PROBE_PATH: &str = "/primary";

/// One probe target and the checks its answers feed.
struct Target {
    node: usize,
    address: String,
    spec: CheckSpec,
    checks: Vec<Arc<Check>>,
}

/// Starts the checkers of `rt`; they stop when `stop` is cancelled. Their decisions go to `react`.
pub fn spawn_checkers(
    rt: &Arc<Runtime>,
    probe: Arc<dyn Probe>,
    react: Arc<dyn React>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    for target in targets(rt) {
        let checker = Checker { rt: Arc::clone(rt), target, react: Arc::clone(&react), stop: stop.clone() };
        tracker.spawn(checker.run(Arc::clone(&probe)));
    }
}

fn targets(rt: &Runtime) -> Vec<Target> {
    let mut groups: BTreeMap<(usize, String, String), Vec<Arc<Check>>> = BTreeMap::new();
    for c in &rt.checks {
        let key = match rt.config.global.check_mode {
            CheckMode::Patroni => (c.node, "GET".to_owned(), PATRONI_PROBE_PATH.to_owned()),
            CheckMode::Http => (c.node, c.spec.method.clone(), c.spec.path.clone()),
        };
        groups.entry(key).or_default().push(Arc::clone(c));
    }
    groups
        .into_iter()
        .map(|((node, method, path), checks)| {
            let t =
                |f: fn(&CheckTiming) -> Duration| checks.iter().map(|c| f(&c.spec.timing)).min().unwrap_or_default();
            let first = &checks[0].spec;
            let spec = CheckSpec {
                method,
                path,
                expect: first.expect,
                timing: CheckTiming {
                    connect_timeout: t(|t| t.connect_timeout),
                    timeout: t(|t| t.timeout),
                    // A leadership claim ends after the leader check's own `fall` answers
                    // that did not confirm it.
                    fall: checks
                        .iter()
                        .filter(|c| c.strict)
                        .map(|c| c.spec.timing.fall)
                        .max()
                        .unwrap_or(first.timing.fall),
                    ..first.timing
                },
                endpoint: None,
                source: rt.config.nodes[node].source,
                tls: rt.config.nodes[node].check_tls.clone(),
                auth: rt.config.nodes[node].check_auth.clone(),
            };
            Target { node, address: checks[0].target.clone(), spec, checks }
        })
        .collect()
}

struct Checker {
    rt: Arc<Runtime>,
    target: Target,
    react: Arc<dyn React>,
    stop: CancellationToken,
}

impl Checker {
    async fn run(self, probe: Arc<dyn Probe>) {
        let rt = &self.rt;
        let node = Arc::clone(&rt.nodes[self.target.node]);
        // The last TLS failure logged: said once when it starts or changes, not every probe
        // (a node that never came up would otherwise fail silently at the default level).
        let mut tls_failure: Option<String> = None;
        // pgfront itself ran out of descriptors for the check: said once per shortage.
        let mut no_socket = false;
        // Made the check with when descriptors are short (see `fds::Spare`).
        let mut spare = crate::fds::Spare::for_target(&self.target.address, self.target.spec.source);
        // Where this node's checks last went, before this checker (the node's state outlives
        // a reload's or a discovery change's new checkers).
        if let Some(peer) = node.peer() {
            spare.seen(peer);
        }
        // A check was made with the spare during this shortage: said once per shortage.
        let mut spared = false;
        // A reload's (or discovery's) new checker goes on where the last one left off: its
        // first probe comes when the last one's next would have, by the new timings. Were
        // it at once, every reload would be a probe, and a burst of reloads would count
        // `fall` or `rise` at the reload rate (cutting sessions over a REST blip).
        let probed = self.target.checks.iter().filter_map(|c| c.probed()).max_by_key(|p| p.1);
        if let Some((started, done)) = probed {
            if self.wait_next(&node, started, done, node.kicks()).await {
                return;
            }
        }
        loop {
            let started = Instant::now();
            let seen = node.kicks();
            let mut result = tokio::select! {
                r = probe.probe(&self.target.address, &self.target.spec) => r,
                () = self.stop.cancelled() => return,
            };
            if let Some(lent) = (result.code == CheckCode::SockErr).then(|| spare.take()).flatten() {
                result = tokio::select! {
                    r = probe.probe_with(&self.target.address, &self.target.spec, lent) => r,
                    () = self.stop.cancelled() => return,
                };
                if result.code != CheckCode::SockErr && !std::mem::replace(&mut spared, true) {
                    tracing::warn!(node = %node.name, rest = %self.target.address, detail = %result.detail,
                        "pgfront is out of file descriptors: health check made with the one kept spare for it");
                }
            } else if result.code != CheckCode::SockErr {
                spared = false;
            }
            if let Some(peer) = result.peer {
                spare.seen(peer);
                node.note_peer(peer);
            }
            spare.refill();
            if result.code == CheckCode::SockErr {
                // No verdict about the node: its checks keep their state (a shortage of
                // pgfront's must not mark servers down and cut their sessions), and it is
                // probed again at the next interval.
                if !std::mem::replace(&mut no_socket, true) {
                    tracing::warn!(node = %node.name, rest = %self.target.address, detail = %result.detail,
                        "health check not made: pgfront is out of file descriptors; the node's state is kept");
                }
            } else {
                if std::mem::take(&mut no_socket) {
                    tracing::info!(node = %node.name, "health checks made again");
                }
                self.answer(&node, result, started, &mut tls_failure).await;
            }
            let done = Instant::now();
            for c in &self.target.checks {
                c.note_probed(started, done);
            }
            if self.wait_next(&node, started, done, seen).await {
                return;
            }
        }
    }

    /// Waits for the next probe of a node whose last began at `started` and was done at
    /// `done`: an interval after `done`, or sooner when kicked since `seen` (not sooner than
    /// MIN_KICK_GAP after `started`). True when the checker is to stop.
    async fn wait_next(&self, node: &NodeState, started: Instant, done: Instant, seen: u64) -> bool {
        let rt = &self.rt;
        let mut delay =
            self.target.checks.iter().map(|c| c.next_interval()).min().unwrap_or(self.target.spec.timing.inter);
        if rt.hunting() {
            delay = delay.min(rt.config.global.hunt_inter);
        }
        // A session waits for this replica to replay its pgfront.min_lsn: refresh the
        // position every MIN_KICK_GAP (from the start of the last probe) until it has.
        let mut at = done + delay;
        if node.wants_replay() {
            at = at.min(started + MIN_KICK_GAP);
        }
        tokio::select! {
            () = sleep_until(at) => false,
            () = node.kicked_since(seen) => {
                // Re-probe early, but not faster than MIN_KICK_GAP.
                tokio::select! {
                    () = sleep_until(started + MIN_KICK_GAP) => false,
                    () = self.stop.cancelled() => true,
                }
            }
            () = self.stop.cancelled() => true,
        }
    }

    /// Records a probe's verdict for each of the node's checks, by the check mode's rule.
    async fn answer(&self, node: &NodeState, result: ProbeResult, started: Instant, tls_failure: &mut Option<String>) {
        node.note_cert(&result);
        if matches!(result.code, CheckCode::L6Rsp | CheckCode::L6Tout) {
            if tls_failure.as_deref() != Some(result.detail.as_str()) {
                tracing::warn!(node = %node.name, rest = %self.target.address, result = %result.summary(),
                    detail = %result.detail, "health check over HTTPS failed");
                *tls_failure = Some(result.detail.clone());
            }
        } else if result.status.is_some() && tls_failure.take().is_some() {
            tracing::info!(node = %node.name, rest = %self.target.address, "health check over HTTPS answers again");
        }
        if !result.passed() && result.status.is_none() {
            tracing::debug!(node = %node.name, result = %result.summary(), detail = %result.detail, "probe failed");
        }
        match self.rt.config.global.check_mode {
            CheckMode::Patroni => self.patroni_answer(result, started).await,
            CheckMode::Http => self.http_answer(&result, started),
        }
    }

    fn emit(&self, change: Change) {
        self.react.react(&self.rt, change);
    }

    /// A transition of `check`, as a change for the data plane.
    fn transition(&self, check: &Arc<Check>, t: Transition) {
        match t {
            Transition::WentUp => {
                if check.strict {
                    self.rt.leadership.admitted();
                }
                self.emit(Change::Up { check: Arc::clone(check) });
            }
            Transition::WentDown => self.emit(Change::Down { check: Arc::clone(check), forced: false }),
        }
    }

    fn admitting(&self, check: &Arc<Check>) {
        if check.is_up() {
            self.emit(Change::Admitting { check: Arc::clone(check) });
        }
    }

    /// HAProxy's rule: the status must equal each check's `expect`.
    fn http_answer(&self, result: &ProbeResult, started: Instant) {
        for c in &self.target.checks {
            let mut r = result.clone();
            r.body = None;
            if let Some(status) = r.status {
                let ok = status == c.spec.expect;
                r.code = if ok { CheckCode::L7Ok } else { CheckCode::L7Sts };
                r.detail = if ok { String::new() } else { format!("status {status}, expected {}", c.spec.expect) };
            }
            if let Some(t) = c.record_probe(r, None, Some(started)) {
                self.transition(c, t);
            }
            self.admitting(c);
        }
    }

    /// Patroni mode: record the node's answer, arbitrate leadership across nodes, then give
    /// each of the node's checks the verdict Patroni would have given its endpoint.
    async fn patroni_answer(&self, result: ProbeResult, started: Instant) {
        let rt = &self.rt;
        let index = self.target.node;
        let node = &rt.nodes[index];
        let status = match (&result.status, &result.body) {
            (Some(_), Some(body)) => Some(NodeStatus::parse(body)),
            _ => None,
        };
        let parsed = status.as_ref().and_then(|s| s.as_ref().ok()).cloned();
        let answer = match (&parsed, result.status) {
            // Only a 200 on /primary with a readable status is a leadership claim; any
            // other readable answer says the node does not lead.
            (Some(st), Some(code)) => Answer::Says {
                leads: code == 200,
                timeline: st.timeline,
                system_id: st.database_system_identifier.clone(),
                running_primary: st.is_running() && st.is_primary(),
            },
            _ => Answer::Failed,
        };
        let timing = &self.target.spec.timing;
        // The node's table shows what its checks saw: an answer whose body is not a status
        // is L7RSP there too, not the HTTP exchange's L7OK.
        let shown = match &status {
            Some(Err(why)) => unreadable(&result, why),
            _ => result.clone(),
        };
        let gap = timing.fastinter.min(timing.inter).min(timing.downinter);
        node.record_probe(shown, parsed.clone(), &answer, (timing.fall, gap), started);

        let _serial = rt.leadership.serial.lock().await;
        // A reload may have replaced this checker while it waited: the new one decides now.
        if self.stop.is_cancelled() {
            return;
        }
        let claims: Vec<(usize, Claim)> =
            rt.nodes.iter().enumerate().filter_map(|(i, n)| Some((i, n.claim()?))).collect();
        let was_conflict = rt.leadership.conflict();
        // Before a new leader (or none) becomes visible, every other node's leader checks
        // stop admitting: there is no instant with two write targets.
        let mut forced = Vec::new();
        let mut held = Vec::new();
        let reported = |i: usize| rt.nodes.get(i).and_then(|n| n.timeline());
        let decision = rt.leadership.decide_then(&claims, reported, |d| {
            if d.conflict {
                for c in rt.checks.iter().filter(|c| c.strict) {
                    c.suspend();
                }
            }
            if let (true, Some(new)) = (d.changed(), d.leader) {
                let timeline = claims.iter().find(|c| c.0 == new).and_then(|c| c.1.timeline);
                let reason = format!(
                    "{} now leads (timeline {})",
                    rt.nodes[new].name,
                    timeline.map_or("?".into(), |t| t.to_string())
                );
                // Every other node's, not only the previous leader's: a former leader may be
                // two decisions back (a conflict or a lost claim between).
                for c in rt.checks.iter().filter(|c| c.strict && c.node != new) {
                    match c.force_down(reason.clone()) {
                        Some(t) => forced.push((Arc::clone(c), t)),
                        // Already DOWN (by `fall`, with on_marked_down = "none"): its
                        // sessions are still open on a PostgreSQL that may take writes.
                        None => held.push(Arc::clone(c)),
                    }
                }
            }
        });
        if decision.ready_regained {
            self.emit(Change::LeaderReady);
        }
        {
            let mut last = rt.leadership.last_stale.lock().unwrap_or_else(|p| p.into_inner());
            if *last != decision.stale {
                last.clone_from(&decision.stale);
                if !decision.stale.is_empty() {
                    let nodes = decision.stale.iter().map(|&i| rt.nodes[i].name.clone()).collect();
                    self.emit(Change::StaleClaims { nodes, floor: decision.floor });
                }
            }
        }
        if let Some((node, from, to)) = decision.withdrawn {
            tracing::warn!(node = %rt.nodes[node].name, from, to,
                "the node whose claim raised the timeline floor now reports an older timeline (Patroni never moves a node back: that answer was not Patroni's, or its history was discarded): the floor is lowered back");
        }
        if let Some((from, to)) = &decision.identity_changed {
            match from {
                Some(_) => self.emit(Change::IdentityChanged { from: from.clone(), to: to.clone() }),
                None => tracing::info!(system_identifier = %to, "cluster identified"),
            }
        }
        if decision.conflict && !was_conflict {
            // Only the nodes that claim the lock now: a denied claim takes no part.
            let claimants = claims.iter().filter(|c| !c.1.denied).map(|c| rt.nodes[c.0].name.clone()).collect();
            self.emit(Change::Conflict { claimants });
        }
        if decision.changed() {
            self.leader_changed(decision.previous, decision.leader, &claims);
            for (c, t) in forced {
                match t {
                    Transition::WentDown => self.emit(Change::Down { check: c, forced: true }),
                    Transition::WentUp => self.transition(&c, t),
                }
            }
            for check in held {
                self.emit(Change::FormerLeader { check });
            }
        }
        let is_leader = decision.leader == Some(index);
        if let (true, Some(p)) = (is_leader, parsed.as_ref().and_then(|s| s.xlog.location)) {
            rt.leadership.note_position(p);
        }
        let leader_status = decision.leader.and_then(|l| rt.nodes[l].report().status);
        let view = View {
            is_leader,
            // Known within fall x inter; older than that, lag bounds fail closed.
            leader_position: rt.leadership.position(timing.inter * timing.fall),
            standbys: leader_status.as_ref().map_or(&[], |s| s.replication.as_slice()),
            now: Some(std::time::SystemTime::now()),
        };
        for c in &self.target.checks {
            let (r, lag, undecided) = match (&status, c.spec.endpoint.as_ref()) {
                (Some(Ok(st)), Some(endpoint)) => {
                    let v = verdict(endpoint, st, view, c.report().lag_excluded);
                    let r = ProbeResult::answered(v.passed, result.duration, v.why);
                    (r, Some(v.lag_excluded), v.undecided.then_some(v.settles))
                }
                (Some(Err(why)), _) => (unreadable(&result, why), None, None),
                _ => (ProbeResult { body: None, ..result.clone() }, None, None),
            };
            // Fast promotion: while a failover is under way (a leader was known and is gone),
            // the node every claim agrees on, answering as a running primary, is the write
            // target now; waiting `rise` more intervals would only lengthen the outage.
            let promote = c.strict && r.passed() && view.is_leader && rt.leadership.had_leader() && rt.leader_lost();
            let t = if promote {
                let reason = format!("{}: new leader found while none was admitted", r.summary());
                c.promote(r, reason)
            } else if let Some(settles) = undecided {
                c.record_undecided(r, lag.unwrap_or_default(), settles, started)
            } else {
                c.record_probe(r, lag, Some(started))
            };
            if let Some(t) = t {
                self.transition(c, t);
            }
            self.admitting(c);
        }
    }

    /// A new leader (or none): every other node's leader checks went DOWN already (before
    /// the decision was published), and their sessions are cut as those changes are handed
    /// on; with no leader, every node is probed at once so the next one is found quickly.
    fn leader_changed(&self, previous: Option<usize>, leader: Option<usize>, claims: &[(usize, Claim)]) {
        let rt = &self.rt;
        let name = |i: Option<usize>| i.map(|i| rt.nodes[i].name.clone());
        let timeline = leader.and_then(|l| claims.iter().find(|c| c.0 == l).and_then(|c| c.1.timeline));
        self.emit(Change::LeaderChanged { from: name(previous), to: name(leader), timeline });
        if let (None, Some(p)) = (leader, previous) {
            if !claims.iter().any(|c| c.0 == p) {
                // Its claim is over (`fall` answers did not confirm it), not merely in
                // conflict: its write sessions end now whatever `on_marked_down` says. With
                // "none" they were kept until another node led, and a PostgreSQL whose agent
                // had died acknowledged writes after the promotion elsewhere, then lost.
                for check in rt.checks.iter().filter(|c| c.strict && c.node == p) {
                    self.emit(Change::FormerLeader { check: Arc::clone(check) });
                }
            }
        }
        if leader.is_none() {
            for n in &rt.nodes {
                n.kick();
            }
        }
    }
}

/// `result` for an answer whose body is not Patroni's status: L7RSP, with why.
fn unreadable(result: &ProbeResult, why: &str) -> ProbeResult {
    ProbeResult { code: CheckCode::L7Rsp, detail: why.to_owned(), body: None, ..result.clone() }
}
