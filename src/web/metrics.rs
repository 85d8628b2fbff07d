//! Prometheus exposition of the same snapshot the stats page shows. Names follow HAProxy's
//! exporter where the meaning is the same (`haproxy_server_current_sessions` becomes
//! `pgfront_server_current_sessions`), plus what only pgfront knows: leadership, Patroni
//! roles, timelines and lag, sessions held, reloads.
//!
//! Every series of a cluster carries a `cluster` label: the `[[cluster]]`'s name, or `""`
//! for the unnamed cluster of a file without `[[cluster]]`. Prometheus treats an empty
//! label as absent, so for that cluster the label is left out of the exposition: the
//! output of a single-cluster file is exactly what it was before `[[cluster]]` existed, and
//! queries, alert rules and scripts written for it see the same series. Process-wide
//! series (reloads, build info) have none.

use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::stats::Snapshot;

/// Renders `snap` in the Prometheus text format.
pub fn render(snap: &Snapshot) -> String {
    // A file is either one unnamed cluster or named clusters only (mixing is refused).
    let on = snap.each().any(|c| !c.cluster.is_empty());
    let mut m = Metrics { registry: Registry::new(), cluster: on };
    let server = ["cluster", "listener", "server"];
    let st = m.gauge(
        "server_status",
        "Server status: 1 for the current state.",
        &["cluster", "listener", "server", "state"],
    );
    let cur = m.gauge("server_current_sessions", "Sessions open on the server.", &server);
    let max = m.gauge("server_max_sessions", "Most sessions ever open at once on the server.", &server);
    let lim = m.gauge("server_limit_sessions", "The server's maxconn.", &server);
    let tot = m.counter("server_sessions_total", "Sessions sent to the server.", &server);
    let bin = m.counter("server_bytes_in_total", "Bytes from clients to the server.", &server);
    let bout = m.counter("server_bytes_out_total", "Bytes from the server to clients.", &server);
    let econ = m.counter("server_connection_errors_total", "Failed connects to the server.", &server);
    let wretr = m.counter("server_retry_warnings_total", "Connect retries on the server.", &server);
    let wredis = m.counter(
        "server_redispatch_warnings_total",
        "Sessions moved to another server after a failed connect.",
        &server,
    );
    let killed = m.counter(
        "server_killed_sessions_total",
        "Sessions cut by a mark-down (on_marked_down), a former leader's end or an operator.",
        &server,
    );
    let chkfail = m.counter("server_check_failures_total", "Failed health checks.", &server);
    let chkdown = m.counter("server_check_up_down_total", "UP to DOWN transitions.", &server);
    let lastchg = m.gauge("server_check_last_change_seconds", "Seconds since the last status change.", &server);
    let downtime = m.counter("server_downtime_seconds_total", "Seconds spent DOWN.", &server);
    let chkdur = m.fgauge("server_check_duration_seconds", "Duration of the last health check.", &server);
    let chkst = m.gauge(
        "server_check_status",
        "The last health check's result code (HAProxy's: L4CON, L6RSP, L7OK, L7STS, ...): 1 for the current one.",
        &["cluster", "listener", "server", "state"],
    );
    let active = m.gauge("backend_active_servers", "Servers taking new sessions.", &["cluster", "listener"]);
    let qcur = m.gauge("backend_current_queue", "Sessions waiting for a server.", &["cluster", "listener"]);
    let qmax = m.gauge("backend_max_queue", "Most sessions ever waiting at once.", &["cluster", "listener"]);
    let accepted = m.counter("listener_sessions_total", "Sessions accepted.", &["cluster", "listener"]);
    let refused = m.counter(
        "listener_refused_total",
        "Sessions refused with a PostgreSQL error before reaching a server.",
        &["cluster", "listener"],
    );
    let cancels = m.counter("listener_cancels_total", "Cancel requests forwarded.", &["cluster", "listener"]);
    let min_lsn = m.counter(
        "listener_min_lsn_sessions_total",
        "Sessions that asked for pgfront.min_lsn, by where they went: a replica that had replayed it, the leader (none had within min_lsn_wait), or refused (pgfront.target=replica).",
        &["cluster", "listener", "served_by"],
    );
    let min_lsn_wait = m.fcounter(
        "listener_min_lsn_wait_seconds_total",
        "Time sessions with pgfront.min_lsn waited for a server, in all (divide by listener_min_lsn_sessions_total).",
        &["cluster", "listener"],
    );
    for c in snap.each() {
        let cn = c.cluster.as_str();
        for l in &c.listeners {
            let ln = l.name.as_str();
            active.with_label_values(&lv(on, &[cn, ln])).set(l.servers_up as i64);
            qcur.with_label_values(&lv(on, &[cn, ln])).set(l.queue_cur as i64);
            qmax.with_label_values(&lv(on, &[cn, ln])).set(l.queue_max as i64);
            accepted.with_label_values(&lv(on, &[cn, ln])).inc_by(l.accepted);
            refused.with_label_values(&lv(on, &[cn, ln])).inc_by(l.refused);
            cancels.with_label_values(&lv(on, &[cn, ln])).inc_by(l.cancels);
            for (by, n) in
                [("replica", l.min_lsn_replica), ("leader", l.min_lsn_leader), ("refused", l.min_lsn_refused)]
            {
                min_lsn.with_label_values(&lv(on, &[cn, ln, by])).inc_by(n);
            }
            min_lsn_wait.with_label_values(&lv(on, &[cn, ln])).inc_by(l.min_lsn_wait_us as f64 / 1e6);
            for s in &l.servers {
                let v = [cn, ln, s.name.as_str()];
                // As HAProxy's exporter: the operator's DRAIN or MAINT in place of the health state.
                let now = match s.admin {
                    // A member gone from Patroni's list that still holds sessions: a drain.
                    "READY" if s.status.starts_with("LEAVING") => "DRAIN",
                    "READY" if s.up => "UP",
                    "READY" => "DOWN",
                    other => other,
                };
                for state in ["UP", "DOWN", "DRAIN", "MAINT"] {
                    st.with_label_values(&lv(on, &[cn, ln, &s.name, state])).set(i64::from(state == now));
                }
                cur.with_label_values(&lv(on, &v)).set(s.cur as i64);
                max.with_label_values(&lv(on, &v)).set(s.max as i64);
                lim.with_label_values(&lv(on, &v)).set(s.limit as i64);
                tot.with_label_values(&lv(on, &v)).inc_by(s.total);
                bin.with_label_values(&lv(on, &v)).inc_by(s.bytes_in);
                bout.with_label_values(&lv(on, &v)).inc_by(s.bytes_out);
                econ.with_label_values(&lv(on, &v)).inc_by(s.conn_errors);
                wretr.with_label_values(&lv(on, &v)).inc_by(s.retries);
                wredis.with_label_values(&lv(on, &v)).inc_by(s.redispatches);
                killed.with_label_values(&lv(on, &v)).inc_by(s.killed);
                chkfail.with_label_values(&lv(on, &v)).inc_by(s.check_failures);
                chkdown.with_label_values(&lv(on, &v)).inc_by(s.downs);
                lastchg.with_label_values(&lv(on, &v)).set(s.last_change_secs as i64);
                downtime.with_label_values(&lv(on, &v)).inc_by(s.downtime_secs);
                chkdur.with_label_values(&lv(on, &v)).set(s.check_duration_ms.unwrap_or(0) as f64 / 1000.0);
                if let Some(code) = s.check_code {
                    chkst.with_label_values(&lv(on, &[cn, ln, &s.name, code])).set(1);
                }
            }
        }
    }
    let node = ["cluster", "node"];
    let role =
        m.gauge("node_role", "The node's role per Patroni: 1 for the current role.", &["cluster", "node", "role"]);
    let leader = m.gauge("node_is_leader", "1 for the node pgfront sends writes to.", &node);
    let timeline = m.gauge("node_timeline", "The node's PostgreSQL timeline.", &node);
    let lag = m.gauge("node_replication_lag_bytes", "Replay lag behind the leader, in bytes.", &node);
    let expiry = m.gauge(
        "node_check_cert_expiry_timestamp_seconds",
        "When the certificate of the node's REST API (checked over HTTPS) expires, in seconds since the epoch.",
        &node,
    );
    for c in snap.each() {
        let cn = c.cluster.as_str();
        for n in &c.nodes {
            leader.with_label_values(&lv(on, &[cn, &n.name])).set(i64::from(n.is_leader));
            if let Some(r) = &n.role {
                role.with_label_values(&lv(on, &[cn, &n.name, r])).set(1);
            }
            if let Some(t) = n.timeline {
                timeline.with_label_values(&lv(on, &[cn, &n.name])).set(t as i64);
            }
            if let Some(b) = n.lag_bytes {
                lag.with_label_values(&lv(on, &[cn, &n.name])).set(b as i64);
            }
            if let Some(t) = n.check_cert_not_after {
                expiry.with_label_values(&lv(on, &[cn, &n.name])).set(t);
            }
        }
    }
    let by_cluster = ["cluster"];
    let changes = m.counter("leader_changes_total", "Changes of the write target (including to none).", &by_cluster);
    let conflict = m.gauge(
        "leader_conflict",
        "1 while several nodes claim leadership and no timeline tells the newest (writes held).",
        &by_cluster,
    );
    let identity = m.counter(
        "cluster_identity_changes_total",
        "Changes of the cluster's system identifier: the cluster was rebuilt and its timelines started over.",
        &by_cluster,
    );
    let info = m.gauge(
        "cluster_info",
        "The cluster pgfront follows, by Patroni's database_system_identifier.",
        &["cluster", "system_identifier"],
    );
    let held = m.gauge("sessions_held", "Sessions waiting in a queue, e.g. for a new leader.", &by_cluster);
    let sessions = m.gauge("current_sessions", "Sessions open across listeners.", &by_cluster);
    let discovering = snap.each().any(|c| c.discovery.is_some());
    let members =
        discovering.then(|| m.gauge("discovery_members", "Members of Patroni's member list in use.", &by_cluster));
    let refused_members = discovering.then(|| {
        m.gauge(
            "discovery_refused_members",
            "Members the last /cluster answer named but that are not used (outside discovery_allow, no address).",
            &by_cluster,
        )
    });
    let dchanges = discovering.then(|| {
        m.counter("discovery_changes_total", "Member sets applied (joins, leaves, address changes).", &by_cluster)
    });
    let derrors = discovering.then(|| {
        m.counter(
            "discovery_errors_total",
            "Discovery rounds in which no REST API answered with a member list.",
            &by_cluster,
        )
    });
    let drequests =
        discovering.then(|| m.counter("discovery_requests_total", "GET /cluster requests made.", &by_cluster));
    for c in snap.each() {
        let cn = [c.cluster.as_str()];
        changes.with_label_values(&lv(on, &cn)).inc_by(c.leader_changes);
        conflict.with_label_values(&lv(on, &cn)).set(i64::from(c.leader_conflict));
        identity.with_label_values(&lv(on, &cn)).inc_by(c.identity_changes);
        if let Some(id) = &c.system_identifier {
            info.with_label_values(&lv(on, &[cn[0], id])).set(1);
        }
        held.with_label_values(&lv(on, &cn)).set(c.sessions_held as i64);
        sessions.with_label_values(&lv(on, &cn)).set(c.sessions as i64);
        if let (Some(d), Some(mm), Some(rm), Some(dc), Some(de), Some(dr)) =
            (&c.discovery, &members, &refused_members, &dchanges, &derrors, &drequests)
        {
            mm.with_label_values(&lv(on, &cn)).set(d.members as i64);
            rm.with_label_values(&lv(on, &cn)).set(d.refused as i64);
            dc.with_label_values(&lv(on, &cn)).inc_by(d.changes);
            de.with_label_values(&lv(on, &cn)).inc_by(d.errors);
            dr.with_label_values(&lv(on, &cn)).inc_by(d.requests);
        }
    }
    let none: [&str; 0] = [];
    m.gauge(
        "global_sessions",
        "Places held under global maxconn: every session past its accept, on any listener.",
        &none,
    )
    .with_label_values(&none)
    .set(snap.global_sessions as i64);
    m.gauge("global_maxconn", "The global maxconn in effect (as the descriptor limit holds it).", &none)
        .with_label_values(&none)
        .set(snap.global_maxconn as i64);
    // One figure, always exported (alerts and panels can rely on it); which listeners and
    // servers hold them is in /status.json (`retired`), the page and `pgfront status`.
    m.gauge(
        "retired_sessions",
        "Sessions still open on listeners, clusters or servers a reload removed: they run to their end and hold places under global maxconn.",
        &none,
    )
    .with_label_values(&none)
    .set(snap.retired.iter().map(|r| r.sessions).sum::<usize>() as i64);
    let reloads = m.counter("config_reloads_total", "Configuration reloads by result.", &["result"]);
    reloads.with_label_values(&["ok"]).inc_by(snap.reloads_ok);
    reloads.with_label_values(&["failed"]).inc_by(snap.reloads_failed);
    m.gauge("config_last_reload_successful", "0 while the last reload was refused.", &none)
        .with_label_values(&none)
        .set(i64::from(snap.reload_error.is_none()));
    m.gauge("build_info", "pgfront's version.", &["version"]).with_label_values(&[snap.version]).set(1);
    m.encode()
}

