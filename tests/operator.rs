//! The operator's surface: Prometheus metrics, live reload, the cluster view.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgfront::Config;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    http_get(addr, path, auth).await
}

const ADMIN: &str = "YWRtaW46c2VjcmV0";

fn up_count(pg: &pgfront::Pgfront, listener: &str) -> usize {
    pg.shared().runtime().listener(listener).map_or(0, |l| l.servers_up())
}

fn parse(text: &str) -> Config {
    Config::parse(Path::new("reload.toml"), text).unwrap()
}

#[tokio::test]
async fn metrics_expose_every_series() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let c = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    let (status, body) = get(pg.web_addr().unwrap(), "/metrics", None).await;
    assert_eq!(status, 200);
    for series in [
        r#"pgfront_server_status{listener="primary",server="node1",state="UP"} 1"#,
        r#"pgfront_server_status{listener="primary",server="node2",state="DOWN"} 1"#,
        r#"pgfront_server_current_sessions{listener="primary",server="node1"} 1"#,
        r#"pgfront_server_limit_sessions{listener="primary",server="node1"} 100"#,
        r#"pgfront_server_sessions_total{listener="primary",server="node1"} 1"#,
        "pgfront_server_bytes_in_total",
        "pgfront_server_bytes_out_total",
        "pgfront_server_connection_errors_total",
        "pgfront_server_check_failures_total",
        "pgfront_server_check_up_down_total",
        "pgfront_server_check_last_change_seconds",
        "pgfront_server_downtime_seconds_total",
        "pgfront_server_check_duration_seconds",
        r#"pgfront_backend_active_servers{listener="replicas"} 2"#,
        "pgfront_backend_current_queue",
        r#"pgfront_node_role{node="node1",role="primary"} 1"#,
        r#"pgfront_node_is_leader{node="node1"} 1"#,
        r#"pgfront_node_timeline{node="node2"} 2"#,
        "pgfront_node_replication_lag_bytes",
        "pgfront_leader_changes_total 1",
        "pgfront_sessions_held 0",
        r#"pgfront_config_reloads_total{result="failed"} 0"#,
        "pgfront_config_last_reload_successful 1",
    ] {
        assert!(body.contains(series), "missing {series}\n{body}");
    }
    drop(c);
    // promtool's own linter, where it is installed (scripts/deps installs it for CI).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("promtool is not installed");
    }
}

#[tokio::test]
async fn a_good_reload_keeps_live_sessions_and_health() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2).await;
    let mut live = connect(replicas).await.unwrap();
    // Change a timeout and restrict the replica listener to node2 and node3 explicitly.
    let changed = text.replace("timeout_connect = \"500ms\"", "timeout_connect = \"700ms\"");
    pg.reload(parse(&changed)).unwrap();
    // Health carried over: no server went back to DOWN-until-checked.
    assert_eq!(up_count(&pg, "replicas"), 2, "unchanged checks keep their state");
    assert_eq!(pg.listener_addr("replicas").unwrap(), replicas, "the socket stays");
    live.echo(b"still here after the reload").await.unwrap();
    let rt = pg.shared().runtime();
    assert_eq!(rt.listener("replicas").unwrap().config.timeout_connect, Duration::from_millis(700));
    assert!(
        rt.listener("replicas").unwrap().servers.iter().map(|s| s.stats.total.load(Ordering::SeqCst)).sum::<u64>() >= 1,
        "counters carried over"
    );
    assert_eq!(pg.shared().reloads.ok.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_changed_check_takes_effect_and_removed_servers_drain() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2).await;
    let mut on_node3 = connect_to(replicas, "node3").await;
    // /read-only admits the leader too; and node3 leaves the listener.
    let changed = text.replace(
        "check = { method = \"OPTIONS\", path = \"/replica\", expect = 200 }",
        "check = { method = \"OPTIONS\", path = \"/read-only\", expect = 200 }\nservers = [\"node1\", \"node2\"]",
    );
    pg.reload(parse(&changed)).unwrap();
    eventually(LIMIT, "leader admitted by /read-only", || up_count(&pg, "replicas") == 2).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(connect(replicas).await.unwrap().server);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["node1", "node2"]);
    on_node3.echo(b"a removed server's session runs to its end").await.unwrap();
    // Shown, with its place under global maxconn, until it ends (before: status and
    // metrics said nothing of it).
    let web = pg.web_addr().unwrap();
    let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["retired"],
        serde_json::json!([{"cluster": "", "listener": "replicas", "server": "node3", "sessions": 1}])
    );
    assert_eq!(v["global_sessions"], 1, "{json}");
    let (_, metrics) = get(web, "/metrics", None).await;
    assert!(metrics.contains("pgfront_retired_sessions 1"), "{metrics}");
    assert!(metrics.contains("pgfront_global_sessions 1"), "{metrics}");
    drop(on_node3);
    eventually(LIMIT, "its end shown", || pg.shared().retired.open(&[]).is_empty()).await;
    let (_, metrics) = get(web, "/metrics", None).await;
    assert!(metrics.contains("pgfront_retired_sessions 0"), "{metrics}");
}

