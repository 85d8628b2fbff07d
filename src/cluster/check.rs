//! The live health of one check target: one distinct (node, request) pair, shared by every
//! listener whose check is identical, so Patroni sees one probe per interval however many
//! listeners ask the same question.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
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
    up: AtomicBool,
    /// Wakes the checker for an immediate probe (a failed connect, a reset session).
    kick: Notify,
    /// Set by a kick, cleared when a probe starts: kicks that arrive before the probe
    /// that answers them coalesce into one.
    kick_pending: AtomicBool,
    report: Mutex<CheckReport>,
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
    pub fn new(node: usize, node_name: String, target: String, spec: CheckSpec) -> Check {
        let machine = Machine::new(spec.timing.rise, spec.timing.fall);
        Check {
            node,
            node_name,
            target,
            spec,
            up: AtomicBool::new(false),
            kick: Notify::new(),
            kick_pending: AtomicBool::new(false),
            report: Mutex::new(CheckReport {
                machine,
                last: None,
                last_change: Instant::now(),
                failures: 0,
                downs: 0,
                downtime_before: Duration::ZERO,
                reason: "not checked yet".to_owned(),
            }),
        }
    }

    /// Whether the check currently admits the node.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Asks the checker to probe now instead of waiting for its interval.
    pub fn kick(&self) {
        if !self.kick_pending.swap(true, Ordering::AcqRel) {
            self.kick.notify_one();
        }
    }

    pub(crate) async fn kicked(&self) {
        self.kick.notified().await
    }

    /// Called as a probe starts: it answers every kick made so far.
    pub(crate) fn probe_started(&self) {
        self.kick_pending.store(false, Ordering::Release);
    }

    pub fn report(&self) -> CheckReport {
        self.lock().clone()
    }

    /// Records a probe result; returns the transition it caused.
    pub fn record(&self, result: ProbeResult) -> Option<Transition> {
        let mut r = self.lock();
        if !result.passed() {
            r.failures += 1;
        }
        let transition = r.machine.observe(result.passed());
        if let Some(t) = transition {
            let now = Instant::now();
            if t == Transition::WentUp {
                let down_for = now.saturating_duration_since(r.last_change);
                r.downtime_before += down_for;
            } else {
                r.downs += 1;
            }
            r.last_change = now;
            r.reason = if result.passed() {
                format!("{}, {} checks passed", result.summary(), self.spec.timing.rise)
            } else {
                format!("{}: {}", result.summary(), result.detail)
            };
            self.up.store(t == Transition::WentUp, Ordering::Release);
        }
        r.last = Some(result);
        transition
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
