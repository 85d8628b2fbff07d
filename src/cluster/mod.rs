//! The live view of the cluster for one configuration: listeners, their servers, and the
//! shared checks behind them. Built once per validated config and swapped whole, so the
//! proxy, the checkers and the web views never see half of a reload.

mod check;
mod checker;
mod events;
mod node;
pub mod role;
mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use check::{Check, CheckReport};
pub use checker::spawn_checkers;
pub use events::{Change, Event, EventLog, React};
pub use node::{Answer, Claim, Decision, Leadership, NodeReport, NodeState};
pub use server::{AdminState, Server, ServerStats};

use crate::balance::Queue;
use crate::config::{CheckSpec, Config, Listener};

/// How long checks hunt for a new leader with no client waiting for one: a failover under
/// Patroni's defaults (ttl 30 s, loop_wait 10 s) ends within about 40 s of the leader's last
/// renewal of its lock, and `fall` has passed before hunting begins.
pub const HUNT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Per-listener counters.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Sessions waiting for a server now, and the most ever.
    pub queue_cur: AtomicUsize,
    pub queue_max: AtomicUsize,
    /// Sessions accepted.
    pub accepted: AtomicU64,
    /// Sessions refused with an error before reaching a server (queue timeout, no server).
    pub refused: AtomicU64,
    /// CancelRequests forwarded.
    pub cancels: AtomicU64,
    /// Sessions that ever waited in the queue (a failover's "held").
    pub queued: AtomicU64,
    /// The longest wait, in microseconds, of a session that left the queue since the
    /// failover accounting last reset it (at the start of each failover).
    pub longest_hold_us: AtomicU64,
    /// Sessions that asked for `pgfront.min_lsn`, by where they went: a replica that had
    /// replayed the position, the leader (no replica had within `min_lsn_wait`, or none was
    /// up), or refused (`pgfront.target=replica` and no replica had).
    pub min_lsn_replica: AtomicU64,
    pub min_lsn_leader: AtomicU64,
    pub min_lsn_refused: AtomicU64,
    /// Their waits for a server, in all (microseconds): the wait per such session is this
    /// over their count.
    pub min_lsn_wait_us: AtomicU64,
}

/// One listener and its servers.
#[derive(Debug)]
pub struct ListenerState {
    pub config: Listener,
    pub servers: Vec<Arc<Server>>,
    /// Round-robin position.
    pub(crate) rr: AtomicUsize,
    /// Sessions waiting for a server, served first come first served as places free up;
    /// kept across reloads, and always serving from the current generation.
    pub queue: Arc<Queue>,
    /// Who leads, for `fallback_to_leader`.
    pub(crate) leadership: Arc<Leadership>,
    /// Kept across reloads, like the queue's wake-up, so counters and waiting sessions
    /// carry over.
    pub stats: Arc<ListenerStats>,
}

impl ListenerState {
    /// Something changed that may let queued sessions proceed (a server up, an operator's
    /// action, a new leader): serve the queue.
    pub fn wake_queue(&self) {
        self.queue.changed();
    }

    /// Servers currently admitted by the check.
    pub fn servers_up(&self) -> usize {
        self.servers.iter().filter(|s| s.is_up()).count()
    }
}

/// Everything live that belongs to one configuration generation.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    /// Distinct checks: one per (node, request), however many listeners use it.
    pub checks: Vec<Arc<Check>>,
    pub listeners: Vec<Arc<ListenerState>>,
    /// One per configured node: Patroni's latest answer.
    pub nodes: Vec<Arc<NodeState>>,
    /// Who leads (patroni check mode).
    pub leadership: Arc<Leadership>,
    /// Recent transitions, kept across reloads.
    pub events: Arc<EventLog>,
    /// The last hour and the last failovers, kept across reloads.
    pub history: Arc<crate::history::History>,
    pub started: Instant,
}

impl Runtime {
    /// Builds the live state for `config`. Server session tokens are children of `sessions`,
    /// so a hard stop cuts everything at once.
    pub fn build(config: Arc<Config>, sessions: &CancellationToken) -> Runtime {
        Runtime::build_from(config, sessions, None)
    }

