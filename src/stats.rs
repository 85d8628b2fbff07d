//! One snapshot type that every view reads (stats page, CSV, JSON, and later Prometheus),
//! built from the same atomics and check reports, so the views cannot disagree.

use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::time::Instant;

use std::time::UNIX_EPOCH;

use crate::cluster::role::{self, Wants};
use crate::cluster::{AdminState, ListenerState, NodeState, Server};
use crate::config::CheckMode;
use crate::health::ProbeResult;
use crate::history::{Failover, Segment, Series};
use crate::retired::RetiredSessions;
use crate::state::{ClusterState, Shared};

/// One cluster's view. For a file without `[[cluster]]` it is the whole process; with
/// them, the top level is the first cluster and `clusters` holds every cluster's (so the
/// keys scripts read keep their meaning for the single unnamed cluster).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The cluster: `""` for the unnamed cluster of a file without `[[cluster]]`.
    pub cluster: String,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub sessions: usize,
    /// The node that takes writes now, if any.
    pub leader: Option<String>,
    pub leader_since_secs: u64,
    /// Several nodes claim leadership and no timeline tells the newest: writes are held.
    pub leader_conflict: bool,
    pub leader_changes: u64,
    /// Patroni's `database_system_identifier` of the cluster pgfront follows.
    pub system_identifier: Option<String>,
    /// Times the system identifier changed (a rebuilt cluster).
    pub identity_changes: u64,
    /// Sessions waiting in a queue now, across listeners.
    pub sessions_held: usize,
    pub nodes: Vec<NodeSnap>,
    pub listeners: Vec<ListenerSnap>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Why the last reload was refused, while it is the latest.
    pub reload_error: Option<String>,
    /// Recent transitions, newest first.
    pub events: Vec<EventSnap>,
    /// The last hour at ten-second resolution, one column per measure.
    pub history: Series,
    /// Who led when over the last hour, oldest first.
    pub leader_timeline: Vec<Segment>,
    /// Nodes from Patroni's member list, when `discovery` is on.
    pub discovery: Option<DiscoverySnap>,
    /// The last failovers (leader changes), newest first, with what they cost.
    pub failovers: Vec<Failover>,
    /// Every cluster's snapshot, in file order, when the file has `[[cluster]]` tables
    /// (empty otherwise: the top level is the one unnamed cluster).
    pub clusters: Vec<Snapshot>,
    /// Places held under global maxconn now, by every session past its accept (starting,
    /// queued, open, on a removed listener), and the global maxconn in effect: the
    /// process's, the same in every cluster's snapshot.
    pub global_sessions: usize,
    pub global_maxconn: usize,
    /// Sessions still open on servers a reload or discovery took away (a removed listener
    /// or cluster): they run to their end and hold their places. Process-wide, at the top
    /// level only.
    pub retired: Vec<RetiredSessions>,
}

