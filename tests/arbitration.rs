//! Leadership arbitration through the checkers, on tokio's paused clock, against scripted
//! Patroni answers (a status code and a status JSON per node): sequences a real cluster
//! produces only now and then, replayed exactly. Each test failed before its fix.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfront::cluster::{spawn_checkers, Change, React, Runtime};
use pgfront::config::{CheckSpec, Config};
use pgfront::health::{Probe, ProbeResult};
use pgfront::proxy::Reactor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per REST target: (HTTP status, status JSON); status 0 is an unreadable answer.
#[derive(Default)]
struct Nodes(Mutex<HashMap<String, (u16, String)>>);

impl Nodes {
    fn set(&self, target: &str, code: u16, json: &str) {
        self.0.lock().unwrap().insert(target.to_owned(), (code, json.to_owned()));
    }
}

impl Probe for Nodes {
    fn probe<'a>(
        &'a self,
        target: &'a str,
        _: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            let (code, json) = self.0.lock().unwrap().get(target).cloned().unwrap_or((503, "{}".into()));
            let mut r = ProbeResult::answered(code == 200, Duration::ZERO, "");
            if code != 0 {
                r.status = Some(code);
                r.body = Some(json.into_bytes());
            }
            r
        })
    }
}

/// The data plane's reactions, with every conflict's claimants noted.
#[derive(Default)]
struct Conflicts(Mutex<Vec<Vec<String>>>);

impl React for Conflicts {
    fn react(&self, rt: &Runtime, change: Change) {
        if let Change::Conflict { claimants } = &change {
            self.0.lock().unwrap().push(claimants.clone());
        }
        Reactor.react(rt, change);
    }
}

const CONFIG: &str = r#"
[global]
hunt_inter = "200ms"
[defaults]
inter = "3s"
fastinter = "1s"
fall = 3
rise = 2
[[node]]
name = "a"
address = "127.0.0.1:1"
check_address = "a:8008"
[[node]]
name = "b"
address = "127.0.0.1:2"
check_address = "b:8008"
[[node]]
name = "c"
address = "127.0.0.1:3"
check_address = "c:8008"
[[listener]]
name = "primary"
bind = "127.0.0.1:0"
check = { method = "OPTIONS", path = "/master" }
"#;

const PRIMARY5: &str =
    r#"{"state": "running", "role": "primary", "timeline": 5, "database_system_identifier": "7001"}"#;
const PRIMARY6: &str =
    r#"{"state": "running", "role": "primary", "timeline": 6, "database_system_identifier": "7001"}"#;
const REPLICA5: &str =
    r#"{"state": "running", "role": "replica", "timeline": 5, "database_system_identifier": "7001"}"#;
/// Patroni's status while PostgreSQL stops: its query fails, so no timeline.
const STOPPING: &str = r#"{"state": "stopping", "role": "primary", "database_system_identifier": "7001"}"#;

/// Checkers for `config` over `nodes`, a leads; returns the runtime, the conflicts seen, the
/// start and the token that stops them.
async fn a_leads(config: &str, nodes: &Arc<Nodes>) -> (Arc<Runtime>, Arc<Conflicts>, Instant, CancellationToken) {
    let config = Config::parse(Path::new("arbitration.toml"), config).unwrap();
    let rt = Arc::new(Runtime::build(Arc::new(config), &CancellationToken::new()));
    nodes.set("a:8008", 200, PRIMARY5);
    nodes.set("b:8008", 503, REPLICA5);
    nodes.set("c:8008", 503, REPLICA5);
    let conflicts = Arc::new(Conflicts::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, nodes.clone(), conflicts.clone(), &TaskTracker::new(), &stop);
    until(start, 2_000).await;
    assert_eq!(rt.leadership.leader(), Some(0));
    (rt, conflicts, start, stop)
}

