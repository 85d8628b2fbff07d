//! Read-your-writes (`pgfront.min_lsn`) against scripted REST fakes whose status JSON says
//! how far each replica has replayed: the choice, the wait with positions refreshed on
//! demand (and bounded), the fallback to the leader, the refusals, the metrics.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(10);

/// The usual lab config with the replica listener reading clients' settings (like 5002),
/// probes every 30 s once up or down (a replica is down on the leader listener) so any
/// faster refresh is pgfront's on-demand one, and
/// `extra` in [defaults].
fn config(lab: &Lab, extra: &str) -> String {
    let slow = lab.config(extra).replace("\ninter = \"50ms\"", "\ninter = \"30s\"");
    slow.replace("downinter = \"50ms\"", "downinter = \"30s\"").replace(
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"",
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\nclient_target = true",
    )
}

/// Status JSON of a streaming replica that has replayed `replayed`.
fn replica(replayed: u64, paused: bool) -> String {
    format!(
        r#"{{"state": "running", "role": "replica", "timeline": 2, "replication_state": "streaming", "xlog": {{"received_location": {replayed}, "replayed_location": {replayed}, "paused": {paused}}}}}"#
    )
}

/// Node 1 leads; nodes 2 and 3 have replayed `a` and `b`.
async fn lab(a: u64, b: u64) -> Lab {
    let lab = Lab::start(3).await;
    lab.leader(0);
    lab.nodes[1].rest.set_json(&replica(a, false));
    lab.nodes[2].rest.set_json(&replica(b, false));
    lab
}

async fn ready(pg: &pgfront::Pgfront) {
    eventually(LIMIT, "two replicas and the leader up", || {
        let rt = pg.shared().runtime();
        rt.listener("replicas").unwrap().servers_up() == 2
            && rt.listener("primary").unwrap().servers_up() == 1
            && rt.leadership.ready_leader() == Some(0)
    })
    .await;
}

/// Opens a plain-text session with `params`: the backend's name, or the FATAL pgfront sent.
async fn session(addr: SocketAddr, params: &[(&str, &str)]) -> Result<String, Fatal> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut all = vec![("user", "app")];
    all.extend_from_slice(params);
    s.write_all(&startup_message(&all)).await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    if first[0] == b'E' {
        return Err(read_error(&mut s).await);
    }
    let mut rest = [0u8; 8];
    s.read_exact(&mut rest).await.unwrap();
    let mut name = Vec::new();
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            return Ok(String::from_utf8(name).unwrap());
        }
        name.push(b[0]);
    }
}

fn min_lsn(lsn: &str) -> String {
    format!("-c pgfront.min_lsn={lsn}")
}

