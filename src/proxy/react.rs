//! The data plane's answer to the control plane's decisions: cutting the sessions a
//! mark-down names, serving queues when servers come up, and saying what happened (a log
//! line and an entry on the stats page for each).

use std::sync::Arc;

use crate::cluster::{Change, Check, React, Runtime};

/// Acts on [`Change`]s for a running pgfront.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reactor;

impl React for Reactor {
    fn react(&self, rt: &Runtime, change: Change) {
        match change {
            Change::Up { check } => up(rt, &check),
            Change::Down { check, forced } => down(rt, &check, forced),
            Change::FormerLeader { check } => former_leader(rt, &check),
            Change::LeaderReady => {
                for l in &rt.listeners {
                    l.wake_queue();
                }
            }
            Change::StaleClaims { nodes, floor } => {
                tracing::error!(nodes = ?nodes, floor,
                    "no leader: these nodes claim leadership on a timeline older than one already seen (stale answers of demoted nodes; after a restore of the same database to an older timeline, restart pgfront)");
                rt.events
                    .push(format!("claims of {} refused: timeline below the floor {floor} (stale)", nodes.join(", ")));
            }
            Change::Admitting { check } => {
                if check.strict {
                    rt.history.writes_resumed(&check.node_name);
                }
                for (l, _) in rt.servers_of(&check) {
                    l.queue.dispatch();
                }
            }
            Change::LeaderChanged { from, to, timeline } => {
                let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "none".into());
                tracing::warn!(previous = %name(&from), leader = %name(&to), timeline = ?timeline, "leader changed");
                rt.events.push(format!(
                    "leader: {} -> {}{}",
                    name(&from),
                    name(&to),
                    timeline.map_or(String::new(), |t| format!(" (timeline {t})"))
                ));
                if let (Some(old), None) = (&from, &to) {
                    // The claim ended before the leader check's mark-down (its answers failed
                    // `fall` times): the write gap began at the first of them, not here.
                    for c in rt.checks.iter().filter(|c| c.strict && &c.node_name == old) {
                        let report = c.report();
                        if report.failing_since.is_some() {
                            writes_stopped(rt, c, &report);
                        }
                    }
                }
                crate::sampler::leader_changed(rt, from.as_deref(), to.as_deref());
                // Fallback and primary-on-request sessions wait for the leader itself.
                for l in &rt.listeners {
                    l.wake_queue();
                }
            }
            Change::Conflict { claimants } => {
                rt.events
                    .push("several nodes claim leadership and no timeline tells the newest: writes held".to_owned());
                tracing::error!(claimants = ?claimants,
                    "several nodes claim leadership and no timeline tells the newest (the same one, none, or two databases): writes are held until one remains");
            }
            Change::IdentityChanged { from, to } => {
                let from = from.unwrap_or_default();
                tracing::warn!(previous = %from, system_identifier = %to,
                    "cluster identity changed: the cluster was rebuilt (new system identifier); timelines start over");
                rt.events.push(format!("cluster identity changed: system identifier {from} -> {to} (rebuilt cluster)"));
            }
        }
    }
}

fn up(rt: &Runtime, check: &Arc<Check>) {
    let report = check.report();
    for (listener, server) in rt.servers_of(check) {
        tracing::info!(listener = %listener.config.name, server = %server.name, reason = %report.change_reason,
            servers_up = listener.servers_up(), "server is UP");
        rt.events.push(format!("{}/{} UP: {}", listener.config.name, server.name, report.change_reason));
        let up = listener.servers_up();
        if listener.config.check.is_leader() && up > 1 && rt.config.global.check_mode == crate::config::CheckMode::Http
        {
            // Only the http check mode can get here (Patroni mode arbitrates): HAProxy's
            // behaviour, sessions go by `balance` to either, but the operator must know.
            tracing::error!(listener = %listener.config.name, servers_up = up,
                "several servers pass this listener's leader check: their REST endpoints each say they lead (check_mode http cannot tell which; sessions go by balance)");
            rt.events.push(format!(
                "{}: {up} servers pass the leader check at once (check_mode http cannot tell which leads)",
                listener.config.name
            ));
        }
        listener.wake_queue();
    }
}

/// Notes when `check` (a leader check) stopped admitting writes: its first failed answer.
fn writes_stopped(rt: &Runtime, check: &Check, report: &crate::cluster::CheckReport) {
    let now = crate::history::Stamp::now();
    let ago = report.failing_since.map_or(std::time::Duration::ZERO, |t| now.mono.saturating_duration_since(t));
    let at = crate::history::Stamp {
        mono: now.mono.checked_sub(ago).unwrap_or(now.mono),
        wall: now.wall.checked_sub(ago).unwrap_or(now.wall),
    };
    rt.history.writes_stopped(at, &check.node_name);
}

/// `forced`: a former leader; its sessions end whatever `on_marked_down` says, since another
/// node leads now and writes there would go to the wrong primary.
fn down(rt: &Runtime, check: &Arc<Check>, forced: bool) {
    let report = check.report();
    if check.strict && rt.leadership.leader() == Some(check.node) {
        // The leader still holds the lock but takes no writes: a failover's write gap may
        // begin here, before Patroni lets go of the lock.
        writes_stopped(rt, check, &report);
    }
    for (listener, server) in rt.servers_of(check) {
        let remaining = listener.servers_up();
        let cut = if listener.config.shutdown_sessions || forced { server.cut_sessions() } else { 0 };
        tracing::warn!(listener = %listener.config.name, server = %server.name, reason = %report.change_reason,
            servers_up = remaining, sessions_cut = cut, "server is DOWN");
        rt.events.push(format!(
            "{}/{} DOWN: {} ({cut} sessions cut, {remaining} servers up)",
            listener.config.name, server.name, report.change_reason
        ));
    }
}

/// A former leader's servers that were already DOWN keep no sessions once another node
/// leads (with shutdown-sessions they had none left; with "none" they were kept till now).
fn former_leader(rt: &Runtime, check: &Arc<Check>) {
    let marked_up = check.report().machine.is_up();
    let leader = rt.leadership.leader().map(|l| rt.nodes[l].name.as_str());
    let why = if leader.is_some() { "another node leads" } else { "its claim to lead is over" };
    for (listener, server) in rt.servers_of(check) {
        if marked_up && listener.config.shutdown_sessions {
            // Its mark-down comes with the same answers and cuts them (counted once).
            continue;
        }
        let cut = server.cut_sessions();
        if cut > 0 {
            tracing::warn!(listener = %listener.config.name, server = %server.name, sessions_cut = cut,
                leader = ?leader, "sessions on a former leader cut: {why}");
            rt.events.push(format!(
                "{}/{}: {cut} sessions on a former leader cut ({why})",
                listener.config.name, server.name
            ));
        }
    }
}