/// Lets the paused clock run to `ms` after `start`.
async fn until(start: Instant, ms: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_names_only_the_nodes_that_claim_the_lock() {
    // Before: a node whose latest answer was a 503 was named among the claimants.
    let nodes = Arc::new(Nodes::default());
    let (_rt, conflicts, start, stop) = a_leads(CONFIG, &nodes).await;
    nodes.set("a:8008", 503, PRIMARY5);
    nodes.set("b:8008", 200, PRIMARY5);
    nodes.set("c:8008", 200, PRIMARY5);
    until(start, 4_000).await;
    stop.cancel();
    let seen = conflicts.0.lock().unwrap().clone();
    assert!(!seen.is_empty(), "b and c both claim timeline 5: a conflict");
    assert!(seen.iter().all(|c| !c.contains(&"a".to_owned())), "a said 503, yet is named: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_leader_stopping_without_a_timeline_does_not_hold_up_its_successor() {
    // Before (a7ed045): a's last claim, made while PostgreSQL was stopping (no timeline),
    // kept through its failed probes, was a conflict with b's: no writes until it aged out.
    let nodes = Arc::new(Nodes::default());
    let (rt, conflicts, start, stop) = a_leads(&CONFIG.replace("fall = 3", "fall = 5"), &nodes).await;
    nodes.set("a:8008", 200, STOPPING);
    until(start, 3_500).await;
    assert!(rt.nodes[0].claim().is_some_and(|c| c.timeline.is_none()), "a seen stopping");
    nodes.set("a:8008", 0, "");
    nodes.set("b:8008", 200, REPLICA5);
    until(start, 3_700).await;
    nodes.set("b:8008", 200, PRIMARY6);
    until(start, 4_500).await;
    stop.cancel();
    assert_eq!(rt.leadership.leader(), Some(1), "b leads while a's claim is still kept");
    assert!(conflicts.0.lock().unwrap().is_empty(), "a switchover seen as a conflict");
}

#[tokio::test(start_paused = true)]
async fn a_replica_left_on_another_timeline_is_marked_down_once_the_grace_is_over() {
    // Found by review (helper-45): a lag-bounded replica replaying another timeline than the
    // leader's was undecided forever: no new session, but never DOWN, its sessions never
    // cut, though one that diverged never follows the leader.
    let text = format!(
        "{CONFIG}[[listener]]\nname = \"replicas\"\nbind = \"127.0.0.1:0\"\ncheck = {{ path = \"/replica?lag=16MB\" }}\n"
    );
    let nodes = Arc::new(Nodes::default());
    let config = Config::parse(Path::new("arbitration.toml"), &text).unwrap();
    let rt = Arc::new(Runtime::build(Arc::new(config), &CancellationToken::new()));
    let primary6 = r#"{"state": "running", "role": "primary", "timeline": 6, "database_system_identifier": "7001", "xlog": {"location": 1000}}"#;
    let on = |tl: u64| {
        format!(
            r#"{{"state": "running", "role": "replica", "timeline": {tl}, "database_system_identifier": "7001", "xlog": {{"received_location": 900, "replayed_location": 900}}}}"#
        )
    };
    nodes.set("a:8008", 200, primary6);
    nodes.set("b:8008", 503, &on(6));
    nodes.set("c:8008", 503, &on(6));
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, nodes.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    until(start, 10_000).await;
    let marked_up = |name: &str| {
        let s = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == name).unwrap().clone();
        s.check.report().machine.is_up()
    };
    assert!(marked_up("b") && marked_up("c"));
    // b is left on timeline 5 (it diverged): undecided, no new session, not DOWN yet.
    nodes.set("b:8008", 503, &on(5));
    until(start, 25_000).await;
    assert!(marked_up("b"), "DOWN within the grace a replica has to follow a new timeline");
    assert!(!rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "b").unwrap().is_up(), "admitted");
    until(start, 60_000).await;
    assert!(!marked_up("b"), "a replica left on another timeline was never marked DOWN");
    assert!(marked_up("c"));
    stop.cancel();
}