async fn metric(pg: &pgfront::Pgfront, line_start: &str) -> f64 {
    let (_, text) = http_get(pg.web_addr().unwrap(), "/metrics", None).await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

#[tokio::test]
async fn only_replicas_that_replayed_the_position_serve_it() {
    // 0x1388 = 5000: node3 has it, node2 (1000) does not.
    let lab = lab(1000, 5000).await;
    let pg = start(&config(&lab, ""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    for _ in 0..6 {
        assert_eq!(session(addr, &[("options", &min_lsn("0/1388"))]).await.unwrap(), "node3");
    }
    // As its own startup parameter (asyncpg's server_settings), the same.
    assert_eq!(session(addr, &[("pgfront.min_lsn", "0/1388")]).await.unwrap(), "node3");
    // A position both have: round robin over both.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(session(addr, &[("options", &min_lsn("0/3E8"))]).await.unwrap());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["node2", "node3"]);
    // The primary ignores it.
    let both = format!("-c pgfront.target=primary {}", min_lsn("FF/0"));
    assert_eq!(session(addr, &[("options", &both)]).await.unwrap(), "node1");
    assert_eq!(
        metric(&pg, "pgfront_listener_min_lsn_sessions_total{listener=\"replicas\",served_by=\"replica\"}").await,
        11.0
    );
    assert_eq!(
        metric(&pg, "pgfront_listener_min_lsn_sessions_total{listener=\"replicas\",served_by=\"leader\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_replica_with_paused_replay_is_never_chosen() {
    // node2's replay is paused at 1000; node3 replays on. Every session asks for a position
    // past 1000, the latest write, as an application reading its own writes does.
    let lab = lab(1000, 1000).await;
    lab.nodes[1].rest.set_json(&replica(1000, true));
    let pg = start(&config(&lab, "min_lsn_wait = \"2s\""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    for i in 1..=20u64 {
        let lsn = 1000 + i * 100;
        lab.nodes[2].rest.set_json(&replica(lsn, false));
        let got = session(addr, &[("options", &min_lsn(&format!("0/{lsn:X}")))]).await.unwrap();
        assert_eq!(got, "node3", "session {i}");
    }
    assert_eq!(lab.nodes[1].backend.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_session_waits_for_the_position_refreshed_on_demand() {
    let lab = lab(1000, 1000).await;
    let pg = start(&config(&lab, "min_lsn_wait = \"3s\""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    let before = lab.nodes[1].rest.hits("/primary");
    let started = Instant::now();
    let waiting = tokio::spawn(async move { session(addr, &[("options", &min_lsn("0/2710"))]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nobody has 0/2710 yet");
    // With inter = 30s, only pgfront's refresh can see this before the wait ends.
    lab.nodes[1].rest.set_json(&replica(10_000, false));
    assert_eq!(waiting.await.unwrap().unwrap(), "node2");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "served by a refreshed position after {waited:?}");
    let probes = lab.nodes[1].rest.hits("/primary") - before;
    assert!(probes >= 2, "positions refreshed on demand ({probes} probes)");
    assert!(metric(&pg, "pgfront_listener_min_lsn_wait_seconds_total{listener=\"replicas\"}").await >= 0.3);
}

#[tokio::test]
async fn a_burst_of_waiting_sessions_is_no_probe_storm() {
    let lab = lab(1000, 1000).await;
    let pg = start(&config(&lab, "min_lsn_wait = \"1s\""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    let before = lab.nodes[1].rest.hits("/primary");
    let started = Instant::now();
    let mut burst = Vec::new();
    for _ in 0..50 {
        burst.push(tokio::spawn(async move { session(addr, &[("options", &min_lsn("1/0"))]).await }));
    }
    for s in burst {
        assert_eq!(s.await.unwrap().unwrap(), "node1", "nobody has 1/0: the leader after the wait");
    }
    let window = started.elapsed();
    let probes = lab.nodes[1].rest.hits("/primary") - before;
    // One probe per MIN_KICK_GAP (100 ms) at most, however many sessions wait.
    let bound = window.as_millis() as u64 / 100 + 2;
    assert!(probes <= bound, "{probes} probes of node2 in {window:?} for 50 waiting sessions (bound {bound})");
    assert!(probes >= 3, "positions were refreshed ({probes} probes)");
    assert_eq!(
        metric(&pg, "pgfront_listener_min_lsn_sessions_total{listener=\"replicas\",served_by=\"leader\"}").await,
        50.0
    );
}

#[tokio::test]
async fn no_replica_in_time_means_the_leader_or_for_replica_only_a_fatal() {
    let lab = lab(1000, 1000).await;
    let pg = start(&config(&lab, "min_lsn_wait = \"100ms\""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    let started = Instant::now();
    assert_eq!(session(addr, &[("options", &min_lsn("0/2710"))]).await.unwrap(), "node1");
    assert!(started.elapsed() >= Duration::from_millis(100), "it waited min_lsn_wait first");
    let prefer = format!("-c pgfront.target=prefer-replica {}", min_lsn("0/2710"));
    assert_eq!(session(addr, &[("options", &prefer)]).await.unwrap(), "node1");
    let only = format!("-c pgfront.target=replica {}", min_lsn("0/2710"));
    let err = session(addr, &[("options", &only)]).await.unwrap_err();
    assert_eq!(err.code, "57P03", "{err:?}");
    assert!(err.message.contains("pgfront.min_lsn=0/2710") && err.message.contains("replicas"), "{err:?}");
    // With min_lsn_wait = 0 the leader at once.
    let pg0 = start(&config(&lab, "min_lsn_wait = \"0s\""));
    ready(&pg0).await;
    let started = Instant::now();
    let a0 = pg0.listener_addr("replicas").unwrap();
    assert_eq!(session(a0, &[("options", &min_lsn("0/2710"))]).await.unwrap(), "node1");
    assert!(started.elapsed() < Duration::from_millis(100));
    let m = |by: &str| format!("pgfront_listener_min_lsn_sessions_total{{listener=\"replicas\",served_by=\"{by}\"}}");
    assert_eq!(metric(&pg, &m("leader")).await, 2.0);
    assert_eq!(metric(&pg, &m("refused")).await, 1.0);
}

#[tokio::test]
async fn a_bad_position_is_a_fatal_naming_the_parameter() {
    let lab = lab(1000, 1000).await;
    let pg = start(&config(&lab, ""));
    ready(&pg).await;
    let addr = pg.listener_addr("replicas").unwrap();
    for params in [
        vec![("options", min_lsn("3000060"))],
        vec![("options", min_lsn("0/xyz"))],
        vec![("pgfront.min_lsn", "1/2/3".to_owned())],
    ] {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = session(addr, &p).await.unwrap_err();
        assert_eq!(err.code, "22023", "{err:?}");
        assert!(err.message.contains("invalid value for parameter \"pgfront.min_lsn\""), "{err:?}");
    }
    // Empty is no position, as an empty pgfront.target is no choice (before: refused).
    let served = session(addr, &[("options", &min_lsn(""))]).await;
    assert!(served.is_ok(), "{served:?}");
    // Where clients' settings are not read, it is not read either (the listener's rule).
    let plain = pg.listener_addr("primary").unwrap();
    assert_eq!(session(plain, &[("options", &min_lsn("nonsense"))]).await.unwrap(), "node1");
}

#[tokio::test]
async fn a_position_asked_while_nothing_is_admitted_waits_the_queue_bound_not_only_min_lsn_wait() {
    let lab = Lab::start(3).await;
    for n in &lab.nodes {
        n.rest.set_all(Some(Answer::Garbage));
    }
    // Fast checks (the lab's), so the servers come up while the session waits.
    let text = lab.config("min_lsn_wait = \"100ms\"\ntimeout_queue = \"10s\"").replace(
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"",
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\nclient_target = true",
    );
    let pg = start(&text);
    let addr = pg.listener_addr("replicas").unwrap();
    let waiting = tokio::spawn(async move { session(addr, &[("options", &min_lsn("0/10"))]).await });
    // Past min_lsn_wait with nothing admitted (a failover): still waiting, not refused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "refused when the position wait ended: {:?}", waiting.await);
    for n in &lab.nodes {
        n.rest.set_all(None);
    }
    lab.leader(0);
    lab.nodes[1].rest.set_json(&replica(1000, false));
    lab.nodes[2].rest.set_json(&replica(1000, false));
    let served = tokio::time::timeout(LIMIT, waiting).await.expect("served in time").unwrap();
    assert!(served.is_ok(), "served once servers were admitted: {served:?}");
}
