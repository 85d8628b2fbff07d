//! Several Patroni clusters in one process (`[[cluster]]`): each cluster has its own
//! generation, checkers and leadership, so a leader change, a reload or a removal in one
//! never touches another's sessions or health. Against scripted REST fakes.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgfront::{Config, Pgfront};
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

const WEB: &str = r#"
[web]
bind = "127.0.0.1:0"
[[web.user]]
name = "admin"
password = "secret"
role = "admin"
"#;

/// A `[[cluster]]` named `name` over `lab`'s nodes (named node1..), with a write listener
/// `NAME-primary` and a round-robin `NAME-replicas`.
fn cluster(name: &str, lab: &Lab, inter: &str) -> String {
    let nodes = lab.nodes_toml().replace("[[node]]", "[[cluster.node]]");
    format!(
        r#"
[[cluster]]
name = "{name}"

{nodes}
[[cluster.listener]]
name = "{name}-primary"
bind = "127.0.0.1:0"
balance = "first"
check = {{ path = "/primary" }}
{inter}

[[cluster.listener]]
name = "{name}-replicas"
bind = "127.0.0.1:0"
check = {{ path = "/replica" }}
"#
    )
}

fn parse(text: &str) -> Config {
    Config::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn up(pg: &Pgfront, listener: &str) -> usize {
    pg.shared().listener(listener).map_or(0, |l| l.servers_up())
}

/// What must not move in a cluster that is left alone: its generation (the same `Arc`),
/// its leader changes, and every server's state and up/down transitions (not its count of
/// failed probes: one slow answer of a fake on a loaded machine is not the other cluster's
/// doing).
struct Untouched {
    runtime: Arc<pgfront::cluster::Runtime>,
    leader_changes: u64,
    health: Vec<(String, String, u64, bool)>,
}

fn untouched(pg: &Pgfront, name: &str) -> Untouched {
    let runtime = pg.cluster(name).expect("the cluster runs").runtime.load_full();
    Untouched { leader_changes: runtime.leadership.changes.load(Ordering::SeqCst), health: health(&runtime), runtime }
}

fn health(rt: &pgfront::cluster::Runtime) -> Vec<(String, String, u64, bool)> {
    rt.listeners
        .iter()
        .flat_map(|l| {
            l.servers.iter().map(move |s| {
                let r = s.check.report();
                (l.config.name.clone(), s.name.clone(), r.downs, s.is_up())
            })
        })
        .collect()
}

impl Untouched {
    fn assert_same(&self, pg: &Pgfront, name: &str, what: &str) {
        let now = pg.cluster(name).expect("the cluster still runs").runtime.load_full();
        assert!(Arc::ptr_eq(&self.runtime, &now), "{what}: cluster {name}'s generation was rebuilt");
        assert_eq!(now.leadership.changes.load(Ordering::SeqCst), self.leader_changes, "{what}: {name}'s leadership");
        assert_eq!(health(&now), self.health, "{what}: {name}'s health");
    }
}

#[tokio::test]
async fn a_leader_change_in_one_cluster_leaves_the_other_alone() {
    let (a, b) = (Lab::start(3).await, Lab::start(3).await);
    a.leader(0);
    b.leader(0);
    let text = format!("{FAST}{}{}{WEB}", cluster("a", &a, ""), cluster("b", &b, ""));
    let pg = support::start(&text);
    eventually(LIMIT, "both clusters up", || {
        up(&pg, "a-primary") == 1
            && up(&pg, "a-replicas") == 2
            && up(&pg, "b-primary") == 1
            && up(&pg, "b-replicas") == 2
    })
    .await;
    // Sessions in both clusters; each lands on its own cluster's backends.
    let mut a_write = connect(pg.listener_addr("a-primary").unwrap()).await.unwrap();
    assert_eq!(a.nodes[0].backend.accepted.load(Ordering::SeqCst), 1);
    let mut b_write = connect(pg.listener_addr("b-primary").unwrap()).await.unwrap();
    assert_eq!((b_write.server.as_str(), b.nodes[0].backend.accepted.load(Ordering::SeqCst)), ("node1", 1));
    let mut b_read = connect_to(pg.listener_addr("b-replicas").unwrap(), "node2").await;
    assert_eq!(a.nodes[1].backend.accepted.load(Ordering::SeqCst), 0, "cluster b's sessions never reach a's nodes");
    let before = untouched(&pg, "b");

    // A switchover in cluster a: node2 leads there, node1's write session is cut.
    a.leader(1);
    eventually(LIMIT, "a's new leader", || {
        let l = pg.shared().listener("a-primary").unwrap();
        l.servers.iter().any(|s| s.name == "node2" && s.is_up()) && l.servers_up() == 1
    })
    .await;
    assert!(a_write.closed_within(LIMIT).await, "the session on a's old leader is cut");
    let a_new = connect(pg.listener_addr("a-primary").unwrap()).await.unwrap();
    assert_eq!(a_new.server, "node2");
    let a_changes = pg.cluster("a").unwrap().runtime.load().leadership.changes.load(Ordering::SeqCst);
    assert!(a_changes >= 2, "a's leader changed ({a_changes})");

    // Cluster b: same generation, same leader, no transition, its sessions open and working.
    tokio::time::sleep(Duration::from_millis(300)).await;
    before.assert_same(&pg, "b", "after a's switchover");
    b_write.echo(b"b still writes").await.expect("b's write session is untouched");
    b_read.echo(b"b still reads").await.expect("b's read session is untouched");
    let b_leader = pg.cluster("b").unwrap().runtime.load().leadership.leader();
    assert_eq!(b_leader, Some(0), "b's leader is still node1");

    // The views: one section, one JSON entry and a `cluster` label per cluster.
    let web = pg.web_addr().unwrap();
    let (status, json) = http_get(web, "/status.json", Some("YWRtaW46c2VjcmV0")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let clusters = v["clusters"].as_array().expect("per-cluster data");
    assert_eq!(clusters.len(), 2);
    assert_eq!((clusters[0]["cluster"].as_str(), clusters[0]["leader"].as_str()), (Some("a"), Some("node2")));
    assert_eq!((clusters[1]["cluster"].as_str(), clusters[1]["leader"].as_str()), (Some("b"), Some("node1")));
    assert_eq!(clusters[1]["leader_changes"], 1);
    assert_eq!(v["cluster"], "a", "the top level is the first cluster");
    let (_, page) = http_get(web, "/", Some("YWRtaW46c2VjcmV0")).await;
    assert!(page.contains("Cluster a") && page.contains("Cluster b"), "a section per cluster");
    let (_, metrics) = http_get(web, "/metrics", None).await;
    for series in [
        r#"pgfront_node_is_leader{cluster="a",node="node2"} 1"#,
        r#"pgfront_node_is_leader{cluster="b",node="node1"} 1"#,
        r#"pgfront_server_current_sessions{cluster="b",listener="b-replicas",server="node2"} 1"#,
        &format!(r#"pgfront_leader_changes_total{{cluster="a"}} {a_changes}"#),
        r#"pgfront_leader_changes_total{cluster="b"} 1"#,
        "pgfront_config_last_reload_successful 1",
    ] {
        assert!(metrics.contains(series), "missing {series}\n{metrics}");
    }
    // promtool's own linter, where it is installed (scripts/deps installs it for CI).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `pgfront status` prints one part per cluster.
    let text = pgfront::status::render("http://x", &v);
    assert!(text.contains("== cluster a ==") && text.contains("== cluster b =="), "{text}");
    assert!(text.contains("leader node2") && text.contains("leader node1"), "{text}");
    assert!(pgfront::status::leader_admitted(&v));
    drop((a_new, b_write, b_read));
    pg.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_reload_adds_and_removes_a_cluster_without_touching_the_other() {
    let (a, b) = (Lab::start(2).await, Lab::start(2).await);
    a.leader(0);
    b.leader(0);
    let only_a = format!("{FAST}{}{WEB}", cluster("a", &a, ""));
    let pg = support::start(&only_a);
    eventually(LIMIT, "a up", || up(&pg, "a-primary") == 1 && up(&pg, "a-replicas") == 1).await;
    assert!(pg.listener_addr("b-primary").is_none());
    let mut a_write = connect(pg.listener_addr("a-primary").unwrap()).await.unwrap();
    let a_before = untouched(&pg, "a");

    // Adding b: a's generation, health and sessions stay as they are.
    let both = format!("{FAST}{}{}{WEB}", cluster("a", &a, ""), cluster("b", &b, ""));
    pg.reload(parse(&both)).expect("the reload applies");
    eventually(LIMIT, "b up", || up(&pg, "b-primary") == 1 && up(&pg, "b-replicas") == 1).await;
    let mut b_write = connect(pg.listener_addr("b-primary").unwrap()).await.unwrap();
    assert_eq!(b.nodes[0].backend.accepted.load(Ordering::SeqCst), 1);
    a_before.assert_same(&pg, "a", "after b was added");
    a_write.echo(b"a after b joined").await.expect("a's session is untouched");

    // Retiming b alone leaves a alone too.
    let b_retimed = format!("{FAST}{}{}{WEB}", cluster("a", &a, ""), cluster("b", &b, "inter = \"40ms\""));
    pg.reload(parse(&b_retimed)).expect("the reload applies");
    a_before.assert_same(&pg, "a", "after b was retimed");
    assert_eq!(up(&pg, "b-primary"), 1, "b's health carries over its own reload");

    // Removing a: b's generation, health and sessions stay; a's open session runs to its
    // end, its listeners stop accepting and its nodes are no longer probed.
    let b_before = untouched(&pg, "b");
    let only_b = format!("{FAST}{}{WEB}", cluster("b", &b, "inter = \"40ms\""));
    pg.reload(parse(&only_b)).expect("the reload applies");
    assert!(pg.cluster("a").is_none());
    assert!(pg.listener_addr("a-primary").is_none() && pg.listener_addr("a-replicas").is_none());
    b_before.assert_same(&pg, "b", "after a was removed");
    b_write.echo(b"b after a left").await.expect("b's session is untouched");
    a_write.echo(b"a's session runs to its end").await.expect("a removed cluster's open session stays");
    let probes = a.nodes[0].rest.hits("/primary");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.nodes[0].rest.hits("/primary") <= probes + 1, "a's checkers stopped");
    let (_, json) = http_get(pg.web_addr().unwrap(), "/status.json", Some("YWRtaW46c2VjcmV0")).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["clusters"].as_array().unwrap().iter().filter_map(|c| c["cluster"].as_str()).collect();
    assert_eq!(names, ["b"]);
    // a's session is shown, with the place it holds (before: in no view at all).
    let want = serde_json::json!([{"cluster": "a", "listener": "a-primary", "server": "node1", "sessions": 1}]);
    assert_eq!(v["retired"], want, "{json}");
    assert_eq!(v["global_sessions"], 2, "{json}");
    assert_eq!(pg.shared().reloads.ok.load(Ordering::SeqCst), 3);
    drop((a_write, b_write));
    pg.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn admin_actions_name_the_cluster_when_node_names_repeat() {
    let (a, b) = (Lab::start(2).await, Lab::start(2).await);
    a.leader(0);
    b.leader(0);
    let pg = support::start(&format!("{FAST}{}{}{WEB}", cluster("a", &a, ""), cluster("b", &b, "")));
    eventually(LIMIT, "up", || up(&pg, "a-replicas") == 1 && up(&pg, "b-replicas") == 1).await;
    let src = pgfront::status::Source {
        url: format!("http://{}", pg.web_addr().unwrap()),
        user: Some("admin".into()),
        password: Some("secret".into()),
        timeout: Duration::from_secs(5),
    };
    let act = |cluster: Option<&'static str>| {
        let src = src.clone();
        tokio::task::spawn_blocking(move || pgfront::status::act(&src, "drain", "node2", None, cluster))
    };
    let refused = act(None).await.unwrap().expect_err("node2 is in both clusters");
    assert!(matches!(&refused, Ok(why) if why.contains("cluster")), "{refused:?}");
    let done = act(Some("b")).await.unwrap().expect("drained in b");
    assert_eq!(done, ["b-primary/node2: set DRAIN", "b-replicas/node2: set DRAIN"]);
    let a_node2 = pg.shared().listener("a-replicas").unwrap().servers[1].admin();
    let b_node2 = pg.shared().listener("b-replicas").unwrap().servers[1].admin();
    assert_eq!((a_node2.as_str(), b_node2.as_str()), ("READY", "DRAIN"));
    pg.shutdown(Duration::from_secs(1)).await;
}

/// Patroni's `/cluster` answer listing `lab`'s first `count` nodes as node1...
fn members_json(lab: &Lab, count: usize) -> String {
    let list: Vec<String> = lab.nodes[..count]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#"{{"name": "node{}", "role": "replica", "state": "streaming", "host": "{}", "port": {}, "api_url": "http://{}/patroni"}}"#,
                i + 1,
                n.backend.addr.ip(),
                n.backend.addr.port(),
                n.rest.addr
            )
        })
        .collect();
    format!(r#"{{"members": [{}], "scope": "b"}}"#, list.join(", "))
}

#[tokio::test]
async fn discovery_in_one_cluster_changes_only_that_cluster() {
    let (a, b) = (Lab::start(2).await, Lab::start(3).await);
    a.leader(0);
    b.leader(0);
    for n in &b.nodes {
        n.rest.set_body("/cluster", &members_json(&b, 2));
    }
    let discovered = format!(
        r#"
[[cluster]]
name = "b"
discovery = "patroni"
discovery_seeds = ["{}"]
discovery_allow = ["127.0.0.1"]
discovery_inter = "50ms"

[[cluster.listener]]
name = "b-replicas"
bind = "127.0.0.1:0"
check = {{ path = "/replica" }}
"#,
        b.nodes[0].rest.addr
    );
    let pg = support::start(&format!("{FAST}{}{discovered}{WEB}", cluster("a", &a, "")));
    eventually(LIMIT, "a up, b's members found", || up(&pg, "a-replicas") == 1 && up(&pg, "b-replicas") == 1).await;
    let mut a_read = connect(pg.listener_addr("a-replicas").unwrap()).await.unwrap();
    let a_before = untouched(&pg, "a");
    // A third member joins b: b's generation changes, a's does not.
    for n in &b.nodes {
        n.rest.set_body("/cluster", &members_json(&b, 3));
    }
    eventually(LIMIT, "node3 joins b", || up(&pg, "b-replicas") == 2).await;
    assert_eq!(pg.cluster("b").unwrap().runtime.load().config.nodes.len(), 3);
    assert!(pg.cluster("b").unwrap().discovery.changes.load(Ordering::SeqCst) >= 2);
    assert_eq!(pg.cluster("a").unwrap().discovery.changes.load(Ordering::SeqCst), 0);
    a_before.assert_same(&pg, "a", "after b's member set changed");
    a_read.echo(b"a is untouched").await.unwrap();
    assert_eq!(pg.shared().reloads.ok.load(Ordering::SeqCst), 0, "no reload");
    pg.shutdown(Duration::from_secs(1)).await;
}

/// What a second cluster costs a new session: connect-to-first-byte through the replicas
/// listener of a file without `[[cluster]]`, and through the replicas listener of the
/// second of two clusters, both instances in one process (so their checkers load both
/// samples alike), in alternating order. Prints medians and p99; run with
/// `cargo test --test clusters -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name"]
async fn measure_connect_cost() {
    let (a, b) = (Lab::start(3).await, Lab::start(3).await);
    a.leader(0);
    b.leader(0);
    let single = support::start(&b.config(""));
    let multi = support::start(&format!("{FAST}{}{}{WEB}", cluster("a", &a, ""), cluster("b", &b, "")));
    eventually(LIMIT, "up", || {
        single.shared().listener("replicas").is_some_and(|l| l.servers_up() == 2) && up(&multi, "b-replicas") == 2
    })
    .await;
    let n = 3000;
    for round in 0..6 {
        // Alternating which goes first: both instances' checkers run all along.
        let (one, two) = if round % 2 == 0 {
            let one = support::connect_latency(single.listener_addr("replicas").unwrap(), n).await;
            (one, support::connect_latency(multi.listener_addr("b-replicas").unwrap(), n).await)
        } else {
            let two = support::connect_latency(multi.listener_addr("b-replicas").unwrap(), n).await;
            (support::connect_latency(single.listener_addr("replicas").unwrap(), n).await, two)
        };
        eprintln!(
            "round {round}: connect+first byte median/p99 µs: one unnamed cluster {}/{}, second of two clusters {}/{}",
            one.0, one.1, two.0, two.1
        );
    }
    single.shutdown(Duration::from_millis(100)).await;
    multi.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn moving_a_file_to_cluster_tables_keeps_health_and_sessions() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = support::start(&text);
    eventually(LIMIT, "up", || up(&pg, "primary") == 1 && up(&pg, "replicas") == 2).await;
    let mut c = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    let addr = pg.listener_addr("primary").unwrap();
    let (_, rest) = text.split_once("[[node]]").unwrap();
    let named = format!("{FAST}\n[[cluster]]\nname = \"main\"\n\n[[node]]{rest}")
        .replace("[[node]]", "[[cluster.node]]")
        .replace("[[listener]]", "[[cluster.listener]]");
    pg.reload(parse(&named)).expect("the reload applies");
    assert!(pg.cluster("").is_none() && pg.cluster("main").is_some());
    assert_eq!((up(&pg, "primary"), up(&pg, "replicas")), (1, 2), "health carried over");
    assert_eq!(pg.listener_addr("primary"), Some(addr), "same socket");
    c.echo(b"still here").await.expect("the session is untouched");
    let next = connect(addr).await.expect("new sessions are served at once");
    assert_eq!(next.server, "node1");
    // Later reloads apply to the listener it took over (its accept loop reads the new
    // cluster): an idle timeout set now closes a new idle session.
    let idle = named.replacen("balance = \"first\"", "balance = \"first\"\ntimeout_client = \"300ms\"", 1);
    assert_ne!(idle, named);
    pg.reload(parse(&idle)).expect("the reload applies");
    let mut short = connect(addr).await.unwrap();
    assert!(short.closed_within(Duration::from_secs(3)).await, "the reloaded timeout_client applies");
    pg.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn renaming_a_cluster_with_its_listeners_keeps_health_and_sessions() {
    // Found by a torture run: a cluster renamed together with its listeners (same fixed
    // addresses) started as a new cluster, its servers down until they rose again, its
    // leadership and counters lost. It succeeds the cluster whose addresses it takes over.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let (a, _, _) = on_two_free_ports(&cluster("a", &lab, ""));
    let b = a.replace("name = \"a\"", "name = \"b\"").replace("\"a-", "\"b-");
    assert!(!b.contains("\"a-") && b.contains("name = \"b\""));
    let pg = support::start(&format!("{FAST}{a}"));
    eventually(LIMIT, "up", || up(&pg, "a-primary") == 1 && up(&pg, "a-replicas") == 2).await;
    let addr = pg.listener_addr("a-primary").unwrap();
    let mut c = connect(addr).await.unwrap();
    pg.reload(parse(&format!("{FAST}{b}"))).expect("the reload applies");
    assert!(pg.cluster("a").is_none() && pg.cluster("b").is_some());
    assert_eq!((up(&pg, "b-primary"), up(&pg, "b-replicas")), (1, 2), "health carried over");
    let rt = pg.cluster("b").unwrap().runtime.load_full();
    assert_eq!(rt.listener("b-primary").unwrap().servers[0].stats.cur.load(Ordering::SeqCst), 1, "the session counts");
    c.echo(b"still here").await.expect("the session is untouched");
    assert_eq!(connect(addr).await.expect("served at once").server, "node1");
    pg.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_listener_moved_to_another_cluster_takes_its_waiting_clients_along() {
    // Found by helper-41: clients waiting in a listener's queue when a reload moved it to
    // another [[cluster]] stayed in the old cluster's queue, waiting for a place there
    // (9.6 s), while a client arriving after the move was served at once.
    let (la, lb) = (Lab::start(2).await, Lab::start(2).await);
    la.leader(0);
    lb.leader(0);
    let a = cluster("a", &la, "");
    let b = cluster("b", &lb, "");
    // a-replicas: one replica, one place, a long queue.
    let (a, _, _) = on_two_free_ports(&a.replace(
        "name = \"a-replicas\"\nbind = \"127.0.0.1:0\"",
        "name = \"a-replicas\"\nbind = \"127.0.0.1:0\"\nmaxconn = 1\ntimeout_queue = \"20s\"",
    ));
    let start_at = a.find("[[cluster.listener]]\nname = \"a-replicas\"").unwrap();
    let listener = a[start_at..].to_owned();
    let pg = support::start(&format!("{FAST}{a}{b}"));
    eventually(LIMIT, "up", || up(&pg, "a-replicas") == 1 && up(&pg, "b-replicas") == 1).await;
    let addr = pg.listener_addr("a-replicas").unwrap();
    let mut first = connect(addr).await.unwrap();
    let waiting = tokio::spawn(connect(addr));
    eventually(LIMIT, "one waiting", || pg.shared().listener("a-replicas").is_some_and(|l| l.queue.len() == 1)).await;
    // The listener moves to cluster b, same address.
    let moved = format!("{FAST}{}{b}\n{listener}", &a[..start_at]);
    pg.reload(parse(&moved)).expect("the reload applies");
    let served = tokio::time::timeout(LIMIT, waiting).await.expect("still waiting").unwrap().expect("refused");
    assert_eq!(lb.nodes[1].backend.accepted.load(Ordering::SeqCst), 1, "served by cluster b's replica");
    assert_eq!(served.server, "node2");
    first.echo(b"the first session stays on a's replica").await.unwrap();
    pg.shutdown(Duration::from_secs(1)).await;
}