/// A node as Patroni describes it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSnap {
    pub name: String,
    pub rest: String,
    pub is_leader: bool,
    pub role: Option<String>,
    pub state: Option<String>,
    pub timeline: Option<u64>,
    pub replication_state: Option<String>,
    /// Replay lag behind the leader, in bytes.
    pub lag_bytes: Option<u64>,
    pub tags: std::collections::BTreeMap<String, serde_json::Value>,
    /// The last answer of its REST API, e.g. `L7OK/200 in 1ms`.
    pub last_check: String,
    /// Over HTTPS: when the REST API's certificate expires (seconds since the epoch).
    pub check_cert_not_after: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventSnap {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerSnap {
    pub name: String,
    pub bind: String,
    pub balance: &'static str,
    /// The admitting check, e.g. `OPTIONS /master -> 200`.
    pub check: String,
    pub queue_cur: usize,
    pub queue_max: usize,
    pub accepted: u64,
    pub refused: u64,
    pub cancels: u64,
    /// Sessions with `pgfront.min_lsn` served by a replica that had replayed it, sent to
    /// the leader, and refused; and their waits for a server in all (microseconds).
    pub min_lsn_replica: u64,
    pub min_lsn_leader: u64,
    pub min_lsn_refused: u64,
    pub min_lsn_wait_us: u64,
    /// The listener's check names the leader (a write listener).
    pub writes: bool,
    pub servers_up: usize,
    pub servers: Vec<ServerSnap>,
}

/// What discovery found and did.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoverySnap {
    /// Members in use (leaving ones not counted).
    pub members: usize,
    /// Members the last answer named but that are not used (outside discovery_allow, ...).
    pub refused: usize,
    /// Member sets applied.
    pub changes: u64,
    /// Rounds in which no source answered with a member list.
    pub errors: u64,
    /// `GET /cluster` requests made.
    pub requests: u64,
    /// The REST API that answered last.
    pub source: Option<String>,
    /// Why the last round failed, while it is the latest.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSnap {
    pub name: String,
    pub address: String,
    /// HAProxy's status text: `UP`, `DOWN`, `UP 1/3`, `DOWN 1/2`.
    pub status: String,
    pub up: bool,
    /// The node's role per Patroni, so a replica on a write listener reads as such.
    pub role: Option<String>,
    /// The node's role as pgfront sees it: `leader` (where writes go), else Patroni's role;
    /// in `http` check mode, from which of its checks pass.
    pub node_role: Option<String>,
    /// The latest check said no only because the node has the other role (a replica on a
    /// leader check, the leader on a replica check): its expected state, not a failure.
    pub other_role: bool,
    /// The latest check failed for a real reason (no answer, garbage, a status its role
    /// does not explain).
    pub failing: bool,
    /// Seconds since the status last changed.
    pub last_change_secs: u64,
    /// What the latest check found.
    pub reason: String,
    /// Why the status last changed.
    pub change_reason: String,
    /// `L7OK`, `L7STS`, ... of the last check, if any ran.
    pub check_code: Option<&'static str>,
    /// HTTP status of the last check, if one was read.
    pub check_status: Option<u16>,
    pub check_duration_ms: Option<u64>,
    pub check_detail: String,
    /// HAProxy's rendering of the last check, e.g. `L7OK/200 in 1ms`.
    pub last_check: String,
    pub check_failures: u64,
    pub downs: u64,
    pub downtime_secs: u64,
    pub cur: usize,
    pub max: usize,
    pub limit: usize,
    pub total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub conn_errors: u64,
    pub retries: u64,
    pub redispatches: u64,
    /// Sessions cut by a mark-down or an operator.
    pub killed: u64,
    /// The operator's setting: `READY`, `DRAIN` or `MAINT`.
    pub admin: &'static str,
    /// The last connect or handshake failure that was the server's doing.
    pub last_error: Option<String>,
}

impl Snapshot {
    pub fn of(shared: &Shared) -> Snapshot {
        let all = shared.clusters.load();
        let mut top = Snapshot::of_cluster(shared, &all[0]);
        top.retired = shared.retired.open(&shared.runtimes());
        if all.len() > 1 || !all[0].name.is_empty() {
            top.clusters = all.iter().map(|c| Snapshot::of_cluster(shared, c)).collect();
        }
        top
    }

