//! Nodes from Patroni: in-process tests with fake REST nodes whose `GET /cluster` lists the
//! members. Members that join reach the listeners without a reload; a member that leaves
//! keeps its sessions until its check fails; addresses outside `discovery_allow` are never
//! used; a seed that is down does not stop discovery.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgfront::config::Origin;
use pgfront::Pgfront;
use support::{connect, connect_to, eventually, start, FakeNode, Lab, FAST};

const LIMIT: Duration = Duration::from_secs(10);

/// Patroni's `/cluster` answer listing `members` (name, node), each at its fake's addresses.
fn cluster_json(members: &[(&str, &FakeNode)]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|(name, n)| {
            format!(
                r#"{{"name": "{name}", "role": "replica", "state": "streaming", "host": "{}", "port": {}, "api_url": "http://{}/patroni", "timeline": 2}}"#,
                n.backend.addr.ip(),
                n.backend.addr.port(),
                n.rest.addr
            )
        })
        .collect();
    format!(r#"{{"members": [{}], "scope": "lab"}}"#, list.join(", "))
}

/// Every fake answers `/cluster` with `json`, as every Patroni member would.
fn publish(lab: &Lab, json: &str) {
    for n in &lab.nodes {
        n.rest.set_body("/cluster", json);
    }
}

/// A config with discovery from `seeds`, allowing `allow`, `extra` after the defaults
/// (declared nodes, say), and the usual primary and replicas listeners of every node.
fn config(seeds: &[String], allow: &str, extra: &str) -> String {
    let seeds = seeds.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let global = format!(
        "[global]\ndiscovery = \"patroni\"\ndiscovery_seeds = [{seeds}]\ndiscovery_allow = [\"{allow}\"]\ndiscovery_inter = \"50ms\"\n"
    );
    format!(
        "{}{extra}\n{}",
        FAST.replace("[global]\n", &global),
        r#"
[[listener]]
name = "primary"
bind = "127.0.0.1:0"
balance = "first"
check = { path = "/master" }

[[listener]]
name = "replicas"
bind = "127.0.0.1:0"
check = { path = "/replica" }

[web]
bind = "127.0.0.1:0"
"#
    )
}

/// The lab's nodes as `[[node]]` tables without discovery, and the same listeners with
/// discovery from node1 instead.
fn declared_then_discovery(lab: &Lab) -> (String, String) {
    let seed = lab.nodes[0].rest.addr.to_string();
    let with_discovery = config(std::slice::from_ref(&seed), "127.0.0.1/32", "");
    let keys = format!(
        "discovery = \"patroni\"\ndiscovery_seeds = [\"{seed}\"]\ndiscovery_allow = [\"127.0.0.1/32\"]\ndiscovery_inter = \"50ms\"\n"
    );
    let primary = "[[listener]]\nname = \"primary\"";
    let declared = with_discovery.replace(&keys, "").replace(primary, &format!("{}{primary}", lab.nodes_toml()));
    assert!(!declared.contains("discovery") && declared.contains("[[node]]"), "{declared}");
    (declared, with_discovery)
}

fn node_names(pg: &Pgfront) -> Vec<(String, Origin)> {
    let rt = pg.shared().runtime();
    rt.config.nodes.iter().map(|n| (n.name.clone(), n.origin)).collect()
}

fn has_event(pg: &Pgfront, text: &str) -> bool {
    pg.shared().runtime().events.recent().iter().any(|e| e.text.contains(text))
}

