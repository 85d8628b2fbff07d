//! The live health of one check target: one distinct (node, request) pair, shared by every
//! listener whose check is identical, so Patroni sees one probe per interval however many
//! listeners ask the same question.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use super::node::NodeState;
use tokio::time::Instant;

use crate::config::CheckSpec;
use crate::health::{Machine, ProbeResult, Status, Transition};

/// Shared state of one check target. The proxy reads only `up`, lock-free; the checker
/// task is the only writer of the report, and the web views read it.
#[derive(Debug)]
pub struct Check {
    pub node: usize,
    pub node_name: String,
    /// Patroni's REST address, `host:port`.
    pub target: String,
    pub spec: CheckSpec,
    /// A leader check: it admits new sessions only while its latest answer passed, even
    /// when `fall` has not yet marked it down, so a demoting leader gets no new writes.
    pub strict: bool,
    /// Whether new sessions may be sent: UP, and for a strict check, the latest answer passed.
    /// Shared with the check this one replaced on a reload that changed only timings.
    admit: Arc<AtomicBool>,
    /// The node's shared state, which also carries the re-probe request.
    pub node_state: Arc<NodeState>,
    /// Shared like `admit`, so health, counters and history carry over a timing change.
    report: Arc<Mutex<CheckReport>>,
}

/// How long a replica may replay another timeline than the leader's before that counts as
/// a failure: past a failover, Patroni points replicas at the new leader within its loop
/// (`loop_wait`, 10 s by default), and they follow the switch at once.
const UNSETTLED_FOR: Duration = Duration::from_secs(30);

/// What the stats page shows about a check, kept together so one lock gives a
/// consistent view.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub machine: Machine,
    pub last: Option<ProbeResult>,
    /// When the status last changed (or the check was created).
    pub last_change: Instant,
    /// Failed probes while UP (HAProxy's `chkfail` counts only those): a replica answering
    /// 503 to a leader check, over and over while DOWN, is not a string of failures.
    pub failures: u64,
    /// UP to DOWN transitions (HAProxy `chkdown`).
    pub downs: u64,
    /// Set while a replica is out for replay lag (hysteresis state).
    pub lag_excluded: bool,
    /// Downtime accumulated before the current down period.
    pub downtime_before: Duration,
    /// What the latest check found (its detail, and how far a streak has gone towards a
    /// transition), rewritten by every result: a server that never changed state must not
    /// keep its start-up text ("not checked yet") while checks answer.
    pub reason: String,
    /// Why the status last changed (a transition, a forced mark-down): logged, and shown
    /// beside the time in state.
    pub change_reason: String,
    /// The first failed answer since the last pass: a strict check stopped admitting here,
    /// before `fall` marked it DOWN (where a failover's write gap begins).
    pub failing_since: Option<Instant>,
    /// When the last probe began and when its verdict was recorded: a checker started
    /// anew (a reload, a discovery change) goes on from there (see `Checker::run`).
    pub probed: Option<(Instant, Instant)>,
    /// When the last failed probe that counted towards `fall` began (see
    /// [`Check::record_probe`]).
    pub counted: Option<Instant>,
    /// Since when the answers have been undecided about the replica itself (see
    /// [`Check::record_undecided`]); cleared by a pass.
    pub undecided_since: Option<Instant>,
    /// The server took no session (see [`Check::shun`]): no new session until a probe
    /// begun at this instant or later passes.
    pub shunned_until: Option<Instant>,
    /// Why (shown in the reason while it lasts).
    pub shunned_for: String,
}

impl CheckReport {
    /// Total time spent DOWN, including the current period.
    pub fn downtime(&self, now: Instant) -> Duration {
        match self.machine.status() {
            Status::Down => self.downtime_before + now.saturating_duration_since(self.last_change),
            Status::Up => self.downtime_before,
        }
    }
}

impl Check {
    pub fn new(node: usize, node_state: Arc<NodeState>, target: String, spec: CheckSpec) -> Check {
        let node_name = node_state.name.clone();
        let machine = Machine::new(spec.timing.rise, spec.timing.fall);
        let strict = spec.is_leader();
        Check {
            strict,
            node,
            node_name,
            target,
            spec,
            admit: Arc::new(AtomicBool::new(false)),
            node_state,
            report: Arc::new(Mutex::new(CheckReport {
                machine,
                last: None,
                last_change: Instant::now(),
                lag_excluded: false,
                failures: 0,
                downs: 0,
                downtime_before: Duration::ZERO,
                reason: "not checked yet".to_owned(),
                change_reason: "DOWN from the start: a server takes no session until its check passes".to_owned(),
                failing_since: None,
                probed: None,
                counted: None,
                undecided_since: None,
                shunned_until: None,
                shunned_for: String::new(),
            })),
        }
    }

