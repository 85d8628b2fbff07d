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

/// What the stats page shows about a check, kept together so one lock gives a
/// consistent view.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub machine: Machine,
    pub last: Option<ProbeResult>,
    /// When the status last changed (or the check was created).
    pub last_change: Instant,
    /// Failed probes (HAProxy `chkfail`).
    pub failures: u64,
    /// UP to DOWN transitions (HAProxy `chkdown`).
    pub downs: u64,
    /// Set while a replica is out for replay lag (hysteresis state).
    pub lag_excluded: bool,
    /// Downtime accumulated before the current down period.
    pub downtime_before: Duration,
    /// A human reason for the last transition.
    pub reason: String,
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
    /// `timeout_connect`, ...) or moved its node in the list (`node`, its new index): it
    /// shares its health, counters and admission with `old`, so no server goes back to DOWN;
    /// the new timings apply from the next probe on.
    pub fn retimed(old: &Check, node: usize, spec: CheckSpec) -> Check {
        old.lock().machine.retune(spec.timing.rise, spec.timing.fall);
        Check {
            node,
            node_name: old.node_name.clone(),
            target: old.target.clone(),
            strict: spec.is_leader(),
            spec,
            admit: Arc::clone(&old.admit),
            node_state: Arc::clone(&old.node_state),
            report: Arc::clone(&old.report),
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

    pub fn report(&self) -> CheckReport {
        self.lock().clone()
    }

    /// Records a result; returns the transition it caused.
    pub fn record(&self, result: ProbeResult) -> Option<Transition> {
        self.record_with(result, None)
    }

    /// Records a result and the replica lag exclusion it implies.
    pub fn record_with(&self, result: ProbeResult, lag_excluded: Option<bool>) -> Option<Transition> {
        let mut r = self.lock();
        let passed = result.passed();
        if !passed {
            r.failures += 1;
        }
        if let Some(l) = lag_excluded {
            r.lag_excluded = l;
        }
        let transition = r.machine.observe(passed);
        if let Some(t) = transition {
            let reason = if passed {
                format!("{}, {} checks passed", result.summary(), self.spec.timing.rise)
            } else {
                format!("{}: {}", result.summary(), result.detail)
            };
            Self::transition(&mut r, t, reason);
        }
        self.admit.store(r.machine.is_up() && (passed || !self.strict), Ordering::Release);
        r.last = Some(result);
        transition
    }

    /// Marks the check UP now on an authoritative answer (the arbitrated leader found while
    /// a failover is under way), instead of waiting for `rise` passes.
    pub fn promote(&self, result: ProbeResult, reason: String) -> Option<Transition> {
        let mut r = self.lock();
        let t = r.machine.force(Status::Up);
        if let Some(t) = t {
            Self::transition(&mut r, t, reason);
        }
        self.admit.store(true, Ordering::Release);
        r.last = Some(result);
        t
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
        r.reason = reason;
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
