use super::*;
use std::time::Duration;

const LEADER: &str = r#"{"state": "running", "role": "primary", "server_version": 150018, "xlog": {"location": 67108960}, "timeline": 3, "replication": [{"usename": "replicator", "application_name": "node2", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "sync", "sync_priority": 1}, {"application_name": "node3", "state": "streaming", "sync_state": "async"}], "patroni": {"version": "4.1.5", "scope": "lab", "name": "node1"}}"#;
const REPLICA: &str = r#"{"state": "running", "role": "replica", "server_version": 150018, "xlog": {"received_location": 67108000, "replayed_location": 67100000, "replayed_timestamp": "2026-11-26 06:38:20.796853+00:00", "paused": false}, "timeline": 3, "replication_state": "streaming", "patroni": {"version": "4.1.5", "scope": "lab", "name": "node2"}}"#;

fn parse(s: &str) -> NodeStatus {
    NodeStatus::parse(s.as_bytes()).unwrap()
}

/// The leader's position `lsn` on `timeline`.
fn on(lsn: u64, timeline: u64) -> LeaderPosition {
    LeaderPosition { lsn, timeline: Some(timeline) }
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
    let view = View { leader_position: Some(on(67108960, 3)), ..View::default() };
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
        verdict(
            &ep("/replica?lag=10000"),
            &r,
            View { leader_position: Some(on(leader, 3)), ..View::default() },
            excluded,
        )
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
    let view = View { leader_position: l.xlog.location.map(|p| on(p, 3)), standbys: &l.replication, ..View::default() };
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
    let view = View { leader_position: Some(on(67_200_000, 3)), now: Some(now), ..View::default() };
    let v = verdict(&Endpoint::Replica(f.clone()), &r, view, false);
    assert!(!v.passed && v.lag_excluded && v.why.contains("replay delay"), "{v:?}");
    let soon = View { now: Some(at + Duration::from_secs(20)), ..view };
    assert!(!verdict(&Endpoint::Replica(f.clone()), &r, soon, true).passed, "20s > half of 30s: still out");
    let later = View { now: Some(at + Duration::from_secs(10)), ..view };
    assert!(verdict(&Endpoint::Replica(f), &r, later, true).passed, "back in under half the bound");
}

fn tagged(mut s: NodeStatus, k: &str, v: &str) -> NodeStatus {
    s.tags.insert(k.into(), serde_json::Value::String(v.into()));
    s
}

#[test]
fn read_only_applies_tag_filters_to_the_leader_too() {
    // Patroni (api.py do_GET) ignores tags only on the leader paths: on /read-only its 200
    // for the primary is filtered by tag_* like a replica's. Before: the leader passed
    // /read-only?tag_dc=east whatever its tags.
    let west = tagged(parse(LEADER), "dc", "west");
    let yes = View { is_leader: true, ..View::default() };
    let v = verdict(&ep("/read-only?tag_dc=east"), &west, yes, false);
    assert!(!v.passed && v.why.contains("tag dc"), "{v:?}");
    assert!(verdict(&ep("/read-only?tag_dc=west"), &west, yes, false).passed);
    assert!(!verdict(&ep("/read-only?tag_rack=1"), &west, yes, false).passed, "a tag it does not carry");
}

#[test]
fn read_only_admits_a_standby_leader() {
    // Patroni answers /read-only with 200 when 200 in (primary, standby_leader). A standby
    // cluster's leader answers 503 on /primary, so it never leads here; before, /read-only
    // failed it as "not a replica (role standby_leader)".
    let mut sl = parse(REPLICA);
    sl.role = "standby_leader".into();
    assert!(verdict(&ep("/read-only"), &sl, View::default(), false).passed);
    let east = tagged(sl.clone(), "dc", "east");
    assert!(verdict(&ep("/read-only?tag_dc=east"), &east, View::default(), false).passed);
    assert!(!verdict(&ep("/read-only?tag_dc=west"), &east, View::default(), false).passed);
    assert!(!verdict(&ep("/replica"), &sl, View::default(), false).passed, "/replica is still only replicas");
}

#[test]
fn health_takes_tag_filters() {
    // Patroni applies tag_* to /health (ignore_tags is set for the leader paths only).
    // Before: Endpoint::parse dropped the query and every node passed.
    let east = tagged(parse(REPLICA), "dc", "east");
    assert!(verdict(&ep("/health?tag_dc=east"), &east, View::default(), false).passed);
    let v = verdict(&ep("/health?tag_dc=west"), &east, View::default(), false);
    assert!(!v.passed && v.why.contains("tag dc"), "{v:?}");
    let mut stopped = east;
    stopped.state = "stopped".into();
    assert!(!verdict(&ep("/health?tag_dc=east"), &stopped, View::default(), false).passed);
}