#[tokio::test]
async fn a_bad_reload_changes_nothing_and_says_why() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "leader up", || up_count(&pg, "primary") == 1).await;
    let err = Config::parse(Path::new("/etc/pgfront/pgfront.toml"), "[defaults]\nintre = \"3s\"\n").unwrap_err();
    pg.reload_failed(&err.into());
    assert_eq!(pg.shared().reloads.failed.load(Ordering::SeqCst), 1);
    connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    let (_, html) = get(pg.web_addr().unwrap(), "/", Some(ADMIN)).await;
    assert!(html.contains("reload was refused") && html.contains("intre"), "the page says why");
    let (_, metrics) = get(pg.web_addr().unwrap(), "/metrics", None).await;
    assert!(metrics.contains("pgfront_config_last_reload_successful 0"));
    // A reload whose new listener cannot bind also changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = lab.config("").replace(
        "[web]",
        &format!(
            "[[listener]]\nname = \"extra\"\nbind = \"{}\"\ncheck = {{ path = \"/replica\" }}\n\n[web]",
            taken.local_addr().unwrap()
        ),
    );
    assert!(pg.reload(parse(&text)).is_err());
    assert!(pg.shared().runtime().listener("extra").is_none());
}

#[tokio::test]
async fn a_new_listener_is_bound_on_reload() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    let added = text.replace(
        "[web]",
        "[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\n\n[web]",
    );
    pg.reload(parse(&added)).unwrap();
    let addr = pg.listener_addr("extra").expect("bound");
    eventually(LIMIT, "replica up on the new listener", || up_count(&pg, "extra") == 1).await;
    let mut open = connect(addr).await.unwrap();
    assert_eq!(open.server, "node2");
    // And removed again: it stops accepting; the session it had runs on and is shown.
    pg.reload(parse(&text)).unwrap();
    assert!(pg.listener_addr("extra").is_none());
    eventually(LIMIT, "closed", || std::net::TcpStream::connect(addr).is_err()).await;
    open.echo(b"still served").await.unwrap();
    let (_, html) = get(pg.web_addr().unwrap(), "/", Some(ADMIN)).await;
    assert!(html.contains("a reload removed run to their end: extra / node2: 1"), "{html}");
    assert!(html.contains("global maxconn 4096: 1 places held"), "{html}");
}

