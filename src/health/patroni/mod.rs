//! Patroni's status JSON and the rules that turn one node answer into every listener's
//! verdict, as Patroni's REST API would have answered each endpoint. Pure functions, so
//! every rule is tested without a cluster.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Endpoint, ReplicaFilter};

/// The part of `GET /patroni` (or any GET health endpoint) that pgfront uses. Unknown
/// fields are ignored; missing ones take their defaults, so older Patroni versions parse.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub timeline: Option<u64>,
    #[serde(default)]
    pub xlog: Xlog,
    #[serde(default)]
    pub replication_state: Option<String>,
    /// On the leader: its standbys and their sync state.
    #[serde(default)]
    pub replication: Vec<Standby>,
    #[serde(default)]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub pause: Option<bool>,
    #[serde(default)]
    pub patroni: PatroniInfo,
    /// Which database this is (`pg_control`'s system identifier): the same on every member
    /// of one cluster, new when the cluster is re-bootstrapped or restored.
    #[serde(default)]
    pub database_system_identifier: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Xlog {
    /// The primary's current WAL position.
    pub location: Option<u64>,
    pub received_location: Option<u64>,
    pub replayed_location: Option<u64>,
    /// When the last replayed transaction committed on the primary, as PostgreSQL prints
    /// it (`2026-11-26 06:38:20.796853+00:00`).
    pub replayed_timestamp: Option<String>,
    pub paused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Standby {
    #[serde(default)]
    pub application_name: String,
    pub state: Option<String>,
    pub sync_state: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PatroniInfo {
    pub version: Option<String>,
    pub scope: Option<String>,
    pub name: Option<String>,
}

impl NodeStatus {
    /// Parses a status body; `Err` carries a short reason for the check report.
    pub fn parse(body: &[u8]) -> Result<NodeStatus, String> {
        serde_json::from_slice(body).map_err(|e| format!("status JSON unreadable: {e}"))
    }

    pub fn is_primary(&self) -> bool {
        matches!(self.role.as_str(), "primary" | "master")
    }

    pub fn is_running(&self) -> bool {
        // Patroni 4 says "running"; some versions report a streaming replica as "streaming".
        matches!(self.state.as_str(), "running" | "streaming")
    }

    /// Patroni's `noloadbalance` tag: the node takes no read traffic.
    pub fn noloadbalance(&self) -> bool {
        self.tags.get("noloadbalance").is_some_and(truthy)
    }

    /// How long ago the last replayed transaction committed, while the replica is behind
    /// `leader_position` (an idle primary commits nothing, so an old timestamp alone means
    /// nothing when the replica is caught up).
    pub fn replay_delay(&self, leader_position: Option<u64>, now: SystemTime) -> Option<Duration> {
        if self.lag(leader_position)? == 0 {
            return Some(Duration::ZERO);
        }
        let at = parse_pg_timestamp(self.xlog.replayed_timestamp.as_deref()?)?;
        Some(now.duration_since(at).unwrap_or_default())
    }

    /// Bytes this replica's replay trails `leader_position`.
    pub fn lag(&self, leader_position: Option<u64>) -> Option<u64> {
        Some(leader_position?.saturating_sub(self.xlog.replayed_location?))
    }
}

/// Parses PostgreSQL's `YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]` timestamps.
fn parse_pg_timestamp(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    // The offset starts at the last '+' or '-' after the time part.
    let split = s.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (local, offset) = s.split_at(split);
    let at = humantime::parse_rfc3339_weak(local.trim()).ok()?;
    let sign = if offset.starts_with('-') { -1i64 } else { 1 };
    let digits: String = offset[1..].chars().filter(char::is_ascii_digit).collect();
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (digits[..2].parse::<i64>().ok()?, digits[2..].parse::<i64>().ok()?),
        _ => return None,
    };
    let secs = sign * (h * 3600 + m * 60);
    // Local time minus the offset is UTC.
    if secs >= 0 {
        at.checked_sub(Duration::from_secs(secs as u64))
    } else {
        at.checked_add(Duration::from_secs((-secs) as u64))
    }
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        _ => false,
    }
}

fn tag_matches(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == want,
        other => other.to_string().as_str() == want,
    }
}

/// What the rest of the cluster says, for rules that need it.
#[derive(Debug, Clone, Copy, Default)]
pub struct View<'a> {
    /// Whether this node is the arbitrated leader (it claims leadership and wins).
    pub is_leader: bool,
    /// The leader's WAL position, for replica lag: its latest known within `fall` x `inter`,
    /// else `None`, and then replicas with a lag bound fail (closed, not open).
    pub leader_position: Option<u64>,
    /// The leader's standbys, for /sync and /async.
    pub standbys: &'a [Standby],
    /// Wall-clock time of the answer, for replay delay.
    pub now: Option<SystemTime>,
}

/// A check's verdict on one node answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub why: String,
    /// Set while a replica is excluded for lag; it is re-admitted only below half the
    /// bound, so a replica hovering at the bound does not flap.
    pub lag_excluded: bool,
}