    /// Each cluster's snapshot: the clusters of a multi-cluster file, else this one.
    pub fn each(&self) -> impl Iterator<Item = &Snapshot> + '_ {
        let own = self.clusters.is_empty().then_some(self);
        own.into_iter().chain(self.clusters.iter())
    }

    /// One cluster's snapshot.
    pub fn of_cluster(shared: &Shared, cluster: &ClusterState) -> Snapshot {
        let rt = cluster.runtime();
        let now = Instant::now();
        let history = rt.history.view();
        let leader = rt.leadership.leader();
        let leader_pos = leader.and_then(|l| rt.nodes[l].report().status).and_then(|s| s.xlog.location);
        let nodes: Vec<NodeSnap> =
            rt.nodes.iter().enumerate().map(|(i, n)| node(n, leader == Some(i), leader_pos)).collect();
        let roles: Vec<Option<String>> = match rt.config.global.check_mode {
            CheckMode::Patroni => nodes.iter().map(|n| role::from_patroni(n.is_leader, n.role.as_deref())).collect(),
            CheckMode::Http => (0..nodes.len())
                .map(|i| {
                    role::from_checks(
                        rt.checks_of(i)
                            .map(|c| (Wants::of(&c.spec), c.report().last.as_ref().is_some_and(ProbeResult::passed))),
                    )
                })
                .collect(),
        };
        Snapshot {
            cluster: cluster.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: now.saturating_duration_since(rt.started).as_secs(),
            sessions: rt.sessions(),
            leader: leader.map(|l| rt.nodes[l].name.clone()),
            leader_since_secs: now.saturating_duration_since(rt.leadership.since()).as_secs(),
            leader_conflict: rt.leadership.conflict(),
            leader_changes: rt.leadership.changes.load(Ordering::Relaxed),
            system_identifier: rt.leadership.system_id(),
            identity_changes: rt.leadership.identity_changes.load(Ordering::Relaxed),
            sessions_held: rt.listeners.iter().map(|l| l.stats.queue_cur.load(Ordering::Relaxed)).sum(),
            listeners: rt.listeners.iter().map(|l| listener(l, now, &nodes, &roles)).collect(),
            nodes,
            reloads_ok: shared.reloads.ok.load(Ordering::Relaxed),
            reloads_failed: shared.reloads.failed.load(Ordering::Relaxed),
            reload_error: shared.reloads.last_error(),
            history: history.series,
            leader_timeline: history.leader_timeline,
            discovery: rt.config.global.discovery.as_ref().map(|_| {
                let d = &cluster.discovery;
                let (source, error) = d.last();
                DiscoverySnap {
                    members: d.members.load(Ordering::Relaxed),
                    refused: d.refused.load(Ordering::Relaxed),
                    changes: d.changes.load(Ordering::Relaxed),
                    errors: d.errors.load(Ordering::Relaxed),
                    requests: d.requests.load(Ordering::Relaxed),
                    source,
                    error,
                }
            }),
            failovers: history.failovers,
            events: rt
                .events
                .recent()
                .into_iter()
                .map(|e| EventSnap { at: e.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()), text: e.text })
                .collect(),
            clusters: Vec::new(),
            global_sessions: shared.places_held(),
            global_maxconn: shared.maxconn_in_effect(),
            retired: Vec::new(),
        }
    }
}

fn node(n: &NodeState, is_leader: bool, leader_pos: Option<u64>) -> NodeSnap {
    let r = n.report();
    let st = r.status.as_ref();
    NodeSnap {
        name: n.name.clone(),
        rest: n.target.clone(),
        is_leader,
        role: st.map(|s| s.role.clone()),
        state: st.map(|s| s.state.clone()),
        timeline: st.and_then(|s| s.timeline),
        replication_state: st.and_then(|s| s.replication_state.clone()),
        lag_bytes: st.filter(|s| s.role == "replica").and_then(|s| s.lag(leader_pos)),
        tags: st.map(|s| s.tags.clone()).unwrap_or_default(),
        last_check: r.last.as_ref().map_or_else(|| "not checked yet".to_owned(), |l| l.summary()),
        check_cert_not_after: n.cert_not_after(),
    }
}

fn listener(l: &ListenerState, now: Instant, nodes: &[NodeSnap], roles: &[Option<String>]) -> ListenerSnap {
    let c = &l.config;
    ListenerSnap {
        name: c.name.clone(),
        bind: c.bind.to_string(),
        balance: c.balance.as_str(),
        check: format!("{} {} -> {}", c.check.method, c.check.path, c.check.expect),
        queue_cur: l.stats.queue_cur.load(Ordering::Relaxed),
        queue_max: l.stats.queue_max.load(Ordering::Relaxed),
        accepted: l.stats.accepted.load(Ordering::Relaxed),
        refused: l.stats.refused.load(Ordering::Relaxed),
        cancels: l.stats.cancels.load(Ordering::Relaxed),
        min_lsn_replica: l.stats.min_lsn_replica.load(Ordering::Relaxed),
        min_lsn_leader: l.stats.min_lsn_leader.load(Ordering::Relaxed),
        min_lsn_refused: l.stats.min_lsn_refused.load(Ordering::Relaxed),
        min_lsn_wait_us: l.stats.min_lsn_wait_us.load(Ordering::Relaxed),
        writes: c.check.is_leader(),
        servers_up: l.servers_up(),
        servers: l
            .servers
            .iter()
            .map(|s| {
                let role = nodes.get(s.node).and_then(|n| n.role.clone());
                server(s, now, role, roles.get(s.node).cloned().flatten())
            })
            .collect(),
    }
}

