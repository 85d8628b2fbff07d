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

/// Where the leader's WAL was: the position and the timeline it is on. A replica's replayed
/// position says how far behind it is only on that same timeline: a node replaying another
/// one (a former leader that diverged, a replica not yet past the switch) has a position
/// that cannot be compared, however it compares numerically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaderPosition {
    pub lsn: u64,
    /// The leader's timeline as its claim said it; `None` when it said none.
    pub timeline: Option<u64>,
}

impl From<(u64, Option<u64>)> for LeaderPosition {
    fn from((lsn, timeline): (u64, Option<u64>)) -> LeaderPosition {
        LeaderPosition { lsn, timeline }
    }
}

/// What the rest of the cluster says, for rules that need it.
#[derive(Debug, Clone, Copy, Default)]
pub struct View<'a> {
    /// Whether this node is the arbitrated leader (it claims leadership and wins).
    pub is_leader: bool,
    /// The leader's WAL position and timeline, for replica lag: its latest known within
    /// `fall` x `inter`, else `None`, and then replicas with a lag bound fail (closed, not open).
    pub leader_position: Option<LeaderPosition>,
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
    /// The failure says nothing against the node: its lag cannot be measured for want of
    /// the leader's position or timeline (the leader's REST API stalled, a failover under
    /// way, a replica not yet past the switch to the new timeline). The replica takes no
    /// new session, but the result does not count towards `fall`: a lag bound fails
    /// closed for admission, and cuts no session it could not judge.
    pub undecided: bool,
    /// Undecided about the replica itself (it replays another timeline than the leader's):
    /// a replica following the leader settles that within seconds of a failover, so past a
    /// bound it counts as a failure (one that diverged never will).
    pub settles: bool,
}

impl Verdict {
    fn pass() -> Verdict {
        Verdict { passed: true, why: String::new(), lag_excluded: false, undecided: false, settles: false }
    }

    fn fail(why: impl Into<String>) -> Verdict {
        Verdict { passed: false, why: why.into(), lag_excluded: false, undecided: false, settles: false }
    }

    fn undecided(why: impl Into<String>, lag_excluded: bool) -> Verdict {
        Verdict { passed: false, why: why.into(), lag_excluded, undecided: true, settles: false }
    }

    /// A failure that measured no lag: a replica out for lag stays out (hysteresis), so one
    /// answer that says nothing of its replay (PostgreSQL starting, say) does not re-admit
    /// it at the full bound.
    fn fail_keeping(why: impl Into<String>, lag_excluded: bool) -> Verdict {
        Verdict { passed: false, why: why.into(), lag_excluded, undecided: false, settles: false }
    }
}

/// Patroni's `tag_KEY=VALUE` filters (applied to every 200 but the leader paths'): the
/// first tag the node does not carry with that value.
fn tags_fail(tags: &[(String, String)], st: &NodeStatus) -> Option<String> {
    tags.iter()
        .find(|(k, want)| !st.tags.get(k).is_some_and(|v| tag_matches(v, want)))
        .map(|(k, want)| format!("tag {k} is not {want}"))
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
        // Patroni: 200 when the primary's or the standby leader's answer is 200 (no lag, no
        // noloadbalance), else the replica's; the tag filters apply to all of them.
        Endpoint::ReadOnly(f) if view.is_leader || status.role == "standby_leader" => {
            match tags_fail(&f.tags, status) {
                Some(why) => Verdict::fail_keeping(why, lag_excluded),
                None => Verdict::pass(),
            }
        }
        Endpoint::ReadOnly(f) => replica(f, status, view, lag_excluded),
        Endpoint::Sync(f) | Endpoint::Async(f) => {
            let v = replica(f, status, view, lag_excluded);
            if !v.passed {
                return v;
            }
            let name = status.patroni.name.as_deref().unwrap_or_default();
            // Patroni 4 in quorum commit mode marks its standbys quorum_standby, not
            // sync_standby: /sync is 503 for them, and so is /async (which takes neither).
            let state = view.standbys.iter().find(|s| s.application_name == name).and_then(|s| s.sync_state.as_deref());
            match (endpoint, state) {
                (Endpoint::Sync(_), Some("sync")) => v,
                (Endpoint::Sync(_), Some("quorum")) => Verdict::fail("a quorum standby, not a synchronous one"),
                (Endpoint::Sync(_), _) => Verdict::fail("not a synchronous standby"),
                (Endpoint::Async(_), Some("sync")) => Verdict::fail("a synchronous standby"),
                (Endpoint::Async(_), Some("quorum")) => Verdict::fail("a quorum standby"),
                _ => v,
            }
        }
        Endpoint::Health | Endpoint::HealthTagged(_) if !status.is_running() => {
            Verdict::fail(format!("PostgreSQL is {}", status.state))
        }
        Endpoint::Health => Verdict::pass(),
        Endpoint::HealthTagged(tags) => tags_fail(tags, status).map_or_else(Verdict::pass, Verdict::fail),
        Endpoint::Liveness => Verdict::pass(),
        Endpoint::Readiness if view.is_leader => Verdict::pass(),
        Endpoint::Readiness if status.role == "replica" && status.replication_state.as_deref() == Some("streaming") => {
            Verdict::pass()
        }
        Endpoint::Readiness => Verdict::fail("neither the leader nor a streaming replica"),
    }
}