#[tokio::test]
async fn the_page_shows_the_cluster() {
    let lab = Lab::start(3).await;
    lab.leader(1);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (_, html) = get(pg.web_addr().unwrap(), "/", Some(ADMIN)).await;
    assert!(html.contains("Leader: <b>node2</b>"), "the leader is named");
    assert!(html.contains("primary (leader)"));
    assert!(
        html.contains(r#"<tr class="role"><td class="l">node1</td>"#) && html.contains(">replica</td>"),
        "replicas on the write listener read as replicas, not as failures"
    );
    assert!(!html.contains(r#"<tr class="down">"#), "nothing is failing");
    assert!(html.contains("leader: none -&gt; node2"), "the transition log");
    let (_, json) = get(pg.web_addr().unwrap(), "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["leader"], "node2");
    assert_eq!(v["nodes"][1]["role"], "primary");
    assert_eq!(v["nodes"][0]["timeline"], 2);
}

#[tokio::test]
async fn sessions_on_a_rebuilt_server_are_still_cut_on_mark_down() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2).await;
    let mut on_node2 = connect_to(replicas, "node2").await;
    // Another check and maxconn: the servers are rebuilt, not reused.
    let changed = text.replace(
        "check = { method = \"OPTIONS\", path = \"/replica\", expect = 200 }",
        "check = { method = \"OPTIONS\", path = \"/read-only\", expect = 200 }\nmaxconn = 50",
    );
    pg.reload(parse(&changed)).unwrap();
    let rt = pg.shared().runtime();
    let node2 = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node2").unwrap().clone();
    assert_eq!(node2.maxconn, 50);
    assert_eq!(node2.stats.cur.load(Ordering::SeqCst), 1, "the open session still counts against maxconn");
    on_node2.echo(b"kept by the reload").await.unwrap();
    // The rebuilt check starts DOWN until checked, like any new one; once it has passed,
    // its mark-down reaches the session opened under the old one.
    eventually(LIMIT, "rebuilt check up", || node2.check.report().machine.is_up()).await;
    lab.nodes[1].rest.set_all(Some(Answer::Hang));
    assert!(
        on_node2.closed_within(LIMIT).await,
        "mark-down of the rebuilt server cuts the session opened before the reload"
    );
}

#[tokio::test]
async fn a_reload_can_rename_a_listener_or_swap_two_listeners_addresses() {
    // Found by a torture run: both were refused ("Address already in use": the new socket
    // was bound while the old listener's still held the address), so the only way was two
    // reloads with refused connections between them, or a restart.
    let lab = Lab::start(2).await;
    lab.leader(0);
    let (text, p1, p2) = on_two_free_ports(&lab.config(""));
    let pg = start(&text);
    let (a1, a2): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{p1}").parse().unwrap(), format!("127.0.0.1:{p2}").parse().unwrap());
    eventually(LIMIT, "all up", || up_count(&pg, "primary") == 1 && up_count(&pg, "replicas") == 1).await;
    let mut before = connect(a2).await.unwrap();
    assert_eq!(before.server, "node2");

    // The replicas listener renamed "reads", on the same address.
    let renamed = text.replace("name = \"replicas\"", "name = \"reads\"");
    pg.reload(parse(&renamed)).expect("a rename keeps the address");
    assert_eq!(pg.listener_addr("reads"), Some(a2));
    assert!(pg.listener_addr("replicas").is_none());
    // It goes on as the listener it was: its open session counts against its server.
    let node2 = |l: &str| pg.shared().runtime().listener(l).unwrap().servers[1].stats.cur.load(Ordering::SeqCst);
    assert_eq!(node2("reads"), 1, "the session opened before the rename is counted");
    eventually(LIMIT, "reads up", || up_count(&pg, "reads") == 1).await;
    assert_eq!(connect(a2).await.unwrap().server, "node2");
    let accepted = || pg.shared().runtime().listener("reads").unwrap().stats.accepted.load(Ordering::SeqCst);
    assert!(accepted() >= 1, "counted on the renamed listener");
    before.echo(b"the session opened before the rename").await.unwrap();

    // Then the two swap addresses.
    let swapped = renamed
        .replace(&format!("127.0.0.1:{p1}"), "SWAP")
        .replace(&format!("127.0.0.1:{p2}"), &format!("127.0.0.1:{p1}"))
        .replace("SWAP", &format!("127.0.0.1:{p2}"));
    pg.reload(parse(&swapped)).expect("a swap of addresses");
    assert_eq!((pg.listener_addr("primary"), pg.listener_addr("reads")), (Some(a2), Some(a1)));
    assert_eq!(connect(a1).await.unwrap().server, "node2", "reads on the first address");
    assert_eq!(connect(a2).await.unwrap().server, "node1", "the leader on the second");
    before.echo(b"and the swap").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_accepted_while_a_reload_renames_their_listener_are_served() {
    // Found by review: a reload swapped the generation in before it handed the socket its
    // new name, and an accept loop that read the old name in the new generation found no
    // such listener and closed the connection it had just accepted.
    let lab = Lab::start(2).await;
    lab.leader(0);
    let port = free_port();
    let text = lab.config("").replace(
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"",
        &format!("name = \"replicas\"\nbind = \"127.0.0.1:{port}\""),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pg = std::sync::Arc::new(start(&text));
    assert_eq!(pg.listener_addr("replicas"), Some(addr));
    eventually(LIMIT, "up", || up_count(&pg, "replicas") == 1).await;
    let files = [parse(&text.replace("name = \"replicas\"", "name = \"reads\"")), parse(&text)];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = std::sync::Arc::clone(&done);
            tokio::spawn(async move {
                let (mut served, mut dropped) = (0, Vec::new());
                while !done.load(Ordering::SeqCst) {
                    match tokio::time::timeout(LIMIT, connect(addr)).await.expect("a connect hung") {
                        Ok(c) => served += usize::from(c.server == "node2"),
                        Err(e) => dropped.push(e),
                    }
                }
                (served, dropped)
            })
        })
        .collect();
    let reloader = {
        let pg = std::sync::Arc::clone(&pg);
        tokio::task::spawn_blocking(move || {
            for i in 0..300 {
                pg.reload(files[i % 2].clone()).expect("a rename keeps the address");
                std::thread::yield_now();
            }
        })
    };
    reloader.await.unwrap();
    done.store(true, Ordering::SeqCst);
    let mut served = 0;
    for c in clients {
        let (s, dropped) = c.await.unwrap();
        assert!(dropped.is_empty(), "{} connections dropped or refused: {:?}", dropped.len(), dropped.first());
        served += s;
    }
    assert!(served > 0, "no connection was served during the reloads");
}
