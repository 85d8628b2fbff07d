//! The checker tasks. A task probes one target and turns the answer into a verdict for
//! each check that depends on it, feeding their state machines and publishing transitions:
//! mark-down cuts sessions (shutdown-sessions), mark-up wakes queued sessions.
//!
//! In `patroni` mode there is one task per node making one `GET /primary` per interval:
//! the status says whether the node holds the leader lock, the JSON body answers every
//! other check, and the claims of all nodes are arbitrated so that at most one node is the
//! write target at any instant. In `http` mode there is one task per distinct
//! (node, method, path), as in HAProxy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::patroni::{verdict, NodeStatus, View};
use super::probe::{CheckCode, Probe, ProbeResult};
use super::Transition;
use crate::cluster::{Check, NodeReport, Runtime};
use crate::config::{CheckMode, CheckSpec, CheckTiming};

/// The least time between two probes of the same target when probes are requested early
/// (failed connects, resets), so a burst of failing sessions cannot become a check storm
/// on Patroni's five REST worker threads.
const MIN_KICK_GAP: Duration = Duration::from_millis(100);

/// What Patroni mode asks every node.
const PATRONI_PROBE_PATH: &str = "/primary";

/// One probe target and the checks its answers feed.
struct Unit {
    node: usize,
    target: String,
    spec: CheckSpec,
    checks: Vec<Arc<Check>>,
}

/// Starts the checkers of `rt`; they stop when `stop` is cancelled.
pub fn spawn_checkers(rt: &Arc<Runtime>, probe: Arc<dyn Probe>, tracker: &TaskTracker, stop: &CancellationToken) {
    for unit in units(rt) {
        tracker.spawn(run(Arc::clone(rt), unit, Arc::clone(&probe), stop.clone()));
    }
}

fn units(rt: &Runtime) -> Vec<Unit> {
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
                    ..first.timing
                },
                endpoint: None,
                source: rt.config.nodes[node].source,
            };
            Unit { node, target: checks[0].target.clone(), spec, checks }
        })
        .collect()
}