#[tokio::test]
async fn a_member_joining_reaches_the_listeners_without_a_reload() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1])]));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    let primary = pg.listener_addr("primary").unwrap();
    let replicas = pg.listener_addr("replicas").unwrap();
    // Only one seed and no declared node: the leader and a replica are found from it.
    eventually(LIMIT, "node1 leads through the primary listener", || {
        pg.shared().runtime().listener("primary").unwrap().servers_up() == 1
    })
    .await;
    assert_eq!(connect(primary).await.unwrap().server, "node1");
    eventually(LIMIT, "node2 serves replicas", || {
        pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1
    })
    .await;
    let kept = connect_to(replicas, "node2").await;
    assert_eq!(lab.nodes[2].rest.hits("/primary"), 0, "an unlisted node is never probed");

    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])]));
    eventually(LIMIT, "node3 joins the replicas listener", || {
        pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2
    })
    .await;
    connect_to(replicas, "node3").await;
    let mut kept = kept;
    kept.echo(b"still here").await.expect("a session on a node that stays is untouched by the change");
    let shared = pg.shared();
    assert_eq!(shared.reloads.ok.load(Ordering::Relaxed), 0, "no reload was needed");
    assert_eq!(shared.first().discovery.members.load(Ordering::Relaxed), 3);
    assert!(shared.first().discovery.changes.load(Ordering::Relaxed) >= 2);
    assert!(has_event(&pg, "discovery: node3 joined"));
    let (status, metrics) = support::http_get(pg.web_addr().unwrap(), "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("pgfront_discovery_members 3"), "{metrics}");
    assert!(metrics.contains("pgfront_discovery_changes_total"));
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_member_that_leaves_keeps_its_sessions_until_its_check_fails() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "both replicas up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2)
        .await;
    let mut live = connect_to(replicas, "node3").await;

    publish(&lab, &cluster_json(&all[..2]));
    eventually(LIMIT, "node3 is leaving", || node_names(&pg).contains(&("node3".into(), Origin::Leaving))).await;
    // Several discovery rounds later the session is still served, and nothing new goes there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    live.echo(b"after leaving").await.expect("a leaving member keeps its open sessions");
    for _ in 0..10 {
        assert_eq!(connect(replicas).await.unwrap().server, "node2", "no new session on a leaving member");
    }
    let hits = lab.nodes[2].rest.hits("/primary");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(lab.nodes[2].rest.hits("/primary") > hits, "a leaving member is still probed");
    assert!(has_event(&pg, "node3 left Patroni's member list"));

    // Its check fails: the session is cut as on any mark-down, and the member goes.
    lab.nodes[2].rest.set_all(Some(support::Answer::Reset));
    assert!(live.closed_within(LIMIT).await, "the session ends when the check fails");
    eventually(LIMIT, "node3 is removed", || !node_names(&pg).iter().any(|(n, _)| n == "node3")).await;
    let hits = lab.nodes[2].rest.hits("/primary");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lab.nodes[2].rest.hits("/primary"), hits, "a removed member is no longer probed");
    assert!(has_event(&pg, "node3 removed"));
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_member_that_leaves_without_sessions_goes_at_once() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    eventually(LIMIT, "three nodes", || node_names(&pg).len() == 3).await;
    publish(&lab, &cluster_json(&all[..2]));
    eventually(LIMIT, "node3 is removed", || node_names(&pg).len() == 2).await;
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_address_outside_the_allow_list_is_never_used() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    // node2 names a PostgreSQL address outside the list, node3 a REST address outside it.
    let json = cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])])
        .replacen(
            &format!("\"host\": \"127.0.0.1\", \"port\": {}", lab.nodes[1].backend.addr.port()),
            "\"host\": \"127.0.0.2\", \"port\": 5432",
            1,
        )
        .replace(
            &format!("http://{}/patroni", lab.nodes[2].rest.addr),
            &format!("http://127.0.0.3:{}/patroni", lab.nodes[2].rest.addr.port()),
        );
    publish(&lab, &json);
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "node1 discovered", || node_names(&pg).len() == 1).await;
    eventually(LIMIT, "the refusals are said", || {
        has_event(&pg, "node2 ignored: PostgreSQL address 127.0.0.2 is outside discovery_allow")
            && has_event(&pg, "node3 ignored: REST address 127.0.0.3")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node_names(&pg), [("node1".to_owned(), Origin::Discovered)]);
    assert_eq!(pg.shared().first().discovery.refused.load(Ordering::Relaxed), 2);
    let refusals = pg.shared().runtime().events.recent().iter().filter(|e| e.text.contains("ignored")).count();
    assert_eq!(refusals, 2, "each refusal is said once, not every round");
    // No replica at all: a session is refused rather than sent anywhere.
    assert!(connect(replicas).await.is_err());
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_seed_that_is_down_does_not_stop_discovery() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    // The first seed refuses connections, the second answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let pg = start(&config(&[dead.to_string(), lab.nodes[1].rest.addr.to_string()], "127.0.0.1/32", ""));
    eventually(LIMIT, "three members found through the second seed", || node_names(&pg).len() == 3).await;
    // Both seeds fail now: the members found are asked instead.
    lab.nodes[1].rest.set_all(Some(support::Answer::Hang));
    let requests = pg.shared().first().discovery.requests.load(Ordering::Relaxed);
    let extra = Lab::start(1).await;
    extra.nodes[0].rest.patroni("replica", 2);
    let mut more: Vec<(&str, &FakeNode)> = all.to_vec();
    more.push(("node4", &extra.nodes[0]));
    publish(&lab, &cluster_json(&more));
    eventually(LIMIT, "node4 found through a known member", || node_names(&pg).len() == 4).await;
    assert!(pg.shared().first().discovery.requests.load(Ordering::Relaxed) > requests);
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn declared_nodes_keep_their_settings_and_a_reload_keeps_the_members() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])]));
    // node2 declared with its own maxconn (and its own addresses); the others discovered.
    let declared = format!(
        "[[node]]\nname = \"node2\"\naddress = \"{}\"\ncheck_address = \"{}\"\nmaxconn = 1\n",
        lab.nodes[1].backend.addr, lab.nodes[1].rest.addr
    );
    let text = config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", &declared);
    let pg = start(&text);
    eventually(LIMIT, "three nodes", || node_names(&pg).len() == 3).await;
    assert_eq!(node_names(&pg)[0], ("node2".to_owned(), Origin::Declared), "declared nodes come first");
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "both replicas up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2)
        .await;
    let rt = pg.shared().runtime();
    let limit = |name: &str| rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == name).unwrap().maxconn;
    assert_eq!((limit("node2"), limit("node3")), (1, 100), "declared maxconn kept, defaults for the discovered");
    let mut live = connect_to(replicas, "node3").await;

    // An operator's reload re-applies the discovered members: nothing is forgotten or cut.
    let config = pgfront::Config::parse(std::path::Path::new("test.toml"), &text).unwrap();
    pg.reload(config).unwrap();
    assert_eq!(node_names(&pg).len(), 3, "the reload keeps the discovered members");
    assert_eq!(pg.shared().runtime().listener("replicas").unwrap().servers_up(), 2, "and their health");
    live.echo(b"after the reload").await.unwrap();
    pg.shutdown(Duration::from_millis(100)).await;
}

