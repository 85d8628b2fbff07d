//! Prometheus exposition of the same snapshot the stats page shows. Names follow HAProxy's
//! exporter where the meaning is the same (`haproxy_server_current_sessions` becomes
//! `pgfront_server_current_sessions`), plus what only pgfront knows: leadership, Patroni
//! roles, timelines and lag, sessions held, reloads.

use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::stats::Snapshot;

/// Renders `snap` in the Prometheus text format.
pub fn render(snap: &Snapshot) -> String {
    let mut m = Metrics::default();
    let server = ["listener", "server"];
    let st = m.gauge("server_status", "Server status: 1 for the current state.", &["listener", "server", "state"]);
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
    let chkfail = m.counter("server_check_failures_total", "Failed health checks.", &server);
    let chkdown = m.counter("server_check_up_down_total", "UP to DOWN transitions.", &server);
    let lastchg = m.gauge("server_check_last_change_seconds", "Seconds since the last status change.", &server);
    let downtime = m.counter("server_downtime_seconds_total", "Seconds spent DOWN.", &server);
    let chkdur = m.fgauge("server_check_duration_seconds", "Duration of the last health check.", &server);
    let chkst = m.gauge(
        "server_check_status",
        "The last health check's result code (HAProxy's: L4CON, L6RSP, L7OK, L7STS, ...): 1 for the current one.",
        &["listener", "server", "state"],
    );
    let active = m.gauge("backend_active_servers", "Servers taking new sessions.", &["listener"]);
    let qcur = m.gauge("backend_current_queue", "Sessions waiting for a server.", &["listener"]);
    let qmax = m.gauge("backend_max_queue", "Most sessions ever waiting at once.", &["listener"]);
    let accepted = m.counter("listener_sessions_total", "Sessions accepted.", &["listener"]);
    let refused = m.counter(
        "listener_refused_total",
        "Sessions refused with a PostgreSQL error before reaching a server.",
        &["listener"],
    );
    let cancels = m.counter("listener_cancels_total", "Cancel requests forwarded.", &["listener"]);
    let min_lsn = m.counter(
        "listener_min_lsn_sessions_total",
        "Sessions that asked for pgfront.min_lsn, by where they went: a replica that had replayed it, the leader (none had within min_lsn_wait), or refused (pgfront.target=replica).",
        &["listener", "served_by"],
    );
    let min_lsn_wait = m.fcounter(
        "listener_min_lsn_wait_seconds_total",
        "Time sessions with pgfront.min_lsn waited for a server, in all (divide by listener_min_lsn_sessions_total).",
        &["listener"],
    );
    for l in &snap.listeners {
        let ln = l.name.as_str();
        active.with_label_values(&[ln]).set(l.servers_up as i64);
        qcur.with_label_values(&[ln]).set(l.queue_cur as i64);
        qmax.with_label_values(&[ln]).set(l.queue_max as i64);
        accepted.with_label_values(&[ln]).inc_by(l.accepted);
        refused.with_label_values(&[ln]).inc_by(l.refused);
        cancels.with_label_values(&[ln]).inc_by(l.cancels);
        for (by, n) in [("replica", l.min_lsn_replica), ("leader", l.min_lsn_leader), ("refused", l.min_lsn_refused)] {
            min_lsn.with_label_values(&[ln, by]).inc_by(n);
        }
        min_lsn_wait.with_label_values(&[ln]).inc_by(l.min_lsn_wait_us as f64 / 1e6);
        for s in &l.servers {
            let v = [ln, s.name.as_str()];
            // As HAProxy's exporter: the operator's DRAIN or MAINT in place of the health state.
            let now = match s.admin {
                // A member gone from Patroni's list that still holds sessions: a drain.
                "READY" if s.status.starts_with("LEAVING") => "DRAIN",
                "READY" if s.up => "UP",
                "READY" => "DOWN",
                other => other,
            };
            for state in ["UP", "DOWN", "DRAIN", "MAINT"] {
                st.with_label_values(&[ln, &s.name, state]).set(i64::from(state == now));
            }
            cur.with_label_values(&v).set(s.cur as i64);
            max.with_label_values(&v).set(s.max as i64);
            lim.with_label_values(&v).set(s.limit as i64);
            tot.with_label_values(&v).inc_by(s.total);
            bin.with_label_values(&v).inc_by(s.bytes_in);
            bout.with_label_values(&v).inc_by(s.bytes_out);
            econ.with_label_values(&v).inc_by(s.conn_errors);
            wretr.with_label_values(&v).inc_by(s.retries);
            wredis.with_label_values(&v).inc_by(s.redispatches);
            chkfail.with_label_values(&v).inc_by(s.check_failures);
            chkdown.with_label_values(&v).inc_by(s.downs);
            lastchg.with_label_values(&v).set(s.last_change_secs as i64);
            downtime.with_label_values(&v).inc_by(s.downtime_secs);
            chkdur.with_label_values(&v).set(s.check_duration_ms.unwrap_or(0) as f64 / 1000.0);
            if let Some(code) = s.check_code {
                chkst.with_label_values(&[ln, &s.name, code]).set(1);
            }
        }
    }
    let node = ["node"];
    let role = m.gauge("node_role", "The node's role per Patroni: 1 for the current role.", &["node", "role"]);
    let leader = m.gauge("node_is_leader", "1 for the node pgfront sends writes to.", &node);
    let timeline = m.gauge("node_timeline", "The node's PostgreSQL timeline.", &node);
    let lag = m.gauge("node_replication_lag_bytes", "Replay lag behind the leader, in bytes.", &node);
    let expiry = m.gauge(
        "node_check_cert_expiry_timestamp_seconds",
        "When the certificate of the node's REST API (checked over HTTPS) expires, in seconds since the epoch.",
        &node,
    );
    for n in &snap.nodes {
        leader.with_label_values(&[&n.name]).set(i64::from(n.is_leader));
        if let Some(r) = &n.role {
            role.with_label_values(&[&n.name, r]).set(1);
        }
        if let Some(t) = n.timeline {
            timeline.with_label_values(&[&n.name]).set(t as i64);
        }
        if let Some(b) = n.lag_bytes {
            lag.with_label_values(&[&n.name]).set(b as i64);
        }
        if let Some(t) = n.check_cert_not_after {
            expiry.with_label_values(&[&n.name]).set(t);
        }
    }
    let none: [&str; 0] = [];
    m.counter("leader_changes_total", "Changes of the write target (including to none).", &none)
        .with_label_values(&none)
        .inc_by(snap.leader_changes);
    m.gauge("leader_conflict", "1 while several nodes claim leadership on one timeline (writes held).", &none)
        .with_label_values(&none)
        .set(i64::from(snap.leader_conflict));
    m.counter(
        "cluster_identity_changes_total",
        "Changes of the cluster's system identifier: the cluster was rebuilt and its timelines started over.",
        &none,
    )
    .with_label_values(&none)
    .inc_by(snap.identity_changes);
    if let Some(id) = &snap.system_identifier {
        m.gauge(
            "cluster_info",
            "The cluster pgfront follows, by Patroni's database_system_identifier.",
            &["system_identifier"],
        )
        .with_label_values(&[id])
        .set(1);
    }
    m.gauge("sessions_held", "Sessions waiting in a queue, e.g. for a new leader.", &none)
        .with_label_values(&none)
        .set(snap.sessions_held as i64);
    m.gauge("current_sessions", "Sessions open across listeners.", &none)
        .with_label_values(&none)
        .set(snap.sessions as i64);
    let reloads = m.counter("config_reloads_total", "Configuration reloads by result.", &["result"]);
    reloads.with_label_values(&["ok"]).inc_by(snap.reloads_ok);
    reloads.with_label_values(&["failed"]).inc_by(snap.reloads_failed);
    m.gauge("config_last_reload_successful", "0 while the last reload was refused.", &none)
        .with_label_values(&none)
        .set(i64::from(snap.reload_error.is_none()));
    if let Some(d) = &snap.discovery {
        m.gauge("discovery_members", "Members of Patroni's member list in use.", &none)
            .with_label_values(&none)
            .set(d.members as i64);
        m.gauge(
            "discovery_refused_members",
            "Members the last /cluster answer named but that are not used (outside discovery_allow, no address).",
            &none,
        )
        .with_label_values(&none)
        .set(d.refused as i64);
        m.counter("discovery_changes_total", "Member sets applied (joins, leaves, address changes).", &none)
            .with_label_values(&none)
            .inc_by(d.changes);
        m.counter(
            "discovery_errors_total",
            "Discovery rounds in which no REST API answered with a member list.",
            &none,
        )
        .with_label_values(&none)
        .inc_by(d.errors);
        m.counter("discovery_requests_total", "GET /cluster requests made.", &none)
            .with_label_values(&none)
            .inc_by(d.requests);
    }
    m.gauge("build_info", "pgfront's version.", &["version"]).with_label_values(&[snap.version]).set(1);
    m.encode()
}

/// A registry made per scrape: the snapshot already holds every value, so nothing is kept
/// between scrapes and no metric can go stale.
#[derive(Default)]
struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(format!("pgfront_{name}"), help), labels).expect("valid metric");
        self.registry.register(Box::new(g.clone())).expect("unique metric");
        g
    }

    fn fgauge(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(format!("pgfront_{name}"), help), labels).expect("valid metric");
        self.registry.register(Box::new(g.clone())).expect("unique metric");
        g
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(format!("pgfront_{name}"), help), labels).expect("valid metric");
        self.registry.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    fn fcounter(&mut self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let c = CounterVec::new(Opts::new(format!("pgfront_{name}"), help), labels).expect("valid metric");
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
