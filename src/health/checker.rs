//! One task per distinct check: probe, feed the state machine, publish transitions.
//! On mark-down with shutdown-sessions it cuts the server's sessions; on mark-up it wakes
//! the sessions queued for a server.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::Probe;
use super::Transition;
use crate::cluster::{Check, Runtime};

/// The least time between two probes of the same target when probes are requested early
/// (failed connects), so a burst of failing sessions cannot become a check storm on
/// Patroni's five REST worker threads.
const MIN_KICK_GAP: Duration = Duration::from_millis(250);

/// Starts one checker per distinct check of `rt`; they stop when `stop` is cancelled.
pub fn spawn_checkers(rt: &Arc<Runtime>, probe: Arc<dyn Probe>, tracker: &TaskTracker, stop: &CancellationToken) {
    for check in &rt.checks {
        tracker.spawn(run(Arc::clone(rt), Arc::clone(check), Arc::clone(&probe), stop.clone()));
    }
}

async fn run(rt: Arc<Runtime>, check: Arc<Check>, probe: Arc<dyn Probe>, stop: CancellationToken) {
    loop {
        let started = Instant::now();
        check.probe_started();
        let result = tokio::select! {
            r = probe.probe(&check.target, &check.spec) => r,
            _ = stop.cancelled() => return,
        };
        if !result.passed() {
            tracing::debug!(node = %check.node_name, check = %format_args!("{} {}", check.spec.method, check.spec.path),
                result = %result.summary(), detail = %result.detail, "check failed");
        }
        if let Some(t) = check.record(result) {
            publish(&rt, &check, t);
        }
        let delay = check.next_interval();
        tokio::select! {
            _ = sleep(delay) => {}
            _ = check.kicked() => {
                // Re-probe early, but not faster than MIN_KICK_GAP.
                tokio::select! {
                    _ = sleep_until(started + MIN_KICK_GAP) => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Applies a transition to every server that depends on the check, with one log line each.
fn publish(rt: &Runtime, check: &Arc<Check>, t: Transition) {
    let report = check.report();
    for (listener, server) in rt.servers_of(check) {
        let remaining = listener.servers_up();
        match t {
            Transition::WentUp => {
                tracing::info!(listener = %listener.config.name, server = %server.name, reason = %report.reason,
                    servers_up = remaining, "server is UP");
                listener.wake_queue();
            }
            Transition::WentDown => {
                let cut = if listener.config.shutdown_sessions { server.cut_sessions() } else { 0 };
                tracing::warn!(listener = %listener.config.name, server = %server.name, reason = %report.reason,
                    servers_up = remaining, sessions_cut = cut, "server is DOWN");
            }
        }
    }
}