/// `values` without the leading cluster name when the exposition has no `cluster` label.
fn lv<'a>(on: bool, values: &[&'a str]) -> Vec<&'a str> {
    if on {
        values.to_vec()
    } else {
        values[1..].to_vec()
    }
}

/// A registry made per scrape: the snapshot already holds every value, so nothing is kept
/// between scrapes and no metric can go stale.
struct Metrics {
    registry: Registry,
    /// Whether series carry the `cluster` label (named clusters), see the module's doc.
    cluster: bool,
}

impl Metrics {
    /// `labels` without a leading `cluster` when the exposition has no such label.
    fn labels<'a>(&self, labels: &[&'a str]) -> Vec<&'a str> {
        match labels.first() {
            Some(&"cluster") if !self.cluster => labels[1..].to_vec(),
            _ => labels.to_vec(),
        }
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g =
            IntGaugeVec::new(Opts::new(format!("pgfront_{name}"), help), &self.labels(labels)).expect("valid metric");
        self.registry.register(Box::new(g.clone())).expect("unique metric");
        g
    }

    fn fgauge(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(format!("pgfront_{name}"), help), &self.labels(labels)).expect("valid metric");
        self.registry.register(Box::new(g.clone())).expect("unique metric");
        g
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c =
            IntCounterVec::new(Opts::new(format!("pgfront_{name}"), help), &self.labels(labels)).expect("valid metric");
        self.registry.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    fn fcounter(&mut self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let c =
            CounterVec::new(Opts::new(format!("pgfront_{name}"), help), &self.labels(labels)).expect("valid metric");
        self.registry.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
