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
    /// `/read-only`: the leader (or a standby cluster's standby leader), or what `/replica`
    /// accepts; the tag filters apply to all of them, as in Patroni.
    ReadOnly(ReplicaFilter),
    /// `/sync`: a synchronous standby passing the replica checks.
    Sync(ReplicaFilter),
    /// `/async`: an asynchronous standby passing the replica checks.
    Async(ReplicaFilter),
    /// `/health`: PostgreSQL is running, any role.
    Health,
    /// `/health?tag_KEY=VALUE`: the same, on a node carrying those tags (Patroni filters
    /// every path's 200 by tags but the leader paths').
    HealthTagged(Vec<(String, String)>),
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
    /// with 503 whatever the state (or one pgfront cannot derive). A query parameter is
    /// taken only where Patroni reads it as pgfront judges it; any other is an error, never
    /// dropped: `lag=` and `tag_KEY=` on the replica paths, `tag_KEY=` on `/health`.
    pub fn parse(path: &str) -> Result<Option<Endpoint>, String> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let route = route.trim_end_matches('/');
        let filter = || ReplicaFilter::parse(query);
        let none = |name: &str, why: &str| match query.split('&').find(|p| !p.is_empty()) {
            Some(p) => Err(format!("{name} takes no query parameters ({:?}): {why}", p.split('=').next().unwrap_or(p))),
            None => Ok(()),
        };
        let leader = "Patroni ignores them on the leader paths";
        Ok(Some(match route {
            "" | "/primary" | "/master" | "/read-write" => none(route_name(route), leader).map(|_| Endpoint::Primary)?,
            "/leader" => none("/leader", leader).map(|_| Endpoint::Leader)?,
            "/standby-leader" | "/standby_leader" => none(route, leader).map(|_| Endpoint::StandbyLeader)?,
            "/replica" => Endpoint::Replica(filter()?),
            "/read-only" => Endpoint::ReadOnly(filter()?),
            "/sync" | "/synchronous" => Endpoint::Sync(filter()?),
            "/async" | "/asynchronous" => Endpoint::Async(filter()?),
            "/health" => match filter() {
                Ok(ReplicaFilter { max_lag: Some(_), .. }) => {
                    return Err("Patroni ignores lag= on /health (any running node passes); use /replica?lag=... or /read-only?lag=...".into())
                }
                Ok(f) if f.tags.is_empty() => Endpoint::Health,
                Ok(f) => Endpoint::HealthTagged(f.tags),
                Err(_) => return Err(unknown_parameter(query, "/health takes tag_KEY= only")),
            },
            "/liveness" => none("/liveness", "Patroni answers it from its own loop, not from PostgreSQL").map(|_| Endpoint::Liveness)?,
            "/readiness" => none(
                "/readiness",
                "Patroni 4.1 reads lag= and mode= there, and bounds lag by maximum_lag_on_failover without them, which pgfront does not know (3.x and 4.0 ignore them); for the leader or a replica within a bound, use /read-only?lag=16MB",
            )
            .map(|_| Endpoint::Readiness)?,
            // Patroni treats any path mentioning "master" or "primary" as the primary check.
            r if r.contains("master") || r.contains("primary") => none(r, leader).map(|_| Endpoint::Primary)?,
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

/// How a route reads in a message (`/` is Patroni's `/primary`).
fn route_name(route: &str) -> &str {
    if route.is_empty() {
        "/"
    } else {
        route
    }
}

/// The first query parameter `query` has that is not `tag_KEY=`, in an error.
fn unknown_parameter(query: &str, takes: &str) -> String {
    let bad =
        query.split('&').map(|p| p.split('=').next().unwrap_or(p)).find(|k| !k.is_empty() && !k.starts_with("tag_"));
    format!("unknown query parameter {:?}; {takes}", bad.unwrap_or(query))
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
    fn health_keeps_its_tags_and_other_queries_are_refused() {
        // Patroni filters /health by tag_* (only the leader paths ignore tags); before, the
        // query was dropped.
        assert_ne!(Endpoint::parse("/health?tag_dc=east"), Ok(Some(Endpoint::Health)));
        assert!(Endpoint::parse("/health?lag=1MB").is_err(), "Patroni ignores lag= on /health");
        assert!(
            Endpoint::parse("/readiness?lag=1MB").is_err(),
            "Patroni 4.1 reads it, with a default pgfront cannot know"
        );
        assert!(Endpoint::parse("/primary?tag_dc=east").is_err(), "Patroni ignores tags on leader paths");
        assert_eq!(Endpoint::parse("/health"), Ok(Some(Endpoint::Health)));
        assert_eq!(Endpoint::parse("/master?"), Ok(Some(Endpoint::Primary)));
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