fn replica(f: &ReplicaFilter, st: &NodeStatus, view: View<'_>, lag_excluded: bool) -> Verdict {
    let fail = |why: String| Verdict::fail_keeping(why, lag_excluded);
    if st.role != "replica" {
        return fail(format!("not a replica (role {})", st.role));
    }
    if !st.is_running() {
        return fail(format!("PostgreSQL is {}", st.state));
    }
    if st.noloadbalance() {
        return fail("tagged noloadbalance".into());
    }
    if let Some(why) = tags_fail(&f.tags, st) {
        return fail(why);
    }
    if f.max_lag.is_none() && f.max_delay.is_none() {
        return Verdict::pass();
    }
    // A lag bound fails closed: whatever cannot be measured excludes the replica.
    let Some(leader) = view.leader_position else {
        // Nothing to measure against (failover, conflict, the leader's REST API down for
        // longer than fall x inter): a replica however far behind would pass, so none does.
        return Verdict::undecided("leader position unknown: lag bound cannot be checked", lag_excluded);
    };
    match (st.timeline, leader.timeline) {
        (Some(mine), Some(theirs)) if mine == theirs => {}
        // Its position is on another history: a former leader that diverged (ahead of the
        // leader's position, numerically, and never to have its commits), or a replica not
        // yet past the switch to the leader's timeline. Out, as for lag.
        (Some(mine), Some(theirs)) => {
            let why = format!("replays timeline {mine}, the leader is on {theirs}: lag bound cannot be checked");
            return Verdict { settles: true, ..Verdict::undecided(why, true) };
        }
        (None, _) => return fail("timeline unknown (not in Patroni's answer): lag bound cannot be checked".into()),
        (_, None) => {
            return Verdict::undecided("the leader's timeline unknown: lag bound cannot be checked", lag_excluded)
        }
    }
    // Patroni takes a missing replayed_location as 0: lagging.
    let Some(lag) = st.lag(Some(leader.lsn)) else {
        return fail("replayed position unknown: lag bound cannot be checked".into());
    };
    // Hysteresis: out above the bound, back in only at half of it.
    if let Some(max) = f.max_lag {
        let limit = if lag_excluded { max / 2 } else { max };
        if lag > limit {
            return Verdict {
                passed: false,
                why: format!("replay lag {lag} bytes over {limit}"),
                lag_excluded: true,
                undecided: false,
                settles: false,
            };
        }
    }
    if let (Some(max), Some(now)) = (f.max_delay, view.now) {
        // None: behind, and no readable time of the last replayed transaction (PostgreSQL
        // has none until the standby replays one).
        let Some(delay) = st.replay_delay(Some(leader.lsn), now) else {
            return fail(format!("replay delay unknown: {lag} bytes behind, no replayed transaction time"));
        };
        let limit = if lag_excluded { max / 2 } else { max };
        if delay > limit {
            let why = format!("replay delay {:.1}s over {:.1}s", delay.as_secs_f64(), limit.as_secs_f64());
            return Verdict { passed: false, why, lag_excluded: true, undecided: false, settles: false };
        }
    }
    Verdict::pass()
}

#[cfg(test)]
mod tests;