impl Verdict {
    fn pass() -> Verdict {
        Verdict { passed: true, why: String::new(), lag_excluded: false }
    }

    fn fail(why: impl Into<String>) -> Verdict {
        Verdict { passed: false, why: why.into(), lag_excluded: false }
    }
}

/// Would Patroni answer 200 on `endpoint` for a node in `status`?
pub fn verdict(endpoint: &Endpoint, status: &NodeStatus, view: View<'_>, lag_excluded: bool) -> Verdict {
    match endpoint {
        // Patroni can answer 200 while the node is still finishing its promotion (its JSON
        // still says replica) or already demoting (PostgreSQL stopping): either way writes
        // would fail, with read-only errors or 57P03, so it is no write target yet or any more.
        Endpoint::Primary if view.is_leader && status.is_running() && status.is_primary() => Verdict::pass(),
        Endpoint::Primary if view.is_leader => {
            Verdict::fail(format!("holds the leader lock, but PostgreSQL is {} as {}", status.state, status.role))
        }
        Endpoint::Primary => Verdict::fail(format!("not the leader (role {})", status.role)),
        Endpoint::Leader if view.is_leader || status.role == "standby_leader" => Verdict::pass(),
        Endpoint::Leader => Verdict::fail(format!("does not hold the leader lock (role {})", status.role)),
        Endpoint::StandbyLeader if status.role == "standby_leader" && status.is_running() => Verdict::pass(),
        Endpoint::StandbyLeader => Verdict::fail(format!("not a standby leader (role {})", status.role)),
        Endpoint::Replica(f) => replica(f, status, view, lag_excluded),
        Endpoint::ReadOnly(_) if view.is_leader => Verdict::pass(),
        Endpoint::ReadOnly(f) => replica(f, status, view, lag_excluded),
        Endpoint::Sync(f) | Endpoint::Async(f) => {
            let v = replica(f, status, view, lag_excluded);
            if !v.passed {
                return v;
            }
            let name = status.patroni.name.as_deref().unwrap_or_default();
            let sync = view
                .standbys
                .iter()
                .any(|s| s.application_name == name && matches!(s.sync_state.as_deref(), Some("sync" | "quorum")));
            match (endpoint, sync) {
                (Endpoint::Sync(_), false) => Verdict::fail("not a synchronous standby"),
                (Endpoint::Async(_), true) => Verdict::fail("a synchronous standby"),
                _ => v,
            }
        }
        Endpoint::Health if status.is_running() => Verdict::pass(),
        Endpoint::Health => Verdict::fail(format!("PostgreSQL is {}", status.state)),
        Endpoint::Liveness => Verdict::pass(),
        Endpoint::Readiness if view.is_leader => Verdict::pass(),
        Endpoint::Readiness if status.role == "replica" && status.replication_state.as_deref() == Some("streaming") => {
            Verdict::pass()
        }
        Endpoint::Readiness => Verdict::fail("neither the leader nor a streaming replica"),
    }
}

fn replica(f: &ReplicaFilter, st: &NodeStatus, view: View<'_>, lag_excluded: bool) -> Verdict {
    if st.role != "replica" {
        return Verdict::fail(format!("not a replica (role {})", st.role));
    }
    if !st.is_running() {
        return Verdict::fail(format!("PostgreSQL is {}", st.state));
    }
    if st.noloadbalance() {
        return Verdict::fail("tagged noloadbalance");
    }
    for (k, want) in &f.tags {
        if !st.tags.get(k).is_some_and(|v| tag_matches(v, want)) {
            return Verdict::fail(format!("tag {k} is not {want}"));
        }
    }
    if (f.max_lag.is_some() || f.max_delay.is_some()) && view.leader_position.is_none() {
        // Nothing to measure against (failover, conflict, the leader's REST API down for
        // longer than fall x inter): a replica however far behind would pass, so none does.
        return Verdict {
            passed: false,
            why: "leader position unknown: lag bound cannot be checked".into(),
            lag_excluded,
        };
    }
    if let (Some(max), Some(lag)) = (f.max_lag, st.lag(view.leader_position)) {
        // Hysteresis: out above the bound, back in only at half of it.
        let limit = if lag_excluded { max / 2 } else { max };
        if lag > limit {
            return Verdict { passed: false, why: format!("replay lag {lag} bytes over {limit}"), lag_excluded: true };
        }
    }
    if let (Some(max), Some(now)) = (f.max_delay, view.now) {
        if let Some(delay) = st.replay_delay(view.leader_position, now) {
            let limit = if lag_excluded { max / 2 } else { max };
            if delay > limit {
                let why = format!("replay delay {:.1}s over {:.1}s", delay.as_secs_f64(), limit.as_secs_f64());
                return Verdict { passed: false, why, lag_excluded: true };
            }
        }
    }
    Verdict::pass()
}

#[cfg(test)]
mod tests;