fn server(s: &Server, now: Instant, role: Option<String>, node_role: Option<String>) -> ServerSnap {
    let report = s.check.report();
    let st = &s.stats;
    let last = report.last.as_ref();
    let other_role = role::answered_other_role(Wants::of(&s.check.spec), node_role.as_deref(), last);
    ServerSnap {
        name: s.name.clone(),
        address: s.address.clone(),
        // HAProxy shows the operator's setting in place of the health state.
        status: match s.admin() {
            // A member gone from Patroni's list: no new sessions, open ones until its check fails.
            AdminState::Ready if s.leaving => format!("LEAVING {}", report.machine.label()),
            AdminState::Ready => report.machine.label(),
            other => other.as_str().to_owned(),
        },
        up: s.is_up(),
        role,
        node_role,
        other_role,
        failing: last.is_some_and(|r| !r.passed()) && !other_role,
        last_change_secs: now.saturating_duration_since(report.last_change).as_secs(),
        reason: report.reason.clone(),
        change_reason: report.change_reason.clone(),
        check_code: last.map(|r| r.code.as_str()),
        check_status: last.and_then(|r| r.status),
        check_duration_ms: last.map(|r| r.duration.as_millis() as u64),
        check_detail: last.map(|r| r.detail.clone()).unwrap_or_default(),
        last_check: last.map_or_else(|| "not checked yet".to_owned(), |r| r.summary()),
        check_failures: report.failures,
        downs: report.downs,
        downtime_secs: report.downtime(now).as_secs(),
        cur: st.cur.load(Ordering::Relaxed),
        max: st.max.load(Ordering::Relaxed),
        limit: s.maxconn,
        total: st.total.load(Ordering::Relaxed),
        bytes_in: st.bytes_in.load(Ordering::Relaxed),
        bytes_out: st.bytes_out.load(Ordering::Relaxed),
        conn_errors: st.conn_errors.load(Ordering::Relaxed),
        retries: st.retries.load(Ordering::Relaxed),
        redispatches: st.redispatches.load(Ordering::Relaxed),
        killed: st.killed.load(Ordering::Relaxed),
        admin: s.admin().as_str(),
        last_error: st.last_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, e)| e.clone()),
    }
}

/// HAProxy-compatible CSV (`show stat` field names), one row per server and a BACKEND
/// row per listener, so scripts written for HAProxy's `;csv` keep working. pgfront's own
/// `role` comes last, so every HAProxy column keeps its position.
pub fn csv(s: &Snapshot) -> String {
    let mut out = String::from(
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,econ,wretr,wredis,status,chkfail,chkdown,lastchg,downtime,check_status,check_code,check_duration,role\n",
    );
    for l in s.each().flat_map(|c| &c.listeners) {
        for v in &l.servers {
            let row = [
                l.name.clone(),
                v.name.clone(),
                String::new(),
                String::new(),
                v.cur.to_string(),
                v.max.to_string(),
                v.limit.to_string(),
                v.total.to_string(),
                v.bytes_in.to_string(),
                v.bytes_out.to_string(),
                v.conn_errors.to_string(),
                v.retries.to_string(),
                v.redispatches.to_string(),
                v.status.clone(),
                v.check_failures.to_string(),
                v.downs.to_string(),
                v.last_change_secs.to_string(),
                v.downtime_secs.to_string(),
                // HAProxy's meanings: check_status is the result (L7OK), check_code the HTTP code.
                v.check_code.unwrap_or("").to_string(),
                v.check_status.map(|c| c.to_string()).unwrap_or_default(),
                v.check_duration_ms.map(|c| c.to_string()).unwrap_or_default(),
                csv_field(v.node_role.as_deref().unwrap_or("")),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
        let sum = |f: fn(&ServerSnap) -> u64| l.servers.iter().map(f).sum::<u64>().to_string();
        let row = [
            l.name.clone(),
            "BACKEND".to_owned(),
            l.queue_cur.to_string(),
            l.queue_max.to_string(),
            sum(|v| v.cur as u64),
            sum(|v| v.max as u64),
            sum(|v| v.limit as u64),
            sum(|v| v.total),
            sum(|v| v.bytes_in),
            sum(|v| v.bytes_out),
            sum(|v| v.conn_errors),
            sum(|v| v.retries),
            sum(|v| v.redispatches),
            if l.servers_up > 0 { "UP" } else { "DOWN" }.to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A role is Patroni's word: keep anything that would break a CSV row out of it.
fn csv_field(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, ',' | '\n' | '\r' | '"')).collect()
}
