//! Roles as the stats page shows them. A node answering a role check with the other role
//! (a replica asked whether it leads, the leader asked whether it is a replica) is in its
//! expected state for that listener, not failing; only real failures (no answer, garbage,
//! a status that its role does not explain) should look like failures. Pure functions over
//! the latest answers, so the rule is tested without a cluster.

use crate::config::{CheckSpec, Endpoint};
use crate::health::{CheckCode, ProbeResult};

/// The role a check admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// `/master`, `/primary`, `/leader`, `/standby-leader`: the write target.
    Leader,
    /// `/replica`, `/sync`, `/async`: a replica.
    Replica,
    /// Any role (`/health`, `/read-only`, `/readiness`, a path Patroni does not know).
    Any,
}

impl Wants {
    pub fn of(spec: &CheckSpec) -> Wants {
        match &spec.endpoint {
            Some(e) if e.is_leader() => Wants::Leader,
            Some(Endpoint::Replica(_) | Endpoint::Sync(_) | Endpoint::Async(_)) => Wants::Replica,
            _ => Wants::Any,
        }
    }
}

/// Whether the latest answer `last` said no only because the node has the other role:
/// an HTTP "no" (L7STS) from a node pgfront knows to be a replica on a leader check, or
/// the leader (or an unadmitted primary) on a replica check. A replica refused for lag, a
/// demoting leader, a timeout or garbage stay failures.
pub fn answered_other_role(wants: Wants, node_role: Option<&str>, last: Option<&ProbeResult>) -> bool {
    let Some(last) = last else { return false };
    if last.code != CheckCode::L7Sts {
        return false;
    }
    matches!(
        (wants, node_role),
        (Wants::Leader, Some("replica")) | (Wants::Replica, Some("leader" | "primary" | "master" | "standby_leader"))
    )
}

/// A node's role from pgfront's arbitration and Patroni's JSON (`check_mode = "patroni"`):
/// `leader` for the node pgfront sends writes to, else Patroni's own word.
pub fn from_patroni(is_leader: bool, patroni_role: Option<&str>) -> Option<String> {
    match (is_leader, patroni_role) {
        (true, _) => Some("leader".to_owned()),
        (false, Some(r)) if !r.is_empty() => Some(r.to_owned()),
        _ => None,
    }
}

/// A node's role from its checks' latest answers (`check_mode = "http"`, no JSON): it
/// leads when a leader check passes, and is a replica when a replica check passes.
pub fn from_checks<'a>(checks: impl IntoIterator<Item = (Wants, bool)> + 'a) -> Option<String> {
    let mut role = None;
    for (wants, passed) in checks {
        match (wants, passed) {
            (Wants::Leader, true) => return Some("leader".to_owned()),
            (Wants::Replica, true) => role = Some("replica".to_owned()),
            _ => {}
        }
    }
    role
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(code: CheckCode) -> ProbeResult {
        let status = matches!(code, CheckCode::L7Ok | CheckCode::L7Sts).then_some(503);
        ProbeResult {
            code,
            status,
            duration: Duration::from_millis(1),
            detail: String::new(),
            body: None,
            cert_not_after: None,
            peer: None,
        }
    }

    #[test]
    fn the_other_role_is_not_a_failure() {
        let no = answer(CheckCode::L7Sts);
        let cases = [
            (Wants::Leader, Some("replica"), true),
            (Wants::Replica, Some("leader"), true),
            (Wants::Replica, Some("primary"), true),
            // Its own role, and still no: lag, a demoting leader, noloadbalance.
            (Wants::Replica, Some("replica"), false),
            (Wants::Leader, Some("leader"), false),
            (Wants::Leader, Some("primary"), false),
            // Not known, or a check that admits any role.
            (Wants::Leader, None, false),
            (Wants::Any, Some("replica"), false),
        ];
        for (wants, role, expected) in cases {
            assert_eq!(answered_other_role(wants, role, Some(&no)), expected, "{wants:?} {role:?}");
        }
    }

    #[test]
    fn real_failures_stay_failures_whatever_the_role() {
        for code in [CheckCode::L4Tout, CheckCode::L4Con, CheckCode::L7Rsp, CheckCode::L7Tout] {
            assert!(!answered_other_role(Wants::Leader, Some("replica"), Some(&answer(code))), "{code:?}");
        }
        assert!(!answered_other_role(Wants::Leader, Some("replica"), None), "not checked yet");
    }

    #[test]
    fn roles_from_patroni_and_from_checks() {
        assert_eq!(from_patroni(true, Some("primary")).as_deref(), Some("leader"));
        assert_eq!(from_patroni(false, Some("replica")).as_deref(), Some("replica"));
        assert_eq!(from_patroni(false, Some("")), None);
        assert_eq!(from_checks([(Wants::Replica, true), (Wants::Leader, false)]).as_deref(), Some("replica"));
        assert_eq!(from_checks([(Wants::Replica, false), (Wants::Leader, true)]).as_deref(), Some("leader"));
        assert_eq!(from_checks([(Wants::Replica, false), (Wants::Any, true)]), None);
    }
}
