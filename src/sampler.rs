//! The history's feeder: a small task that reads the live runtime once a second, folds the
//! readings into one point per [`history::STEP`], and keeps the failover being counted up to
//! date (closing it once settled). It stops with the web surface.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cluster::Runtime;
use crate::history::{self, Accumulator, Counters, ListenerTick, NodeTick, Recent, Stamp};
use crate::state::Shared;

/// Readings per point.
const TICKS_PER_POINT: u64 = history::STEP.as_secs();

/// Runs until `stop` is cancelled.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    // One per cluster: each cluster's history is its own.
    let mut accs: std::collections::HashMap<String, Accumulator> = Default::default();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        ticks += 1;
        let clusters = shared.clusters.load_full();
        accs.retain(|name, _| clusters.iter().any(|c| &c.name == name));
        for cluster in clusters.iter() {
            let rt = cluster.runtime();
            let acc = accs.entry(cluster.name.clone()).or_default();
            let (listeners, nodes) = read(&rt);
            acc.add(&listeners, &nodes);
            let now = Stamp::now();
            rt.history.tick(now, |old| counters(&rt, old));
            rt.history.note(recent(&rt, now));
            if ticks % TICKS_PER_POINT == 0 {
                let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                rt.history.push(acc.point(at, history::STEP.as_secs()));
            }
        }
    }
}

/// One reading of every listener and node.
fn read(rt: &Runtime) -> (Vec<ListenerTick>, Vec<NodeTick>) {
    let listeners = rt
        .listeners
        .iter()
        .map(|l| ListenerTick {
            name: l.config.name.clone(),
            sessions: l.servers.iter().map(|s| s.stats.cur.load(Ordering::Relaxed) as u64).sum(),
            accepted: l.stats.accepted.load(Ordering::Relaxed),
            queue: l.stats.queue_cur.load(Ordering::Relaxed) as u64,
        })
        .collect();
    let leader = rt.leadership.leader();
    let leader_pos = leader.and_then(|l| rt.nodes[l].report().status).and_then(|s| s.xlog.location);
    let nodes = rt
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let report = n.report();
            // Patroni mode: the node's one probe; HTTP mode: the slowest of its checks.
            let check_ms = report
                .last
                .as_ref()
                .map(|r| r.duration)
                .or_else(|| rt.checks_of(i).filter_map(|c| c.report().last.map(|r| r.duration)).max());
            let lag = report.status.as_ref().filter(|s| s.role == "replica").and_then(|s| s.lag(leader_pos));
            NodeTick {
                name: n.name.clone(),
                check_ms: check_ms.map(|d| d.as_micros() as f64 / 1000.0),
                lag_bytes: lag.filter(|_| leader != Some(i)),
            }
        })
        .collect();
    (listeners, nodes)
}

/// This second's counters, for the baseline of a failover that begins.
fn recent(rt: &Runtime, at: Stamp) -> Recent {
    let c = counters(rt, None);
    let mut ended = std::collections::BTreeMap::new();
    for s in rt.listeners.iter().flat_map(|l| &l.servers) {
        *ended.entry(s.name.clone()).or_insert(0) += s.stats.ended_by_server.load(Ordering::Relaxed);
    }
    Recent { at: at.mono, held: c.held, refused: c.refused, ended }
}

/// What the data plane has counted, for the failover accounting; `cut` on node `old`.
pub fn counters(rt: &Runtime, old: Option<&str>) -> Counters {
    let mut c = Counters::default();
    let leader = rt.leadership.leader().map(|l| rt.nodes[l].name.as_str());
    for l in &rt.listeners {
        let st = &l.stats;
        c.held += st.queued.load(Ordering::Relaxed);
        c.refused += st.refused.load(Ordering::Relaxed);
        c.queue_now += st.queue_cur.load(Ordering::Relaxed);
        c.longest_hold = c.longest_hold.max(Duration::from_micros(st.longest_hold_us.load(Ordering::Relaxed)));
        for s in &l.servers {
            if Some(s.name.as_str()) == old {
                c.cut += s.stats.ended_by_server.load(Ordering::Relaxed);
            }
            if l.config.check.is_leader() && Some(s.name.as_str()) == leader {
                c.first_session = match (c.first_session, s.first_session()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    c
}

/// The data plane's part of a leader change: the failover accounting, then its probes
/// (the longest hold counts afresh; the new leader's first write session is timed).
pub fn leader_changed(rt: &Runtime, from: Option<&str>, to: Option<&str>) {
    rt.history.leader_changed(Stamp::now(), from, to, |old| counters(rt, old));
    if from.is_some() {
        for l in &rt.listeners {
            l.stats.longest_hold_us.store(0, Ordering::Relaxed);
        }
    }
    if let Some(new) = to {
        for l in rt.listeners.iter().filter(|l| l.config.check.is_leader()) {
            for s in l.servers.iter().filter(|s| s.name == new) {
                s.arm_first_session();
            }
        }
    }
}