    /// Whether `spec` asks the same question of the node as this check: the same request
    /// and verdict, whatever the timings (inter, fall, rise, timeouts).
    pub fn asks_the_same(&self, spec: &CheckSpec) -> bool {
        let s = &self.spec;
        (&s.method, &s.path, s.expect, &s.endpoint) == (&spec.method, &spec.path, spec.expect, &spec.endpoint)
    }

    /// The same check after a reload that changed only its timings (`inter`, `fall`,
    /// `timeout_connect`, ...), moved its node in the list (`node`, its new index) or
    /// renamed it (`node_state`, the node's state under its new name): it
    /// shares its health, counters and admission with `old`, so no server goes back to DOWN;
    /// the new timings apply from the next probe on.
    pub fn retimed(old: &Check, node: usize, spec: CheckSpec, node_state: &Arc<NodeState>) -> Check {
        old.lock().machine.retune(spec.timing.rise, spec.timing.fall);
        old.succeeded(node, spec, node_state, Arc::clone(&old.admit), Arc::clone(&old.report))
    }

    /// A check of its own with a copy of `old`'s health, counters and admission: a reload
    /// gave two listeners different timings for what one check asked for both.
    pub fn forked(old: &Check, node: usize, spec: CheckSpec, node_state: &Arc<NodeState>) -> Check {
        let mut report = old.lock().clone();
        report.machine.retune(spec.timing.rise, spec.timing.fall);
        let admit = Arc::new(AtomicBool::new(old.is_up()));
        old.succeeded(node, spec, node_state, admit, Arc::new(Mutex::new(report)))
    }

    /// The check asking `spec` at `old`'s address after a reload, with this admission and report.
    fn succeeded(
        &self,
        node: usize,
        spec: CheckSpec,
        node_state: &Arc<NodeState>,
        admit: Arc<AtomicBool>,
        report: Arc<Mutex<CheckReport>>,
    ) -> Check {
        Check {
            node,
            node_name: node_state.name.clone(),
            target: self.target.clone(),
            strict: spec.is_leader(),
            spec,
            admit,
            node_state: Arc::clone(node_state),
            report,
        }
    }

    /// Whether the check currently admits new sessions to the node.
    pub fn is_up(&self) -> bool {
        self.admit.load(Ordering::Acquire)
    }

    /// Asks the checker to probe now instead of waiting for its interval.
    pub fn kick(&self) {
        self.node_state.kick();
    }

    /// Notes a probe of this check that began at `started` and whose verdict was
    /// recorded at `done`.
    pub fn note_probed(&self, started: Instant, done: Instant) {
        self.lock().probed = Some((started, done));
    }

    /// When the last probe began and when its verdict was recorded, if one was.
    pub fn probed(&self) -> Option<(Instant, Instant)> {
        self.lock().probed
    }

    pub fn report(&self) -> CheckReport {
        self.lock().clone()
    }

    /// Records a result; returns the transition it caused.
    pub fn record(&self, result: ProbeResult) -> Option<Transition> {
        self.record_with(result, None)
    }

    /// Records a result and the replica lag exclusion it implies.
    pub fn record_with(&self, result: ProbeResult, lag_excluded: Option<bool>) -> Option<Transition> {
        self.record_probe(result, lag_excluded, None)
    }