async fn run(rt: Arc<Runtime>, unit: Unit, probe: Arc<dyn Probe>, stop: CancellationToken) {
    let node = Arc::clone(&rt.nodes[unit.node]);
    loop {
        let started = Instant::now();
        let seen = node.kicks();
        let result = tokio::select! {
            r = probe.probe(&unit.target, &unit.spec) => r,
            () = stop.cancelled() => return,
        };
        if !result.passed() && result.status.is_none() {
            tracing::debug!(node = %node.name, result = %result.summary(), detail = %result.detail, "probe failed");
        }
        match rt.config.global.check_mode {
            CheckMode::Patroni => patroni_answer(&rt, &unit, result, &stop).await,
            CheckMode::Http => http_answer(&rt, &unit, &result),
        }
        let mut delay = unit.checks.iter().map(|c| c.next_interval()).min().unwrap_or(unit.spec.timing.inter);
        if rt.leader_lost() {
            delay = delay.min(rt.config.global.hunt_inter);
        }
        tokio::select! {
            () = sleep(delay) => {}
            () = node.kicked_since(seen) => {
                // Re-probe early, but not faster than MIN_KICK_GAP.
                tokio::select! {
                    () = sleep_until(started + MIN_KICK_GAP) => {}
                    () = stop.cancelled() => return,
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// HAProxy's rule: the status must equal each check's `expect`.
fn http_answer(rt: &Runtime, unit: &Unit, result: &ProbeResult) {
    for c in &unit.checks {
        let mut r = result.clone();
        r.body = None;
        if let Some(status) = r.status {
            let ok = status == c.spec.expect;
            r.code = if ok { CheckCode::L7Ok } else { CheckCode::L7Sts };
            r.detail = if ok { String::new() } else { format!("status {status}, expected {}", c.spec.expect) };
        }
        if let Some(t) = c.record(r) {
            publish(rt, c, t);
        }
        wake_if_admitting(rt, c);
    }
}

/// Patroni mode: record the node's answer, arbitrate leadership across nodes, then give
/// each of the node's checks the verdict Patroni would have given its endpoint.
async fn patroni_answer(rt: &Runtime, unit: &Unit, result: ProbeResult, stop: &CancellationToken) {
    let node = &rt.nodes[unit.node];
    let status = match (&result.status, &result.body) {
        (Some(_), Some(body)) => Some(NodeStatus::parse(body)),
        _ => None,
    };
    let parsed = status.as_ref().and_then(|s| s.as_ref().ok()).cloned();
    // Only a 200 on /primary with a readable status is a leadership claim.
    let claims_leader = result.status == Some(200) && parsed.is_some();
    node.set(NodeReport { last: Some(result.clone()), status: parsed.clone(), claims_leader });

    let _serial = rt.leadership.serial.lock().await;
    // A reload may have replaced this checker while it waited: the new one decides now.
    if stop.is_cancelled() {
        return;
    }
    let claims: Vec<(usize, Option<u64>)> = rt
        .nodes
        .iter()
        .filter_map(|n| {
            let r = n.report();
            r.claims_leader.then(|| (n.index, r.status.and_then(|s| s.timeline)))
        })
        .collect();
    let was_conflict = rt.leadership.conflict();
    let decision = rt.leadership.decide(&claims);
    if decision.conflict && !was_conflict {
        rt.events.push("several nodes claim leadership on the same timeline: writes held".to_owned());
        tracing::error!(claimants = ?claims.iter().map(|c| &rt.nodes[c.0].name).collect::<Vec<_>>(),
            "several nodes claim leadership on the same timeline: writes are held until one remains");
    }
    if decision.changed() {
        leader_changed(rt, decision.previous, decision.leader, &claims);
    }
    if decision.conflict {
        // Writes to neither: stop admitting, without cutting anyone yet.
        for c in rt.checks.iter().filter(|c| c.strict) {
            c.suspend();
        }
    }
    let leader_status = decision.leader.and_then(|l| rt.nodes[l].report().status);
    let view = View {
        is_leader: decision.leader == Some(unit.node),
        leader_position: leader_status.as_ref().and_then(|s| s.xlog.location),
        standbys: leader_status.as_ref().map_or(&[], |s| s.replication.as_slice()),
        now: Some(std::time::SystemTime::now()),
    };
    for c in &unit.checks {
        let (r, lag) = match (&status, c.spec.endpoint.as_ref()) {
            (Some(Ok(st)), Some(endpoint)) => {
                let v = verdict(endpoint, st, view, c.report().lag_excluded);
                let r = ProbeResult {
                    code: if v.passed { CheckCode::L7Ok } else { CheckCode::L7Sts },
                    status: Some(if v.passed { 200 } else { 503 }),
                    duration: result.duration,
                    detail: v.why,
                    body: None,
                };
                (r, Some(v.lag_excluded))
            }
            (Some(Err(why)), _) => {
                (ProbeResult { code: CheckCode::L7Rsp, detail: why.clone(), body: None, ..result.clone() }, None)
            }
            _ => (ProbeResult { body: None, ..result.clone() }, None),
        };
        // Fast promotion: while a failover is under way (a leader was known and is gone),
        // the node every claim agrees on, answering as a running primary, is the write
        // target now; waiting `rise` more intervals would only lengthen the outage.
        let promote = c.strict && r.passed() && view.is_leader && rt.leadership.had_leader() && rt.leader_lost();
        let t = if promote {
            let reason = format!("{}: new leader found while none was admitted", r.summary());
            c.promote(r, reason)
        } else {
            c.record_with(r, lag)
        };
        if let Some(t) = t {
            publish(rt, c, t);
        }
        wake_if_admitting(rt, c);
    }
}

/// A new leader (or none): every other node's leader checks go DOWN at once, cutting their
/// sessions, without waiting for their own `fall` failures; with no leader, every node is
/// probed at once so the next one is found quickly.
fn leader_changed(rt: &Runtime, previous: Option<usize>, leader: Option<usize>, claims: &[(usize, Option<u64>)]) {
    let name = |i: Option<usize>| i.map_or("none".to_owned(), |i| rt.nodes[i].name.clone());
    let timeline = leader.and_then(|l| claims.iter().find(|c| c.0 == l).and_then(|c| c.1));
    tracing::warn!(previous = %name(previous), leader = %name(leader), timeline = ?timeline, "leader changed");
    rt.events.push(format!(
        "leader: {} -> {}{}",
        name(previous),
        name(leader),
        timeline.map_or(String::new(), |t| format!(" (timeline {t})"))
    ));
    if let Some(new) = leader {
        // Every other node's leader checks go down now, not only the previous leader's: a
        // former leader may be two decisions back (a conflict or a missed claim between).
        let reason =
            format!("{} now leads (timeline {})", name(leader), timeline.map_or("?".into(), |t| t.to_string()));
        for c in rt.checks.iter().filter(|c| c.strict && c.node != new) {
            if let Some(t) = c.force_down(reason.clone()) {
                publish(rt, c, t);
            }
        }
    }
    if leader.is_none() {
        for n in &rt.nodes {
            n.kick();
        }
    }
}

fn wake_if_admitting(rt: &Runtime, check: &Arc<Check>) {
    if check.is_up() {
        for (l, _) in rt.servers_of(check) {
            l.wake_queue();
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
                if check.strict {
                    rt.leadership.admitted();
                }
                tracing::info!(listener = %listener.config.name, server = %server.name, reason = %report.reason,
                    servers_up = remaining, "server is UP");
                rt.events.push(format!("{}/{} UP: {}", listener.config.name, server.name, report.reason));
                listener.wake_queue();
            }
            Transition::WentDown => {
                let cut = if listener.config.shutdown_sessions { server.cut_sessions() } else { 0 };
                tracing::warn!(listener = %listener.config.name, server = %server.name, reason = %report.reason,
                    servers_up = remaining, sessions_cut = cut, "server is DOWN");
                rt.events.push(format!(
                    "{}/{} DOWN: {} ({cut} sessions cut, {remaining} servers up)",
                    listener.config.name, server.name, report.reason
                ));
            }
        }
    }
}