#[test]
fn sync_does_not_count_quorum_standbys() {
    // Patroni 4's /sync answers 200 only for sync_standby; in quorum commit mode its
    // standbys are quorum_standby (pg_stat_replication: sync_state "quorum") and /sync is
    // 503 for them, /async too, /quorum 200. Before: "quorum" counted as synchronous.
    let mut l = parse(LEADER);
    l.replication[0].sync_state = Some("quorum".into());
    let r = parse(REPLICA); // node2
    let view = View { leader_position: l.xlog.location.map(|p| on(p, 3)), standbys: &l.replication, ..View::default() };
    assert!(!verdict(&ep("/sync"), &r, view, false).passed, "a quorum standby is not /sync");
    assert!(!verdict(&ep("/async"), &r, view, false).passed, "nor /async");
}

#[test]
fn lag_bounds_fail_closed_without_a_replayed_position() {
    // Patroni takes a missing replayed_location as 0 (lagging). Before: lag was "unknown"
    // and the bound was skipped, so the replica passed.
    let mut r = parse(REPLICA);
    r.xlog.replayed_location = None;
    let view = View { leader_position: Some(on(67_108_960, 3)), ..View::default() };
    let v = verdict(&ep("/replica?lag=16MB"), &r, view, false);
    assert!(!v.passed && v.why.contains("replayed position unknown"), "{v:?}");
    assert!(verdict(&ep("/replica"), &r, view, false).passed, "no bound, nothing to know");
}

#[test]
fn a_replay_delay_bound_fails_closed_without_a_replay_timestamp() {
    // PostgreSQL reports no replay timestamp until the standby replays a transaction.
    // Before: a replica behind the leader with none passed max_replay_delay.
    let mut r = parse(REPLICA); // 8960 bytes behind
    r.xlog.replayed_timestamp = None;
    let mut f = match ep("/replica") {
        Endpoint::Replica(f) => f,
        _ => unreachable!(),
    };
    f.max_delay = Some(Duration::from_secs(30));
    let view =
        View { leader_position: Some(on(67_108_960, 3)), now: Some(std::time::SystemTime::now()), ..View::default() };
    let v = verdict(&Endpoint::Replica(f.clone()), &r, view, false);
    assert!(!v.passed && v.why.contains("replay delay unknown"), "{v:?}");
    r.xlog.replayed_timestamp = Some("yesterday".into());
    assert!(!verdict(&Endpoint::Replica(f.clone()), &r, view, false).passed, "unreadable: unknown too");
    r.xlog.replayed_location = Some(67_108_960);
    assert!(verdict(&Endpoint::Replica(f), &r, view, false).passed, "caught up: no delay whatever the timestamp");
}

#[test]
fn a_replica_on_another_timeline_than_the_leader_fails_lag_bounds() {
    // A former leader that diverged (crash failover, no pg_rewind) runs as a replica on the
    // old timeline with a replayed position past the new leader's: Patroni's /replica?lag
    // (which ignores timelines) admits it. Before: pgfront's lag saturated at 0 and admitted
    // it too, though it will never have the leader's commits.
    let mut diverged = parse(REPLICA);
    diverged.timeline = Some(5);
    diverged.xlog.replayed_location = Some(1000);
    let view = View { leader_position: Some(on(950, 6)), ..View::default() };
    let v = verdict(&ep("/replica?lag=1"), &diverged, view, false);
    assert!(!v.passed && v.why.contains("timeline 5") && v.lag_excluded, "{v:?}");
    assert!(verdict(&ep("/replica"), &diverged, view, false).passed, "without a bound, Patroni's rule");
    let mut unknown = diverged.clone();
    unknown.timeline = None;
    let v = verdict(&ep("/replica?lag=1"), &unknown, view, false);
    assert!(!v.passed && v.why.contains("timeline unknown"), "{v:?}");
    let leader_unknown = View { leader_position: Some(LeaderPosition { lsn: 950, timeline: None }), ..view };
    assert!(!verdict(&ep("/replica?lag=1MB"), &parse(REPLICA), leader_unknown, false).passed);
    let mut same = diverged;
    same.timeline = Some(6);
    assert!(verdict(&ep("/replica?lag=1"), &same, view, false).passed, "on the leader's timeline: ahead is not behind");
}

#[test]
fn a_non_replica_answer_keeps_the_lag_exclusion() {
    // Hysteresis: a replica out for lag comes back only below half the bound. Before: one
    // readable answer that measured no lag (PostgreSQL starting, say) cleared the exclusion,
    // and the next answer between half the bound and the bound re-admitted it.
    let mut r = parse(REPLICA); // replayed 67100000
    let view = View { leader_position: Some(on(67_108_000, 3)), ..View::default() };
    r.state = "starting".into();
    let v = verdict(&ep("/replica?lag=10000"), &r, view, true);
    assert!(!v.passed && v.lag_excluded, "{v:?}");
    r.state = "running".into();
    assert!(!verdict(&ep("/replica?lag=10000"), &r, view, v.lag_excluded).passed, "8000 behind: still out");
}