/// What discovery costs a new session: connect-to-first-byte latency through the replicas
/// listener with declared nodes, with discovered ones, and with the member set changing
/// every 20 ms (a generation swap each time). Prints medians and p99; run with
/// `cargo test --test discovery -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by name"]
async fn measure_connect_cost() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    let two = cluster_json(&all);
    publish(&lab, &two);
    let n = 3000;
    let declared = start(&lab.config(""));
    let discovered = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    for pg in [&declared, &discovered] {
        eventually(LIMIT, "two replicas", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2)
            .await;
    }
    for round in 0..3 {
        let a = support::connect_latency(declared.listener_addr("replicas").unwrap(), n).await;
        let b = support::connect_latency(discovered.listener_addr("replicas").unwrap(), n).await;
        // Churn: node3 leaves and joins every 20 ms, a new generation each time.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (stop, nodes) = (stop.clone(), lab.nodes.clone());
            let (with, without) = (two.clone(), cluster_json(&[("node1", &nodes[0]), ("node2", &nodes[1])]));
            tokio::spawn(async move {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    for node in &nodes {
                        node.rest.set_body("/cluster", if flip { &with } else { &without });
                    }
                    flip = !flip;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let changes = discovered.shared().first().discovery.changes.load(Ordering::Relaxed);
        let c = support::connect_latency(discovered.listener_addr("replicas").unwrap(), n).await;
        stop.store(true, Ordering::Relaxed);
        churn.await.unwrap();
        let swaps = discovered.shared().first().discovery.changes.load(Ordering::Relaxed) - changes;
        eprintln!(
            "round {round}: connect+first byte median/p99 µs: declared {}/{}, discovered {}/{}, discovered with {swaps} generation swaps during the sample {}/{}",
            a.0, a.1, b.0, b.1, c.0, c.1
        );
        publish(&lab, &two);
    }
    declared.shutdown(Duration::from_millis(100)).await;
    discovered.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_empty_or_foreign_answer_changes_nothing() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    eventually(LIMIT, "three members", || node_names(&pg).len() == 3).await;
    let errors = pg.shared().first().discovery.errors.load(Ordering::Relaxed);
    // Another Patroni cluster's answer, then an empty list, then only forbidden addresses.
    for json in [
        cluster_json(&all[..1]).replace("\"scope\": \"lab\"", "\"scope\": \"other\""),
        r#"{"members": [], "scope": "lab"}"#.to_owned(),
        cluster_json(&all).replace("\"host\": \"127.0.0.1\"", "\"host\": \"10.0.0.1\""),
    ] {
        publish(&lab, &json);
        let seen = pg.shared().first().discovery.errors.load(Ordering::Relaxed);
        eventually(LIMIT, "rounds fail", || pg.shared().first().discovery.errors.load(Ordering::Relaxed) > seen + 2)
            .await;
        assert_eq!(node_names(&pg).len(), 3, "the member set is unchanged by {json}");
    }
    assert!(pg.shared().first().discovery.errors.load(Ordering::Relaxed) > errors);
    assert!(has_event(&pg, "discovery: no member answered /cluster"), "said once");
    let (_, error) = pg.shared().first().discovery.last();
    assert!(error.unwrap().contains("no usable member"));
    publish(&lab, &cluster_json(&all));
    eventually(LIMIT, "answers again", || has_event(&pg, "/cluster answers again")).await;
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn moving_a_discovery_file_to_cluster_tables_keeps_the_members_and_their_health() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])]));
    let seed = lab.nodes[0].rest.addr.to_string();
    let text = config(std::slice::from_ref(&seed), "127.0.0.1/32", "");
    let pg = start(&text);
    eventually(LIMIT, "both replicas up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2)
        .await;
    let mut live = connect_to(pg.listener_addr("replicas").unwrap(), "node3").await;
    // The same cluster as a named [[cluster]] table: discovery moves into it.
    let keys = format!(
        "discovery = \"patroni\"\ndiscovery_seeds = [\"{seed}\"]\ndiscovery_allow = [\"127.0.0.1/32\"]\ndiscovery_inter = \"50ms\"\n"
    );
    let named = text
        .replace(&keys, "")
        .replacen("[[listener]]", &format!("[[cluster]]\nname = \"main\"\n{keys}\n[[cluster.listener]]"), 1)
        .replace("[[listener]]", "[[cluster.listener]]");
    assert!(named.contains("[[cluster]]") && !named.contains("\n[[listener]]"), "{named}");
    let config =
        pgfront::Config::parse(std::path::Path::new("test.toml"), &named).unwrap_or_else(|e| panic!("{e}\n{named}"));
    pg.reload(config).unwrap();
    // At once, not at the next discovery round: the members and their health carried over.
    assert!(pg.cluster("main").is_some());
    assert_eq!(node_names(&pg).len(), 3, "the discovered members carried over");
    assert_eq!(pg.shared().runtime().listener("replicas").unwrap().servers_up(), 2, "with their health");
    live.echo(b"after the move").await.unwrap();
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn discovered_members_count_towards_the_descriptor_reserve() {
    // As `pgfront run` does (cargo test leaves a shell's soft limit): with a limit this
    // large the reserve stays under its cap of half the limit, whatever else this test
    // binary has open, so 25 more nodes are 50 descriptors more.
    let limit = pgfront::fds::raise_limit().unwrap_or(u64::MAX);
    assert!(limit >= 4096, "this test needs a hard descriptor limit of at least 4096 (ulimit -Hn), not {limit}");
    let lab = Lab::start(3).await;
    lab.leader(0);
    let members = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&members));
    // A maxconn no descriptor limit holds, so the one in effect is the limit's.
    let text = config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", "")
        .replace("[global]\n", "[global]\nmaxconn = 1000000\n");
    let pg = start(&text);
    eventually(LIMIT, "three members found", || pg.shared().first().discovery.members.load(Ordering::Relaxed) == 3)
        .await;
    let shared = pg.shared();
    let (before, fanout) = (shared.maxconn_in_effect(), shared.shares.fanout.available_permits());
    assert!(before < 1_000_000, "the test needs a descriptor limit (ulimit -n) to fit maxconn to");

    // 37 more members (at addresses nothing listens on: their checks fail, but they are
    // checked all the same), 40 in all: 25 over the reserve's allowance of 15, 2 each.
    let free: Vec<std::net::SocketAddr> =
        (0..37).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).collect();
    let mut list: Vec<String> = members
        .iter()
        .map(|(name, n)| {
            format!(
                r#"{{"name": "{name}", "role": "replica", "host": "127.0.0.1", "port": {}, "api_url": "http://{}/patroni"}}"#,
                n.backend.addr.port(),
                n.rest.addr
            )
        })
        .collect();
    list.extend(free.iter().enumerate().map(|(i, a)| {
        format!(r#"{{"name": "extra{i}", "role": "replica", "host": "127.0.0.1", "port": {}, "api_url": "http://{a}/patroni"}}"#, a.port())
    }));
    publish(&lab, &format!(r#"{{"members": [{}], "scope": "lab"}}"#, list.join(", ")));
    eventually(LIMIT, "40 members found", || shared.first().discovery.members.load(Ordering::Relaxed) == 40).await;
    // Fitted again at once, without a reload: 25 sessions fewer, and more room for the
    // web and cancel fan-outs.
    eventually(LIMIT, "the maxconn in effect leaves room for 37 more checks", || {
        shared.maxconn_in_effect() <= before - 25
    })
    .await;
    assert_eq!(shared.reloads.ok.load(Ordering::Relaxed), 0, "no reload was made");
    assert!(shared.shares.fanout.available_permits() > fanout, "the fan-out share grew with the reserve");
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn switching_declared_nodes_to_discovery_by_reload_keeps_them_until_the_first_answer() {
    // Found by helper-41: a reload from [[node]] tables to discovery alone built a
    // generation with no node until the first GET /cluster answer; the members then came
    // back as new nodes: the leader's term ended (sessions that asked for the primary cut),
    // a leader change was counted and the replicas were DOWN until rise.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let (declared, with_discovery) = declared_then_discovery(&lab);
    let pg = start(&declared);
    eventually(LIMIT, "all up", || {
        let rt = pg.shared().runtime();
        rt.listener("replicas").unwrap().servers_up() == 2 && rt.listener("primary").unwrap().servers_up() == 1
    })
    .await;
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    // Patroni does not answer /cluster yet: the nodes served so far must stay meanwhile.
    let config = pgfront::Config::parse(std::path::Path::new("test.toml"), &with_discovery).unwrap();
    pg.reload(config).unwrap();
    let rt = pg.shared().runtime();
    assert_eq!(rt.config.nodes.len(), 3, "the nodes are kept until discovery answers");
    assert_eq!(rt.listener("replicas").unwrap().servers_up(), 2, "with their health");
    assert_eq!(rt.leadership.leader(), Some(0));
    drop(rt);
    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])]));
    eventually(LIMIT, "discovered", || node_names(&pg).iter().all(|(_, o)| *o == Origin::Discovered)).await;
    assert_eq!(pg.shared().runtime().listener("replicas").unwrap().servers_up(), 2, "still up");
    writer.echo(b"after the switch").await.unwrap();
    assert_eq!(pg.shared().runtime().leadership.changes.load(Ordering::SeqCst), changes, "no leader change");
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_partial_member_list_does_not_remove_members_whose_checks_pass() {
    // Found by helper-40 on the real lab: after etcd came back from an outage longer than
    // ttl, /cluster listed the leader alone for a few seconds while the members registered
    // again; pgfront applied it at once, removed a healthy replica, and re-added it DOWN
    // (health reset, rise again) 3 s later.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    let replicas = || pg.shared().runtime().listener("replicas").unwrap().servers_up();
    eventually(LIMIT, "both replicas up", || replicas() == 2).await;
    let requests = || pg.cluster("").unwrap().discovery.requests.load(Ordering::Relaxed);
    publish(&lab, &cluster_json(&all[..1]));
    let asked = requests();
    eventually(LIMIT, "a few rounds with the leader alone", || requests() >= asked + 4).await;
    assert_eq!(node_names(&pg).len(), 3, "members whose checks pass were removed");
    assert!(node_names(&pg).iter().all(|(_, o)| *o == Origin::Discovered), "{:?}", node_names(&pg));
    assert_eq!(replicas(), 2, "their health was kept");
    publish(&lab, &cluster_json(&all));
    let asked = requests();
    eventually(LIMIT, "listed again", || requests() >= asked + 2).await;
    assert!(!has_event(&pg, "removed") && !has_event(&pg, "left"), "a removal was said");
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_node_kept_through_the_switch_to_discovery_that_the_first_answer_leaves_out_is_not_dropped_at_once() {
    // Found by review (helper-45): the nodes kept as members when a reload switched
    // discovery on were unknown to the discovery task, so one the first answer left out
    // vanished at once (no grace, no LEAVING), its sessions on a retired server.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let (declared, with_discovery) = declared_then_discovery(&lab);
    let pg = start(&declared);
    eventually(LIMIT, "all up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2).await;
    let mut reader = connect_to(pg.listener_addr("replicas").unwrap(), "node3").await;
    pg.reload(pgfront::Config::parse(std::path::Path::new("test.toml"), &with_discovery).unwrap()).unwrap();
    // Patroni lists node1 and node2 only (node3 registering again, say).
    publish(&lab, &cluster_json(&[("node1", &lab.nodes[0]), ("node2", &lab.nodes[1])]));
    let requests = || pg.cluster("").unwrap().discovery.requests.load(Ordering::Relaxed);
    let asked = requests();
    eventually(LIMIT, "a few rounds", || requests() >= asked + 3).await;
    assert!(node_names(&pg).iter().any(|(n, _)| n == "node3"), "node3 dropped at once: {:?}", node_names(&pg));
    reader.echo(b"node3 still served").await.unwrap();
    pg.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_member_renamed_in_patroni_is_not_kept_beside_its_new_name() {
    // Found by review (helper-45): the grace for members left out of an answer kept a
    // member renamed in Patroni (same addresses) beside its new name: one REST API as two
    // nodes, two claims when it leads.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let all = [("node1", &lab.nodes[0]), ("node2", &lab.nodes[1]), ("node3", &lab.nodes[2])];
    publish(&lab, &cluster_json(&all));
    let pg = start(&config(&[lab.nodes[0].rest.addr.to_string()], "127.0.0.1/32", ""));
    eventually(LIMIT, "three nodes", || node_names(&pg).len() == 3).await;
    publish(&lab, &cluster_json(&[all[0], all[1], ("third", &lab.nodes[2])]));
    eventually(LIMIT, "renamed", || node_names(&pg).iter().any(|(n, _)| n == "third")).await;
    assert!(!node_names(&pg).iter().any(|(n, _)| n == "node3"), "kept beside its new name: {:?}", node_names(&pg));
    pg.shutdown(Duration::from_millis(100)).await;
}