    /// Builds the live state for a reloaded `config`, reusing from `previous` every node,
    /// check and server that did not change: their health state, counters and open
    /// sessions carry over, and only what changed starts afresh (DOWN until checked).
    pub fn build_from(config: Arc<Config>, sessions: &CancellationToken, previous: Option<&Runtime>) -> Runtime {
        Runtime::build_after(config, sessions, previous, &[])
    }

    /// [`Runtime::build_from`], where a listener that `previous` did not have but another
    /// cluster's generation did (`elsewhere`: moved between `[[cluster]]`s, by its fixed
    /// address or its name) goes on with that listener's queue and counters: clients already
    /// waiting keep their turn ahead of newcomers (before, they were left in the old
    /// cluster's queue, waiting for a place there). Its servers are the new cluster's own.
    pub fn build_after(
        config: Arc<Config>,
        sessions: &CancellationToken,
        previous: Option<&Runtime>,
        elsewhere: &[Arc<ListenerState>],
    ) -> Runtime {
        // A node that stays (same name and REST address) keeps its state wherever it moves;
        // one renamed at the same REST address, or one whose REST address moved under the
        // same name (the old name and address pair gone either way), goes on from its state
        // (claim, positions: leadership and its term go on). `from[i]`: new node i's old
        // index.
        let old_nodes = previous.map_or(&[][..], |p| &p.nodes[..]);
        let stays = |o: &NodeState| config.nodes.iter().any(|n| n.name == o.name && n.check_address == o.target);
        let mut from = vec![None; config.nodes.len()];
        let nodes: Vec<Arc<NodeState>> = config
            .nodes
            .iter()
            .zip(&mut from)
            .map(|(n, from)| {
                if let Some(k) = old_nodes.iter().position(|o| o.name == n.name && o.target == n.check_address) {
                    *from = Some(k);
                    return Arc::clone(&old_nodes[k]);
                }
                let renamed = || old_nodes.iter().position(|o| o.target == n.check_address && !stays(o));
                let moved = || old_nodes.iter().position(|o| o.name == n.name && !stays(o));
                if let Some(k) = renamed().or_else(moved) {
                    *from = Some(k);
                    return Arc::new(NodeState::succeeding(&old_nodes[k], n.name.clone(), n.check_address.clone()));
                }
                Arc::new(NodeState::new(n.name.clone(), n.check_address.clone()))
            })
            .collect();
        let leadership = match previous {
            Some(p) if p.nodes.iter().zip(&nodes).all(|(a, b)| Arc::ptr_eq(a, b)) && p.nodes.len() == nodes.len() => {
                Arc::clone(&p.leadership)
            }
            Some(p) => {
                // The same node (kept or renamed) under its new index, if it stays: a rename
                // is no leader change, and the term of sessions sent to the leader goes on.
                let index = |old: usize| from.iter().position(|f| *f == Some(old));
                Arc::new(Leadership::succeeding(&p.leadership, index))
            }
            None => Arc::new(Leadership::default()),
        };
        let mut checks: Vec<Arc<Check>> = Vec::new();
        // A listener's spec carries no TLS (that is set per probe target), and CheckTls
        // hashes its settings only, never its session cache: the key cannot change.
        #[allow(clippy::mutable_key_type)]
        let mut by_key: HashMap<(usize, CheckSpec), Arc<Check>> = HashMap::new();
        // A check asked the same question of the same node is kept, with its health; a
        // change of timings alone (inter, fall, timeout_connect, ...) applies to it as is.
        // Each old check goes on in one new check at most, its exact successor first: two
        // listeners asking the same path with different timings have two checks, and two
        // must remain after a reload (sharing one machine, every probe counted twice).
        let mut taken = vec![false; previous.map_or(0, |p| p.checks.len())];
        let mut old_check = |i: usize, spec: &CheckSpec| {
            let old_checks = &previous?.checks;
            // The same node (kept or renamed: see `from`) asked the same question at the same
            // REST address: a check of a node whose REST API moved starts afresh.
            let asks = |c: &Arc<Check>| from[i] == Some(c.node) && c.target == nodes[i].target && c.asks_the_same(spec);
            let free = |k: &usize| !taken[*k];
            if let Some(k) =
                (0..old_checks.len()).filter(free).find(|&k| asks(&old_checks[k]) && &old_checks[k].spec == spec)
            {
                taken[k] = true;
                let old = &old_checks[k];
                return Some(if old.node == i && Arc::ptr_eq(&old.node_state, &nodes[i]) {
                    Arc::clone(old)
                } else {
                    Arc::new(Check::retimed(old, i, spec.clone(), &nodes[i]))
                });
            }
            if let Some(k) = (0..old_checks.len()).filter(free).find(|&k| asks(&old_checks[k])) {
                taken[k] = true;
                return Some(Arc::new(Check::retimed(&old_checks[k], i, spec.clone(), &nodes[i])));
            }
            // Every check asking this was taken by another listener: a copy of one's health
            // (a listener that now differs in timings from its neighbour), counted on its own.
            let old = old_checks.iter().find(|c| asks(c))?;
            Some(Arc::new(Check::forked(old, i, spec.clone(), &nodes[i])))
        };
        // Which listener of the last generation each one goes on from (servers with their
        // sessions and maxconn counts, queue, counters): the one that served its fixed
        // address, whose sockets it is handed (see `app::reload`), so that clients waiting
        // on a port keep that port's rules across a rename or a swap of addresses; else the
        // one of its name. Each goes on in one listener at most.
        let old_listeners: Vec<Option<&Arc<ListenerState>>> = match previous {
            None => vec![None; config.listeners.len()],
            Some(p) => {
                let at_bind: Vec<Option<usize>> = config
                    .listeners
                    .iter()
                    .map(|l| p.listeners.iter().position(|o| l.bind.port() != 0 && o.config.bind == l.bind))
                    .collect();
                config
                    .listeners
                    .iter()
                    .zip(&at_bind)
                    .map(|(l, at)| {
                        let i = at.or_else(|| {
                            p.listeners
                                .iter()
                                .position(|o| o.config.name == l.name)
                                .filter(|i| !at_bind.contains(&Some(*i)))
                        })?;
                        Some(&p.listeners[i])
                    })
                    .collect()
            }
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (l, old_listener) in config.listeners.iter().zip(old_listeners) {
            let moved_from = match old_listener {
                Some(_) => None,
                None => elsewhere
                    .iter()
                    .find(|o| l.bind.port() != 0 && o.config.bind == l.bind)
                    .or_else(|| elsewhere.iter().find(|o| o.config.name == l.name)),
            };
            let carried = old_listener.or(moved_from);
            let servers = l
                .servers
                .iter()
                .map(|&i| {
                    let node = &config.nodes[i];
                    let check = by_key
                        .entry((i, l.check.clone()))
                        .or_insert_with(|| {
                            let c = old_check(i, &l.check).unwrap_or_else(|| {
                                Arc::new(Check::new(
                                    i,
                                    Arc::clone(&nodes[i]),
                                    node.check_address.clone(),
                                    l.check.clone(),
                                ))
                            });
                            checks.push(Arc::clone(&c));
                            c
                        })
                        .clone();
                    let maxconn = node.maxconn.unwrap_or(l.maxconn);
                    let leaving = node.origin == crate::config::Origin::Leaving;
                    let same = |s: &&Arc<Server>| {
                        s.leaving == leaving
                            && s.name == node.name
                            && s.node == i
                            && s.address == node.address
                            && s.source == node.source
                            && s.maxconn == maxconn
                            && Arc::ptr_eq(&s.check, &check)
                    };
                    let old_same = old_listener.and_then(|o| o.servers.iter().find(same).cloned());
                    // The same node's server (kept, renamed, or its REST API moved: `from`),
                    // with its sessions, counters and the operator's setting; else by name.
                    let predecessor = old_listener.and_then(|o| match from[i] {
                        Some(k) => o.servers.iter().find(|s| s.node == k),
                        None => o.servers.iter().find(|s| s.name == node.name),
                    });
                    old_same.unwrap_or_else(|| {
                        Arc::new(
                            match predecessor {
                                Some(p) => Server::succeed(
                                    p,
                                    i,
                                    node.name.clone(),
                                    node.address.clone(),
                                    node.source,
                                    maxconn,
                                    check,
                                ),
                                None => Server::new(
                                    i,
                                    node.name.clone(),
                                    node.address.clone(),
                                    node.source,
                                    maxconn,
                                    check,
                                    sessions,
                                ),
                            }
                            .with_leaving(leaving),
                        )
                    })
                })
                .collect();
            let listener = Arc::new(ListenerState {
                config: l.clone(),
                servers,
                rr: AtomicUsize::new(0),
                queue: carried.map_or_else(Arc::default, |o| Arc::clone(&o.queue)),
                leadership: Arc::clone(&leadership),
                stats: carried.map_or_else(Arc::default, |o| Arc::clone(&o.stats)),
            });
            listener.queue.serve_from(&listener);
            listeners.push(listener);
        }
        if let Some(p) = previous {
            // The leader's node removed by the reload: the write target is none now, said
            // and counted as any leader change (before, nothing said so).
            if let (Some(old), None) = (p.leadership.leader(), leadership.leader()) {
                let name = &p.nodes[old].name;
                leadership.changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(previous = %name, leader = "none", "leader changed: the reload removed the leader's node");
                p.events.push(format!("leader: {name} -> none (the reload removed its node)"));
                crate::sampler::leader_changed(p, Some(name), None);
            }
        }
        Runtime {
            config,
            checks,
            listeners,
            nodes,
            leadership,
            events: previous.map_or_else(Arc::default, |p| Arc::clone(&p.events)),
            history: previous.map_or_else(Arc::default, |p| Arc::clone(&p.history)),
            started: previous.map_or_else(Instant::now, |p| p.started),
        }
    }

    /// True while a listener whose check names the leader has no server whose check admits:
    /// a switchover or failover is in progress, and checks should hunt for the new leader.
    /// An operator's DRAIN or MAINT of the leader is no failover (hunting then probed every
    /// node five times a second for as long as the maintenance lasted).
    pub fn leader_lost(&self) -> bool {
        self.listeners.iter().any(|l| l.config.check.is_leader() && !l.servers.iter().any(|s| s.check.is_up()))
    }

    /// Whether checks probe every node at `hunt_inter`: while the leader is lost (see
    /// [`Runtime::leader_lost`]), for [`HUNT_FOR`] after it was lost or after the leadership
    /// last changed, and after that while a client waits for the leader (in a leader
    /// listener's queue, or asking for the primary). Before, hunting never ended: a standby
    /// cluster behind a `/master` listener, or a cluster down for the night, had every node
    /// probed five times a second for as long as it lasted. The leadership's change counts
    /// too, since a leader listener that never admits (a `/standby-leader` one beside
    /// `/primary`, or one whose servers are another site's) keeps the loss stamp from start-up.
    pub fn hunting(&self) -> bool {
        let lost = self.leader_lost();
        match self.leadership.lost_since(lost) {
            None => false,
            Some(at) => {
                at.elapsed() < HUNT_FOR
                    || self.leadership.since().elapsed() < HUNT_FOR
                    || self.listeners.iter().any(|l| {
                        if l.config.check.is_leader() {
                            !l.queue.is_empty()
                        } else {
                            l.queue.asks_for_primary()
                        }
                    })
            }
        }
    }

    /// The checks of node `node`.
    pub fn checks_of(&self, node: usize) -> impl Iterator<Item = &Arc<Check>> + '_ {
        self.checks.iter().filter(move |c| c.node == node)
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerState>> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    /// The (listener, server) pairs that depend on `check`.
    pub fn servers_of<'a>(
        &'a self,
        check: &'a Arc<Check>,
    ) -> impl Iterator<Item = (&'a Arc<ListenerState>, &'a Arc<Server>)> + 'a {
        self.listeners
            .iter()
            .flat_map(|l| l.servers.iter().map(move |s| (l, s)))
            .filter(move |(_, s)| Arc::ptr_eq(&s.check, check))
    }

    /// Sessions open across all listeners.
    pub fn sessions(&self) -> usize {
        self.listeners.iter().flat_map(|l| &l.servers).map(|s| s.stats.cur.load(Ordering::Relaxed)).sum()
    }
}
