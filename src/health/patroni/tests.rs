use super::*;
use std::time::Duration;

const LEADER: &str = r#"{"state": "running", "role": "primary", "server_version": 150018, "xlog": {"location": 67108960}, "timeline": 3, "replication": [{"usename": "replicator", "application_name": "node2", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "sync", "sync_priority": 1}, {"application_name": "node3", "state": "streaming", "sync_state": "async"}], "patroni": {"version": "4.1.5", "scope": "lab", "name": "node1"}}"#;
const REPLICA: &str = r#"{"state": "running", "role": "replica", "server_version": 150018, "xlog": {"received_location": 67108000, "replayed_location": 67100000, "replayed_timestamp": "2026-11-26 06:38:20.796853+00:00", "paused": false}, "timeline": 3, "replication_state": "streaming", "patroni": {"version": "4.1.5", "scope": "lab", "name": "node2"}}"#;

fn parse(s: &str) -> NodeStatus {
    NodeStatus::parse(s.as_bytes()).unwrap()
}

fn ep(path: &str) -> Endpoint {
    Endpoint::parse(path).unwrap().unwrap()
}

#[test]
fn parses_real_patroni_answers() {
    let l = parse(LEADER);
    assert!(l.is_primary() && l.is_running());
    assert_eq!((l.timeline, l.xlog.location), (Some(3), Some(67108960)));
    assert_eq!(l.replication.len(), 2);
    let r = parse(REPLICA);
    assert_eq!(r.lag(l.xlog.location), Some(8960));
    assert!(NodeStatus::parse(b"<html>").is_err());
    assert!(NodeStatus::parse(b"{}").is_ok(), "missing fields default");
}

#[test]
fn leader_endpoints_follow_arbitration() {
    let l = parse(LEADER);
    let yes = View { is_leader: true, ..View::default() };
    assert!(verdict(&ep("/master"), &l, yes, false).passed);
    assert!(!verdict(&ep("/master"), &l, View::default(), false).passed, "a claimant that lost arbitration");
    assert!(verdict(&ep("/read-only"), &l, yes, false).passed);
    assert!(!verdict(&ep("/replica"), &l, yes, false).passed);
    let mut stopping = l.clone();
    stopping.state = "stopping".into();
    assert!(!verdict(&ep("/master"), &stopping, yes, false).passed, "a demoting leader takes no new writes");
    let promoting = parse(REPLICA);
    assert!(!verdict(&ep("/master"), &promoting, yes, false).passed, "not a write target before its promotion ends");
}

#[test]
fn replica_rules() {
    let r = parse(REPLICA);
    let view = View { leader_position: Some(67108960), ..View::default() };
    assert!(verdict(&ep("/replica"), &r, view, false).passed);
    assert!(verdict(&ep("/read-only"), &r, view, false).passed);
    assert!(verdict(&ep("/health"), &r, view, false).passed);
    assert!(!verdict(&ep("/master"), &r, view, false).passed);
    let mut tagged = r.clone();
    tagged.tags.insert("noloadbalance".into(), serde_json::Value::Bool(true));
    assert_eq!(verdict(&ep("/replica"), &tagged, view, false).why, "tagged noloadbalance");
    tagged.tags.insert("dc".into(), serde_json::Value::String("east".into()));
    tagged.tags.remove("noloadbalance");
    assert!(verdict(&ep("/replica?tag_dc=east"), &tagged, view, false).passed);
    assert!(!verdict(&ep("/replica?tag_dc=west"), &tagged, view, false).passed);
    let mut stopped = r;
    stopped.state = "stopped".into();
    assert!(!verdict(&ep("/replica"), &stopped, view, false).passed);
}

#[test]
fn lag_has_hysteresis() {
    let r = parse(REPLICA); // replayed 67100000
    let at = |leader: u64, excluded: bool| {
        verdict(&ep("/replica?lag=10000"), &r, View { leader_position: Some(leader), ..View::default() }, excluded)
    };
    assert!(at(67_108_000, false).passed, "8000 bytes behind, bound 10000");
    let out = at(67_111_000, false);
    assert!(!out.passed && out.lag_excluded, "11000 behind: out");
    assert!(!at(67_108_000, true).passed, "8000 behind after exclusion: still out (above half the bound)");
    assert!(at(67_104_000, true).passed, "4000 behind: back in");
    assert!(at(67_111_000, false).why.contains("11000"));
}

#[test]
fn lag_bounds_fail_closed_without_a_leader_position() {
    // Before: with no leader known, a replica however far behind passed a lag bound.
    let r = parse(REPLICA);
    let unknown = verdict(&ep("/replica?lag=1"), &r, View::default(), false);
    assert!(!unknown.passed && unknown.why.contains("leader position unknown"), "{unknown:?}");
    let mut f = match ep("/replica") {
        Endpoint::Replica(f) => f,
        _ => unreachable!(),
    };
    f.max_delay = Some(Duration::from_secs(30));
    let now = View { now: Some(std::time::SystemTime::now()), ..View::default() };
    assert!(!verdict(&Endpoint::Replica(f), &r, now, false).passed, "max_replay_delay too");
    assert!(verdict(&ep("/replica"), &r, View::default(), false).passed, "no bound, nothing to know");
}

#[test]
fn sync_and_async() {
    let l = parse(LEADER);
    let r = parse(REPLICA); // node2, sync in the leader's list
    let view = View { leader_position: l.xlog.location, standbys: &l.replication, ..View::default() };
    assert!(verdict(&ep("/sync"), &r, view, false).passed);
    assert!(!verdict(&ep("/async"), &r, view, false).passed);
    let mut r3 = r.clone();
    r3.patroni.name = Some("node3".into());
    assert!(!verdict(&ep("/sync"), &r3, view, false).passed);
    assert!(verdict(&ep("/async"), &r3, view, false).passed);
}

#[test]
fn replay_delay_counts_only_while_behind() {
    let mut r = parse(REPLICA); // replayed 67100000 at 06:38:20.796853 UTC
    let at = humantime::parse_rfc3339("2026-11-26T06:38:20.796853Z").unwrap();
    let now = at + Duration::from_secs(40);
    assert_eq!(r.replay_delay(Some(67_200_000), now), Some(Duration::from_secs(40)));
    assert_eq!(r.replay_delay(Some(67_100_000), now), Some(Duration::ZERO), "caught up: an idle primary is no delay");
    r.xlog.replayed_timestamp = Some("2026-11-26 07:38:20.796853+01:00".into());
    assert_eq!(r.replay_delay(Some(67_200_000), now), Some(Duration::from_secs(40)), "offsets are honoured");
    let mut f = match ep("/replica") {
        Endpoint::Replica(f) => f,
        _ => unreachable!(),
    };
    f.max_delay = Some(Duration::from_secs(30));
    let view = View { leader_position: Some(67_200_000), now: Some(now), ..View::default() };
    let v = verdict(&Endpoint::Replica(f.clone()), &r, view, false);
    assert!(!v.passed && v.lag_excluded && v.why.contains("replay delay"), "{v:?}");
    let soon = View { now: Some(at + Duration::from_secs(20)), ..view };
    assert!(!verdict(&Endpoint::Replica(f.clone()), &r, soon, true).passed, "20s > half of 30s: still out");
    let later = View { now: Some(at + Duration::from_secs(10)), ..view };
    assert!(verdict(&Endpoint::Replica(f), &r, later, true).passed, "back in under half the bound");
}