    /// Records the result of a probe that began at `started`. Probes come early on demand
    /// (a kick, a `pgfront.min_lsn` wait, hunting for a leader), up to ten a second; a
    /// failure of an UP check counts towards `fall` only when no counted failure began
    /// within the check's shortest interval before it, so a mark-down, which cuts
    /// sessions, keeps HAProxy's pace (a 0.3 s REST blip under a client's min_lsn loop
    /// marked a replica DOWN). Passes count at once (an early pass only brings a server
    /// back sooner), and every result still admits or stops admitting, shows, and counts
    /// as a failed check.
    pub fn record_probe(
        &self,
        result: ProbeResult,
        lag_excluded: Option<bool>,
        started: Option<Instant>,
    ) -> Option<Transition> {
        let mut r = self.lock();
        let passed = result.passed();
        let t = &self.spec.timing;
        let gap = t.fastinter.min(t.inter).min(t.downinter);
        let towards_fall = !passed && r.machine.is_up();
        let early = matches!((started, r.counted), (Some(s), Some(c)) if s < c + gap);
        let counts = !towards_fall || !early;
        if let (true, true, Some(s)) = (towards_fall, counts, started) {
            r.counted = Some(s);
        }
        if !passed && r.machine.is_up() {
            r.failures += 1;
        }
        if passed {
            r.undecided_since = None;
        }
        match (passed, r.failing_since) {
            (true, _) => r.failing_since = None,
            (false, None) => r.failing_since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        if let Some(l) = lag_excluded {
            r.lag_excluded = l;
        }
        let transition = if counts { r.machine.observe(passed) } else { None };
        if let Some(t) = transition {
            let reason = if passed {
                format!("{}, {} checks passed", result.summary(), self.spec.timing.rise)
            } else {
                format!("{}: {}", result.summary(), result.detail)
            };
            Self::transition(&mut r, t, reason);
        }
        r.reason = latest_reason(&result, &r.machine, &self.spec.timing);
        // New sessions follow the latest answer that says something: a readable "no" (a
        // replica check answered by a node that was just promoted, a lagging replica)
        // stops them at once, while the mark-down, which cuts sessions, waits for `fall`; a
        // failure that says nothing of the node (a timeout, a reset) keeps admitting until
        // then, as in HAProxy, except on a leader check (a demoting leader takes no write).
        let said_no = !passed && result.status.is_some();
        if let (true, Some(until)) = (passed, r.shunned_until) {
            // A probe begun before then (the re-probe a failed session asked for) does not
            // lift it; the results of tests that give no start time do.
            if started.is_none_or(|s| s >= until) {
                r.shunned_until = None;
            }
        }
        let shunned = r.shunned_until.is_some();
        if shunned {
            r.reason = shunned_reason(&r.reason, &r.shunned_for);
        }
        self.admit.store(r.machine.is_up() && (passed || !(self.strict || said_no)) && !shunned, Ordering::Release);
        r.last = Some(result);
        transition
    }

    /// Records a result that judged nothing against the node (see
    /// [`crate::health::Verdict::undecided`]): shown, and no new session admitted until
    /// a verdict passes, but not counted towards `rise` or `fall`, so it cuts nothing.
    /// One that `settles` (the replica on another timeline than the leader's) stays
    /// undecided for [`UNSETTLED_FOR`] or `fall` x `inter`, whichever is longer: after that
    /// it counts as a failure, so a replica that diverged and never follows is marked DOWN.
    pub fn record_undecided(
        &self,
        result: ProbeResult,
        lag_excluded: bool,
        settles: bool,
        started: Instant,
    ) -> Option<Transition> {
        let mut r = self.lock();
        if settles {
            let now = Instant::now();
            let since = *r.undecided_since.get_or_insert(now);
            let t = &self.spec.timing;
            if now.saturating_duration_since(since) >= UNSETTLED_FOR.max(t.inter * t.fall) {
                drop(r);
                return self.record_probe(result, Some(lag_excluded), Some(started));
            }
        }
        r.lag_excluded = lag_excluded;
        r.reason = latest_reason(&result, &r.machine, &self.spec.timing);
        self.admit.store(false, Ordering::Release);
        r.last = Some(result);
        None
    }

    /// Marks the check UP now on an authoritative answer (the arbitrated leader found while
    /// a failover is under way), instead of waiting for `rise` passes.
    pub fn promote(&self, result: ProbeResult, reason: String) -> Option<Transition> {
        let mut r = self.lock();
        let t = r.machine.force(Status::Up);
        // The leader found while none admits: an authoritative answer, and the only server
        // writes can go to.
        r.shunned_until = None;
        r.reason.clone_from(&reason);
        if let Some(t) = t {
            Self::transition(&mut r, t, reason);
        }
        self.admit.store(true, Ordering::Release);
        r.last = Some(result);
        t
    }

    /// Stops admitting new sessions after the server took none while another server could
    /// (the caller's rule): it refused or reset the connection, or did not answer within
    /// `timeout_connect` (`hung`). Before, a frozen postmaster (its node's REST API frozen
    /// too, or answering) got a new session every few seconds until `fall` marked it DOWN,
    /// each waiting `timeout_connect` (4 s) before going elsewhere. A passing probe begun
    /// after the failure admits again, after a hang only one begun an interval later (a
    /// postmaster that hangs while its REST API answers then costs one session an interval).
    /// Nothing is cut and nothing counts towards `fall`.
    pub fn shun(&self, hung: bool, why: &str) {
        let mut r = self.lock();
        let now = Instant::now();
        let until = if hung { now + self.spec.timing.inter } else { now };
        if r.shunned_until.is_none() {
            r.reason = shunned_reason(&r.reason, why);
        }
        r.shunned_until = Some(r.shunned_until.map_or(until, |u| u.max(until)));
        r.shunned_for = why.to_owned();
        self.admit.store(false, Ordering::Release);
    }

    /// Stops admitting new sessions without a transition (nobody may lead for now);
    /// the next passing verdict admits again.
    pub fn suspend(&self) {
        self.admit.store(false, Ordering::Release);
    }

    /// Marks the check DOWN now, whatever its counters say (another node won the leadership).
    pub fn force_down(&self, reason: String) -> Option<Transition> {
        let mut r = self.lock();
        self.admit.store(false, Ordering::Release);
        let t = r.machine.force(Status::Down)?;
        r.reason.clone_from(&reason);
        Self::transition(&mut r, t, reason);
        Some(t)
    }

    fn transition(r: &mut CheckReport, t: Transition, reason: String) {
        let now = Instant::now();
        if t == Transition::WentUp {
            let down_for = now.saturating_duration_since(r.last_change);
            r.downtime_before += down_for;
        } else {
            r.downs += 1;
        }
        r.last_change = now;
        r.change_reason = reason;
    }

    /// The current interval before the next probe.
    pub fn next_interval(&self) -> Duration {
        self.lock().machine.next_interval(&self.spec.timing)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckReport> {
        // A panic elsewhere must not take health reporting down with it.
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reason shown for a check after `result`: what it found, and where a streak stands
/// (`1 of 3 failures before DOWN`), so the page reads the same as the latest answer.
/// The reason shown while a server is shunned (see [`Check::shun`]).
fn shunned_reason(reason: &str, why: &str) -> String {
    format!("{reason}; took no session ({why}): new sessions go elsewhere until a check passes")
}

fn latest_reason(result: &ProbeResult, machine: &Machine, timing: &crate::config::CheckTiming) -> String {
    let found = match (result.passed(), result.detail.is_empty()) {
        (true, _) => "passed".to_owned(),
        (false, true) => result.summary(),
        (false, false) => result.detail.clone(),
    };
    match (machine.status(), machine.streak()) {
        (_, 0) => found,
        (Status::Up, n) => format!("{found} ({n} of {} failures before DOWN)", timing.fall),
        (Status::Down, n) => format!("{found} ({n} of {} passes before UP)", timing.rise),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> Check {
        let text = "[[node]]\nname = \"n\"\naddress = \"127.0.0.1:1\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/master\" }\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let spec = config.listeners[0].check.clone();
        Check::new(0, Arc::new(NodeState::new("n".into(), "127.0.0.1:8008".into())), "127.0.0.1:8008".into(), spec)
    }

    fn answer(passed: bool, detail: &str) -> ProbeResult {
        ProbeResult::answered(passed, Duration::from_millis(1), detail)
    }

    #[test]
    fn the_reason_describes_the_latest_check_even_without_a_transition() {
        let c = check();
        assert_eq!(c.report().reason, "not checked yet");
        c.record(answer(false, "not the leader (role replica)"));
        let r = c.report();
        assert_eq!(r.reason, "not the leader (role replica)", "a server that stays DOWN says why");
        assert!(r.change_reason.starts_with("DOWN from the start"), "no transition happened");
        c.record(answer(true, ""));
        assert_eq!(c.report().reason, "passed (1 of 2 passes before UP)");
        c.record(answer(true, ""));
        let r = c.report();
        assert_eq!(r.reason, "passed");
        assert_eq!(r.change_reason, "L7OK/200 in 1ms, 2 checks passed");
        c.record(answer(false, "holds the leader lock, but PostgreSQL is stopping as primary"));
        assert_eq!(
            c.report().reason,
            "holds the leader lock, but PostgreSQL is stopping as primary (1 of 3 failures before DOWN)"
        );
    }

    #[test]
    fn failures_count_only_while_up_as_haproxys_chkfail() {
        let c = check();
        for _ in 0..5 {
            c.record(answer(false, "not the leader (role replica)"));
        }
        assert_eq!(c.report().failures, 0, "a replica answering 503 to a leader check while DOWN");
        c.record(answer(true, ""));
        c.record(answer(true, ""));
        c.record(answer(false, "x"));
        c.record(answer(false, "x"));
        c.record(answer(false, "x"));
        c.record(answer(false, "x"));
        assert_eq!(c.report().failures, 3, "counted while UP, up to the one that marked it DOWN");
    }
}
