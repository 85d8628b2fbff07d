//! Patroni's REST endpoints as pgfront understands them, so one `GET /primary` per node can
//! answer every listener's question (`/master`, `/replica?lag=16MB`, `/read-only`, ...)
//! with Patroni's own semantics.

/// A health endpoint of Patroni's REST API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/`, `/primary`, `/master`, `/read-write`: holds the leader lock and runs as primary.
    Primary,
    /// `/leader`: holds the leader lock (primary or standby leader).
    Leader,
    /// `/standby-leader`: leader of a standby cluster.
    StandbyLeader,
    /// `/replica`: a running replica without `noloadbalance`, within `max_lag` bytes, with
    /// the given tags.
    Replica(ReplicaFilter),
    /// `/read-only`: the leader, or what `/replica` accepts.
    ReadOnly(ReplicaFilter),
    /// `/sync`: a synchronous standby passing the replica checks.
    Sync(ReplicaFilter),
    /// `/async`: an asynchronous standby passing the replica checks.
    Async(ReplicaFilter),
    /// `/health`: PostgreSQL is running, any role.
    Health,
    /// `/liveness`: Patroni answers.
    Liveness,
    /// `/readiness`: the leader, or a streaming replica.
    Readiness,
}

/// The replica conditions Patroni takes as query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ReplicaFilter {
    /// `lag=16MB`: replay lag bound in bytes.
    pub max_lag: Option<u64>,
    /// `tag_KEY=VALUE`: tags the node must carry.
    pub tags: Vec<(String, String)>,
    /// pgfront's `max_replay_delay`: how old the last replayed transaction may be while
    /// the replica is behind the leader (Patroni has no time bound of its own).
    pub max_delay: Option<std::time::Duration>,
}

impl Endpoint {
    /// Parses a check path as Patroni would route it; `None` for a path Patroni answers
    /// with 503 whatever the state (or one pgfront cannot derive).
    pub fn parse(path: &str) -> Result<Option<Endpoint>, String> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let route = route.trim_end_matches('/');
        let filter = || ReplicaFilter::parse(query);
        Ok(Some(match route {
            "" | "/primary" | "/master" | "/read-write" => Endpoint::Primary,
            "/leader" => Endpoint::Leader,
            "/standby-leader" | "/standby_leader" => Endpoint::StandbyLeader,
            "/replica" => Endpoint::Replica(filter()?),
            "/read-only" => Endpoint::ReadOnly(filter()?),
            "/sync" | "/synchronous" => Endpoint::Sync(filter()?),
            "/async" | "/asynchronous" => Endpoint::Async(filter()?),
            "/health" => Endpoint::Health,
            "/liveness" => Endpoint::Liveness,
            "/readiness" => Endpoint::Readiness,
            // Patroni treats any path mentioning "master" or "primary" as the primary check.
            r if r.contains("master") || r.contains("primary") => Endpoint::Primary,
            _ => return Ok(None),
        }))
    }

    /// The replica conditions, for endpoints that have them.
    pub fn filter_mut(&mut self) -> Option<&mut ReplicaFilter> {
        match self {
            Endpoint::Replica(f) | Endpoint::ReadOnly(f) | Endpoint::Sync(f) | Endpoint::Async(f) => Some(f),
            _ => None,
        }
    }

    /// True for endpoints that name at most one node at a time: the write target.
    pub fn is_leader(&self) -> bool {
        matches!(self, Endpoint::Primary | Endpoint::Leader | Endpoint::StandbyLeader)
    }
}

impl ReplicaFilter {
    fn parse(query: &str) -> Result<ReplicaFilter, String> {
        let mut f = ReplicaFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "lag" {
                f.max_lag = Some(parse_size(v).ok_or_else(|| format!("lag={v:?} is not a size like 16MB or 1048576"))?);
            } else if let Some(tag) = k.strip_prefix("tag_") {
                f.tags.push((tag.to_owned(), v.to_owned()));
            } else {
                return Err(format!("unknown query parameter {k:?}; Patroni takes lag= and tag_KEY="));
            }
        }
        Ok(f)
    }
}

/// A byte size as Patroni parses it: a number with an optional unit (B, kB, MB, GB, TB).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_like_patroni() {
        assert_eq!(Endpoint::parse("/master"), Ok(Some(Endpoint::Primary)));
        assert_eq!(Endpoint::parse("/"), Ok(Some(Endpoint::Primary)));
        assert_eq!(Endpoint::parse("/read-write"), Ok(Some(Endpoint::Primary)));
        assert_eq!(Endpoint::parse("/replica"), Ok(Some(Endpoint::Replica(ReplicaFilter::default()))));
        let f = ReplicaFilter { max_lag: Some(16 << 20), tags: vec![("dc".into(), "east".into())], max_delay: None };
        assert_eq!(Endpoint::parse("/replica?lag=16MB&tag_dc=east"), Ok(Some(Endpoint::Replica(f))));
        assert_eq!(Endpoint::parse("/nonsense"), Ok(None));
        assert!(Endpoint::parse("/replica?lag=lots").is_err());
        assert!(Endpoint::parse("/replica?color=red").is_err());
        assert!(Endpoint::Primary.is_leader() && !Endpoint::Health.is_leader());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1kB"), Some(1024));
        assert_eq!(parse_size("1PB"), None);
        assert_eq!(parse_size(""), None);
    }
}
